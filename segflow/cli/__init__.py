"""The ``segflow`` command line, thin over the library (like rasterio's ``rio/``).

One module per command (:mod:`.tile_infer`, :mod:`.sample_scene`, :mod:`.demo`,
:mod:`.models`, :mod:`.evaluate`, :mod:`.train`), options shared by several commands in
:mod:`.options`, and the group that adds them all plus :func:`main` in :mod:`._app`.
"""

from __future__ import annotations

from ._app import cli, main

__all__ = ["cli", "main"]
