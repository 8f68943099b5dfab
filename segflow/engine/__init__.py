"""The engine: a pure plan of chunk tasks, run as one dask graph on threads, processes or a cluster, resumable."""

from __future__ import annotations

from .execute import Execution, Outcome, run_plan
from .plan import ChunkTask, Plan, make_plan
from .resume import input_identity, run_fingerprint
from .tasks import RunSpec
from .workers import PredictorFactory

__all__ = [
    "ChunkTask",
    "Execution",
    "Outcome",
    "Plan",
    "PredictorFactory",
    "RunSpec",
    "input_identity",
    "make_plan",
    "run_fingerprint",
    "run_plan",
]
