"""Models: packages (``model.yaml`` + weights), loading, built-in models and architectures."""

from __future__ import annotations

from .loading import load_module
from .package import ClassSpec, ModelPackage, ModelSpec, Normalization, builtin_names, resolve_package

__all__ = [
    "ClassSpec",
    "ModelPackage",
    "ModelSpec",
    "Normalization",
    "builtin_names",
    "load_module",
    "resolve_package",
]
