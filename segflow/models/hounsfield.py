"""Hounsfield-unit tissue classes: a parameter-free 3D model for CT that needs no weights.

Like the spectral-index models (:mod:`segflow.models.spectral`) it is an ordinary
``torch.nn.Module``, so it runs through the same predictor as any network. Input is ``(N, 1,
Z, Y, X)`` CT values in Hounsfield units (HU: water 0, air -1000 by definition); output is
``(N, K, Z, Y, X)`` float32 one-hot class scores (1 for the class the rule decides, 0 for the
others), so the arg-max and any blend of overlapping windows give that class exactly.

The decision rule, exactly
--------------------------
The model is given strictly increasing lower bounds ``b_1 < b_2 < ... < b_{K-1}`` (HU). A voxel
of value ``v`` is class ``k`` (``1 <= k <= K-1``) where ``b_k <= v < b_{k+1}`` (the last class
has no upper bound), and class 0 where ``v`` is not finite (NaN, +-inf) or ``v < b_1``. Every
value is in exactly one class: the intervals are half-open, closed below, and touch. A value
exactly on a bound belongs to the class above it. Values are compared in float32 (the
predictor feeds float32): integer HU and integer bounds compare exactly.

The built-in ``ct-tissue`` package uses ``b = [-1200, -190, -29, 300]``:

=====  ===========  =====================  ===========================================
class  name         HU                     why
=====  ===========  =====================  ===========================================
0      background   v < -1200, NaN, +-inf  not a measurement: fill outside the scanner's
                                           field of view (-2000, -2048, -3000, -3024 are
                                           common) and undefined values, never a tissue
1      air          -1200 <= v < -190      air (-1000 by definition) and aerated lung
2      fat          -190 <= v < -29        adipose tissue
3      soft tissue  -29 <= v < 300         muscle, organs, fluid, blood (also enhanced)
4      bone         300 <= v               cortical and dense trabecular bone
=====  ===========  =====================  ===========================================

Sources and choices:

- Fat ``[-190, -29)`` and the fat/soft-tissue bound: adipose tissue -190 to -30 HU (Kvist et
  al., Am J Clin Nutr 48:1351, 1988), with skeletal muscle from -29 HU (to +150) as in
  Mitsiopoulos et al., J Appl Physiol 85:115 (1998), the ranges of body-composition CT. On
  integer HU the intervals are exactly those papers' inclusive ranges (fat -190..-30, soft
  tissue from -29); a non-integer value between -30 and -29 (a rescaled float CT) is fat.
- Air/lung below -190: Gattinoni et al.'s lung compartments (Intensive Care Med 27:1209, 2001 and
  earlier) put normally aerated lung at -900..-500 and poorly aerated lung at -500..-100 HU.
  Everything less dense than fat is air or lung here (with the partial-volume voxels at the
  skin and bowel gas edges), so lung that is poorly aerated down to -190 stays air/lung; what is
  denser is classed by its HU like any tissue. Per voxel, air outside the body and air in the
  lungs and airways cannot be told apart by HU: both are class "air".
- Bone at 300 and above: muscle and unenhanced organs lie below +150 (Mitsiopoulos, above),
  portal-venous contrast enhancement of vessels and organs rarely exceeds ~200-250 HU, while
  cortical bone reads several hundred to over 1000 HU. 300 leaves enhanced soft tissue below
  the bound (arterial-phase aorta may exceed it and is then called bone). Trabecular bone of
  low density (vertebrae of osteoporotic patients read below ~110-160 HU, Pickhardt et al., Ann
  Intern Med 158:588, 2013) falls under soft tissue: no per-voxel threshold avoids that.
- Background below -1200: air is -1000; image noise in air is tens of HU, so a value below -1200
  is not a measurement but the fill scanners write outside the reconstruction circle. (12-bit
  CT stores -1024..3071; -1024 itself, the bottom of that range and some scanners' fill, is
  air.) Give the input a nodata value to have such voxels left out as nodata instead.

Bone is the package's only ``thing`` class (bones become instances); the rest are ``stuff``.
The bounds are the package's data (``architecture.args.lower_bounds`` in ``model.yaml``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["HounsfieldModel", "build_hounsfield"]


class HounsfieldModel(nn.Module):
    """Per-voxel classes from HU intervals; see the module docstring for the exact rule.

    ``lower_bounds``: strictly increasing finite HU values ``b_1 < ... < b_{K-1}``; class ``k``
    is ``[b_k, b_{k+1})``, class 0 is below ``b_1`` or not finite. Maps ``(N, 1, *spatial)`` to
    ``(N, K, *spatial)`` float32 one-hot scores (any number of spatial axes).
    """

    def __init__(self, lower_bounds: Sequence[float]):
        super().__init__()
        bounds = [float(b) for b in lower_bounds]
        if not bounds:
            raise ConfigError("hounsfield needs at least one lower bound, e.g. lower_bounds: [-1200, -190, -29, 300]")
        if not all(math.isfinite(b) for b in bounds) or any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ConfigError(f"hounsfield lower_bounds must be finite and strictly increasing (HU), got {bounds}")
        self.lower_bounds = bounds

    @property
    def num_classes(self) -> int:
        return len(self.lower_bounds) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, :1].float()
        finite = torch.isfinite(v)
        at_least = [finite & (v >= b) for b in self.lower_bounds]  # NaN compares false
        classes = [~at_least[0]]
        for k, above in enumerate(at_least):
            classes.append(above & ~at_least[k + 1] if k + 1 < len(at_least) else above)
        return torch.cat(classes, dim=1).to(torch.float32)


def build_hounsfield(in_channels: int, num_classes: int, lower_bounds: Sequence[float] | None = None,
                     **unknown: object) -> nn.Module:
    """Build from ``model.yaml``: ``architecture: {name: hounsfield, args: {lower_bounds: [...]}}``.

    ``in_channels`` (the package's input bands) must be 1 (HU) and ``num_classes`` (its classes)
    one more than the bounds: class 0 is below the first bound or not finite.
    """
    if unknown:
        raise ConfigError(f"hounsfield takes only 'lower_bounds', got {', '.join(sorted(unknown))}; "
                          "remove it from architecture.args in model.yaml")
    if lower_bounds is None or isinstance(lower_bounds, str | bytes) or not isinstance(lower_bounds, Sequence):
        raise ConfigError(f"hounsfield needs lower_bounds: a list of HU values, e.g. [-1200, -190, -29, 300], "
                          f"got {lower_bounds!r}")
    try:
        bounds = [float(b) for b in lower_bounds]
    except (TypeError, ValueError):
        raise ConfigError(f"hounsfield lower_bounds must be numbers (HU), got {list(lower_bounds)!r}") from None
    if in_channels != 1:
        raise ConfigError(f"hounsfield reads one band (CT in HU) but the model declares {in_channels} input bands")
    if num_classes != len(bounds) + 1:
        raise ConfigError(f"hounsfield with {len(bounds)} lower bounds makes {len(bounds) + 1} classes (class 0 "
                          f"below the first) but the model declares {num_classes} classes")
    return HounsfieldModel(bounds)
