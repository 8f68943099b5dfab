"""Readers that turn files into :class:`~segflow.scene.Scene` objects, and writers per format."""

from __future__ import annotations

from .geotiff import gdal_cache_limit, open_geotiff

__all__ = ["gdal_cache_limit", "open_geotiff"]
