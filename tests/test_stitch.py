"""The stitched result is independent of chunking, matches a whole-array reference and MONAI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference
from monai.inferers.utils import _get_scan_interval

from segflow.predict import Predictor
from segflow.scene import Scene
from segflow.stitch import BlendStats, blend_chunks
from segflow.tiling import ChunkGrid, WindowGrid, blend_weights

from .helpers import RandomConvNet, make_spec, random_image

NET = RandomConvNet(3, 3, seed=1).double().eval()


@torch.inference_mode()
def double_softmax(x: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """A batch-size independent stand-in: float64 conv net, float32 probabilities."""
    out = torch.softmax(NET(torch.from_numpy(x.astype(np.float64) / 1000.0)), dim=1)
    return out.float().numpy()


def reference_blend(image: np.ndarray, tile: int, overlap: float, mode: str) -> np.ndarray:
    """Whole-array sliding window, written independently of segflow.stitch (MONAI's window list)."""
    shape = image.shape[1:]
    t = tuple(min(tile, n) for n in shape)
    acc = np.zeros((3, *shape), dtype=np.float32)
    wsum = np.zeros(shape, dtype=np.float32)
    weights = blend_weights((tile, tile), mode)
    interval = _get_scan_interval(shape, t, 2, (overlap, overlap))
    for sl in dense_patch_slices(shape, t, interval):
        patch = image[(slice(None), *sl)]
        pad = [(0, 0)] + [(0, tile - (s.stop - s.start)) for s in sl]
        p = double_softmax(np.pad(patch, pad, mode="symmetric")[None])[0]
        w = weights[: sl[0].stop - sl[0].start, : sl[1].stop - sl[1].start]
        acc[(slice(None), *sl)] += p[:, : w.shape[0], : w.shape[1]] * w
        wsum[sl] += w
    return acc / wsum


def run_chunked(image: np.ndarray, tile: int, overlap: float, mode: str, chunk: tuple[int, int],
                batch: int = 5, stats: BlendStats | None = None) -> tuple[np.ndarray, np.ndarray]:
    scene = Scene.from_array(image, chunks=(3, 17, 23))
    grid = WindowGrid.create(scene.spatial_shape, tile, overlap)
    chunks = ChunkGrid.create(scene.spatial_shape, chunk)
    scores = np.full((3, *scene.spatial_shape), np.nan, dtype=np.float32)
    valid = np.zeros(scene.spatial_shape, dtype=bool)
    for part in blend_chunks(scene, grid, chunks, double_softmax, blend_weights(grid.tile, mode), 3,
                             batch_size=batch, stats=stats, keep_scores=True):
        scores[(slice(None), *part.box.slices)] = part.scores
        valid[part.box.slices] = part.valid
    return scores, valid


@settings(max_examples=25)
@given(h=st.integers(1, 90), w=st.integers(1, 90), tile=st.integers(4, 40), overlap=st.floats(0.0, 0.75),
       mode=st.sampled_from(["gaussian", "cosine", "constant"]),
       chunk_a=st.tuples(st.integers(1, 100), st.integers(1, 100)),
       chunk_b=st.tuples(st.integers(1, 100), st.integers(1, 100)), batch=st.integers(1, 9))
def test_chunking_never_changes_the_result(h: int, w: int, tile: int, overlap: float, mode: str,
                                           chunk_a: tuple[int, int], chunk_b: tuple[int, int], batch: int) -> None:
    image = random_image((3, h, w), seed=h * 1000 + w)
    stats = BlendStats()
    a, valid_a = run_chunked(image, tile, overlap, mode, chunk_a, batch, stats)
    b, valid_b = run_chunked(image, tile, overlap, mode, chunk_b, 16)
    whole, _ = run_chunked(image, tile, overlap, mode, (h, w), 3)
    reference = reference_blend(image, tile, overlap, mode)
    assert valid_a.all() and valid_b.all()
    np.testing.assert_array_equal(a, b)  # same operations in the same order: bitwise equal
    np.testing.assert_array_equal(a, whole)
    np.testing.assert_allclose(a, reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.argmax(0), b.argmax(0))
    grid = WindowGrid.create((h, w), tile, overlap)
    assert stats.windows_evaluated == len(grid) == len(stats.evaluated), "each window evaluated exactly once"


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize(("shape", "tile", "overlap", "chunk"), [
    ((100, 130), 32, 0.25, 40), ((64, 64), 64, 0.5, 20), ((97, 71), 24, 0.6, 50), ((200, 90), 48, 0.1, 64),
])
def test_agrees_with_monai_sliding_window_inference(shape: tuple[int, int], tile: int, overlap: float,
                                                    chunk: int, mode: str) -> None:
    net = RandomConvNet(3, 3, seed=2).eval()
    spec = make_spec(tile=tile, overlap=overlap)
    predictor = Predictor(net, spec, device="cpu", batch_size=4)
    image = random_image((3, *shape), seed=7)
    scene = Scene.from_array(image)
    grid = WindowGrid.create(shape, tile, overlap)
    ours = np.zeros((3, *shape), dtype=np.float32)
    for part in blend_chunks(scene, grid, ChunkGrid.create(shape, chunk), predictor, blend_weights(grid.tile, mode),
                             3, batch_size=4, keep_scores=True):
        ours[(slice(None), *part.box.slices)] = part.scores
    x = torch.from_numpy(image.astype(np.float32) * 0.001)[None]
    with torch.inference_mode():
        theirs = sliding_window_inference(x, (tile, tile), 4, lambda t: torch.softmax(net(t), 1),
                                          overlap=overlap, mode=mode)
    np.testing.assert_allclose(ours, theirs[0].numpy(), rtol=1e-4, atol=1e-5)
    assert (ours.argmax(0) == theirs[0].numpy().argmax(0)).mean() > 0.9999


def test_all_nodata_windows_are_skipped_and_nodata_pixels_stay_invalid() -> None:
    image = random_image((3, 80, 80), seed=3)
    image[:, :40, :] = 0  # top half nodata
    image[:, 60, 60] = 0  # one nodata pixel inside valid data
    scene = Scene.from_array(image, nodata=0)
    grid = WindowGrid.create((80, 80), 16, 0.0)
    stats = BlendStats()
    valid = np.zeros((80, 80), dtype=bool)
    seen = []

    def predict(x: np.ndarray, v: np.ndarray | None) -> np.ndarray:
        assert v is not None and v.any(axis=(1, 2)).all(), "no all-nodata window reaches the model"
        seen.append(len(x))
        return double_softmax(x)

    for part in blend_chunks(scene, grid, ChunkGrid.create((80, 80), 30), predict, blend_weights(grid.tile), 3,
                             stats=stats):
        valid[part.box.slices] = part.valid
    assert stats.windows_skipped == 10 and stats.windows_evaluated == 15 == sum(seen)
    assert not valid[:40].any() and not valid[60, 60]
    assert valid[40:].sum() == 40 * 80 - 1


NET3D = RandomConvNet(2, 3, seed=6, spatial_dims=3).double().eval()


@torch.inference_mode()
def softmax3d(x: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    return torch.softmax(NET3D(torch.from_numpy(x.astype(np.float64) / 1000.0)), dim=1).float().numpy()


@settings(max_examples=10)
@given(shape=st.tuples(st.integers(1, 24), st.integers(1, 30), st.integers(1, 30)), tile=st.integers(3, 16),
       overlap=st.floats(0.0, 0.6), chunk=st.tuples(st.integers(1, 24), st.integers(1, 30), st.integers(1, 30)))
def test_volumes_blend_the_same_whatever_the_chunking(shape: tuple[int, int, int], tile: int, overlap: float,
                                                      chunk: tuple[int, int, int]) -> None:
    image = random_image((2, *shape), seed=sum(shape))
    scene = Scene.from_array(image)
    assert scene.axes == "CZYX"
    grid = WindowGrid.create(shape, tile, overlap)
    results = []
    for c in (chunk, shape):
        stats = BlendStats()
        out = np.full((3, *shape), np.nan, dtype=np.float32)
        for part in blend_chunks(scene, grid, ChunkGrid.create(shape, c), softmax3d, blend_weights(grid.tile), 3,
                                 batch_size=4, stats=stats, keep_scores=True):
            out[(slice(None), *part.box.slices)] = part.scores
        assert stats.windows_evaluated == len(grid)
        results.append(out)
    np.testing.assert_array_equal(results[0], results[1])
    assert not np.isnan(results[0]).any()


def test_labels_are_the_first_maximum_like_argmax() -> None:
    from segflow.stitch import LABEL_NODATA, argmax_labels

    scores = torch.rand(5, 60, 40, generator=torch.Generator().manual_seed(0))
    scores[3, :10] = scores[1, :10] = scores[:, :10].max(0).values + 1  # exact ties: the first class wins
    valid = np.ones((60, 40), dtype=bool)
    valid[5, 7] = False
    expected = scores.argmax(0).numpy().astype(np.uint8)
    expected[5, 7] = LABEL_NODATA
    np.testing.assert_array_equal(argmax_labels(scores, valid), expected)
    assert (expected[:10][valid[:10]] == 1).all()


def test_a_window_larger_than_the_scene_is_padded_by_mirroring_with_its_validity() -> None:
    """A scene smaller than one tile: the window is the scene mirrored out to the tile, and so is its nodata
    mask, so a nodata pixel of the scene stays nodata in every mirrored copy the network sees."""
    from segflow.stitch import _window_input
    from segflow.tiling import Box

    data = random_image((2, 5, 7), seed=3).astype(np.float32)
    valid = np.ones((5, 7), dtype=bool)
    valid[4, :2] = False  # on the last row: mirrored into the padding below
    region = Box((0, 0), (5, 7))
    x, v = _window_input(data, valid, region, region, (8, 12))
    np.testing.assert_array_equal(x, np.pad(data, [(0, 0), (0, 3), (0, 5)], mode="symmetric"))
    assert v is not None and v.shape == (8, 12)
    np.testing.assert_array_equal(v, np.pad(valid, [(0, 3), (0, 5)], mode="symmetric"))
    assert (~v).sum() == 4 and not v[5, :2].any()  # the 2 nodata pixels and their mirror image below
    x2, v2 = _window_input(data, None, region, region, (8, 12))
    assert v2 is None and x2.shape == (2, 8, 12)
    same, same_valid = _window_input(data, valid, region, Box((0, 0), (5, 7)), (5, 7))  # a full tile: no padding
    assert same.shape == (2, 5, 7) and same_valid is not None and same_valid.shape == (5, 7)
