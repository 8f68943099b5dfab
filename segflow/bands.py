"""Match a model's declared inputs to scenes: which raster, which band, in which order.

A model reads one raster (``image``) or several co-registered ones (``image``, ``dem``...),
each input band naming its ``source`` in ``model.yaml``. Rasters must share one grid.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import dask.array as da

from . import georef
from .errors import ConfigError, InputError
from .georef import PixelGrid
from .models.package import ModelSpec
from .scene import Scene

__all__ = ["assemble_scene", "check_same_grid", "parse_band_overrides", "parse_inputs", "resolve_bands",
           "with_series"]

PRIMARY = "image"


def parse_band_overrides(items: Sequence[str]) -> dict[str, int]:
    """Parse ``["nir=4", "red=3"]`` into ``{"nir": 4, "red": 3}`` (1-based band numbers).

    Only the form is checked here; whether a number is a band of the raster (``1 <= N <=
    band count``) is checked by :func:`resolve_bands`, which knows the raster.
    """
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            number = int(value.strip())
        except ValueError:
            number = None
        if not sep or not name.strip() or number is None:
            raise ConfigError(f"--band {item!r} must look like NAME=N with N a 1-based band number of the "
                              "raster, e.g. --band nir=4")
        out[name.strip().lower()] = number
    return out


def parse_inputs(items: Sequence[str | os.PathLike[str]]) -> dict[str, str]:
    """Parse ``--input`` values: ``scene.tif`` is the ``image`` input, ``dem=dem.tif`` a named one.

    Values stay the strings given: a path or any name GDAL opens (``/vsizip/a.zip/x.tif``,
    ``NETCDF:"f.nc":var``), which ``pathlib`` must not rewrite.
    """
    out: dict[str, str] = {}
    for item in items:
        text = os.fspath(item)
        name, sep, path = text.partition("=")
        if sep and name.replace("_", "").replace("-", "").isalnum() and path and not os.path.exists(text):
            key, value = name, path
        else:
            key, value = PRIMARY, text
        if key in out:
            raise ConfigError(f"input {key!r} given twice ({out[key]} and {value}); name extra rasters, "
                              "e.g. --input dem=dem.tif")
        out[key] = value
    if not out:
        raise ConfigError("no input given; pass --input scene.tif")
    return out


def _bands_word(n: int) -> str:
    return f"{n} band" + ("" if n == 1 else "s")


def _fitting_builtins(scene: Scene) -> list[str]:
    """Built-in models of the scene's dimensionality that read at most the scene's band count."""
    from .models.package import builtin_names, resolve_package

    fits = []
    for name in builtin_names():
        spec = resolve_package(name).spec
        if (spec.spatial_dims == scene.spatial_dims and len(spec.sources) == 1
                and len(spec.input.bands) <= scene.num_bands):
            fits.append(name)
    return fits


def _too_few_bands(spec: ModelSpec, scene: Scene, roles: list[str], source: str) -> InputError:
    """The raster has fewer bands than the model reads: the fix is another model, not a ``--band`` choice."""
    n = scene.num_bands
    which = "" if source == PRIMARY else f" (input {source!r})"
    head = (f"{scene.source}{which} has {_bands_word(n)} but model {spec.name!r} reads {len(roles)} bands "
            f"from it ({', '.join(roles)})")
    fits = _fitting_builtins(scene)
    if fits:
        advice = (f"use a model that takes {_bands_word(n)}: built-in {', '.join(fits)}, or a model package "
                  f"with --model PATH (see `segflow models list`)")
    else:
        advice = (f"no built-in model fits a {n}-band raster; pass a model package that takes "
                  f"{_bands_word(n)} with --model PATH (see `segflow models list`)")
    return InputError(f"{head}; {advice}")


def with_series(inputs: dict[str, str], series: str | None) -> dict[str, str]:
    """``inputs`` with the primary input narrowed to one DICOM series (``--series UID``), when given."""
    if series is None:
        return inputs
    from .io.dicom import dicom_series_name

    return {**inputs, PRIMARY: dicom_series_name(inputs[PRIMARY], series.strip())}


def resolve_bands(spec: ModelSpec, scene: Scene, overrides: Mapping[str, int] | None = None,
                  source: str = PRIMARY) -> list[int]:
    """0-based band indices of ``scene`` feeding the model's inputs from ``source``, in model order.

    For each declared input band, in order of precedence: the user's override (``--band
    nir=4``), a scene band whose description equals the band's name, the ``index`` the
    model declares. A model that declares no indices takes the scene's bands in order, and
    then the counts must match exactly.

    One rule for errors, all exit code 2: a band number the user chose that is not a band of
    the raster (``N < 1`` or ``N >`` band count) is a :class:`ConfigError`; a raster with
    fewer bands than the model reads, or whose bands the model cannot pick without a
    ``--band`` choice, is an :class:`InputError`.
    """
    overrides = dict(overrides or {})
    bands = [b for b in spec.input.bands if b.source == source]
    roles = [b.name.lower() for b in bands]
    n = scene.num_bands
    for role in roles:
        if role in overrides and not 1 <= overrides[role] <= n:
            raise ConfigError(f"--band {role}={overrides[role]} is not a band of {scene.source}: it has "
                              f"{_bands_word(n)}, numbered 1 to {n}; pass --band {role}=N with 1 <= N <= {n}")
    if n < len(roles) and not all(r in overrides for r in roles):
        raise _too_few_bands(spec, scene, roles, source)
    declared = all(b.index is not None for b in bands)
    if not declared and not any(r in overrides for r in roles) and n != len(roles):
        choose = " ".join(f"--band {r}=N" for r in roles)
        raise InputError(
            f"model {spec.name!r} takes {len(roles)} band(s) {roles} from {source!r} but {scene.source} has "
            f"{n}; choose them with {choose} (1 <= N <= {n}) or declare their index in model.yaml"
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
        if number > n:
            raise InputError(
                f"model {spec.name!r} reads {role} from band {number} but {scene.source} has "
                f"{_bands_word(n)}; pick the {role} band with --band {role}=N (1 <= N <= {n})"
            )
        chosen.append(number - 1)
    # one band for several inputs only when the user named it for each of them (--band green=2 --band nir=2)
    repeated = sorted({n for n in chosen if chosen.count(n) > 1
                       and not all(r in overrides for r, c in zip(roles, chosen, strict=True) if c == n)})
    if repeated:
        roles_of = {n + 1: [r for r, c in zip(roles, chosen, strict=True) if c == n] for n in repeated}
        which = "; ".join(f"band {n} for {', '.join(rs)}" for n, rs in roles_of.items())
        raise InputError(f"model {spec.name!r} would read the same band of {scene.source} for several inputs "
                         f"({which}); pick each with --band NAME=N")
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
        scene, scaling = _model_bands(spec, first, overrides, spec.sources[0])
        return replace(scene, meta={**first.meta, "values": _values_record(spec, scene.band_names, scaling)})
    selected = {s: _model_bands(spec, scenes[s], overrides, s) for s in spec.sources}
    taken = dict.fromkeys(spec.sources, 0)
    parts, names, scaling = [], [], []
    for band in spec.input.bands:
        part, part_scaling = selected[band.source]
        parts.append(part.data[taken[band.source] : taken[band.source] + 1])
        names.append(part.band_names[taken[band.source]])
        scaling.append(part_scaling[taken[band.source]])
        taken[band.source] += 1
    valid = None
    for part, _ in selected.values():
        v = part.valid
        if v is not None:
            valid = v if valid is None else valid & v
    return Scene(data=da.concatenate(parts, axis=0), axes=first.axes, band_names=tuple(names), crs=first.crs,
                 transform=first.transform, nodata=None, mask=valid, gcps=first.gcps, gcp_crs=first.gcp_crs,
                 rpcs=first.rpcs, source=" + ".join(scenes[s].source for s in spec.sources),
                 meta={**first.meta, "values": _values_record(spec, tuple(names), scaling)})


def _model_bands(spec: ModelSpec, scene: Scene, overrides: Mapping[str, int], source: str
                 ) -> tuple[Scene, list[tuple[float, float]]]:
    """The model's bands of one raster, in its values (scaled unless it asks for raw), and their scale/offset.

    An alpha band (transparency) is fed to a model only when the user picks it with ``--band``.
    """
    chosen = resolve_bands(spec, scene, overrides, source)
    roles = [b.name.lower() for b in spec.input.bands if b.source == source]
    for role, index in zip(roles, chosen, strict=True):
        if index in scene.alpha_bands and role not in overrides:
            raise InputError(f"band {index + 1} of {scene.source} is an alpha band (transparency, not data) but "
                             f"model {spec.name!r} would read it as {role}; pick the {role} band with "
                             f"--band {role}=N")
    picked = scene.select_bands(chosen)
    scaling = picked.scaling
    return (picked if spec.input.values == "raw" else picked.scaled()), scaling


def _values_record(spec: ModelSpec, names: Sequence[str], scaling: Sequence[tuple[float, float]]
                   ) -> str | list[dict[str, object]]:
    """What run.json says the model was fed: ``"raw"``, or each band's applied scale and offset."""
    if spec.input.values == "raw":
        return "raw"
    return [{"band": n, "scale": s, "offset": o} for n, (s, o) in zip(names, scaling, strict=True)]
