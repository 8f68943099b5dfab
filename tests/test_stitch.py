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

from segflow.batching import BatchedFunction
from segflow.predict import Predictor
from segflow.scene import Scene
from segflow.stitch import (
    LABEL_NODATA,
    BlendStats,
    Evaluation,
    Part,
    _window_input,
    argmax_labels,
    blend_chunks,
    evaluate_windows,
    merge_chunk,
    threshold_labels,
    weights_tensor,
)
from segflow.tiling import Box, ChunkGrid, WindowGrid, blend_weights

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


def test_a_blend_mode_name_blends_as_its_weights_and_the_counts_are_recorded() -> None:
    image = random_image((3, 50, 61), seed=4)
    scene = Scene.from_array(image)
    grid = WindowGrid.create((50, 61), 20, 0.3)
    chunks = ChunkGrid.create((50, 61), (16, 25))
    for mode in ("gaussian", "cosine", "constant"):
        stats = BlendStats()
        named = list(blend_chunks(scene, grid, chunks, double_softmax, mode, 3, keep_scores=True, stats=stats))
        given = list(blend_chunks(scene, grid, chunks, double_softmax, blend_weights(grid.tile, mode), 3,
                                  keep_scores=True))
        assert [c.index for c in named] == [(r, c) for r in range(4) for c in range(3)], "raster order"
        for a, b in zip(named, given, strict=True):
            assert a.scores is not None and b.scores is not None
            np.testing.assert_array_equal(a.scores, b.scores)
            np.testing.assert_array_equal(a.labels, b.labels)
        assert stats.chunks == len(chunks) == 12 and stats.windows_total == len(grid) == stats.windows_evaluated
        assert stats.windows_skipped == 0
    plain = next(iter(blend_chunks(scene, grid, chunks, double_softmax, "gaussian", 3)))
    assert plain.scores is None, "scores only when asked for"
    assert plain.labels.dtype == np.uint8 and plain.valid.dtype == bool and plain.labels.shape == (16, 25)


def test_blended_chunks_are_labelled_from_their_normalised_scores() -> None:
    """Labels are the arg-max of scores divided by the weight sum: probabilities that sum to 1 per pixel."""
    image = random_image((3, 40, 40), seed=5)
    grid = WindowGrid.create((40, 40), 16, 0.5)
    for part in blend_chunks(Scene.from_array(image), grid, ChunkGrid.create((40, 40), 24), double_softmax,
                             "gaussian", 3, keep_scores=True):
        assert part.scores is not None and part.scores.dtype == np.float32
        np.testing.assert_allclose(part.scores.sum(0), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(part.labels, argmax_labels(torch.from_numpy(part.scores), part.valid))


def test_multilabel_thresholds_are_applied_to_the_blended_scores() -> None:
    image = random_image((3, 30, 30), seed=6)
    grid = WindowGrid.create((30, 30), 12, 0.25)
    chunks = ChunkGrid.create((30, 30), 16)
    thresholds = [0.2, 0.35, 0.5]
    for part in blend_chunks(Scene.from_array(image), grid, chunks, double_softmax, "gaussian", 3,
                             keep_scores=True, thresholds=thresholds):
        assert part.scores is not None and part.labels.shape == (3, *part.box.shape)
        np.testing.assert_array_equal(part.labels,
                                      threshold_labels(torch.from_numpy(part.scores), part.valid, thresholds))
        assert set(np.unique(part.labels).tolist()) <= {0, 1}


def _evaluate_all(own: tuple[int, int] | None, targets: list[tuple[int, int]] | None = None, valid: bool = True,
                  to_host: bool = False) -> tuple[Evaluation, WindowGrid, ChunkGrid]:
    """Every window of a 30 x 40 scene evaluated for ``targets`` (default: every chunk of 20 px); with ``valid``
    one nodata pixel at (3, 4)."""
    image = random_image((3, 30, 40), seed=8).astype(np.float32)
    mask = np.ones((30, 40), dtype=bool)
    mask[3, 4] = False
    grid = WindowGrid.create((30, 40), 16, 0.25)
    chunks = ChunkGrid.create((30, 40), 20)
    region = Box((0, 0), (30, 40))
    predictor = BatchedFunction(double_softmax, 4)
    w = weights_tensor(grid.tile, "gaussian")
    windows = [tuple(i) for i in np.ndindex(*grid.counts)]
    targets = targets if targets is not None else [tuple(i) for i in np.ndindex(*chunks.counts)]
    return (evaluate_windows(windows, grid, chunks, targets, region, image, mask if valid else None, predictor, w,
                             own=own, to_host=to_host), grid, chunks)


def test_each_window_is_cut_into_the_chunks_it_touches_with_its_offset() -> None:
    ev, grid, chunks = _evaluate_all(own=(0, 1))
    assert ev.skipped == 0 and len(ev.evaluated) == len(grid)
    for target, part in ev.parts.items():
        box = chunks.box(target)
        assert [p.window for p in part.pieces] == [i for i in ev.evaluated if grid.window(i).intersect(box)]
        for piece in part.pieces:
            window = grid.window(piece.window)
            assert piece.box == window.intersect(box)
            assert piece.offset == tuple(a - b for a, b in zip(piece.box.start, window.start, strict=True))
            assert piece.weighted is not None and tuple(piece.weighted.shape) == (3, *piece.box.shape)
        assert part.has_valid == (target == (0, 1))
    own = ev.parts[(0, 1)]
    assert own.valid is not None and own.valid.shape == (20, 20) and own.valid.all(), "chunk (0, 1)'s own pixels"
    first, _, _ = _evaluate_all(own=(0, 0))
    assert first.parts[(0, 0)].valid is not None and not first.parts[(0, 0)].valid[3, 4]
    assert first.parts[(0, 0)].valid.sum() == 399
    none, _, _ = _evaluate_all(own=None)
    assert not any(p.has_valid for p in none.parts.values()), "only the chunk's own task supplies its validity"


def test_a_chunk_must_receive_exactly_one_validity_mask() -> None:
    ev, grid, chunks = _evaluate_all(own=None)
    w = weights_tensor(grid.tile, "gaussian")
    box = chunks.box((1, 1))
    with pytest.raises(RuntimeError, match=r"^chunk \(1, 1\) received 0 validity masks, expected exactly one$"):
        merge_chunk((1, 1), box, [ev.parts[(1, 1)]], w, 3)
    twice = [Part((), True, None), Part(ev.parts[(1, 1)].pieces, True, None)]
    with pytest.raises(RuntimeError, match="received 2 validity masks"):
        merge_chunk((1, 1), box, twice, w, 3)
    one = merge_chunk((1, 1), box, [Part((), True, None), ev.parts[(1, 1)]], w, 3)
    assert one.valid.all() and one.index == (1, 1) and one.box == box


def test_weights_tensor_is_the_float32_blend_weights_on_the_device() -> None:
    w = weights_tensor([12, 7], "cosine", "cpu")
    assert w.dtype == torch.float32 and w.device.type == "cpu"
    np.testing.assert_array_equal(w.numpy(), blend_weights((12, 7), "cosine").astype(np.float32))
    assert weights_tensor((12, 7), "cosine") is weights_tensor([12, 7], "cosine"), "cached per tile and mode"
    assert not torch.equal(weights_tensor((12, 7), "gaussian"), w)


def test_threshold_labels_is_greater_or_equal_in_float32_and_nodata_in_every_plane() -> None:
    acc = torch.tensor([[[0.3, 0.2999999], [0.9, 0.1]], [[0.5, 0.5000001], [0.4999999, 1.0]]], dtype=torch.float32)
    valid = np.array([[True, True], [True, False]])
    got = threshold_labels(acc, valid, [0.3, 0.5])
    np.testing.assert_array_equal(got, [[[1, 0], [1, 255]], [[1, 1], [0, 255]]])
    with pytest.raises(ValueError, match=r"^1 thresholds for 2 classes$"):
        threshold_labels(acc, valid, [0.5])
    with pytest.raises(ValueError, match=r"^2 thresholds for 3 classes$"):
        threshold_labels(torch.zeros(3, 4, 5), np.ones((4, 5), dtype=bool), [0.5, 0.5])


def test_an_object_with_predict_windows_is_used_as_the_predictor() -> None:
    """Anything with ``predict_windows`` (a Predictor) runs the windows itself; only plain functions are batched."""

    class Windows:
        device = "cpu"

        def __init__(self) -> None:
            self.calls = 0

        def predict_windows(self, inputs):  # type: ignore[no-untyped-def]
            self.calls += 1
            return BatchedFunction(double_softmax, 3).predict_windows(inputs)

    image = random_image((3, 30, 40), seed=9)
    grid = WindowGrid.create((30, 40), 16, 0.25)
    chunks = ChunkGrid.create((30, 40), 20)
    predictor = Windows()
    got = list(blend_chunks(Scene.from_array(image), grid, chunks, predictor, "gaussian", 3, keep_scores=True))
    want = list(blend_chunks(Scene.from_array(image), grid, chunks, double_softmax, "gaussian", 3, keep_scores=True))
    assert predictor.calls > 0
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a.scores, b.scores)


def test_pieces_shipped_to_the_host_are_the_same_and_a_task_may_own_a_chunk_it_does_not_feed() -> None:
    here, _, _ = _evaluate_all(own=(1, 1), targets=[(0, 0)], valid=False)
    host, _, _ = _evaluate_all(own=None, targets=[(0, 0)], valid=False, to_host=True)
    assert [p.window for p in here.parts[(0, 0)].pieces] == [p.window for p in host.parts[(0, 0)].pieces]
    for a, b in zip(here.parts[(0, 0)].pieces, host.parts[(0, 0)].pieces, strict=True):
        assert a.weighted is not None and b.weighted is not None and b.weighted.device.type == "cpu"
        assert torch.equal(a.weighted, b.weighted)
    assert here.parts[(1, 1)] == Part((), True, None), "the owner supplies validity without pieces of its own"
