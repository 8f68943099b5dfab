"""mask.zarr: labels and scores as users read them — scores NaN exactly where labels are nodata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from segflow.errors import InputError
from segflow.io.mask_store import MaskStore
from segflow.labels import LABEL_NODATA
from segflow.tile_infer import TileInferParams, tile_infer
from segflow.tiling import Box

from .helpers import make_ts_package, random_image, write_geotiff


def _nodata_scene(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 3-band uint16 scene with nodata 0 and its nodata mask (Y, X): a corner larger than a
    window (whole windows skipped), a disk (windows half in, half out) and scattered pixels."""
    image = random_image((3, *shape), seed=seed) + 1  # no accidental zeros
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    nodata = (yy < 45) & (xx < 70)
    nodata |= (yy - 100) ** 2 + (xx - 110) ** 2 < 22**2
    nodata |= np.random.default_rng(seed).random(shape) < 0.01
    image[:, nodata] = 0
    partial = image.copy()
    partial[0, 140:, :] = 0  # one band of three at nodata: still data (GDAL's rule: all bands)
    return partial, nodata


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ts_package(tmp_path_factory.mktemp("pkg") / "net", bands=3, classes=4, tile=32)


@pytest.mark.parametrize("chunk", [64, 512])
def test_scores_are_nan_exactly_where_labels_are_nodata(tmp_path: Path, package: Path, chunk: int) -> None:
    image, nodata = _nodata_scene((170, 190), seed=11)
    scene = write_geotiff(tmp_path / "scene.tif", image, nodata=0)
    tile_infer(scene, tmp_path / "out", TileInferParams(model=str(package), chunk=chunk, batch=8, save_scores=True,
                                                         device="cpu"))
    group = zarr.open_group(str(tmp_path / "out" / "mask.zarr"), mode="r")
    labels, scores = group["labels"][:], group["scores"][:]
    assert scores.dtype == np.float16 and scores.shape == (4, *nodata.shape)
    np.testing.assert_array_equal(labels == LABEL_NODATA, nodata)
    np.testing.assert_array_equal(np.isnan(scores), np.broadcast_to(nodata, scores.shape))
    valid = scores[:, ~nodata].astype(np.float32)
    assert (valid >= 0).all() and (valid <= 1).all()
    np.testing.assert_allclose(valid.sum(axis=0), 1.0, atol=4e-3)  # softmax probabilities, float16
    chosen = np.take_along_axis(valid, labels[~nodata][None].astype(np.int64), axis=0)[0]
    np.testing.assert_allclose(chosen, valid.max(axis=0), atol=1e-3)  # labels are the arg-max of the scores


def test_store_write_sets_nan_where_not_valid_and_keeps_the_rest(tmp_path: Path) -> None:
    store = MaskStore.create(tmp_path / "mask.zarr", (40, 50), (20, 25), ["a", "b"], save_scores=True, attrs={})
    rng = np.random.default_rng(0)
    box = Box((20, 25), (40, 50))
    scores = rng.random((2, 20, 25)).astype(np.float32)
    valid = rng.random((20, 25)) > 0.3
    labels = np.where(valid, scores.argmax(axis=0), LABEL_NODATA).astype(np.uint8)
    store.write(box, labels, scores, valid)
    store.write(Box((0, 25), (20, 50)), np.zeros((20, 25), np.uint8), scores, None)  # all valid
    reread = MaskStore.open(tmp_path / "mask.zarr")
    assert reread.scores is not None
    written = np.asarray(reread.scores[(slice(None), *box.slices)])
    np.testing.assert_array_equal(np.isnan(written), np.broadcast_to(~valid, written.shape))
    np.testing.assert_array_equal(written[:, valid], scores[:, valid].astype(np.float16))
    np.testing.assert_array_equal(reread.read_labels(box), labels)
    np.testing.assert_array_equal(np.asarray(reread.scores[:, :20, 25:]), scores.astype(np.float16))
    untouched = np.asarray(reread.scores[:, :, :25])  # never written: the fill values
    assert np.isnan(untouched).all() and (reread.read_labels(Box((0, 0), (40, 25))) == LABEL_NODATA).all()


@pytest.mark.parametrize(("shape", "chunk", "thresholds"), [
    ((1030, 2100), (1024, 2048), None),            # shards of 512² inner chunks
    ((700, 900), (512, 512), None),                # 512 is not > 512: plain chunks
    ((700, 900), (1536, 1000), None),              # 1000 is not a multiple of 512: plain chunks
    ((40, 300, 260), (128, 128, 128), None),       # a volume
    ((1030, 2100), (1024, 1024), (0.5, 0.3, 0.8)),  # multi-label planes
])
def test_the_store_on_disk_is_what_readers_are_promised(tmp_path: Path, shape: tuple[int, ...],
                                                        chunk: tuple[int, ...],
                                                        thresholds: tuple[float, ...] | None) -> None:
    """Read back with plain zarr (as a GIS or napari user would): zarr v3, attributes, dtypes, fill values,
    dimension names and chunking exactly as the README's mask.zarr section says."""
    names = ["background", "cloud", "shadow"]
    store = MaskStore.create(tmp_path / "mask.zarr", shape, chunk, names, save_scores=True,
                             attrs={"crs": "EPSG:32633", "run_fingerprint": "f"}, thresholds=thresholds)
    group = zarr.open_group(str(tmp_path / "mask.zarr"), mode="r")
    assert group.metadata.zarr_format == 3
    spatial = ["z", "y", "x"][-len(shape):]
    kind = {"label_kind": "single"} if thresholds is None else {"label_kind": "multilabel",
                                                                  "thresholds": list(thresholds)}
    assert dict(group.attrs) == {"crs": "EPSG:32633", "run_fingerprint": "f", "nodata": 255, "class_names": names,
                                 "axes": "".join(spatial).upper(), "chunk": list(chunk), **kind}
    tiled = all(c % 512 == 0 and c > 512 for c in chunk)
    planes = "labels" if thresholds is None else "present"
    lead = () if thresholds is None else (1,)
    for name, dims, dtype in ((planes, spatial if thresholds is None else ["class", *spatial], "uint8"),
                              ("scores", ["class", *spatial], "float16")):
        array = group[name]
        assert isinstance(array, zarr.Array) and array.dtype == np.dtype(dtype)
        assert list(array.metadata.dimension_names) == dims
        assert array.shape == (tuple(shape) if name == planes and thresholds is None else (3, *shape))
        fill = array.metadata.fill_value
        assert (np.isnan(fill) if dtype == "float16" else fill == 255)
        own_lead = lead if name == planes else (1,)
        if tiled:
            assert array.shards == (*own_lead, *chunk) and array.chunks == (*own_lead, *(512,) * len(chunk))
        else:
            assert array.shards is None and array.chunks == (*own_lead, *chunk)
    assert (tmp_path / "mask.zarr" / ".segflow-done").is_dir() and store.multilabel == (thresholds is not None)
    assert MaskStore.open(tmp_path / "mask.zarr").thresholds == thresholds


def test_thresholds_must_be_one_per_class(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 thresholds for 3 classes"):
        MaskStore.create(tmp_path / "m.zarr", (8, 8), (8, 8), ["a", "b", "c"], save_scores=False, attrs={},
                         thresholds=(0.5, 0.5))
    assert not (tmp_path / "m.zarr").exists()


def test_completion_records_round_trip_and_a_bad_one_does_not_hide_the_others(tmp_path: Path) -> None:
    store = MaskStore.create(tmp_path / "m.zarr", (4, 8, 8), (2, 4, 4), ["a", "b"], save_scores=False, attrs={})
    records = {(0, 1, 0): {"windows": 3}, (1, 0, 1): {"windows": 5, "note": "é"}, (0, 0, 0): {}}
    for index, record in records.items():
        store.mark_done(index, record)
    (tmp_path / "m.zarr" / ".segflow-done" / "0_0_1.json").write_text("{broken")  # a torn record: not finished
    (tmp_path / "m.zarr" / ".segflow-done" / "0_x_1.json").write_text("{}")  # not a chunk's name
    for name in sorted(p.name for p in (tmp_path / "m.zarr" / ".segflow-done").iterdir()):
        assert name.endswith(".json")
    assert MaskStore.open(tmp_path / "m.zarr").done() == records


def test_multilabel_planes_are_written_whole_and_a_single_map_is_refused(tmp_path: Path) -> None:
    store = MaskStore.create(tmp_path / "m.zarr", (6, 10), (6, 10), ["a", "b", "c"], save_scores=True, attrs={},
                             thresholds=(0.5, 0.5, 0.5))
    box = Box((2, 3), (5, 9))
    planes = np.random.default_rng(0).integers(0, 2, size=(3, 3, 6), dtype=np.uint8)
    scores = np.random.default_rng(1).random((3, 3, 6)).astype(np.float32)
    valid = np.ones((3, 6), bool)
    valid[0, 0] = False
    store.write(box, planes, scores, valid)
    assert np.array_equal(store.read_present(box), planes) and np.array_equal(store.read_present(box, 2), planes[2])
    assert np.all(np.asarray(store.present)[:, :2] == LABEL_NODATA)
    stored = np.asarray(store.scores)[:, 2:5, 3:9]
    assert stored.dtype == np.float16 and np.isnan(stored[:, 0, 0]).all()
    np.testing.assert_array_equal(stored[:, valid], scores[:, valid].astype(np.float16))
    with pytest.raises(ValueError, match=r"takes planes of shape \(3, 3, 6\) for .* got \(3, 6\)"):
        store.write(box, planes[0])


def test_scores_given_to_a_store_without_scores_are_dropped(tmp_path: Path) -> None:
    store = MaskStore.create(tmp_path / "m.zarr", (4, 4), (4, 4), ["a", "b"], save_scores=False, attrs={})
    store.write(Box((0, 0), (4, 4)), np.ones((4, 4), np.uint8), np.zeros((2, 4, 4), np.float32))
    assert store.scores is None and "scores" not in zarr.open_group(str(tmp_path / "m.zarr"), mode="r")


def test_opening_something_else_names_it(tmp_path: Path) -> None:
    from segflow.errors import InputError

    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(InputError, match=r"other.zarr is not a segflow mask store \(.+\)$"):
        MaskStore.open(tmp_path / "other.zarr")
    MaskStore.create(tmp_path / "m.zarr", (4, 4), (4, 4), ["a", "b"], save_scores=False, attrs={})
    with pytest.raises(Exception, match=r"read.only|ReadOnly"):
        MaskStore.open(tmp_path / "m.zarr").labels[0, 0] = 1  # "r" by default: nothing is changed by a reader


def test_create_replaces_what_was_at_the_path(tmp_path: Path) -> None:
    """A new store keeps nothing of an earlier one at its path: no arrays, no completion records."""
    old = MaskStore.create(tmp_path / "m.zarr", (4, 4), (4, 4), ["a", "b"], save_scores=True, attrs={"x": 1})
    old.group.create_array("instances", shape=(4, 4), dtype="uint32")
    old.mark_done((0, 0), {"index": [0, 0]})
    new = MaskStore.create(tmp_path / "m.zarr", (4, 4), (4, 4), ["a", "b"], save_scores=False, attrs={})
    assert sorted(new.group.keys()) == ["labels"] and new.done() == {} and "x" not in new.group.attrs


def test_open_error_gives_the_cause(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"is not a segflow mask store \(No group found in store") as caught:
        MaskStore.open(tmp_path)
    assert "(None)" not in str(caught.value)


def test_write_refuses_arrays_of_another_shape_than_the_box(tmp_path: Path) -> None:
    """zarr takes a larger array silently and keeps its first part: the store says what was wrong instead."""
    store = MaskStore.create(tmp_path / "m.zarr", (6, 9), (3, 4), ["background", "a", "b"], save_scores=True,
                             attrs={})
    box = Box((0, 0), (3, 4))
    with pytest.raises(ValueError, match=r"^labels of shape \(4, 4\) for .*; expected \(3, 4\)$"):
        store.write(box, np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"^scores of shape \(6, 3, 4\) for .*; expected \(3, 3, 4\)$"):
        store.write(box, np.zeros((3, 4), np.uint8), np.zeros((6, 3, 4), np.float32))
    store.write(box, np.zeros((3, 4), np.uint8), np.zeros((3, 3, 4), np.float32))
