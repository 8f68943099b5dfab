"""Instance models over large scenes (segflow.detect): window detections merged into one instance per object.

The reference: a stand-in "detector" whose detections in a window are exactly the connected components
of that window's crop of the scene (so objects are cut at window edges, as a real model's are). Merged
over the whole scene they must give scipy's connected components of the whole scene, whatever the tile,
overlap and chunk: objects cut by window and chunk seams become one instance each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from torch import nn

from segflow.detect import Detector, Merger, check_run, detect_store
from segflow.detect.merge import Instance, owner_bounds, shared_iou
from segflow.detect.paint import INSTANCE_SCORES, SOURCE, paint_instances, resolve_overlaps
from segflow.detect.windows import Detection, crop_detection
from segflow.errors import ConfigError
from segflow.io.mask_store import MaskStore
from segflow.labels import LABEL_NODATA
from segflow.models.package import ModelSpec
from segflow.run_params import TileInferParams
from segflow.scene import Scene
from segflow.tiling import Box, WindowGrid, axis_starts, stride_for

SCORES = {1: 0.7, 2: 0.9}


def instance_spec(**output: object) -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "components", "spatial_dims": 2, "architecture": {"name": "maskrcnn"}, "tile": 32,
        "input": {"bands": [{"name": "value", "index": 1}], "normalization": {"mode": "none"}},
        "output": {"activation": "instances", **output},
        "classes": [{"name": "background"}, {"name": "a", "kind": "thing"}, {"name": "b", "kind": "thing"}]})


class Components(nn.Module):
    """Per window: every connected component of band 0 == c (c = 1, 2) as a detection of class c."""

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in x:
            value = image[0].round().to(torch.int64).numpy()
            masks, labels = [], []
            for c in (1, 2):
                lab, n = ndimage.label(value == c)
                masks += [lab == k for k in range(1, n + 1)]
                labels += [c] * n
            shape = (len(masks), *value.shape)
            out.append({"boxes": torch.zeros((len(masks), 4)), "labels": torch.tensor(labels, dtype=torch.int64),
                        "scores": torch.tensor([SCORES[c] for c in labels], dtype=torch.float32),
                        "masks": torch.from_numpy(np.stack(masks) if masks else np.zeros(shape, bool))})
        return out


class EdgeBlurred(Components):
    """:class:`Components` with a real model's weaknesses at window edges: within ``margin`` of an edge every mask
    grows by ``grow`` pixels, so views of one object disagree there (and only where the window is not the most
    central one: the composition by ownership must pick the central views), and the more of a view lies there,
    the lower its score (a view of an object cut by the edge is less sure)."""

    def __init__(self, margin: int, grow: int) -> None:
        super().__init__()
        self.margin, self.grow = margin, grow

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = super().forward(x)
        h, w = x.shape[-2:]
        edge = np.ones((h, w), bool)  # the band within ``margin`` of the window's edges
        edge[self.margin:h - self.margin, self.margin:w - self.margin] = False
        for det in out:
            masks = det["masks"].numpy()
            for k in range(len(masks)):
                near = np.count_nonzero(masks[k] & edge) / max(1, np.count_nonzero(masks[k]))
                grown = ndimage.binary_dilation(masks[k], iterations=self.grow)
                masks[k] |= grown & edge
                det["scores"][k] -= 0.3 * near
        return out


def reference(value: np.ndarray) -> np.ndarray:
    """scipy's components of each class, numbered 1.. in raster order of their first pixel."""
    ids = np.zeros(value.shape, np.int64)
    count = 0
    for c in (1, 2):
        lab, n = ndimage.label(value == c)
        ids[lab > 0] = lab[lab > 0] + count
        count += n
    present, first = np.unique(ids.ravel(), return_index=True)
    lookup = np.zeros(count + 1, np.int64)
    order = np.argsort(first[present > 0])
    lookup[present[present > 0][order]] = np.arange(1, len(order) + 1)
    return lookup[ids]


def convex_scene(shape: tuple[int, int], seed: int, count: int = 40) -> np.ndarray:
    """Rectangles and ellipses of classes 1 and 2 (convex, so a window crop of one is one component);
    objects of one class never touch (a 1-pixel gap), objects of two classes may."""
    rng = np.random.default_rng(seed)
    value = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(count):
        c = int(rng.integers(1, 3))
        h, w = int(rng.integers(2, shape[0] // 2)), int(rng.integers(2, shape[1] // 2))
        y, x = int(rng.integers(0, shape[0] - h)), int(rng.integers(0, shape[1] - w))
        if rng.random() < 0.5:
            obj = (yy >= y) & (yy < y + h) & (xx >= x) & (xx < x + w)
        else:
            obj = ((yy - y - h / 2) / (h / 2)) ** 2 + ((xx - x - w / 2) / (w / 2)) ** 2 <= 1
        grown = ndimage.binary_dilation(obj, np.ones((3, 3), bool))
        if (value[grown] != 0).any():
            continue  # keep objects apart (a 1-pixel gap all round)
        value[obj] = c
    if rng.random() < 0.5:  # two objects of different classes that touch
        free = value == 0
        value[(yy < 3) & free] = 1
        value[(yy >= 3) & (yy < 5) & free] = 2
    return value


def run_detection(tmp_path: Path, value: np.ndarray, tile: int, overlap: float, chunk: int, *,
                  nodata: np.ndarray | None = None, batch: int = 3, scores: bool = False) -> MaskStore:
    data = value.astype(np.float32)[None]
    if nodata is not None:
        data = np.where(nodata, np.nan, data)
    scene = Scene.from_array(data, chunks=(1, 17, 23))
    store = MaskStore.create(tmp_path / f"m-{tile}-{overlap}-{chunk}.zarr", value.shape, (chunk, chunk),
                             ["background", "a", "b"], save_scores=scores, attrs={})
    grid = WindowGrid.create(value.shape, (min(tile, value.shape[0]), min(tile, value.shape[1])), overlap)
    detector = Detector(Components(), instance_spec(), device="cpu", batch_size=batch)
    found = detect_store(scene, store, grid, detector)
    assert found.evaluated + found.skipped == len(grid)
    return store


@pytest.mark.parametrize(("tile", "overlap", "chunk"), [(32, 0.25, 40), (24, 0.5, 16), (40, 0.1, 64), (17, 0.3, 23)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merged_instances_are_the_whole_scene_components(tmp_path: Path, tile: int, overlap: float, chunk: int,
                                                         seed: int) -> None:
    value = convex_scene((90, 110), seed)
    store = run_detection(tmp_path, value, tile, overlap, chunk)
    ids = np.asarray(store.group["instances"][...])
    np.testing.assert_array_equal(ids, reference(value))
    np.testing.assert_array_equal(store.read_labels(Box((0, 0), value.shape)), value)
    want = np.array([SCORES[int(value[ids == k][0])] for k in range(1, ids.max() + 1)], np.float32)
    np.testing.assert_array_equal(store.group[INSTANCE_SCORES][...], want)
    assert store.group["instances"].attrs["source"] == SOURCE
    assert store.group["instances"].attrs["count"] == ids.max()


@pytest.mark.parametrize(("tile", "overlap"), [(32, 0.5), (40, 0.4)])
def test_each_pixel_comes_from_its_most_central_view(tmp_path: Path, tile: int, overlap: float) -> None:
    """Views that are wrong near their window's edges (grown there) compose into the exact objects: every pixel
    is taken from the window whose centre is nearest, whose view is right there. The scene's own edges are
    window edges too, so the scene is padded with a frame no object touches."""
    value = np.zeros((110, 130), np.uint8)
    value[10:100, 10:120] = convex_scene((90, 110), 7)
    data = value.astype(np.float32)[None]
    scene = Scene.from_array(data, chunks=(1, 37, 41))
    store = MaskStore.create(tmp_path / "m.zarr", value.shape, (48, 48), ["background", "a", "b"], save_scores=False,
                             attrs={})
    grid = WindowGrid.create(value.shape, (tile, tile + 12), overlap)  # axes unlike: their owners differ
    margin = min(t - s for t, s in zip(grid.tile, grid.stride, strict=True)) // 4  # views are wrong within a
    # quarter of the overlap of their edges
    detector = Detector(EdgeBlurred(margin, 1), instance_spec(), device="cpu", batch_size=3)
    detect_store(scene, store, grid, detector)
    np.testing.assert_array_equal(store.group["instances"][...], reference(value))


def test_objects_larger_than_a_window_are_one_instance(tmp_path: Path) -> None:
    value = np.zeros((100, 100), np.uint8)
    value[10:90, 40:46] = 1  # a road crossing every row of windows
    value[48:52, 2:98] = 2  # and one crossing every column, touching it
    store = run_detection(tmp_path, value, 24, 0.25, 32)
    np.testing.assert_array_equal(store.group["instances"][...], reference(value))


def test_nodata_pixels_leave_the_instances_and_skip_windows(tmp_path: Path) -> None:
    value = convex_scene((64, 64), 5)
    nodata = np.zeros(value.shape, bool)
    nodata[:, :20] = True
    store = run_detection(tmp_path, value, 16, 0.25, 32, nodata=nodata, scores=True)
    labels = store.read_labels(Box((0, 0), value.shape))
    assert (labels[nodata] == LABEL_NODATA).all()
    want = reference(np.where(nodata, 0, value))
    np.testing.assert_array_equal(store.group["instances"][...], want)
    scores = np.asarray(store.scores[...], dtype=np.float32)
    assert np.isnan(scores[:, nodata]).all() and not np.isnan(scores[:, ~nodata]).any()
    np.testing.assert_allclose(scores.sum(axis=0)[~nodata], 1.0, atol=2e-3)


def test_windows_that_do_not_overlap_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"do not overlap.*--overlap"):
        run_detection(tmp_path, np.zeros((40, 40), np.uint8), 16, 0.0, 32)


def detection(window: tuple[int, int], start: tuple[int, int], mask: np.ndarray, label: int = 1,
              score: float = 0.9) -> Detection:
    return Detection(start, np.asarray(mask, bool), label, score, window=window)


def test_shared_iou_counts_only_the_shared_region() -> None:
    a = detection((0, 0), (0, 6), np.ones((4, 4)))  # columns 6..9, cut at window 0's edge (10)
    b = detection((0, 1), (0, 6), np.ones((4, 8)))  # columns 6..13, whole in window 1
    shared = Box((0, 6), (16, 10))
    assert shared_iou(a, b, shared) == 1.0  # the same where both see
    c = detection((0, 1), (0, 9), np.ones((4, 5)))  # a neighbour touching at column 9
    assert shared_iou(a, c, shared) == pytest.approx(4 / 16)


def test_shared_iou_of_partial_masks_and_views_of_two_classes() -> None:
    a_mask = np.zeros((4, 6), bool)
    a_mask[:, :3] = True  # columns 6..8
    b_mask = np.zeros((4, 6), bool)
    b_mask[:, 2:] = True  # columns 8..11
    a = detection((0, 0), (0, 6), a_mask)
    b = detection((0, 1), (0, 6), b_mask)
    assert shared_iou(a, b, Box((0, 6), (16, 10))) == pytest.approx(4 / (12 + 8 - 4))  # b has 8 px in 6..9
    grid = WindowGrid((16, 20), (16, 12), (16, 8))
    merger = Merger(grid)
    merger.add((0, 0), [detection((0, 0), (0, 8), np.ones((4, 4)), label=1)])
    merger.add((0, 1), [detection((0, 1), (0, 8), np.ones((4, 4)), label=2)])  # the same pixels, another class
    assert sorted((i.label, i.start, i.mask.shape) for i in merger.finish()) == [(1, (0, 8), (4, 2)),
                                                                               (2, (0, 10), (4, 2))]


def test_shared_iou_without_pixels_in_the_shared_region_is_zero_and_of_one_pixel_is_one() -> None:
    corner = np.zeros((3, 6), bool)
    corner[0, :] = True
    corner[:, 0] = True  # an L: row 0 columns 4..9, column 4 rows 0..2
    a = detection((0, 0), (0, 4), corner)
    ends = np.zeros((4, 4), bool)
    ends[3, 0] = ends[0, 3] = True  # (3, 8) and (0, 11): its box meets a's, no pixel in common
    b = detection((0, 1), (0, 8), ends)
    assert shared_iou(a, b, Box((1, 5), (3, 10))) == 0.0, "no pixel of either where both see"
    lone = detection((0, 1), (5, 9), np.ones((1, 1)))
    assert shared_iou(lone, detection((0, 0), (5, 9), np.ones((1, 1))), Box((0, 6), (16, 10))) == 1.0


def test_windows_far_apart_in_a_row_and_instances_cropped_tight() -> None:
    """Three windows in a row, the first and the last not overlapping: each view is matched only with windows it
    shares pixels with; a merged instance's mask has no empty border (its views' pixels outside their owned
    parts are cut away)."""
    grid = WindowGrid((16, 28), (16, 12), (16, 8))  # windows at columns 0, 8 and 16
    merger = Merger(grid)
    merger.add((0, 0), [detection((0, 0), (1, 1), np.ones((2, 2)))])
    ragged = np.zeros((6, 6), bool)
    ragged[1:5, 1:5] = True
    merger.add((0, 1), [detection((0, 1), (6, 9), np.ones((3, 3)))])
    merger.add((0, 2), [detection((0, 2), (5, 20), ragged), detection((0, 2), (10, 16), np.ones((4, 2)))])
    out = sorted(merger.finish(), key=lambda i: i.start)
    # window 1 owns columns 10..17: its view's column 9 is cut, and window 2's view in 16..17 is cut whole
    assert [(i.start, i.mask.shape) for i in out] == [((1, 1), (2, 2)), ((6, 10), (3, 2)), ((6, 21), (4, 4))]
    for inst in out:
        assert inst.mask[[0, -1]].any(axis=1).all() and inst.mask[:, [0, -1]].any(axis=0).all()


def test_merging_is_2d() -> None:
    with pytest.raises(ValueError, match=r"^instance merging is 2D$"):
        Merger(WindowGrid((4, 16, 16), (4, 8, 8), (4, 4, 4)))


def test_touching_neighbours_of_one_class_stay_apart() -> None:
    grid = WindowGrid((16, 20), (16, 12), (16, 8))  # windows at columns 0 and 8
    merger = Merger(grid)
    left = detection((0, 0), (2, 3), np.ones((5, 7)))  # columns 3..9
    right_whole = detection((0, 1), (2, 10), np.ones((5, 6)))  # columns 10..15: another object, touching
    left_seen = detection((0, 1), (2, 8), np.ones((5, 2)))  # window 1 sees columns 8..9 of the left object
    merger.add((0, 0), [left])
    merger.add((0, 1), [right_whole, left_seen])
    out = sorted(merger.finish(), key=lambda i: i.start[1])
    assert [(i.start, i.mask.shape) for i in out] == [((2, 3), (5, 7)), ((2, 10), (5, 6))]


def test_one_to_one_matching_and_best_score() -> None:
    grid = WindowGrid((16, 20), (16, 12), (16, 8))
    merger = Merger(grid)
    merger.add((0, 0), [detection((0, 0), (0, 8), np.ones((4, 4)), score=0.6)])
    merger.add((0, 1), [detection((0, 1), (0, 8), np.ones((4, 4)), score=0.8),
                        detection((0, 1), (0, 8), np.ones((4, 3)), score=0.7)])  # a duplicate, less alike
    out = list(merger.finish())
    # the pair composes from both views' own columns (window 0 owns 8..9, window 1 10..19); the unmatched
    # duplicate keeps only the column its window owns
    assert sorted((i.score, i.start, i.mask.shape) for i in out) == [(0.7, (0, 10), (4, 1)), (0.8, (0, 8), (4, 4))]


@given(size=st.integers(1, 300), tile=st.integers(1, 80), overlap=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75]))
@settings(max_examples=200, deadline=None)
def test_owned_ranges_partition_the_axis_inside_their_windows(size: int, tile: int, overlap: float) -> None:
    tile = min(tile, size)
    starts = axis_starts(size, tile, stride_for(tile, overlap))
    bounds = owner_bounds(starts, tile, size)
    assert bounds[0] == 0 and bounds[-1] == size and (np.diff(bounds) >= 0).all()
    for i, s in enumerate(starts):
        assert s <= bounds[i] and bounds[i + 1] <= s + tile  # a window owns only what it sees
        centre = s + tile / 2
        for p in range(bounds[i], bounds[i + 1]):  # and what is nearest its centre
            assert all(abs(p + 0.5 - centre) <= abs(p + 0.5 - (t + tile / 2)) + 0.5 for t in starts)


def test_paint_gives_overlaps_to_the_higher_score_and_numbers_by_first_pixel(tmp_path: Path) -> None:
    store = MaskStore.create(tmp_path / "m.zarr", (10, 12), (4, 5), ["background", "a", "b"], save_scores=True,
                             attrs={})
    low = Instance((0, 0), np.ones((6, 6), bool), 1, 0.6)
    high = Instance((3, 3), np.ones((4, 4), bool), 2, 0.9)
    hidden = Instance((4, 4), np.ones((2, 2), bool), 1, 0.5)  # wholly under ``high``: no id
    later = Instance((8, 10), np.ones((2, 2), bool), 1, 0.95)
    valid = np.ones((10, 12), bool)
    valid[9, 11] = False
    count = paint_instances(store, [later, hidden, high, low], lambda box: valid[box.slices], things=["a", "b"])
    ids = np.asarray(store.group["instances"][...])
    want = np.zeros((10, 12), np.int64)
    want[0:6, 0:6] = 1
    want[3:7, 3:7] = 2
    want[8:10, 10:12] = 3
    want[9, 11] = 0
    np.testing.assert_array_equal(ids, want)
    assert count == 3
    np.testing.assert_array_equal(store.group[INSTANCE_SCORES][...], np.float32([0.6, 0.9, 0.95]))
    labels = store.read_labels(Box((0, 0), (10, 12)))
    assert labels[9, 11] == LABEL_NODATA and labels[4, 4] == 2 and labels[0, 0] == 1 and labels[8, 0] == 0
    assert len(store.done()) == 9
    scores = np.asarray(store.scores[...], dtype=np.float32)
    assert scores[2, 4, 4] == pytest.approx(0.9, abs=1e-3) and scores[0, 4, 4] == pytest.approx(0.1, abs=1e-3)


def test_paint_arrays_and_records(tmp_path: Path) -> None:
    """The ``instances`` array's layout, the per-class scores, the chunk records, and painting again over an
    earlier run's arrays (a re-run into the same store)."""
    store = MaskStore.create(tmp_path / "m.zarr", (6, 9), (3, 4), ["background", "a", "b"], save_scores=True,
                             attrs={})
    valid = np.ones((6, 9), bool)
    valid[5, 8] = False
    one = Instance((0, 0), np.ones((2, 2), bool), 1, 0.6)
    two = Instance((3, 5), np.ones((2, 3), bool), 2, 0.8)
    for _ in range(2):
        assert paint_instances(store, [one, two], lambda box: valid[box.slices], things=["a", "b"]) == 2
    ids = store.group["instances"]
    assert ids.dtype == np.uint32 and ids.chunks == store.labels.chunks
    assert tuple(ids.metadata.dimension_names) == ("y", "x")
    assert dict(ids.attrs) == {"source": SOURCE, "things": ["a", "b"], "count": 2, "scores": INSTANCE_SCORES}
    assert store.group[INSTANCE_SCORES].chunks == (2,) and store.group[INSTANCE_SCORES].dtype == np.float32
    scores = np.asarray(store.scores[...], dtype=np.float32)
    assert scores.shape == (3, 6, 9)
    np.testing.assert_allclose(scores[:, 0, 0], [0.4, 0.6, 0.0], atol=1e-3)
    np.testing.assert_allclose(scores[:, 3, 5], [0.2, 0.0, 0.8], atol=1e-3)
    np.testing.assert_allclose(scores[:, 2, 2], [1.0, 0.0, 0.0])
    done = store.done()
    assert done[(1, 2)] == {"index": [1, 2], "box": [[3, 8], [6, 9]], "valid_pixels": 2}
    assert done[(0, 0)] == {"index": [0, 0], "box": [[0, 0], [3, 4]], "valid_pixels": 12}
    everywhere = MaskStore.create(tmp_path / "n.zarr", (6, 9), (3, 4), ["background", "a", "b"], save_scores=False,
                                  attrs={})
    paint_instances(everywhere, [one], lambda box: None, things=["a"])
    assert everywhere.done()[(1, 2)]["valid_pixels"] == 3


@pytest.mark.parametrize("seed", range(4))
def test_ids_follow_the_raster_order_of_first_pixels(tmp_path: Path, seed: int) -> None:
    """Scattered squares in chunks of every offset: ids are scipy's component numbering (raster order of the
    first pixel), whatever the scores; an instance wholly in nodata gets no id and no score."""
    rng = np.random.default_rng(seed)
    shape = (24, 30)
    free = np.ones(shape, bool)
    found: list[Instance] = []
    for _ in range(40):
        r, c = int(rng.integers(0, 22)), int(rng.integers(0, 28))
        h, w = (int(v) for v in rng.integers(1, 3, size=2))
        if free[max(r - 1, 0):r + h + 1, max(c - 1, 0):c + w + 1].all():
            free[max(r - 1, 0):r + h + 1, max(c - 1, 0):c + w + 1] = False
            found.append(Instance((r, c), np.ones((h, w), bool), int(rng.integers(1, 3)), float(rng.random())))
    valid = np.ones(shape, bool)
    gone = found[len(found) // 2]
    valid[gone.box.slices] = False
    store = MaskStore.create(tmp_path / "m.zarr", shape, (5, 7), ["background", "a", "b"], save_scores=False,
                             attrs={})
    count = paint_instances(store, found, lambda box: valid[box.slices], things=["a", "b"])
    ids = np.asarray(store.group["instances"][...])
    want, n = ndimage.label(ids > 0)
    np.testing.assert_array_equal(ids, want)
    assert count == n == len(found) - 1 == store.group["instances"].attrs["count"]
    scores = store.group[INSTANCE_SCORES][...]
    for inst in found:
        if inst is not gone:
            assert scores[ids[inst.start] - 1] == np.float32(inst.score)


def test_instances_mostly_under_higher_scores_are_dropped() -> None:
    """Detectron2's panoptic rule: more than half of an instance taken by higher-scoring kept ones: dropped."""
    top = Instance((0, 0), np.ones((4, 10), bool), 1, 0.9)
    half = Instance((2, 0), np.ones((4, 10), bool), 1, 0.8)  # 20 of 40 pixels taken: kept
    most = Instance((0, 0), np.ones((5, 10), bool), 1, 0.7)  # 40 + 10 of its 50 taken by top and half: dropped
    far = Instance((600, 700), np.ones((3, 3), bool), 2, 0.1)  # in another cell of the index: kept
    under_dropped = Instance((5, 0), np.ones((2, 10), bool), 1, 0.6)  # 10 of 20 taken by half (not by most)
    kept = resolve_overlaps([far, most, half, top, under_dropped])
    assert kept == [top, half, under_dropped, far]
    assert resolve_overlaps([top, half], max_taken=0.49) == [top]


def _resolve_by_brute_force(instances: list[Instance], shape: tuple[int, int]) -> list[Instance]:
    """The overlap rule without a spatial index: every kept instance's pixels on one canvas."""
    canvas = np.zeros(shape, bool)
    kept = []
    for inst in sorted(instances, key=lambda i: -i.score):  # stable: ties keep the input order
        mask = inst.mask
        taken = canvas[inst.box.slices] & mask
        if mask.any() and np.count_nonzero(taken) <= 0.5 * np.count_nonzero(mask):
            canvas[inst.box.slices] |= mask
            kept.append(inst)
    return kept


@pytest.mark.parametrize("seed", range(6))
def test_the_overlap_rule_equals_a_brute_force_one_across_index_cells(seed: int) -> None:
    """Instances of all sizes crowded around the spatial index's cell corners (256 px), some crossing them,
    many overlapping: the kept ones are those a whole-canvas check keeps."""
    rng = np.random.default_rng(seed)
    shape = (800, 800)
    found = []
    for _ in range(120):
        h, w = (int(v) for v in rng.integers(1, 90, size=2))
        corner = rng.choice([256, 512])
        r = int(np.clip(corner + rng.integers(-100, 60), 0, shape[0] - h))
        c = int(np.clip(rng.choice([256, 512]) + rng.integers(-100, 60), 0, shape[1] - w))
        mask = rng.random((h, w)) < 0.8
        mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True  # a tight box
        found.append(Instance((r, c), mask, 1, float(rng.integers(0, 40)) / 40))  # ties too
    assert resolve_overlaps(found) == _resolve_by_brute_force(found, shape)


def test_crop_detection_and_score_threshold() -> None:
    mask = np.zeros((8, 8), bool)
    mask[2:4, 5:7] = True
    det = crop_detection((1, 2), (100, 200), mask, 1, 0.8)
    assert det is not None and det.start == (102, 205) and det.mask.shape == (2, 2) and det.box.stop == (104, 207)
    assert crop_detection((0, 0), (0, 0), np.zeros((4, 4), bool), 1, 0.9) is None
    detector = Detector(Components(), instance_spec(score_threshold=0.8), device="cpu")
    value = np.zeros((1, 1, 16, 16), np.float32)
    value[0, 0, 1:3, 1:3] = 1  # class 1 scores 0.7: dropped
    value[0, 0, 8:10, 8:12] = 2
    found = detector.detect([(0, 0)], [(0, 0)], value)
    assert [(d.label, d.start, d.mask.shape) for d in found] == [(2, (8, 8), (2, 4))]


class AutocastProbe(Components):
    """Components that records the autocast dtype and the device it ran under."""

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        self.seen = (x.device, torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return super().forward(x.float())


def test_detector_device_precision_and_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` resolves the device and the fastest precision the package declares; that precision's autocast
    runs the network; batch sizes below 1 become 1."""
    from segflow import precision
    from segflow.devices import resolve_device

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    spec = instance_spec().model_copy(update={"precisions": ["bf16"]})
    probe = AutocastProbe()
    detector = Detector(probe, spec)
    assert detector.device == resolve_device("auto") and detector.batch_size == 4
    if detector.device.type == "cpu":
        assert detector.precision == "bf16" and detector.amp_dtype == torch.bfloat16
        value = np.zeros((1, 1, 8, 8), np.float32)
        value[0, 0, 2:4, 2:4] = 1
        assert len(detector.detect([(0, 0)], [(0, 0)], value)) == 1
        assert probe.seen == (torch.device("cpu"), torch.bfloat16)
    fp32 = Detector(probe, spec, device="cpu", precision="fp32", batch_size=0)
    assert fp32.amp_dtype is None and fp32.batch_size == 1
    fp32.detect([(0, 0)], [(0, 0)], np.zeros((1, 1, 8, 8), np.float32))
    assert probe.seen == (torch.device("cpu"), None)


@pytest.mark.parametrize(("option", "params"), [
    ("--tta", TileInferParams(tta="flips")), ("--panoptic", TileInferParams(panoptic=True)),
    ("--opening", TileInferParams(opening=1)), ("--workers", TileInferParams())])
def test_options_for_blended_probabilities_are_refused(option: str, params: TileInferParams) -> None:
    with pytest.raises(ConfigError, match=option):
        check_run(instance_spec(), params, distributed=option == "--workers")


@pytest.fixture(scope="module")
def detector_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """``segflow`` tile inference of a GeoTIFF with an instance package (its network: :class:`Components`)."""
    import yaml

    from segflow.detect import run as detect_run
    from segflow.tile_infer import tile_infer
    from tests.helpers import write_geotiff

    folder = tmp_path_factory.mktemp("detector")
    value = convex_scene((150, 170), 11, count=60)
    write_geotiff(folder / "scene.tif", value[None].astype(np.uint8))
    package = folder / "components"
    package.mkdir()
    raw = instance_spec().model_dump(exclude_none=True)
    (package / "model.yaml").write_text(yaml.safe_dump(raw))
    patch = pytest.MonkeyPatch()
    patch.setattr(detect_run, "load_module", lambda package: Components())
    try:
        tile_infer(folder / "scene.tif", folder / "out", TileInferParams(model=str(package), tile=40, chunk=64,
                                                                        vectorize="gpkg", batch=4))
    finally:
        patch.undo()
    return folder / "out", value


@pytest.mark.slow
def test_tile_infer_with_an_instance_model_writes_labels_table_and_polygons(detector_run: tuple[Path, np.ndarray]
                                                                          ) -> None:
    import csv
    import json

    import pyogrio
    import rasterio
    import zarr

    out, value = detector_run
    want = reference(value)
    with rasterio.open(out / "labels.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), value)
    np.testing.assert_array_equal(zarr.open_group(out / "mask.zarr", mode="r")["instances"][...], want)
    with open(out / "instances.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["id"]) for r in rows] == list(range(1, want.max() + 1))
    for r in rows:
        k = int(r["id"])
        assert int(r["pixels"]) == int((want == k).sum())
        assert r["class"] == ("a" if value[want == k][0] == 1 else "b")
        assert float(r["mean_score"]) == pytest.approx(SCORES[int(value[want == k][0])], abs=1e-6)
    frame = pyogrio.read_dataframe(out / "instances.gpkg")
    assert sorted(frame.instance_id) == list(range(1, want.max() + 1))
    by_id = frame.set_index("instance_id")
    for k in range(1, want.max() + 1):
        assert by_id.loc[k, "area_px"] == int((want == k).sum())
        assert by_id.loc[k, "mean_score"] == pytest.approx(SCORES[int(value[want == k][0])], abs=1e-6)
    record = json.loads((out / "run.json").read_text())
    assert record["windows"]["evaluated"] == record["windows"]["total"]


@pytest.mark.slow
def test_the_real_network_plugs_in() -> None:
    from segflow.models.maskrcnn import build_maskrcnn

    torch.manual_seed(0)
    network = build_maskrcnn(1, 3, {"trunk_width": 8, "fpn_width": 16, "roi": {"representation": 32,
                                                                               "mask_width": 8}})
    detector = Detector(network, instance_spec(score_threshold=0.01), device="cpu")
    value = np.random.default_rng(0).random((2, 1, 40, 36)).astype(np.float32)
    valid = np.ones((2, 40, 36), bool)
    valid[1, :, :10] = False
    found = detector.detect([(0, 0), (0, 1)], [(0, 0), (0, 30)], value, valid)
    assert found, "a random network scores some boxes above 0.01"
    for det in found:
        assert det.label in (1, 2) and 0.01 <= det.score <= 1 and det.mask.dtype == bool and det.pixels > 0
        box = det.box
        assert 0 <= box.start[0] and box.stop[0] <= 40
        lo = 0 if det.window == (0, 0) else 40  # columns 30..39 of window (0, 1) are nodata
        assert lo <= box.start[1] and box.stop[1] <= (36 if det.window == (0, 0) else 66)


@pytest.mark.parametrize(("change", "message"), [
    ({"output": {"activation": "softmax"}}, "declare output: {activation: instances}"),
    ({"architecture": {"name": "unet"}}, "declare architecture: {name: maskrcnn}"),
    ({"weights": "m.onnx"}, "needs its parameters"),
    ({"spatial_dims": 3, "tile": 32}, "maskrcnn is 2D"),
    ({"classes": [{"name": "background"}, {"name": "a"}]}, "kind thing"),
    ({"output": {"activation": "softmax", "score_threshold": 0.3}}, "score_threshold is for instance outputs"),
])
def test_instance_package_contract(change: dict[str, object], message: str) -> None:
    from pydantic import ValidationError

    raw = instance_spec().model_dump(exclude_none=True)
    raw.update(change)
    with pytest.raises(ValidationError, match=message.replace("{", r"\{").replace("}", r"\}")):
        ModelSpec.model_validate(raw)


def test_maskrcnn_args_round_trip_and_unknown_args() -> None:
    from segflow.models.maskrcnn import build_maskrcnn, config_args

    args = {"depth": "resnet18", "fpn_width": 16, "trunk_width": 8, "rpn": {"anchor_sizes": [8, 16, 32, 64, 128]},
            "roi": {"mask_width": 8}}
    network = build_maskrcnn(2, 2, args)
    assert config_args(network.config) == args
    assert build_maskrcnn(2, 2, config_args(network.config)).config == network.config
    with pytest.raises(ConfigError, match=r"unknown args \['widht'\]"):
        build_maskrcnn(2, 2, {"widht": 3})
    with pytest.raises(ConfigError, match=r"unknown roi settings \['size'\]"):
        build_maskrcnn(2, 2, {"roi": {"size": 3}})


def test_an_instance_package_is_not_exported(tmp_path: Path) -> None:
    import yaml

    from segflow.errors import ModelError
    from segflow.models.export import export_package

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "model.yaml").write_text(yaml.safe_dump(instance_spec().model_dump(exclude_none=True)))
    with pytest.raises(ModelError, match=r"instance model .* not exported"):
        export_package(tmp_path / "pkg", tmp_path / "out", "onnx")
    assert not (tmp_path / "out").exists()



@pytest.mark.slow
def test_the_demo_instance_package_finds_the_buildings_of_an_unseen_scene(tmp_path: Path) -> None:
    """demo-maskrcnn-2d through tile inference on a fresh synthetic scene (seed never trained on): its objects
    match the truth buildings, touching pairs included (each a building of its own)."""
    import zarr

    from segflow.instance_metrics import match_instances
    from segflow.synthetic import synthesize_instances, write_synthetic_scene
    from segflow.tile_infer import tile_infer

    scene = write_synthetic_scene(tmp_path / "s.tif", width=480, height=400, seed=4242)
    tile_infer(scene.path, tmp_path / "out", TileInferParams(model="demo-maskrcnn-2d"))
    store = zarr.open_group(tmp_path / "out" / "mask.zarr", mode="r")
    ids = np.asarray(store["instances"][...])
    truth = synthesize_instances(0, 0, 400, 480, seed=4242)
    matches = match_instances(ids, store["instance_scores"][...], truth, iou=0.5)
    score = matches.score
    assert score.f1 > 0.8 and score.precision > 0.75 and score.recall > 0.8, score
