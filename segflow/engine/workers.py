"""Predictors on workers: built once per worker process per run, from the model package.

Tasks carry a small :class:`PredictorFactory` (the package's location and digest, the device
and batching choices), never the weights. The first task of a run on a worker builds the
predictor; later tasks of the same run reuse it. A worker keeps one predictor at a time, so a
long-lived cluster does not accumulate models across runs. One model call runs at a time per
worker process (the device is the bottleneck; reads and merges go on beside it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._memory import limit_heap_fragmentation
from ..errors import ModelError
from ..io.geotiff import cap_gdal_cache
from ..models import ModelPackage, load_module
from ..models.archive import sha256_file
from ..predict import Predictor

__all__ = ["PredictorFactory", "predictor_for"]


@dataclass(frozen=True)
class PredictorFactory:
    """How to build the run's predictor on any worker.

    ``torch_threads`` caps torch's CPU threads in worker processes that share a machine
    (None: torch's default). ``precision`` is the run's resolved precision, which the worker's
    device must support; ``tta`` as :class:`~segflow.predict.Predictor` takes it.
    """

    package: ModelPackage
    device: str = "auto"
    batch_size: int = 16
    precision: str = "auto"
    tta: str = "none"
    torch_threads: int | None = None
    compile: bool = False  # torch.compile the network (segflow.compiled)

    def build(self) -> Predictor:
        """Load the model on this worker (checking the weights are the run's) and set the process up for a run."""
        limit_heap_fragmentation()
        cap_gdal_cache()
        weights = self.package.weights_path
        if weights is not None and self.package.weights_sha256 is not None:
            if not weights.is_file():
                raise ModelError(f"model weights {weights} are not readable on this worker; put the model package "
                                 "on storage every worker can read, at the same path")
            if sha256_file(weights) != self.package.weights_sha256:
                raise ModelError(f"model weights {weights} on this worker differ from the ones the run started "
                                 "with (sha256 mismatch); give every worker the same package")
        if self.torch_threads is not None:
            torch.set_num_threads(self.torch_threads)
        return Predictor(load_module(self.package), self.package.spec, device=self.device,
                         batch_size=self.batch_size, precision=self.precision, tta=self.tta,
                         compile=self.compile, warn=False)  # the run warned once when it was planned


class _Serialized:
    """A predictor that runs one model call at a time (tasks of one process share it)."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.device = predictor.device
        self.lock = threading.Lock()

    def predict_windows(self, windows: Iterable[tuple[np.ndarray, np.ndarray | None]]) -> Iterator[torch.Tensor]:
        it = iter(windows)
        while True:
            batch = []
            for window in it:  # read/cut the windows of one batch outside the lock
                batch.append(window)
                if len(batch) == self.predictor.batch_size:
                    break
            if not batch:
                return
            with self.lock:
                out = list(self.predictor.predict_windows(batch))
            yield from out


_lock = threading.Lock()
_current: dict[str, Any] = {}


@contextmanager
def predictor_for(factory: PredictorFactory) -> Iterator[_Serialized]:
    """This process's predictor for ``factory``, built on first use (one at a time per process)."""
    with _lock:
        if _current.get("factory") != factory:
            _current.clear()
            _current["predictor"] = _Serialized(factory.build())
            _current["factory"] = factory
        predictor: _Serialized = _current["predictor"]
    yield predictor
