"""Match a model's declared input bands to the bands of a scene."""

from __future__ import annotations

from collections.abc import Mapping

from .errors import ConfigError, ModelError
from .models.package import ModelSpec
from .scene import Scene

__all__ = ["parse_band_overrides", "resolve_bands"]


def parse_band_overrides(items: list[str] | tuple[str, ...]) -> dict[str, int]:
    """Parse ``["nir=4", "red=3"]`` into ``{"nir": 4, "red": 3}`` (1-based band numbers)."""
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit() or int(value) < 1:
            raise ConfigError(f"band choice {item!r} must look like NAME=N with N a 1-based band number, e.g. nir=4")
        out[name.strip().lower()] = int(value)
    return out


def resolve_bands(spec: ModelSpec, scene: Scene, overrides: Mapping[str, int] | None = None) -> list[int]:
    """0-based scene band indices feeding the model's inputs, in the model's order.

    For each declared input band, in order of precedence: the user's override (``--band
    nir=4``), a scene band whose description equals the band's name, the ``index`` the
    model declares. A model that declares no indices takes the scene's bands in order, and
    then the counts must match exactly.
    """
    overrides = dict(overrides or {})
    roles = [b.name.lower() for b in spec.input.bands]
    unknown = sorted(set(overrides) - set(roles))
    if unknown:
        raise ConfigError(f"--band names {unknown} are not inputs of model {spec.name!r}; its inputs are {roles}")
    declared = all(b.index is not None for b in spec.input.bands)
    if not declared and not overrides and scene.num_bands != len(roles):
        raise ModelError(
            f"model {spec.name!r} takes {len(roles)} band(s) {roles} but {scene.source} has {scene.num_bands}; "
            "choose bands with --band NAME=N or declare their index in model.yaml"
        )
    chosen = []
    for position, (role, band) in enumerate(zip(roles, spec.input.bands, strict=True)):
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
