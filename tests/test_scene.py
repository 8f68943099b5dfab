"""The in-memory scene (segflow.scene.Scene): how arrays become scenes and which scenes are refused."""

from __future__ import annotations

import re

import dask.array as da
import numpy as np
import pytest

from segflow.errors import ConfigError
from segflow.scene import Scene


def test_an_array_becomes_a_2d_or_3d_scene_with_default_band_names() -> None:
    flat = Scene.from_array(np.zeros((2, 5, 6), np.uint8), chunks=3)
    assert flat.axes == "CYX" and flat.band_names == ("band1", "band2") and flat.source == "<array>"
    assert flat.data.chunks == ((2,), (3, 2), (3, 3))
    volume = Scene.from_array(np.zeros((1, 4, 5, 6), np.int16), band_names=["ct"])
    assert volume.axes == "CZYX" and volume.band_names == ("ct",) and volume.spatial_shape == (4, 5, 6)


def test_a_dask_array_is_used_as_it_is() -> None:
    lazy = da.zeros((3, 8, 8), chunks=(1, 4, 4), dtype=np.float32)
    scene = Scene.from_array(lazy, chunks=2, band_names=("r", "g", "b"))
    assert scene.data is lazy and scene.band_names == ("r", "g", "b")


@pytest.mark.parametrize("shape", [(5, 6), (1, 2, 3, 4, 5)])
def test_arrays_of_other_ranks_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"array must be (C, Y, X) or (C, Z, Y, X), got shape {shape}")):
        Scene.from_array(np.zeros(shape))


def test_inconsistent_scenes_are_refused_with_what_is_wrong() -> None:
    data = da.zeros((2, 4, 5))
    cases = [
        (dict(axes="CXY"), "scene axes must be 'CYX' or 'CZYX', got 'CXY'"),
        (dict(axes="CZYX"), "scene data has 3 dimensions but axes 'CZYX'"),
        (dict(band_names=("a",)), "1 band names for 2 channels"),
        (dict(scales=(1.0, 2.0, 3.0)), "3 scales for 2 channels"),
        (dict(offsets=(0.5,)), "1 offsets for 2 channels"),
    ]
    for change, message in cases:
        fields = {"data": data, "axes": "CYX", "band_names": ("a", "b"), **change}
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            Scene(**fields)  # type: ignore[arg-type]
    volume = Scene(data=da.zeros((1, 2, 3, 4)), axes="CZYX", band_names=("a",))
    assert volume.spatial_dims == 3
