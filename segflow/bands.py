"""Match a model's declared inputs to scenes: which raster, which band, in which order.

A model reads one raster (``image``) or several co-registered ones (``image``, ``dem``...),
each input band naming its ``source`` in ``model.yaml``. Rasters must share one grid.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import dask.array as da

from . import georef
from .errors import ConfigError, ModelError
from .georef import PixelGrid
from .models.package import ModelSpec
from .scene import Scene

__all__ = ["assemble_scene", "check_same_grid", "parse_band_overrides", "parse_inputs", "resolve_bands"]

PRIMARY = "image"


def parse_band_overrides(items: Sequence[str]) -> dict[str, int]:
    """Parse ``["nir=4", "red=3"]`` into ``{"nir": 4, "red": 3}`` (1-based band numbers)."""
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit() or int(value) < 1:
            raise ConfigError(f"band choice {item!r} must look like NAME=N with N a 1-based band number, e.g. nir=4")
        out[name.strip().lower()] = int(value)
    return out


def parse_inputs(items: Sequence[str | os.PathLike[str]]) -> dict[str, Path]:
    """Parse ``--input`` values: ``scene.tif`` is the ``image`` input, ``dem=dem.tif`` a named one."""
    out: dict[str, Path] = {}
    for item in items:
        text = str(item)
        name, sep, path = text.partition("=")
        if sep and name.replace("_", "").replace("-", "").isalnum() and path and not Path(text).exists():
            key, value = name, Path(path)
        else:
            key, value = PRIMARY, Path(text)
        if key in out:
            raise ConfigError(f"input {key!r} given twice ({out[key]} and {value}); name extra rasters, "
                              "e.g. --input dem=dem.tif")
        out[key] = value
    if not out:
        raise ConfigError("no input given; pass --input scene.tif")
    return out


def resolve_bands(spec: ModelSpec, scene: Scene, overrides: Mapping[str, int] | None = None,
                  source: str = PRIMARY) -> list[int]:
    """0-based band indices of ``scene`` feeding the model's inputs from ``source``, in model order.

    For each declared input band, in order of precedence: the user's override (``--band
    nir=4``), a scene band whose description equals the band's name, the ``index`` the
    model declares. A model that declares no indices takes the scene's bands in order, and
    then the counts must match exactly.
    """
    overrides = dict(overrides or {})
    bands = [b for b in spec.input.bands if b.source == source]
    roles = [b.name.lower() for b in bands]
    declared = all(b.index is not None for b in bands)
    if not declared and not any(r in overrides for r in roles) and scene.num_bands != len(roles):
        raise ModelError(
            f"model {spec.name!r} takes {len(roles)} band(s) {roles} from {source!r} but {scene.source} has "
            f"{scene.num_bands}; choose bands with --band NAME=N or declare their index in model.yaml"
        )
    chosen = []
    for position, (role, band) in enumerate(zip(roles, bands, strict=True)):
        if role in overrides:
            number = overrides[role]
        elif role in scene.band_names:
            number = scene.band_names.index(role) + 1
        elif band.index is not None:
            number = band.index
        else:
            number = position + 1
        if number > scene.num_bands:
            raise ModelError(
                f"model {spec.name!r} needs band {number} ({role}) but {scene.source} has only "
                f"{scene.num_bands} band(s); pick the {role} band with --band {role}=N"
            )
        chosen.append(number - 1)
    return chosen


def check_same_grid(first: Scene, other: Scene, names: tuple[str, str] = ("first raster", "other raster")
                    ) -> None:
    """Refuse rasters that are not on one grid (shape, CRS, transform), naming every difference."""
    georef.check_same_grid(PixelGrid.of(first.spatial_shape, first.crs or first.gcp_crs, first.transform, first.gcps),
                           PixelGrid.of(other.spatial_shape, other.crs or other.gcp_crs, other.transform, other.gcps),
                           names=names, paths=(Path(first.source), Path(other.source)))


def assemble_scene(spec: ModelSpec, scenes: Mapping[str, Scene], overrides: Mapping[str, int] | None = None) -> Scene:
    """One scene holding exactly the model's input bands, in its order, from one or more rasters."""
    overrides = dict(overrides or {})
    roles = {b.name.lower() for b in spec.input.bands}
    unknown = sorted(set(overrides) - roles)
    if unknown:
        raise ConfigError(f"--band names {unknown} are not inputs of model {spec.name!r}; its inputs are "
                          f"{[b.name.lower() for b in spec.input.bands]}")
    missing = [s for s in spec.sources if s not in scenes]
    extra = sorted(set(scenes) - set(spec.sources))
    if missing or extra:
        needs = ", ".join(spec.sources)
        raise ConfigError(f"model {spec.name!r} reads the raster(s) {needs}; got {', '.join(scenes) or 'none'}"
                          f" (give each with --input NAME=PATH, the first as --input PATH)")
    first = scenes[spec.sources[0]]
    for source in spec.sources[1:]:
        check_same_grid(first, scenes[source], names=(f"input {spec.sources[0]!r}", f"input {source!r}"))
    if len(spec.sources) == 1:
        return first.select_bands(resolve_bands(spec, first, overrides, spec.sources[0]))
    selected = {s: scenes[s].select_bands(resolve_bands(spec, scenes[s], overrides, s)) for s in spec.sources}
    taken = dict.fromkeys(spec.sources, 0)
    parts, names = [], []
    for band in spec.input.bands:
        part = selected[band.source]
        parts.append(part.data[taken[band.source] : taken[band.source] + 1])
        names.append(part.band_names[taken[band.source]])
        taken[band.source] += 1
    valid = None
    for part in selected.values():
        v = part.valid
        if v is not None:
            valid = v if valid is None else valid & v
    return Scene(data=da.concatenate(parts, axis=0), axes=first.axes, band_names=tuple(names), crs=first.crs,
                 transform=first.transform, nodata=None, mask=valid, gcps=first.gcps, gcp_crs=first.gcp_crs,
                 rpcs=first.rpcs, source=" + ".join(scenes[s].source for s in spec.sources), meta=first.meta)
