"""Tests of segflow.training.losses.weights: the U-Net border weight map against the formula, its defaults,
radius and option bounds (every refusal's whole message)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from segflow.errors import ConfigError, InputError
from segflow.training.losses import bce, border_term, unet_weight_map
from segflow.training.losses.weights import border_radius
from tests.training.loss_examples import close

BOUNDS = r"; expected a finite number in \[0, inf\]; fix the loss config$"

# --------------------------------------------------------------------------- U-Net weight map


def _squares_one_pixel_apart() -> np.ndarray:
    labels = np.zeros((20, 40), dtype=np.int32)
    labels[5:15, 5:15] = 1
    labels[5:15, 16:26] = 2  # column 15 is a 1-pixel gap
    return labels


def _squares_in_contact() -> np.ndarray:
    labels = np.zeros((20, 40), dtype=np.int32)
    labels[5:15, 5:20] = 1
    labels[5:15, 20:35] = 2  # columns 19 and 20 touch
    return labels


def _reference_weight_map(
    labels: np.ndarray, w0: float, sigma: float, class_weights: tuple[float, float] | None = None
) -> np.ndarray:
    """Direct transcription of the formula: full-image EDT per instance, no truncation; the border term on
    background pixels and on instance pixels with another instance among their neighbours (d2 <= sqrt(ndim))."""
    ids = [i for i in np.unique(labels) if i != 0]
    fg = labels > 0
    if class_weights is None:
        n_fg, n = int(fg.sum()), labels.size
        present = int(n_fg > 0) + int(n_fg < n)
        class_weights = (n / (present * max(n - n_fg, 1)), n / (present * max(n_fg, 1)))
    wc = np.where(fg, class_weights[1], class_weights[0])
    if len(ids) < 2:
        return wc
    dists = np.sort(np.stack([ndimage.distance_transform_edt(labels != i) for i in ids]), axis=0)
    border = w0 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * sigma**2))
    contact = fg & (dists[1] <= np.sqrt(labels.ndim))
    return wc + np.where(fg & ~contact, 0.0, border)


class TestUNetWeightMap:
    def test_gap_and_far_pixels(self) -> None:
        labels = _squares_one_pixel_apart()
        weights = unet_weight_map(labels, w0=10.0, sigma=5.0)
        # 200 foreground / 600 background pixels: balanced w_c = 800 / (2 * n_class)
        wc_fg, wc_bg = 800 / (2 * 200), 800 / (2 * 600)
        gap = weights[10, 15]  # d1 = d2 = 1
        assert math.isclose(gap, wc_bg + 10.0 * math.exp(-((1 + 1) ** 2) / (2 * 5.0**2)), rel_tol=1e-6)
        assert gap > wc_bg + 0.9 * 10.0
        assert math.isclose(weights[19, 39], wc_bg, rel_tol=1e-6)  # d1 + d2 ≈ 40 px away
        assert np.allclose(weights[labels > 0], wc_fg)  # objects get w_c only
        assert weights.dtype == np.float32 and weights.shape == labels.shape
        assert math.isclose(float(weights[labels == 0].min()), wc_bg, rel_tol=1e-6)

    def test_balanced_class_weights_average_to_one(self) -> None:
        weights = unet_weight_map(_squares_one_pixel_apart(), w0=0.0)
        assert math.isclose(float(weights.mean()), 1.0, rel_tol=1e-6)

    def test_explicit_class_weights(self) -> None:
        weights = unet_weight_map(_squares_one_pixel_apart(), w0=5.0, sigma=2.0, class_weights=(1.0, 1.0))
        assert math.isclose(weights[10, 15], 1.0 + 5.0 * math.exp(-4 / 8), rel_tol=1e-6)
        assert weights[10, 10] == 1.0

    def test_explicit_class_weights_may_be_zero_and_are_checked_by_name(self) -> None:
        labels = _squares_one_pixel_apart()
        weights = unet_weight_map(labels, w0=0.0, class_weights=(0.0, 0.5))
        assert (weights[labels == 0] == 0.0).all() and (weights[labels > 0] == 0.5).all()
        for k, bad in ((0, (-0.5, 1.0)), (1, (1.0, -0.5))):
            with pytest.raises(ConfigError, match=rf"^class_weights\[{k}\]=-0\.5; expected a finite number in \[0, "
                                                  r"inf\]; fix the loss config$"):
                unet_weight_map(labels, class_weights=bad)

    @pytest.mark.parametrize("value", [0, 1])
    def test_one_class_present_gets_weight_one(self, value: int) -> None:
        weights = unet_weight_map(np.full((5, 6), value, dtype=np.int32))
        np.testing.assert_array_equal(weights, np.ones((5, 6), dtype=np.float32))

    @pytest.mark.parametrize("alone", [4, 0])
    def test_a_single_pixel_of_one_class_is_balanced_against_the_rest(self, alone: int) -> None:
        labels = np.full((5, 6), 4 - alone, dtype=np.int32)
        labels[2, 3] = alone
        weights = unet_weight_map(labels, w0=0.0)
        assert weights[2, 3] == np.float32(30 / 2) and (weights[labels != alone] == np.float32(30 / (2 * 29))).all()

    def test_the_defaults_are_w0_10_and_sigma_5(self) -> None:
        labels = _squares_one_pixel_apart()
        np.testing.assert_array_equal(unet_weight_map(labels), unet_weight_map(labels, w0=10.0, sigma=5.0))
        np.testing.assert_array_equal(border_term(labels), border_term(labels, w0=10.0, sigma=5.0))

    def test_the_border_is_cut_where_it_falls_below_1e_7_of_w0(self) -> None:
        assert border_radius(5.0) == pytest.approx(5.0 * math.sqrt(2 * math.log(1e7)))
        assert 10.0 * math.exp(-border_radius(3.0) ** 2 / (2 * 3.0**2)) == pytest.approx(10.0 * 1e-7)

    def test_a_border_of_weight_one_and_a_width_below_one_pixel(self) -> None:
        weights = unet_weight_map(_squares_in_contact(), w0=1.0, sigma=0.5, class_weights=(1.0, 1.0))
        contact = weights[10, 19]  # touching pixels: d1 = 0 and d2 = 1
        assert contact == pytest.approx(1.0 + math.exp(-1 / (2 * 0.25)), rel=1e-6)
        assert weights[10, 10] == 1.0

    def test_instances_that_cover_every_pixel_have_a_border_where_they_touch(self) -> None:
        """No background at all (no id 0): ids must not be taken for background when renumbered."""
        labels = np.ones((6, 8), dtype=np.int32) * 7
        labels[:, 4:] = 9
        term = border_term(labels, w0=2.0, sigma=1.0)
        expected = np.zeros((6, 8))
        expected[:, 3:5] = 2.0 * math.exp(-1 / 2)  # the columns that touch: d1 = 0, d2 = 1
        np.testing.assert_allclose(term, expected, rtol=1e-6)

    def test_3d_gap(self) -> None:
        labels = np.zeros((9, 9, 12), dtype=np.int64)
        labels[2:7, 2:7, 1:5] = 4
        labels[2:7, 2:7, 6:11] = 9  # plane z=5 is a 1-voxel gap; ids need not be consecutive
        weights = unet_weight_map(labels, w0=10.0, sigma=5.0, class_weights=(1.0, 1.0))
        assert math.isclose(weights[4, 4, 5], 1.0 + 10.0 * math.exp(-4 / 50), rel_tol=1e-6)
        assert np.allclose(weights, _reference_weight_map(labels, 10.0, 5.0, (1.0, 1.0)), atol=1e-5)

    @pytest.mark.parametrize("shape", [(48, 64), (12, 20, 24)])
    def test_matches_direct_formula_on_random_instances(self, shape: tuple[int, ...]) -> None:
        rng = np.random.default_rng(sum(shape))
        labels, _ = ndimage.label(ndimage.binary_opening(rng.random(shape) > 0.6))
        labels[labels.shape[0] // 2 :] *= 2  # split objects across the middle: instances that touch there
        expected = _reference_weight_map(labels, 10.0, 3.0)
        assert np.allclose(unet_weight_map(labels, w0=10.0, sigma=3.0), expected, rtol=1e-5, atol=1e-5)

    def test_single_object_has_no_border_term(self) -> None:
        labels = np.zeros((10, 10), dtype=np.int32)
        labels[3:6, 3:6] = 7
        weights = unet_weight_map(labels, class_weights=(1.0, 2.0))
        assert set(np.unique(weights).tolist()) == {1.0, 2.0}

    def test_feeds_the_losses(self) -> None:
        labels = _squares_one_pixel_apart()
        weight = torch.from_numpy(unet_weight_map(labels)).unsqueeze(0)
        logits = torch.zeros(1, 1, *labels.shape)
        target = torch.from_numpy(labels > 0).float().unsqueeze(0)
        assert close(bce(logits, target, weight=weight), math.log(2.0) * float(weight.mean()), tol=1e-6)

    @pytest.mark.parametrize(("labels", "kwargs", "error", "message"), [
        (np.zeros((4, 4), np.float32), {}, InputError, r"^instance_labels has dtype float32; expected integer "
                                                       r"instance ids \(0 = background\); cast with "
                                                       r"\.astype\(np\.int32\)$"),
        (np.zeros(4, np.int32), {}, InputError, r"^instance_labels has shape \(4,\); expected a 2D \(H, W\) or 3D "
                                                r"\(D, H, W\) array$"),
        (-np.ones((4, 4), np.int32), {}, InputError, r"^instance_labels contains -1; expected ids >= 0 "
                                                     r"\(0 = background\)$"),
        (_squares_in_contact(), {"w0": -1.0}, ConfigError, r"^w0=-1\.0" + BOUNDS),
        (_squares_in_contact(), {"sigma": -1.0}, ConfigError, r"^sigma=-1\.0" + BOUNDS),
        (_squares_in_contact(), {"sigma": 0.0}, ConfigError, r"^sigma=0\.0; expected a border width > 0 pixels, "
                                                             r"e\.g\. sigma=5$"),
        (_squares_in_contact(), {"class_weights": (1.0,)}, ConfigError, r"^class_weights=\(1\.0,\); expected "
                                                                        r"\(w_background, w_foreground\) or None "
                                                                        r"\(balanced\)$"),
    ])
    def test_bad_inputs_are_refused_by_name(self, labels: np.ndarray, kwargs: dict[str, object],
                                            error: type[Exception], message: str) -> None:
        with pytest.raises(error, match=message):
            unet_weight_map(labels, **kwargs)  # type: ignore[arg-type]
