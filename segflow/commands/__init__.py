"""Click commands that live outside ``segflow.cli``; ``cli.py`` registers them on its groups.

* :data:`export_cmd` (``segflow models export``): export a model package to ONNX or TorchScript.
* :data:`eval_cmd` (``segflow eval``): score a prediction against a truth raster.
* :data:`train_cmd` (``segflow train``): train a model package from labelled scenes or volumes.
"""

from __future__ import annotations

from .evaluate import eval_cmd
from .export import export_cmd
from .train import train_cmd

__all__ = ["eval_cmd", "export_cmd", "train_cmd"]
