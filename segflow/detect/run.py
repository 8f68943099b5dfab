"""Tile inference of an instance-segmentation package: windows → detections → merged instances → store.

The scene is read a row of windows at a time (``batch`` windows per read and per forward pass);
windows that are entirely nodata are skipped. Each row's detections are merged with those of the
rows before (:class:`~segflow.detect.merge.Merger`), and the finished instances are painted into the
run's ``mask.zarr`` (:func:`~segflow.detect.paint.paint_instances`), whose ``labels``, ``instances``
and ``instance_scores`` the sinks then write out (COG labels, ``instances.csv``, polygons).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..io.mask_store import MaskStore
from ..models import ModelPackage
from ..models.loading import load_module
from ..models.package import ModelSpec
from ..run_params import TileInferParams
from ..scene import Scene
from ..tiling import Box, WindowGrid
from .merge import DEFAULT_IOU, Instance, Merger
from .paint import paint_instances
from .windows import Detector

__all__ = ["Found", "check_run", "detect_store", "detector_for"]


@dataclass(frozen=True)
class Found:
    """What a detection run did: windows evaluated and skipped (all nodata), detections, instances."""

    evaluated: int
    skipped: int
    detections: int
    instances: int


def check_run(spec: ModelSpec, params: TileInferParams, distributed: bool) -> None:
    """Refuse, one line each, the options that work on blended class probabilities, for an instance model."""
    if not spec.instances:
        return
    model = f"model {spec.name!r} finds objects (Mask R-CNN), it does not blend class probabilities"
    for given, option in ((params.tta != "none", f"--tta {params.tta}"), (params.crf is not None, "--crf"),
                          (bool(params.opening or params.closing), "--opening/--closing"),
                          (params.panoptic, "--panoptic"), (params.compile, "--compile"),
                          (params.vector_options.separate != "none", f"--separate {params.vector_options.separate}"),
                          (distributed, "--workers/--cluster")):
        if given:
            raise ConfigError(f"{option} is not available here: {model}; leave {option.split()[0]} out "
                              "(its instances are separate already)")


def _read_batch(scene: Scene, grid: WindowGrid, row: int, cols: range
                ) -> tuple[np.ndarray, np.ndarray | None, list[tuple[int, int]]]:
    """Windows ``(row, c)`` for ``c`` in ``cols``, read as one region: ``(N, C, th, tw)``, validity, origins."""
    th, tw = grid.tile
    y0 = int(grid.starts[0][row])
    x0, x1 = int(grid.starts[1][cols[0]]), int(grid.starts[1][cols[-1]]) + tw
    data, valid = scene.read(Box((y0, x0), (y0 + th, x1)))
    origins = [(y0, int(grid.starts[1][c])) for c in cols]
    windows = np.stack([data[:, :, o[1] - x0:o[1] - x0 + tw] for o in origins])
    masks = None if valid is None else np.stack([valid[:, o[1] - x0:o[1] - x0 + tw] for o in origins])
    return windows, masks, origins


def detector_for(package: ModelPackage, *, device: str, batch: int, precision: str) -> Detector:
    """The package's network, loaded, as a :class:`Detector`."""
    return Detector(load_module(package), package.spec, device=device, batch_size=batch, precision=precision)


def detect_store(scene: Scene, store: MaskStore, grid: WindowGrid, detector: Detector, *, iou: float = DEFAULT_IOU,
                 on_chunk: Callable[[], None] | None = None) -> Found:
    """Detect, merge and paint every instance of ``scene`` into ``store`` (a 2D store on the scene's grid)."""
    spec = detector.spec
    for axis in range(2):
        if grid.counts[axis] > 1 and grid.stride[axis] >= grid.tile[axis]:
            raise ConfigError(f"windows of {grid.tile[axis]} pixels every {grid.stride[axis]} do not overlap, so the "
                              "views of an object cut by a window edge cannot be matched; give --overlap of at least "
                              "the size of the objects over the tile (e.g. --overlap 0.25)")
    merger = Merger(grid, iou)
    instances: list[Instance] = []
    evaluated = skipped = detections = 0
    rows, cols = grid.counts
    for row in range(rows):
        for c0 in range(0, cols, detector.batch_size):
            span = range(c0, min(c0 + detector.batch_size, cols))
            windows, valid, origins = _read_batch(scene, grid, row, span)
            keep = [i for i in range(len(span)) if valid is None or valid[i].any()]
            skipped += len(span) - len(keep)
            found = []
            if keep:
                found = detector.detect([(row, span[i]) for i in keep], [origins[i] for i in keep],
                                        windows[keep], None if valid is None else valid[keep])
                evaluated += len(keep)
                detections += len(found)
            by_window: dict[tuple[int, ...], list] = {(row, c): [] for c in span}
            for det in found:
                by_window[det.window].append(det)
            for window, dets in by_window.items():
                merger.add(window, dets)
        next_start = int(grid.starts[0][row + 1]) if row + 1 < rows else None
        instances.extend(merger.end_row(next_start))
    instances.extend(merger.finish())
    things = [c.name for c in spec.classes if c.kind == "thing"]

    def valid_of(box: Box) -> np.ndarray | None:
        return None if scene.valid is None else np.asarray(scene.valid[box.slices].compute(), dtype=bool)

    count = paint_instances(store, instances, valid_of, things=things, on_chunk=on_chunk)
    return Found(evaluated, skipped, detections, count)
