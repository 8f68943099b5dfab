"""The truncated dense CRF: brute-force reference, chunked == whole, absent pixels, a hand-checkable island."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segflow.crf import CRFParams, band_scaling, crf_chunked, dense_crf, halo, refine_box
from segflow.errors import ConfigError, InputError
from segflow.tiling import Box

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _random(seed: int, shape: tuple[int, int], bands: int = 3, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = (rng.normal(size=(bands, *shape)) * 0.3).astype(np.float32)
    probs = rng.dirichlet(np.ones(classes), size=shape).transpose(2, 0, 1).astype(np.float32)
    return image, probs


def _crf(image: np.ndarray, probs: np.ndarray, params: CRFParams, **kw: int) -> np.ndarray:
    return dense_crf(torch.from_numpy(image), torch.from_numpy(probs), params, **kw).numpy()


def _brute_force(image: np.ndarray, probs: np.ndarray, p: CRFParams) -> np.ndarray:
    """Mean field by the textbook formula, pixel by pixel, in float64 (no floors): NaN pixels are absent."""
    _, height, width = image.shape
    valid = np.isfinite(probs).all(0)
    logp = np.log(np.clip(np.where(valid, probs, 1.0).astype(np.float64), p.min_prob, 1.0))
    q = np.exp(logp - logp.max(0))
    q /= q.sum(0)
    r = p.radius
    for _ in range(p.iterations):
        msg = np.zeros_like(q)
        for i in range(height):
            for j in range(width):
                for y in range(max(i - r, 0), min(i + r + 1, height)):
                    for x in range(max(j - r, 0), min(j + r + 1, width)):
                        if (y, x) == (i, j) or not valid[y, x]:
                            continue
                        d2 = (y - i) ** 2 + (x - j) ** 2
                        c2 = float(((image[:, i, j].astype(np.float64) - image[:, y, x]) ** 2).sum())
                        k = p.spatial_weight * np.exp(-d2 / (2 * p.spatial_sigma**2)) + p.bilateral_weight * np.exp(
                            -d2 / (2 * p.bilateral_sigma**2) - c2 / (2 * p.colour_sigma**2))
                        msg[:, i, j] += k * q[:, y, x]
        logits = logp + msg
        q = np.exp(logits - logits.max(0))
        q /= q.sum(0)
    return np.where(valid, q, np.nan)


SMALL = CRFParams(iterations=1, radius=3, spatial_sigma=2.0, spatial_weight=3.0, bilateral_sigma=2.5,
                  colour_sigma=0.4, bilateral_weight=5.0)


def test_one_iteration_matches_brute_force() -> None:
    image, probs = _random(0, (12, 12))
    ours = _crf(image, probs, SMALL)
    ref = _brute_force(image, probs, SMALL)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    assert np.abs(ours - probs).max() > 0.1, "the CRF changed the probabilities (the comparison is not vacuous)"


def test_iterations_and_absent_pixels_match_brute_force() -> None:
    image, probs = _random(1, (11, 13), bands=2, classes=3)
    probs[:, 4, 2:9] = np.nan  # a nodata run: sends nothing, comes out NaN
    probs[1, 8, 10] = np.nan  # one NaN class makes the pixel absent
    image[:, 4, 2:9] = np.nan  # the image may be anything there
    params = CRFParams(iterations=3, radius=2, spatial_sigma=1.5, bilateral_sigma=3.0, colour_sigma=0.3)
    ours = _crf(image, probs, params)
    ref = _brute_force(image, probs, params)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    assert np.isnan(ours[:, 8, 10]).all() and np.isnan(ours[:, 4, 5]).all()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.nansum(ours, 0)[np.isfinite(ours[0])], 1.0, atol=1e-6)


@pytest.mark.parametrize(("shape", "chunks"), [((70, 53), [7, 16, 25, 64, (13, 40)]), ((33, 90), [5, (33, 11), 100])])
def test_chunked_equals_whole_bitwise(shape: tuple[int, int], chunks: list[int | tuple[int, int]]) -> None:
    image, probs = _random(2, shape, bands=4)
    probs[:, 20:23, 30:31] = np.nan
    params = CRFParams(iterations=3, radius=2, colour_sigma=0.5)
    whole = _crf(image, probs, params)
    for chunk in chunks:
        np.testing.assert_array_equal(crf_chunked(image, probs, chunk, params, "cpu"), whole, err_msg=f"chunk {chunk}")


def test_chunked_equals_whole_with_default_params() -> None:
    image, probs = _random(11, (130, 120), bands=4)
    params = CRFParams()
    assert halo(params) == 25
    np.testing.assert_array_equal(crf_chunked(image, probs, 48, params, "cpu"), _crf(image, probs, params))


def test_speed_knobs_do_not_change_the_result() -> None:
    image, probs = _random(3, (40, 37))
    params = CRFParams(iterations=2, radius=4)
    ref = _crf(image, probs, params)
    for kw in ({"strip_pixels": 1}, {"strip_pixels": 100}, {"cache_bytes": 0}, {"cache_bytes": 5000}):
        np.testing.assert_array_equal(_crf(image, probs, params, **kw), ref, err_msg=str(kw))


def test_halo_is_tight() -> None:
    """With halo() context a chunk's interior is exact; one pixel less of context changes it."""
    image, probs = _random(4, (60, 60))
    params = CRFParams(iterations=3, radius=2, colour_sigma=0.5)
    assert halo(params) == 6
    whole = _crf(image, probs, params)
    box = Box((20, 20), (40, 40))
    for context, exact in ((halo(params), True), (halo(params) - 1, False)):
        outer = (slice(20 - context, 40 + context),) * 2
        part = _crf(image[(slice(None), *outer)], probs[(slice(None), *outer)], params)
        inner = part[:, context:-context, context:-context]
        assert np.array_equal(inner, whole[(slice(None), *box.slices)]) == exact, f"context {context}"


def test_absent_pixels_are_like_the_scene_border() -> None:
    """A band of NaN columns as wide as the radius splits the scene: each side equals the CRF of that side alone."""
    image, probs = _random(5, (30, 43))
    probs[:, :, 20:23] = np.nan
    params = CRFParams(iterations=3, radius=3, colour_sigma=0.5)
    out = _crf(image, probs, params)
    assert np.isnan(out[:, :, 20:23]).all()
    for cols in (slice(0, 20), slice(23, 43)):
        alone = _crf(np.ascontiguousarray(image[:, :, cols]), np.ascontiguousarray(probs[:, :, cols]), params)
        np.testing.assert_array_equal(out[:, :, cols], alone)


def _two_regions(seed: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image: left half dark, right half bright, noise 0.05; truth 0 left, 1 right; probs 0.7 for the truth
    class (with noise) except a 3x3 island inside the left half flipped to class 1."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((32, 32), dtype=np.int64)
    truth[:, 16:] = 1
    image = (truth[None].astype(np.float32) + rng.normal(0, 0.05, (1, 32, 32))).astype(np.float32)
    favoured = truth.copy()
    favoured[10:13, 6:9] = 1
    p1 = np.where(favoured == 1, 0.7, 0.3) + rng.uniform(-0.1, 0.1, (32, 32))
    return image, np.stack([1 - p1, p1]).astype(np.float32), truth


def test_crf_removes_a_flipped_island_and_keeps_the_edge() -> None:
    image, probs, truth = _two_regions()
    before = probs.argmax(0)
    assert (before != truth).sum() == 9
    out = _crf(image, probs, CRFParams(colour_sigma=0.2))
    np.testing.assert_array_equal(out.argmax(0), truth)  # island gone, edge at column 16 kept
    assert out[1, 10:13, 6:9].max() < 0.5 < out[1, :, 16:].min()


def test_zero_weights_give_the_softmax_of_the_unary() -> None:
    image, probs = _random(7, (20, 25))
    probs[0, :5] = 0.0  # clamped to min_prob
    params = CRFParams(spatial_weight=0.0, bilateral_weight=0.0, min_prob=1e-4)
    clamped = np.clip(probs.astype(np.float64), 1e-4, 1.0)
    np.testing.assert_allclose(_crf(image, probs, params), clamped / clamped.sum(0), rtol=1e-6, atol=1e-7)


def test_refine_box_reads_the_clipped_halo_box() -> None:
    image, probs = _random(8, (50, 40))
    params = CRFParams(iterations=2, radius=3)
    seen: list[Box] = []

    def read(outer: Box) -> tuple[np.ndarray, np.ndarray]:
        seen.append(outer)
        return image[(slice(None), *outer.slices)], probs[(slice(None), *outer.slices)]

    box = Box((0, 30), (20, 40))
    part = refine_box(read, box, (50, 40), params, "cpu")
    assert seen == [Box((0, 24), (26, 40))]
    assert part.shape == (4, 20, 10) and part.dtype == np.float32
    np.testing.assert_array_equal(part, _crf(image, probs, params)[(slice(None), *box.slices)])
    with pytest.raises(InputError, match="not inside the scene"):
        refine_box(read, Box((40, 30), (60, 40)), (50, 40), params, "cpu")
    with pytest.raises(InputError, match="returned image"):
        refine_box(lambda b: (image, probs), box, (50, 40), params, "cpu")


@pytest.mark.parametrize(
    ("field", "value"),
    [("iterations", 0), ("iterations", 2.5), ("radius", 0), ("radius", True), ("spatial_sigma", 0.0),
     ("colour_sigma", float("nan")), ("bilateral_sigma", -1.0), ("spatial_weight", -0.1),
     ("bilateral_weight", float("inf")), ("min_prob", 0.0), ("min_prob", 1.0), ("colour_sigma", "0.1")],
)
def test_params_are_validated(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"CRF {field} must be") as info:
        CRFParams(**{field: value})  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_bad_inputs_are_refused() -> None:
    image, probs = _random(9, (8, 8))
    t_image, t_probs = torch.from_numpy(image), torch.from_numpy(probs)
    with pytest.raises(InputError, match="apply softmax"):
        dense_crf(t_image, t_probs * 5 - 2, CRFParams())
    with pytest.raises(InputError, match="one grid"):
        dense_crf(t_image[:, :7], t_probs, CRFParams())
    bad = t_image.clone()
    bad[0, 3, 3] = float("nan")
    with pytest.raises(InputError, match="non-finite"):
        dense_crf(bad, t_probs, CRFParams())
    with pytest.raises(InputError, match="float"):
        dense_crf(t_image.to(torch.int32), t_probs, CRFParams())


def test_band_scaling_maps_percentiles_to_unit_range() -> None:
    ramp = np.arange(101, dtype=np.float64)  # percentile q of 0..100 is q
    sample = np.stack([ramp, np.full(101, 7.0), np.where(ramp < 50, ramp, np.nan)])[:, None, :]
    scaling = band_scaling(sample)
    assert scaling.low == pytest.approx((2.0, 7.0, 0.98))
    assert scaling.scale == pytest.approx((1 / 96, 0.0, 1 / (48.02 - 0.98)))
    out = scaling.apply(np.array([[[2.0, 98.0]], [[7.0, 100.0]], [[0.98, 48.02]]]))
    np.testing.assert_allclose(out, [[[0, 1]], [[0, 0]], [[0, 1]]], atol=1e-6)
    with pytest.raises(InputError, match="bands"):
        scaling.apply(np.zeros((2, 1, 1)))


@cuda
def test_cuda_matches_cpu_and_chunks_match_whole() -> None:
    image, probs = _random(10, (96, 80))
    params = CRFParams(iterations=3, radius=3, colour_sigma=0.5)
    cpu = _crf(image, probs, params)
    gpu = dense_crf(torch.from_numpy(image).cuda(), torch.from_numpy(probs).cuda(), params)
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu, rtol=1e-4, atol=1e-5)
    chunked = crf_chunked(image, probs, 32, params, "cuda")
    np.testing.assert_allclose(chunked, gpu.cpu().numpy(), rtol=0, atol=1e-6)
