"""Dense CRF refinement of class probabilities (DeepLab's post-processing), in torch, chunk by chunk.

A mean-field fully connected CRF (Krähenbühl & Koltun 2011) with Potts compatibility, an appearance
(bilateral) kernel and a smoothness (spatial) kernel, in the ConvCRF formulation (Teichmann &
Cipolla 2018): both kernels are truncated to a square window of ``radius`` pixels around each pixel,

    k(i, j) = w_s·exp(-|p_i - p_j|² / 2θγ²) + w_b·exp(-|p_i - p_j|² / 2θα² - |I_i - I_j|² / 2θβ²)

for ``max(|Δrow|, |Δcol|) <= radius``, ``j != i`` and 0 otherwise, with positions ``p`` in pixels and
``I`` the image at the pixel (all its bands). Mean field starts from ``Q = softmax(-U)`` with the
unary ``U = -log(max(p, min_prob))`` and repeats ``Q_i(l) ∝ exp(-U_i(l) + Σ_j k(i, j)·Q_j(l))``
(the Potts pairwise term, up to a per-pixel constant that the normalisation removes).

Why our own code rather than a library: pydensecrf (the permutohedral lattice) runs on the CPU
only, and its kernel spans the whole image (filtered approximately by the lattice), so no halo makes
a chunk equal the whole-scene result. The truncated kernel is exact per pixel: after ``n`` iterations
a pixel depends only on pixels within ``n·radius``, so a chunk read with that :func:`halo` gives, in
its interior, the whole-array result (bit for bit on the CPU: each pixel sums its terms in the same
order whatever the chunk). The window is summed shift by shift (each unordered pair's
weight computed once and used in both directions), in row strips, so memory stays a few arrays
the size of the chunk: nothing of size ``(H·W)²`` or ``(2r+1)²·H·W`` is ever built.

Pixels outside the array are absent (weight 0): the scene border gives the same result chunked or
whole. Pixels whose probabilities are not finite (the store's NaN nodata) are absent too: they send
no messages and come out NaN.

Colour distances are Euclidean over the image's bands *as given*, so ``colour_sigma`` (θβ) is in
the caller's units. Scale each band the same way for the whole scene (never per chunk, or chunks
would disagree), e.g. with :func:`band_scaling` on a sample of the scene: each band mapped so its
2nd..98th percentiles span 0..1; ``colour_sigma=0.1`` is then a tenth of a band's usual range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import ConfigError, InputError
from .predict import resolve_device
from .tiling import Box, ChunkGrid

__all__ = ["BandScaling", "CRFParams", "band_scaling", "crf_chunked", "dense_crf", "halo", "refine_box"]

_STRIP_PIXELS_CPU = 1 << 15  # pixels per row strip and torch thread: a strip's temporaries stay in the CPU cache
_STRIP_PIXELS_GPU = 1 << 22  # on a GPU strips only bound memory
_PROB_SLACK = 1e-3  # probabilities may overshoot [0, 1] by rounding, not more
_CACHE_BYTES = 256 << 20  # pair weights kept for the next iterations, per dense_crf call
# Floors that keep every float32 normal (a denormal makes CPU arithmetic ~30x slower): pair weights
# below e^-30 become e^-30, probabilities below e^-40 of the pixel's largest become that; each changes
# messages and probabilities by under 1e-10.
_LOG_FLOOR_WEIGHT = 30.0
_LOG_FLOOR_PROB = 40.0


def _check(name: str, value: object, *, minimum: float, strict: bool, integer: bool, hint: str) -> None:
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int | np.integer) if integer else isinstance(value, int | float | np.number)
    ok = ok and not isinstance(value, bool | np.bool_)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = math.isfinite(v) and (v > minimum if strict else v >= minimum)
    if not ok:
        bound = f"{'>' if strict else '>='} {minimum:g}"
        raise ConfigError(f"CRF {name} must be {kind} {bound}, got {value!r}; {hint}")


@dataclass(frozen=True)
class CRFParams:
    """Parameters of :func:`dense_crf`; distances in pixels, colours in the (normalised) image's units.

    Attributes
    ----------
    iterations : int
        Mean-field iterations (>= 1).
    radius : int
        Half-side of the square kernel window in pixels (>= 1): pairs with ``max(|Δrow|, |Δcol|) <= radius``.
    spatial_sigma, spatial_weight : float
        θγ (px, > 0) and weight w_s (>= 0) of the smoothness kernel.
    bilateral_sigma, colour_sigma, bilateral_weight : float
        θα (px, > 0), θβ (image units, > 0) and weight w_b (>= 0) of the appearance kernel.
    min_prob : float
        Probabilities are clamped to at least this before ``-log`` (0 < min_prob < 1).
    """

    iterations: int = 5
    radius: int = 5
    spatial_sigma: float = 3.0
    spatial_weight: float = 3.0
    bilateral_sigma: float = 5.0
    colour_sigma: float = 0.1
    bilateral_weight: float = 5.0
    min_prob: float = 1e-5

    def __post_init__(self) -> None:
        _check("iterations", self.iterations, minimum=1, strict=False, integer=True, hint="e.g. 5")
        _check("radius", self.radius, minimum=1, strict=False, integer=True, hint="e.g. 5 (pixels)")
        for name in ("spatial_sigma", "bilateral_sigma", "colour_sigma"):
            _check(name, getattr(self, name), minimum=0, strict=True, integer=False, hint="pass a positive width")
        for name in ("spatial_weight", "bilateral_weight"):
            _check(name, getattr(self, name), minimum=0, strict=False, integer=False, hint="0 turns the kernel off")
        _check("min_prob", self.min_prob, minimum=0, strict=True, integer=False, hint="e.g. 1e-5")
        if self.min_prob >= 1:
            raise ConfigError(f"CRF min_prob must be < 1, got {self.min_prob!r}; e.g. 1e-5")


def halo(params: CRFParams) -> int:
    """Context pixels needed on each side of a chunk so its interior equals the whole-array result."""
    return params.iterations * params.radius


@dataclass(frozen=True)
class BandScaling:
    """Per-band affine scaling ``(x - low) * scale`` of a ``(C, ...)`` image, the same for a whole scene."""

    low: tuple[float, ...]
    scale: tuple[float, ...]

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The scaled image, float32, same shape ``(C, *spatial)``."""
        if image.shape[0] != len(self.low):
            raise InputError(f"image has {image.shape[0]} bands, the scaling {len(self.low)}; "
                             "compute the scaling from the same bands")
        shape = (len(self.low),) + (1,) * (image.ndim - 1)
        low = np.asarray(self.low, dtype=np.float32).reshape(shape)
        return (image.astype(np.float32) - low) * np.asarray(self.scale, dtype=np.float32).reshape(shape)


def band_scaling(sample: np.ndarray, low_pct: float = 2.0, high_pct: float = 98.0) -> BandScaling:
    """Robust per-band scaling from a sample ``(C, ...)`` of the scene: percentiles ``low_pct..high_pct`` → 0..1.

    Non-finite values are ignored. A band that is constant on the sample carries no colour
    information and gets scale 0 (it then adds nothing to colour distances).
    """
    if not 0 <= low_pct < high_pct <= 100:
        raise ConfigError(f"band_scaling percentiles must satisfy 0 <= low < high <= 100, got {low_pct}, {high_pct}")
    flat = np.asarray(sample, dtype=np.float64).reshape(sample.shape[0], -1)
    lows, scales = [], []
    for band, values in enumerate(flat):
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise InputError(f"band {band} of the scaling sample has no finite value; sample valid pixels")
        lo, hi = np.percentile(values, [low_pct, high_pct])
        lows.append(float(lo))
        scales.append(1.0 / float(hi - lo) if hi > lo else 0.0)
    return BandScaling(tuple(lows), tuple(scales))


def _half_window(radius: int) -> list[tuple[int, int]]:
    """One shift ``(dy, dx)`` of each ± pair in the window, the centre excluded, in a fixed order."""
    return [(dy, dx) for dy in range(radius + 1) for dx in range(-radius, radius + 1) if dy > 0 or dx > 0]


def _cols(dx: int, width: int) -> tuple[slice, slice]:
    """Columns of the pair's base pixel and of its partner ``base + dx``, both inside ``[0, width)``."""
    if dx >= 0:
        return slice(0, width - dx), slice(dx, width)
    return slice(-dx, width), slice(0, width + dx)


class _Kernel:
    """Pair weights ``k(p, p + s)`` of one chunk's image, per half-window shift ``s``, cached up to a budget."""

    def __init__(self, image: torch.Tensor, params: CRFParams, cache_bytes: int):  # image: scaled in place
        self.feat = image.mul_(1.0 / (math.sqrt(2.0) * params.colour_sigma))  # |Δfeat|² = |ΔI|² / 2θβ²
        self.shifts = _half_window(params.radius)
        self.spatial: list[float] = []
        self.log_bilateral: list[float | None] = []
        for dy, dx in self.shifts:
            d2 = float(dy * dy + dx * dx)
            self.spatial.append(params.spatial_weight * math.exp(-d2 / (2.0 * params.spatial_sigma**2)))
            wb = params.bilateral_weight
            self.log_bilateral.append(math.log(wb) - d2 / (2.0 * params.bilateral_sigma**2) if wb > 0 else None)
        self.cache: dict[tuple[int, int, int], torch.Tensor] = {}
        self.room = cache_bytes

    def weights(self, n: int, lo: int, hi: int) -> torch.Tensor | float:
        """Weights of shift ``n`` for base pixels in rows ``[lo, hi)`` (all columns with a partner), or a constant."""
        log_b = self.log_bilateral[n]
        if log_b is None:
            return self.spatial[n]
        key = (n, lo, hi)
        if (hit := self.cache.get(key)) is not None:
            return hit
        dy, dx = self.shifts[n]
        base, partner = _cols(dx, self.feat.shape[2])
        diff = self.feat[:, lo:hi, base] - self.feat[:, lo + dy : hi + dy, partner]
        w = torch.sub(log_b, diff.square_().sum(0)).clamp_min_(-_LOG_FLOOR_WEIGHT).exp_()
        if self.spatial[n]:
            w.add_(self.spatial[n])
        nbytes = w.numel() * w.element_size()
        if nbytes <= self.room:
            self.cache[key] = w
            self.room -= nbytes
        return w


def _message(kernel: _Kernel, q: torch.Tensor, strip: int) -> torch.Tensor:
    """``Σ_j k(i, j)·Q_j`` for every pixel, ``(K, H, W)``; each pixel sums its terms in a fixed order."""
    _, height, width = q.shape
    msg = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    for top in range(0, height, strip):
        bottom = min(top + strip, height)
        for n, (dy, dx) in enumerate(kernel.shifts):
            # base rows p of the pairs (p, p + s) with an end in [top, bottom) and both ends inside the array
            lo, hi = max(top - dy, 0), min(bottom, height - dy)
            if hi <= lo:
                continue
            w = kernel.weights(n, lo, hi)
            base, partner = _cols(dx, width)
            f0, b1 = max(top, lo), min(hi, bottom - dy)
            if f0 < hi:  # forward: p in the strip receives from p + s
                _accumulate(msg[:, f0:hi, base], q[:, f0 + dy : hi + dy, partner], w, f0 - lo, hi - lo)
            if lo < b1:  # backward: p + s in the strip receives from p
                _accumulate(msg[:, lo + dy : b1 + dy, partner], q[:, lo:b1, base], w, 0, b1 - lo)
    return msg


def _accumulate(out: torch.Tensor, q: torch.Tensor, w: torch.Tensor | float, start: int, stop: int) -> None:
    if isinstance(w, torch.Tensor):
        out.addcmul_(q, w[start:stop])
    else:
        out.add_(q, alpha=w)


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes (dim 0), in place; probabilities below e^-40 of the pixel's largest are raised to it."""
    logits.sub_(logits.amax(0)).clamp_min_(-_LOG_FLOOR_PROB).exp_()
    return logits.div_(logits.sum(0))


def _check_inputs(image: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """The validity mask ``(H, W)``; raises InputError on shapes, devices or values that cannot be right."""
    if image.ndim != 3 or probs.ndim != 3 or image.shape[1:] != probs.shape[1:]:
        raise InputError(f"dense_crf needs image (C, H, W) and probs (K, H, W) on one grid, got "
                         f"{tuple(image.shape)} and {tuple(probs.shape)}; pass both for the same pixels")
    if probs.numel() == 0:
        raise InputError(f"dense_crf got an empty probs array {tuple(probs.shape)}; pass at least one class and pixel")
    if image.device != probs.device:
        raise InputError(f"image is on {image.device}, probs on {probs.device}; move both to one device")
    if not (image.is_floating_point() and probs.is_floating_point()):
        raise InputError(f"dense_crf needs float tensors, got {image.dtype} and {probs.dtype}; convert with .float()")
    valid = torch.isfinite(probs).all(0)
    low, high = torch.aminmax(torch.where(valid, probs, 0.5))
    if float(low) < -_PROB_SLACK or float(high) > 1 + _PROB_SLACK:
        raise InputError(f"probs must be probabilities in [0, 1], got values in [{float(low):g}, {float(high):g}]; "
                         "apply softmax (or sigmoid) to scores first")
    if not bool((torch.isfinite(image).all(0) | ~valid).all()):
        raise InputError("image has non-finite values where probs are valid; set probs to NaN on nodata pixels")
    return valid


@torch.inference_mode()
def dense_crf(image: torch.Tensor, probs: torch.Tensor, params: CRFParams, *,
              strip_pixels: int | None = None, cache_bytes: int = _CACHE_BYTES) -> torch.Tensor:
    """Refine class probabilities with the truncated dense CRF; computed on the tensors' device.

    Parameters
    ----------
    image : Tensor (C, H, W), float
        Appearance features, each band scaled as for the whole scene (see :func:`band_scaling`).
    probs : Tensor (K, H, W), float
        Class probabilities; NaN (in any class) marks an absent (nodata) pixel.
    params : CRFParams
    strip_pixels, cache_bytes : int, optional
        Pixels per row strip of the message pass, and bytes of pair weights kept between iterations:
        speed/memory knobs, the result does not depend on them. Memory is about ``(C + 3K + 2)·H·W``
        float32 plus ``cache_bytes`` plus a strip's temporaries.

    Returns
    -------
    Tensor (K, H, W), float32
        Refined probabilities (summing to 1 per pixel), NaN at absent pixels.
    """
    valid = _check_inputs(image, probs)
    absent = not bool(valid.all())
    # (C|K, H, W) row-major whatever the inputs' strides: the shifted products run along rows
    kernel = _Kernel(torch.where(valid, image.float(), 0.0).contiguous(), params, cache_bytes)
    logp = torch.where(valid, probs.float(), 1.0).contiguous().clamp_(params.min_prob, 1.0).log_()  # -U
    q = _softmax(logp.clone())
    budget = strip_pixels or (_STRIP_PIXELS_CPU * torch.get_num_threads() if image.device.type == "cpu"
                              else _STRIP_PIXELS_GPU)
    strip = max(budget // max(image.shape[2], 1), 1)
    for _ in range(params.iterations):
        if absent:
            q.mul_(valid)  # absent pixels send nothing
        q = _softmax(_message(kernel, q, strip).add_(logp))
    if absent:
        q.masked_fill_(~valid, float("nan"))
    return q


def _as_device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(device)


def refine_box(read: Callable[[Box], tuple[np.ndarray, np.ndarray]], box: Box, shape: Sequence[int],
               params: CRFParams, device: str | torch.device = "auto") -> np.ndarray:
    """Refined probabilities ``(K, *box.shape)`` float32 of one chunk, equal to the whole-scene result there.

    ``read(outer)`` returns ``(image (C, *outer.shape), probs (K, *outer.shape))`` for the box grown by
    :func:`halo` on each side and clipped to the scene of spatial ``shape`` (rows, cols); the image
    scaled as for the whole scene (:meth:`BandScaling.apply`), probs NaN on nodata. ``device``:
    ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a torch.device.
    """
    if box.ndim != 2 or len(shape) != 2:
        raise InputError(f"refine_box works on 2D scenes, got box {box} and shape {tuple(shape)}")
    if box.size == 0 or min(box.start) < 0 or any(b > n for b, n in zip(box.stop, shape, strict=True)):
        raise InputError(f"box {box} is empty or not inside the scene of shape {tuple(shape)}; pass a chunk's box")
    h = halo(params)
    outer = Box(tuple(max(a - h, 0) for a in box.start), tuple(min(b + h, n) for b, n in zip(box.stop, shape,
                                                                                           strict=True)))
    image, probs = read(outer)
    if image.shape[1:] != outer.shape or probs.shape[1:] != outer.shape:
        raise InputError(f"read({outer}) returned image {image.shape} and probs {probs.shape}, "
                         f"expected (C, *{outer.shape}) and (K, *{outer.shape})")
    dev = _as_device(device)
    t_image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(dev)
    t_probs = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32)).to(dev)
    out = dense_crf(t_image, t_probs, params)
    return out[(slice(None), *box.relative_to(outer))].cpu().numpy()


def crf_chunked(image: np.ndarray, probs: np.ndarray, chunk: int | Sequence[int], params: CRFParams,
                device: str | torch.device = "auto") -> np.ndarray:
    """The dense CRF of in-memory ``image (C, H, W)`` and ``probs (K, H, W)``, chunk by chunk with halos.

    The reference for the pipeline's per-chunk pass: equal to ``dense_crf`` of the whole arrays.
    Returns float32 ``(K, H, W)``.
    """
    if image.ndim != 3 or probs.ndim != 3 or image.shape[1:] != probs.shape[1:]:
        raise InputError(f"crf_chunked needs image (C, H, W) and probs (K, H, W) on one grid, got "
                         f"{image.shape} and {probs.shape}")
    dev = _as_device(device)
    grid = ChunkGrid.create(image.shape[1:], chunk)
    out = np.empty(probs.shape, dtype=np.float32)

    def read(outer: Box) -> tuple[np.ndarray, np.ndarray]:
        return image[(slice(None), *outer.slices)], probs[(slice(None), *outer.slices)]

    for _, box in grid:
        out[(slice(None), *box.slices)] = refine_box(read, box, grid.shape, params, dev)
    return out
