"""Refuse an input that is evidently not what a model package ``expects`` (e.g. MRI given to a CT model).

A package may declare under ``input.expects`` (see :class:`~segflow.models.package.ExpectsSpec`)
the DICOM modalities it takes, the unit and range of its input values and how low they must
reach. :func:`check_expected_input` compares a scene (the model's bands, in the values the
model is fed, before normalisation) with that declaration before anything is run.

The rule, exactly
-----------------
1. Modality: where the reader records one (``scene.meta["modality"]``, DICOM's Modality, e.g.
   ``CT``, ``MR``; NIfTI records none), it must be one of ``modality`` (case-insensitive).
2. Values, per input band, over a sample (below) of its valid voxels (finite, not nodata, not
   masked); values below ``range[0]`` are fill (no measurement, e.g. the -2048 or -3024 HU a
   scanner writes outside its field of view) and are left out. Of the remaining values ``v``:
   there must be at least one; at most 1 % may be above ``range[1]``; and, with
   ``p1_at_most``, at least 1 % must be ``<= p1_at_most``.

For the built-in ``ct-tissue`` (``range [-1024, 3071]`` HU, ``p1_at_most -100``): CT holds air
(-1000) or fat (about -100) in any slab of a body, while an MR image (magnitudes >= 0), an image
normalised to [0, 1] or z-scores, 8-bit data, or CT numbers stored without their -1024 rescale
intercept have at most a few voxels at or below -100; values in the thousands (MR) exceed the
range. A CT tightly cropped inside one organ (no air, no fat) is refused too: that is the price
of a check that needs no metadata; a copy of the package without ``expects`` takes it.

The sample
----------
Never the whole scene: up to :data:`PLANES` planes evenly spaced along the first spatial axis
(slices of a volume, rows of a raster), each read at a stride that leaves at most about
:data:`PER_PLANE` voxels; dask reads only the chunks that hold those planes (a source stored as
one chunk, such as a gzip-compressed NIfTI that must be decompressed whole anyway, is read once
and only the sample is kept).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import dask
import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    from ..scene import Scene
    from .package import ExpectsSpec, ModelSpec

__all__ = ["PER_PLANE", "PLANES", "check_expected_input", "sample_values"]

PLANES = 8
"""Planes sampled along the first spatial axis."""

PER_PLANE = 65536
"""About how many voxels each sampled plane gives (a 256 x 256 grid of a volume's slice)."""

_SHARE = 0.01  # the 1 % of the rule


def sample_values(scene: Scene, planes: int = PLANES, per_plane: int = PER_PLANE) -> list[np.ndarray]:
    """Per band, the valid values of a sample of ``scene``: evenly spaced planes along its first spatial axis,
    each at a stride over the other axes that leaves at most about ``per_plane`` voxels (1-D float64 arrays)."""
    shape = scene.spatial_shape
    first = np.unique(np.linspace(0, shape[0] - 1, min(planes, shape[0])).round().astype(np.int64))
    rest = shape[1:]
    stride = max(1, math.ceil((math.prod(rest) / per_plane) ** (1 / len(rest)))) if rest else 1
    index = (first.tolist(), *(slice(None, None, stride) for _ in rest))
    data = scene.data[(slice(None), *index)]
    valid = scene.valid
    if valid is None:
        (values,) = dask.compute(data, scheduler="threads")
        keep = np.ones(values.shape[1:], dtype=bool)
    else:
        values, keep = dask.compute(data, valid[index], scheduler="threads")
    out = []
    for band in np.asarray(values):
        v = band[keep].astype(np.float64)
        out.append(v[np.isfinite(v)])
    return out


def _stats(v: np.ndarray, unit: str) -> str:
    p1, p50, p99 = np.percentile(v, [1, 50, 99])
    return (f"min {v.min():g}, 1st percentile {p1:g}, median {p50:g}, 99th percentile {p99:g}, "
            f"max {v.max():g} {unit}")


def _problem(values: np.ndarray, expects: ExpectsSpec) -> str | None:
    """What is wrong with one band's sample (with the sample's statistics), or None."""
    low, high = expects.range
    unit = expects.unit
    inside = values[values >= low]
    if inside.size == 0:
        seen = f" ({_stats(values, unit)})" if values.size else ""
        return f"{seen} has no valid value at or above {low:g} {unit}"
    problems = []
    above = float(np.mean(inside > high))
    if above > _SHARE:
        problems.append(f"{above:.1%} of its values above {high:g} {unit} (at most 1 % may be)")
    if expects.p1_at_most is not None:
        reach = float(np.mean(inside <= expects.p1_at_most))
        if reach < _SHARE:
            problems.append(f"{reach:.2%} at or below {expects.p1_at_most:g} {unit} (at least 1 % must be)")
    if not problems:
        return None
    fill = f", {np.mean(values < low):.1%} fill below {low:g} {unit} left out" if inside.size < values.size else ""
    return f" ({_stats(inside, unit)}{fill}) has {' and '.join(problems)}"


def check_expected_input(spec: ModelSpec, scene: Scene, name: str | None = None) -> None:
    """Refuse ``scene`` if it is evidently not what ``spec.input.expects`` declares (see the module docstring).

    ``scene`` holds the model's input bands in the values the model is fed (before its
    normalisation), e.g. from :func:`segflow.bands.assemble_scene`; ``name`` is how messages
    name the input (default ``scene.source``). Does nothing for a package that declares no
    ``expects``.

    Raises
    ------
    InputError
        One line: what was seen (the modality, or the sample's statistics), what the model
        expects, and to pass a model made for this input with ``--model``.
    """
    expects = spec.input.expects
    if expects is None:
        return
    name = name or scene.source
    what = f"{'/'.join(expects.modality) + ' ' if expects.modality else ''}values in {expects.unit}"
    modality = scene.meta.get("modality")
    if expects.modality and modality is not None:
        taken = [m.upper() for m in expects.modality]
        if str(modality).strip().upper() not in taken:
            seen = str(modality).strip()
            raise InputError(f"{name} has DICOM Modality {seen} but model {spec.name!r} takes {', '.join(taken)}; "
                             f"pass a model made for {seen} images with --model NAME_OR_PATH "
                             "(see `segflow models list`)")
    for band, values in zip(scene.band_names, sample_values(scene), strict=True):
        problem = _problem(values, expects)
        if problem is not None:
            which = f" (band {band})" if scene.num_bands > 1 else ""
            raise InputError(f"{name}{which} does not look like {what}, which model {spec.name!r} expects: a sample "
                             f"of it{problem}; if it is not {what}, pass a model made for it with --model "
                             "NAME_OR_PATH (see `segflow models list`)")
