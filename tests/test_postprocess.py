"""Post-processing (segflow.postprocess): chunked results against scipy / scikit-image on the whole array."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage import morphology as skmorph
from skimage.measure import label as sk_label
from skimage.segmentation import watershed

from segflow.errors import ConfigError, SegflowWarning
from segflow.io.mask_store import MaskStore
from segflow.labels import LABEL_NODATA
from segflow.postprocess import (
    ball,
    boundary_class,
    edt_markers,
    morphology,
    morphology_box,
    morphology_halo,
    separate,
    separate_by_boundary,
    split_component,
)
from segflow.tiling import Box

# ----------------------------------------------------------------------------- inputs


def random_labels(rng: np.random.Generator, shape: tuple[int, ...], classes: int, blob: float, nodata: float
                  ) -> np.ndarray:
    """Classes ``0..classes-1``: white noise (``blob`` 0) or smoothed noise cut at quantiles; some nodata."""
    noise = rng.random(shape)
    if blob:
        noise = ndimage.gaussian_filter(noise, blob)
    labels = np.digitize(noise, np.quantile(noise, np.linspace(0, 1, classes + 1)[1:-1])).astype(np.uint8)
    labels[rng.random(shape) < nodata] = LABEL_NODATA
    return labels


@st.composite
def label_maps(draw: st.DrawFn, max_side: int = 40, nodata: bool = True) -> dict[str, Any]:
    shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    labels = random_labels(rng, shape, draw(st.integers(2, 4)), draw(st.sampled_from([0.0, 1.0, 2.0, 3.0])),
                           draw(st.sampled_from([0.0, 0.02])) if nodata else 0.0)
    return {"labels": labels, "chunk": (draw(st.integers(1, shape[0])), draw(st.integers(1, shape[1]))),
            "seed": draw(st.integers(0, 2**32 - 1))}


def disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return np.asarray((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)


# ----------------------------------------------------------------------------- morphology


def reference_morphology(labels: np.ndarray, classes: list[int], opening: int, closing: int, fill: int,
                         border: str) -> np.ndarray:
    """Whole-array reference: scipy's binary_closing / binary_opening (border "zero", their default border_value=0)
    or scikit-image's with mode="ignore" (border "ignore"), per class, combined by the documented rule."""
    def smooth(mask: np.ndarray) -> np.ndarray:
        if border == "zero":
            mask = ndimage.binary_closing(mask, skmorph.disk(closing).astype(bool))
            return np.asarray(ndimage.binary_opening(mask, skmorph.disk(opening).astype(bool)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            mask = skmorph.binary_closing(mask, skmorph.disk(closing), mode="ignore")
            return np.asarray(skmorph.binary_opening(mask, skmorph.disk(opening), mode="ignore"))

    smoothed = {c: smooth(labels == c) for c in classes}
    out = labels.copy()
    for index in np.ndindex(labels.shape):
        own = int(labels[index])
        if own == LABEL_NODATA or (own in classes and smoothed[own][index]):
            continue
        claims = [c for c in classes if c != own and smoothed[c][index]]
        if claims:
            out[index] = claims[0]
        elif own in classes:
            out[index] = fill
    return out


def test_ball_is_skimage_disk_and_ball() -> None:
    for r in range(7):
        np.testing.assert_array_equal(ball(r, 2), skmorph.disk(r).astype(bool))
        np.testing.assert_array_equal(ball(r, 3), skmorph.ball(r).astype(bool))


@settings(max_examples=120)
@given(label_maps(), st.integers(0, 3), st.integers(0, 3), st.sampled_from(["ignore", "zero"]),
       st.sampled_from([[1], [1, 2], [2, 0, 1]]), st.integers(0, 3))
def test_morphology_chunked_equals_the_whole_array_reference(case: dict[str, Any], opening: int, closing: int,
                                                             border: str, classes: list[int], fill: int) -> None:
    labels = case["labels"]
    out = np.full(labels.shape, 77, np.uint8)  # garbage: every pixel must be written
    morphology(labels, out, case["chunk"], classes=classes, opening=opening, closing=closing, fill=fill, border=border)
    expected = reference_morphology(labels, classes, opening, closing, fill, border)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("border", ["ignore", "zero"])
def test_morphology_is_bitwise_the_same_for_every_chunk(border: str) -> None:
    labels = random_labels(np.random.default_rng(3), (97, 131), 4, 2.0, 0.01)
    results = []
    for chunk in [(97, 131), (16, 16), (7, 50), (1, 131), (33, 5)]:
        out = np.zeros(labels.shape, np.uint8)
        morphology(labels, out, chunk, classes=[1, 3], opening=2, closing=3, border=border)
        results.append(out)
    assert (results[0] != labels).sum() > 200  # it really changes things
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


def test_halo_is_exact_and_one_pixel_less_is_not() -> None:
    """Closing radius r: the pixel p is filled only because of one pixel q exactly 2r away (p, c, q in a row,
    every other disk through p already meets the class), so a halo of 2r - 1 px gets p wrong."""
    r = 3
    p, c, q = (20, 19), (20, 19 + r), (20, 19 + 2 * r)
    labels = np.where(disk((40, 40), *c, r), 0, 1).astype(np.uint8)
    labels[q] = 1
    whole = reference_morphology(labels, [1], 0, r, 0, "ignore")
    assert whole[p] == 1 and reference_morphology(np.where(np.arange(40) == q[1], 0, labels), [1], 0, r, 0,
                                                  "ignore")[p] == 0
    box = Box((0, 0), (40, 20))  # p on the last column of its chunk, q 2r beyond it
    need = morphology_halo(opening=0, closing=r)
    assert need == 2 * r
    np.testing.assert_array_equal(morphology_box(labels, box, labels.shape, classes=[1], closing=r), whole[box.slices])
    short = morphology_box(labels, box, labels.shape, classes=[1], closing=r, halo=need - 1)
    assert short[p] == 0


def test_border_conventions() -> None:
    """A field touching the scene edge: "ignore" keeps it whole; "zero" (scipy's default) strips the edge band."""
    labels = np.zeros((30, 30), np.uint8)
    labels[:, :12] = 1
    keep, strip = np.zeros_like(labels), np.zeros_like(labels)
    morphology(labels, keep, 8, classes=[1], closing=2, opening=2, border="ignore")
    morphology(labels, strip, 8, classes=[1], closing=2, opening=2, border="zero")
    np.testing.assert_array_equal(keep, labels)
    assert (strip[:, :2] == 0).all() and (strip[:2] == 0).all() and (strip[-2:] == 0).all()
    assert (strip[4:-4, 2:12] == 1).all() and (strip[:, 12:] == 0).all()
    np.testing.assert_array_equal(strip, ndimage.binary_opening(ndimage.binary_closing(labels, ball(2)), ball(2)))


def test_opening_removes_specks_and_closing_fills_holes() -> None:
    labels = np.zeros((40, 40), np.uint8)
    labels[5:25, 5:25] = 2
    labels[14, 14] = 0  # a one-pixel hole
    labels[33, 33] = 2  # a one-pixel speck
    labels[30:38, 2:10] = 3  # another class is left alone
    labels[0, 39] = LABEL_NODATA
    out = np.zeros_like(labels)
    morphology(labels, out, 16, classes=[2], opening=1, closing=1, fill=0)
    expected = labels.copy()
    expected[14, 14] = 2
    expected[33, 33] = 0
    for corner in [(5, 5), (5, 24), (24, 5), (24, 24)]:  # a radius-1 disk (a cross) cannot reach square corners
        expected[corner] = 0
    np.testing.assert_array_equal(out, expected)


def test_morphology_reads_a_mask_store_and_writes_zarr(tmp_path: Path) -> None:
    labels = random_labels(np.random.default_rng(5), (70, 90), 3, 2.0, 0.0)
    store = MaskStore.create(tmp_path / "mask.zarr", labels.shape, (32, 32), ["a", "b", "c"], save_scores=False,
                             attrs={})
    store.labels[...] = labels
    out = store.group.create_array("smoothed", shape=labels.shape, dtype="uint8", chunks=(32, 32), fill_value=0)
    morphology(store, out, (32, 32), classes=[1, 2], opening=1, closing=2)
    np.testing.assert_array_equal(out[...], reference_morphology(labels, [1, 2], 1, 2, 0, "ignore"))


def test_morphology_refuses_bad_arguments() -> None:
    labels = np.zeros((8, 8), np.uint8)
    out = np.zeros_like(labels)
    with pytest.raises(ConfigError, match="separate output"):
        morphology(labels, labels, 4, classes=[1], opening=1)
    with pytest.raises(ConfigError, match="radius"):
        morphology(labels, out, 4, classes=[1], opening=-1)
    with pytest.raises(ConfigError, match="radius"):
        morphology(labels, out, 4, classes=[1], closing=1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="classes"):
        morphology(labels, out, 4, classes=[], opening=1)
    with pytest.raises(ConfigError, match="classes"):
        morphology(labels, out, 4, classes=[LABEL_NODATA], opening=1)
    with pytest.raises(ConfigError, match="fill"):
        morphology(labels, out, 4, classes=[1], opening=1, fill=LABEL_NODATA)
    with pytest.raises(ConfigError, match="border"):
        morphology(labels, out, 4, classes=[1], opening=1, border="reflect")
    with pytest.raises(ConfigError, match="dtype"):
        morphology(labels, np.zeros((8, 8), np.bool_), 4, classes=[1], opening=1)
    with pytest.raises(ConfigError, match="shape"):
        morphology(labels, np.zeros((8, 9), np.uint8), 4, classes=[1], opening=1)


# ----------------------------------------------------------------------------- watershed separation


def run_separate(labels: np.ndarray, chunk: Any, **kw: Any) -> tuple[np.ndarray, np.ndarray, Any]:
    comp = np.full(labels.shape, 5, np.uint32)
    out = np.full(labels.shape, 9, np.uint32)  # garbage: every pixel must be written
    result = separate(labels, comp, out, chunk, **kw)
    return comp, out, result


def by_first_pixel(ids: np.ndarray) -> np.ndarray:
    """``ids`` renumbered 1, 2, ... in raster order of each id's first pixel (0 stays 0)."""
    values, first = np.unique(ids.ravel(), return_index=True)
    keep = values > 0
    order = values[keep][np.argsort(first[keep])]
    table = np.zeros(int(ids.max()) + 1, np.int64)
    table[order] = np.arange(1, len(order) + 1)
    return table[ids]


def reference_separation(labels: np.ndarray, things: list[int], min_distance: float, min_depth: float,
                         connectivity: int = 1) -> np.ndarray:
    """skimage's watershed on the whole array, one call per connected component (with that component's
    markers, mask and EDT, all computed on the whole array), then each region's connected pieces, numbered by
    first pixel. Not one call for all components: skimage seeds every marker pixel with the same priority
    (value -inf, age 0), so the order they leave its heap, and how plateau ties fall, depends on what else is
    in the heap; the definition is per component."""
    structure = ndimage.generate_binary_structure(labels.ndim, connectivity)
    regions = np.zeros(labels.shape, np.int64)
    for c in things:
        comp, n = ndimage.label(labels == c, structure)
        for k in range(1, n + 1):
            mask = comp == k
            if mask.all():
                regions[mask] = 1
                continue
            d = ndimage.distance_transform_edt(mask)
            markers, _ = edt_markers(mask, d, min_distance=min_distance, min_depth=min_depth)
            mine = watershed(-d, markers, mask=mask, connectivity=connectivity)
            regions[mask] = mine[mask] + regions.max()
    return by_first_pixel(sk_label(regions, background=0, connectivity=connectivity))


@pytest.mark.parametrize("chunk", [(100, 120), (17, 23), (8, 120)])
def test_two_overlapping_disks_are_two_instances(chunk: tuple[int, int]) -> None:
    shape = (100, 120)
    labels = (disk(shape, 50, 40, 20) | disk(shape, 50, 72, 20)).astype(np.uint8)
    comp, out, result = run_separate(labels, chunk, things=[1], min_distance=8)
    assert len(result.instances) == 2 and list(result.split) == [1] and not result.too_large.size
    np.testing.assert_array_equal(comp, labels)  # the components are kept as they are
    left, right = out[50, 40], out[50, 72]
    assert {int(left), int(right)} == {1, 2}
    assert (out[disk(shape, 50, 40, 14)] == left).all() and (out[disk(shape, 50, 72, 14)] == right).all()
    np.testing.assert_array_equal(out, reference_separation(labels, [1], 8, 1.0))


def test_a_single_disk_and_an_elongated_rectangle_stay_whole() -> None:
    shape = (60, 200)
    labels = disk(shape, 30, 30, 22).astype(np.uint8)
    labels[10:30, 70:190] = 1  # a long rectangle: its EDT ridge is one plateau
    _, out, result = run_separate(labels, (16, 16), things=[1], min_distance=5)
    assert len(result.instances) == 2 and not result.split.size
    np.testing.assert_array_equal(out, ndimage.label(labels)[0])


def test_a_dumbbell_with_a_thin_neck_is_two_instances() -> None:
    shape = (60, 120)
    labels = (disk(shape, 30, 20, 15) | disk(shape, 30, 100, 15)).astype(np.uint8)
    labels[28:33, 20:100] = 1  # a long neck 5 px wide
    _, out, result = run_separate(labels, 32, things=[1], min_distance=10)
    assert len(result.instances) == 2
    assert out[30, 20] != out[30, 100] and out[30, 5] == out[30, 20] and out[30, 115] == out[30, 100]
    np.testing.assert_array_equal(out, reference_separation(labels, [1], 10, 1.0))


@settings(max_examples=60)
@given(st.integers(0, 2**32 - 1), st.integers(4, 14))
def test_blobs_smaller_than_min_distance_are_never_split(seed: int, size: int) -> None:
    """Irregular noise blobs whose pixels all lie within min_distance of each other: one instance each,
    whichever maxima their EDT has (the rule itself, without separate's size shortcut)."""
    rng = np.random.default_rng(seed)
    blob = ndimage.gaussian_filter(rng.random((size, size)), 0.8) > 0.5
    mask = np.pad(blob, 1)
    for piece in range(1, ndimage.label(mask)[1] + 1):
        one = ndimage.label(mask)[0] == piece
        parts, n = split_component(one, min_distance=float(np.hypot(size - 1, size - 1)), min_depth=0.1)
        assert n == 1 and (parts[one] == 1).all()


@settings(max_examples=80)
@given(label_maps(max_side=48, nodata=False), st.sampled_from([2.0, 4.0, 6.0]), st.sampled_from([0.5, 1.0]),
       st.sampled_from([[1], [1, 2]]), st.integers(1, 2))
def test_separate_chunked_equals_skimage_watershed_on_the_whole_array(case: dict[str, Any], min_distance: float,
                                                                      min_depth: float, things: list[int],
                                                                      connectivity: int) -> None:
    labels = case["labels"]
    _, out, result = run_separate(labels, case["chunk"], things=things, min_distance=min_distance,
                                  min_depth=min_depth, connectivity=connectivity)
    expected = reference_separation(labels, things, min_distance, min_depth, connectivity)
    np.testing.assert_array_equal(out, expected)
    assert len(result.instances) == expected.max()


def test_touching_disks_of_many_sizes_bitwise_for_every_chunk_and_measured() -> None:
    rng = np.random.default_rng(11)
    shape = (180, 220)
    labels = np.zeros(shape, np.uint8)
    for _ in range(40):
        labels[disk(shape, rng.uniform(0, 180), rng.uniform(0, 220), rng.uniform(4, 14))] = rng.integers(1, 3)
    value = rng.normal(size=shape)
    results = []
    for chunk in [(180, 220), (32, 32), (50, 17)]:
        _, out, result = run_separate(labels, chunk, things=[1, 2], min_distance=6, values={"v": value})
        results.append((out, result))
    out, result = results[0]
    for other, other_result in results[1:]:
        np.testing.assert_array_equal(other, out)
        np.testing.assert_array_equal(other_result.parent, result.parent)
    inst, n = result.instances, int(out.max())
    assert len(inst) == n and n > ndimage.label(labels > 0)[1] and result.split.size > 0
    index = np.arange(1, n + 1)
    np.testing.assert_array_equal(inst.voxels, ndimage.sum_labels(np.ones(shape), out, index))
    np.testing.assert_array_equal(inst.class_id, ndimage.maximum(labels, out, index))
    np.testing.assert_allclose(inst.centroid, ndimage.center_of_mass(np.ones(shape), out, index), rtol=1e-12)
    objects = ndimage.find_objects(out)
    np.testing.assert_array_equal(inst.bbox_start, [[s.start for s in o] for o in objects])
    np.testing.assert_array_equal(inst.bbox_stop, [[s.stop for s in o] for o in objects])
    np.testing.assert_allclose(inst.sums["v"], ndimage.sum_labels(value, out, index), rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(inst.maxima["v"], ndimage.maximum(value, out, index))
    np.testing.assert_array_equal(inst.first, [np.flatnonzero(out.ravel() == i)[0] for i in index])
    np.testing.assert_array_equal(out, reference_separation(labels, [1, 2], 6, 1.0))
    for i in index:  # each instance is connected and lies in one component
        assert ndimage.label(out == i)[1] == 1 and len(np.unique(labels[out == i])) == 1


def test_components_larger_than_the_window_are_left_whole_and_reported() -> None:
    shape = (60, 200)
    labels = np.zeros(shape, np.uint8)
    labels[(disk(shape, 30, 25, 15) | disk(shape, 30, 50, 15))] = 1  # 32 px tall, 57 px wide box + 2
    labels[(disk(shape, 30, 125, 15) | disk(shape, 30, 150, 15))] = 1
    labels[:, 100:102] = 0
    _, out, result = run_separate(labels, 16, things=[1], min_distance=5, window=(40, 58))
    assert list(result.too_large) == [] and len(result.instances) == 4
    with pytest.warns(SegflowWarning, match=r"2 components were left unsplit .* \(largest 33x58 px\)"):
        _, out, result = run_separate(labels, 16, things=[1], min_distance=5, window=(40, 57))
    assert list(result.too_large) == [1, 2] and len(result.instances) == 2
    np.testing.assert_array_equal(out, ndimage.label(labels)[0])


def test_separate_on_zarr_arrays_from_a_mask_store(tmp_path: Path) -> None:
    shape = (90, 110)
    labels = (disk(shape, 45, 35, 20) | disk(shape, 45, 70, 20)).astype(np.uint8)
    store = MaskStore.create(tmp_path / "mask.zarr", shape, (32, 32), ["bg", "tree"], save_scores=False, attrs={})
    store.labels[...] = labels
    comp = store.group.create_array("components", shape=shape, dtype="uint32", chunks=(32, 32), fill_value=0)
    ids = store.group.create_array("instances", shape=shape, dtype="uint32", chunks=(32, 32), fill_value=0)
    result = separate(store, comp, ids, (32, 32), things=[1], min_distance=8)
    assert len(result.instances) == 2
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "mask.zarr" / "instances"))[...],
                                  reference_separation(labels, [1], 8, 1.0))


def test_separate_refuses_bad_arguments() -> None:
    labels = np.zeros((8, 8), np.uint8)
    comp, out = np.zeros((8, 8), np.uint32), np.zeros((8, 8), np.uint32)
    with pytest.raises(ConfigError, match="min_distance"):
        separate(labels, comp, out, 4, things=[1], min_distance=-1)
    with pytest.raises(ConfigError, match="min_depth"):
        separate(labels, comp, out, 4, things=[1], min_distance=3, min_depth=0)
    with pytest.raises(ConfigError, match="window"):
        separate(labels, comp, out, 4, things=[1], min_distance=3, window=2)
    with pytest.raises(ConfigError, match="window"):
        separate(labels, comp, out, 4, things=[1], min_distance=3, window=(64, 64, 64))
    with pytest.raises(ConfigError, match="two different arrays"):
        separate(labels, out, out, 4, things=[1], min_distance=3)
    with pytest.raises(ConfigError, match="separate output"):
        separate(labels, comp, labels, 4, things=[1], min_distance=3)
    with pytest.raises(ConfigError, match="uint32"):
        separate(labels, comp, np.zeros((8, 8), np.uint8), 4, things=[1], min_distance=3)


def test_volumes_two_overlapping_balls_and_3d_morphology() -> None:
    zz, yy, xx = np.mgrid[:30, :34, :50]
    balls = ((zz - 15) ** 2 + (yy - 17) ** 2 + (xx - 15) ** 2 <= 100) | ((zz - 15) ** 2 + (yy - 17) ** 2 +
                                                                        (xx - 32) ** 2 <= 100)
    labels = balls.astype(np.uint8)
    outs = []
    for chunk in [(30, 34, 50), (7, 9, 11)]:
        _, out, result = run_separate(labels, chunk, things=[1], min_distance=5)
        assert len(result.instances) == 2 and out[15, 17, 15] != out[15, 17, 32]
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], reference_separation(labels, [1], 5, 1.0))
    noisy = random_labels(np.random.default_rng(8), (14, 17, 19), 3, 1.0, 0.0)
    smoothed = np.zeros_like(noisy)
    morphology(noisy, smoothed, (5, 6, 7), classes=[1], opening=1, closing=1, border="zero")
    mask = ndimage.binary_opening(ndimage.binary_closing(noisy == 1, skmorph.ball(1)), skmorph.ball(1))
    expected = np.where(mask, 1, np.where(noisy == 1, 0, noisy))
    np.testing.assert_array_equal(smoothed, expected)


# ----------------------------------------------------------------------------- boundary class


def reference_boundary(labels: np.ndarray, thing: int, boundary: int, width: int) -> np.ndarray:
    """Brute force: every boundary pixel takes the id of the nearest thing pixel within ``width`` (ties: smallest)."""
    ids = ndimage.label(labels == thing)[0]
    core = np.argwhere(ids > 0)
    out = ids.copy()
    for p in np.argwhere(labels == boundary):
        if not len(core):
            break
        d2 = ((core - p) ** 2).sum(axis=1)
        best = d2.min()
        if best <= width * width:
            out[tuple(p)] = ids[tuple(core[d2 == best].T)].min()
    return by_first_pixel(out)


@settings(max_examples=100)
@given(label_maps(max_side=36), st.integers(0, 4))
def test_boundary_separation_chunked_equals_brute_force(case: dict[str, Any], width: int) -> None:
    labels = case["labels"]
    value = np.random.default_rng(case["seed"]).normal(size=labels.shape)
    out = np.full(labels.shape, 3, np.uint32)
    result = separate_by_boundary(labels, out, case["chunk"], things=[1], boundary=2, max_width=width,
                                  values={"v": value})
    expected = reference_boundary(labels, 1, 2, width)
    np.testing.assert_array_equal(out, expected)
    assert result.unassigned == int(((labels == 2) & (expected == 0)).sum())
    n = int(expected.max())
    index = np.arange(1, n + 1)
    np.testing.assert_array_equal(result.instances.voxels, ndimage.sum_labels(np.ones(labels.shape), out, index))
    np.testing.assert_array_equal(result.instances.first, [np.flatnonzero(out.ravel() == i)[0] for i in index])
    objects = ndimage.find_objects(out)
    np.testing.assert_array_equal(result.instances.bbox_start, np.reshape([[s.start for s in o] for o in objects],
                                                                          (n, 2)))
    np.testing.assert_array_equal(result.instances.bbox_stop, np.reshape([[s.stop for s in o] for o in objects],
                                                                         (n, 2)))
    if n:
        np.testing.assert_allclose(result.instances.centroid,
                                   ndimage.center_of_mass(np.ones(labels.shape), out, index), rtol=1e-12)
        np.testing.assert_allclose(result.instances.sums["v"], ndimage.sum_labels(value, out, index), rtol=1e-9,
                                   atol=1e-9)
        np.testing.assert_array_equal(result.instances.maxima["v"], ndimage.maximum(value, out, index))
    assert (result.instances.class_id == 1).all()


def test_a_boundary_line_separates_two_touching_squares() -> None:
    labels = np.zeros((20, 30), np.uint8)
    labels[2:18, 2:28] = 1
    labels[2:18, 14:16] = 3  # a boundary band 2 px wide
    out = np.zeros(labels.shape, np.uint32)
    result = separate_by_boundary(labels, out, 7, things=[1], boundary=3, max_width=2)
    assert len(result.instances) == 2 and result.unassigned == 0
    assert (out[2:18, 2:15] == 1).all() and (out[2:18, 15:28] == 2).all()
    np.testing.assert_array_equal(result.instances.voxels, [16 * 13, 16 * 13])


def test_boundary_class_by_name() -> None:
    assert boundary_class(["background", "building", "Boundary"]) == 2
    assert boundary_class(["background", "contact", "cell"]) == 1
    assert boundary_class(["background", "building"]) is None
    with pytest.raises(ConfigError, match="only one"):
        boundary_class(["boundary", "contact"])
    with pytest.raises(ConfigError, match="not a thing class"):
        separate_by_boundary(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint32), 2, things=[1], boundary=1,
                             max_width=1)
