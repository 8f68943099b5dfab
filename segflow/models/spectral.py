"""Spectral-index models: parameter-free classifiers that work on real multispectral imagery.

They are ordinary ``torch.nn.Module`` objects, so they run through the same predictor as any
network. Inputs are ``(N, C, Y, X)`` reflectances in the band order the package declares; the
indices are ratios, so any common scaling of the bands (DN, reflectance x 10000) gives the
same result. Outputs are class probabilities ``(N, K, Y, X)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["SpectralIndexModel", "build_spectral_index"]

# index name -> (positive band role, negative band role): (a - b) / (a + b)
INDICES = {"ndwi": ("green", "nir"), "ndvi": ("nir", "red")}


def _normalized_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    total = a + b
    return torch.where(total.abs() > 1e-6, (a - b) / total.clamp_min(1e-6), torch.zeros_like(total))


class SpectralIndexModel(nn.Module):
    """Soft thresholds of normalised-difference indices, in priority order.

    ``rules`` is a list of ``(index, threshold)``; class ``i + 1`` gets probability
    ``sigmoid(sharpness * (index - threshold))`` of what earlier rules left, and class 0
    (background) takes the rest. ``band_roles`` gives the role of each input channel.
    """

    def __init__(self, band_roles: list[str], rules: list[tuple[str, float]], sharpness: float = 20.0):
        super().__init__()
        for index, _ in rules:
            if index not in INDICES:
                raise ConfigError(f"unknown spectral index {index!r}; use one of {', '.join(INDICES)}")
            missing = [r for r in INDICES[index] if r not in band_roles]
            if missing:
                raise ConfigError(f"index {index!r} needs bands {missing} but the model declares {band_roles}")
        self.pairs = [(band_roles.index(INDICES[i][0]), band_roles.index(INDICES[i][1])) for i, _ in rules]
        self.thresholds = [float(t) for _, t in rules]
        self.sharpness = float(sharpness)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        remaining = torch.ones_like(x[:, :1])
        probs = []
        for (a, b), threshold in zip(self.pairs, self.thresholds, strict=True):
            index = _normalized_difference(x[:, a : a + 1], x[:, b : b + 1])
            p = torch.sigmoid(self.sharpness * (index - threshold)) * remaining
            probs.append(p)
            remaining = remaining - p
        return torch.cat([remaining, *probs], dim=1)


def build_spectral_index(band_roles: list[str], rules: list[list[object]], sharpness: float = 20.0) -> nn.Module:
    """Build from ``model.yaml`` arguments: ``rules: [[ndwi, 0.0], [ndvi, 0.4]]``."""
    parsed = []
    for rule in rules:
        if not isinstance(rule, list | tuple) or len(rule) != 2:
            raise ConfigError(f"spectral rule must be [index, threshold], got {rule!r}")
        parsed.append((str(rule[0]), float(rule[1])))  # type: ignore[arg-type]
    return SpectralIndexModel(band_roles, parsed, sharpness)
