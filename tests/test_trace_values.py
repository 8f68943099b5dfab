"""What vector tracing traces (segflow.trace_values): class values, presence planes, instance ids above the
classes, watershed-separated instances and a detector's instances, each against a hand-built expectation."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zarr

from segflow.detect.paint import INSTANCE_SCORES, SOURCE
from segflow.errors import OutputError
from segflow.instances import label_instances
from segflow.io.mask_store import MaskStore
from segflow.labels import LABEL_NODATA
from segflow.tiling import Box
from segflow.trace_values import (
    class_values,
    detected_instances,
    instance_values,
    present_values,
    separated_values,
)

NAMES = ("background", "water", "building")
KINDS = ("stuff", "stuff", "thing")
N = LABEL_NODATA


def _store(tmp_path: Path, labels: np.ndarray) -> MaskStore:
    store = MaskStore.create(tmp_path / "mask.zarr", labels.shape, (4, 4), NAMES, save_scores=False, attrs={})
    store.labels[:] = labels
    return store


def test_class_values_are_the_labels_with_nodata_as_background() -> None:
    labels = np.array([[0, 1, N], [2, N, 1]], dtype=np.uint8)
    out = class_values(Box((0, 0), (2, 3)), labels)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 1, 0], [2, 0, 1]])
    assert labels[0, 2] == N, "the labels read are not changed"
    clean = np.array([[0, 2], [1, 1]], dtype=np.uint8)
    assert class_values(Box((0, 0), (2, 2)), clean) is clean, "no nodata: the labels themselves, no copy"


def test_present_values_are_one_where_a_plane_holds_its_class() -> None:
    plane = np.array([[2, N], [N, 2]], dtype=np.uint8)  # class 2's plane: 2 where present, nodata elsewhere
    out = present_values(Box((0, 0), (2, 2)), plane)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[1, 0], [0, 1]])


def test_instance_values_put_ids_above_the_classes_and_classes_elsewhere() -> None:
    ids = zarr.create_array(store={}, shape=(3, 4), dtype="uint32", chunks=(2, 2), fill_value=0)
    ids[:] = np.array([[0, 1, 1, 0], [0, 0, 0, 2], [7, 0, 0, 2]], dtype=np.uint32)
    ids.attrs["count"] = 7
    labels = np.array([[0, 2, 2, 1], [N, 1, 0, 2], [2, 0, N, 2]], dtype=np.uint8)
    values = instance_values(ids, offset=3)
    box = Box((1, 1), (3, 4))  # a box away from the origin reads its own part of the ids
    out = values(box, labels[box.slices])
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[1, 0, 5], [0, 0, 5]])
    whole = values(Box((0, 0), (3, 4)), labels)
    np.testing.assert_array_equal(whole, [[0, 4, 4, 1], [0, 1, 0, 5], [10, 0, 0, 5]])


def test_instance_values_refuse_more_instances_than_int32_can_number() -> None:
    ids = zarr.create_array(store={}, shape=(2, 2), dtype="uint32", chunks=(2, 2), fill_value=0)
    top = int(np.iinfo(np.int32).max)
    instance_values(ids, offset=3, count=top - 4)  # the largest value, top - 1, still fits
    for count, offset in ((top - 3, 3), (top, 0)):
        with pytest.raises(OutputError, match=rf"^{count} instances: more than tracing can number; "
                                              r"use --separate none$"):
            instance_values(ids, offset=offset, count=count)
    ids.attrs["count"] = top - 2
    with pytest.raises(OutputError, match=f"^{top - 2} instances"):
        instance_values(ids, offset=2)
    ids.attrs["count"] = top - 3
    instance_values(ids, offset=2)  # the count attribute is read when no count is given
    del ids.attrs["count"]
    instance_values(zarr.create_array(store={}, shape=(1,), dtype="uint32", chunks=(1,)), offset=top - 1)


def test_separated_values_number_touching_things_apart(tmp_path: Path) -> None:
    labels = np.zeros((12, 20), dtype=np.uint8)
    yy, xx = np.mgrid[:12, :20]
    labels[(yy - 6) ** 2 + (xx - 5) ** 2 <= 16] = 2  # two discs of a thing class touching at x = 10
    labels[(yy - 6) ** 2 + (xx - 14) ** 2 <= 16] = 2
    labels[0, 15:] = 1  # a stuff region: never split, never an instance
    labels[11, :3] = N
    store = _store(tmp_path, labels)
    work = zarr.open_group(str(tmp_path / "work.zarr"), mode="w")
    values = separated_values(store, (4, 4), KINDS, min_distance=2.0, work=work)
    assert set(work.array_keys()) == {"components", "separated"}
    components = np.asarray(work["components"][...])
    assert components.dtype == np.uint32 and components.max() == 1, "the two discs touch: one component"
    out = values(Box((0, 0), labels.shape), labels)
    things = out[labels == 2]
    assert set(np.unique(things).tolist()) == {len(KINDS) + 1, len(KINDS) + 2}, "split in two, ids above the classes"
    assert out[6, 2] == len(KINDS) + 1 and out[6, 17] == len(KINDS) + 2, "numbered in raster order of first pixels"
    np.testing.assert_array_equal(out[labels == 1], 1)
    np.testing.assert_array_equal(out[labels == N], 0)
    np.testing.assert_array_equal(out[labels == 0], 0)
    expected = np.zeros_like(components)
    label_instances(labels, expected, 4, [2])
    np.testing.assert_array_equal(components, expected)
    again = separated_values(store, (5, 3), KINDS, min_distance=2.0, work=work)  # a second run replaces them
    np.testing.assert_array_equal(again(Box((0, 0), labels.shape), labels), out)


def test_detected_instances_are_found_only_from_a_detector_run(tmp_path: Path) -> None:
    store = _store(tmp_path, np.zeros((4, 4), dtype=np.uint8))
    assert detected_instances(store) is None, "no instances array"
    ids = store.group.create_array("instances", shape=(4, 4), dtype="uint32", chunks=(4, 4), fill_value=0)
    assert detected_instances(store) is None, "an instances array without the detector's source"
    ids.attrs["source"] = "watershed"
    assert detected_instances(store) is None, "another source"
    ids.attrs["source"] = SOURCE
    scores = store.group.create_array(INSTANCE_SCORES, shape=(3,), dtype="float32", chunks=(3,))
    scores[:] = np.array([0.5, 0.25, 0.875], dtype=np.float32)
    found = detected_instances(store)
    assert found is not None
    array, values = found
    assert array.path == "instances" and values.dtype == np.float64
    np.testing.assert_array_equal(values, [0.5, 0.25, 0.875])


def test_only_thing_classes_other_than_background_are_separated(tmp_path: Path) -> None:
    labels = np.zeros((8, 12), dtype=np.uint8)
    labels[2:6, 1:4] = 1  # a thing at class 1
    labels[2:6, 6:10] = 2  # a stuff class
    store = _store(tmp_path, labels)
    work = zarr.open_group(str(tmp_path / "work.zarr"), mode="w")
    kinds = ("thing", "thing", "stuff")  # class 0 called a thing: background is never an instance
    out = separated_values(store, (4, 4), kinds, min_distance=2.0, work=work)(Box((0, 0), labels.shape), labels)
    np.testing.assert_array_equal(np.unique(out[labels == 1]), [len(kinds) + 1])
    np.testing.assert_array_equal(out[labels == 0], 0)
    np.testing.assert_array_equal(out[labels == 2], 2)


def test_separated_values_refuse_more_instances_than_int32_can_number(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import segflow.postprocess as postprocess

    store = _store(tmp_path, np.zeros((4, 4), dtype=np.uint8))
    work = zarr.open_group(str(tmp_path / "work.zarr"), mode="w")
    monkeypatch.setattr(postprocess, "separate", lambda *a, **k: SimpleNamespace(instances=range(2**31)))
    with pytest.raises(OutputError, match=r"^2147483648 instances: more than tracing can number"):
        separated_values(store, (4, 4), KINDS, min_distance=2.0, work=work)
