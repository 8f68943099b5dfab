"""Readers that turn sources into :class:`~segflow.scene.Scene` objects; the mask store; sinks; atomic publication."""

from __future__ import annotations

from .geotiff import gdal_cache_limit, open_geotiff
from .mask_store import MaskStore
from .readers import open_scene, register_reader
from .sinks import Sink, sinks_for

__all__ = ["MaskStore", "Sink", "gdal_cache_limit", "open_geotiff", "open_scene", "register_reader", "sinks_for"]
