"""Readers answer any slicing dask hands them (segflow.array_keys): indices, steps and reversed ranges are read
as one contiguous block and picked out of it, checked against numpy's own indexing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from segflow.array_keys import bounding_read
from segflow.training.chips import VolumeSource
from segflow.training.sources import source_scene


@st.composite
def keys(draw: st.DrawFn) -> tuple[tuple[int, ...], Any]:
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=4)))
    key = []
    for n in shape[: draw(st.integers(0, len(shape)))]:
        if draw(st.booleans()):
            key.append(draw(st.integers(-n, n - 1)))
        else:
            bound = st.none() | st.integers(-n - 2, n + 2)
            key.append(slice(draw(bound), draw(bound), draw(st.none() | st.sampled_from([-3, -2, -1, 1, 2, 3]))))
    return shape, tuple(key)


@given(keys())
def test_the_block_read_and_the_pick_inside_it_give_numpy_s_result(case: tuple[tuple[int, ...], Any]) -> None:
    shape, key = case
    array = np.arange(int(np.prod(shape))).reshape(shape)
    spans, local = bounding_read(key, shape)
    assert all(s.step == 1 for s in spans) and len(spans) == len(shape) == len(local)
    assert all(0 <= s.start and s.stop <= n for s, n in zip(spans, shape, strict=True))
    block = array[tuple(slice(s.start, s.stop) for s in spans)]
    np.testing.assert_array_equal(block[local], array[key])
    for span, pick in zip(spans, local, strict=True):  # no larger than needed: both ends of a range are picked
        if span and isinstance(pick, slice):
            inside = range(len(span))[pick]
            assert inside[0] in (0, len(span) - 1) and inside[-1] in (0, len(span) - 1)


def test_a_single_key_and_missing_axes() -> None:
    spans, local = bounding_read(3, (5, 4))
    assert spans == [range(3, 4), range(0, 4)] and local == (0, slice(0, 4, 1))
    spans, local = bounding_read(np.int64(-1), (5,))
    assert spans == [range(4, 5)] and local == (0,)
    spans, local = bounding_read((slice(8, 1, -3),), (10,))
    assert spans == [range(2, 9)] and local == (slice(6, None, -3),)


@pytest.mark.parametrize("key", [np.s_[0], np.s_[:, 1:9:2], np.s_[1, ::-1, 3], np.s_[:, 4:4], np.s_[:, :, -1, ::3]])
def test_a_training_source_scene_reads_any_slicing(key: Any) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((2, 6, 10, 12), dtype=np.float32)
    scene = source_scene(VolumeSource(image, np.zeros((6, 10, 12), dtype=np.uint8), "volume"), chunk=4)
    np.testing.assert_array_equal(scene.data[key].compute(), image[key])
    assert scene.mask is not None
    spatial = key[1:] if isinstance(key, tuple) else ()
    np.testing.assert_array_equal(scene.mask[spatial].compute(), np.ones((6, 10, 12), dtype=bool)[spatial])
