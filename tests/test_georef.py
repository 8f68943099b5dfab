"""Pixel-grid comparison and the gdalwarp fix it proposes."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin

from segflow.errors import InputError
from segflow.georef import PixelGrid, check_same_grid, grid_differences, same_transform, warp_command

pixel = st.floats(0.01, 1000.0)
origin = st.floats(-1e7, 1e7)
sizes = st.integers(1, 100_000)


@st.composite
def grids(draw: st.DrawFn) -> PixelGrid:
    t = from_origin(draw(origin), draw(origin), draw(pixel), draw(pixel))
    crs = draw(st.sampled_from([None, "EPSG:32633", "EPSG:4326"]))
    return PixelGrid.of((draw(sizes), draw(sizes)), crs, t)


@given(grids())
def test_a_grid_equals_itself_and_its_float_noise(grid: PixelGrid) -> None:
    assert grid_differences(grid, grid) == []
    t = grid.transform
    assert t is not None
    noisy = Affine(t.a * (1 + 1e-12), 0.0, t.c + 1e-9 * abs(t.a), 0.0, t.e, t.f)
    assert same_transform(t, noisy)


@given(grids(), st.floats(0.01, 0.99))
def test_a_sub_pixel_shift_is_a_different_grid(grid: PixelGrid, fraction: float) -> None:
    t = grid.transform
    assert t is not None
    shifted = PixelGrid(grid.shape, grid.crs, t @ Affine.translation(fraction, 0))
    diffs = grid_differences(grid, shifted, ("a", "b"))
    assert len(diffs) == 1 and diffs[0].startswith("different transform (a (")
    assert not same_transform(t, shifted.transform) and not same_transform(shifted.transform, t)


@given(grids())
def test_the_warp_command_reproduces_the_target_grid(grid: PixelGrid) -> None:
    command = warp_command(grid, Path("/data/truth.tif"))
    assert command is not None
    words = shlex.split(command)
    assert words[0] == "gdalwarp" and words[-2:] == ["/data/truth.tif", "/data/truth_on_grid.tif"]
    assert ("-t_srs" in words) == (grid.crs is not None)
    te = words.index("-te")
    xmin, ymin, xmax, ymax = (float(v) for v in words[te + 1 : te + 5])
    tr = words.index("-tr")
    xres, yres = (float(v) for v in words[tr + 1 : tr + 3])
    cols, rows = round((xmax - xmin) / xres), round((ymax - ymin) / yres)
    assert (rows, cols) == grid.shape
    rebuilt = from_origin(xmin, ymax, xres, yres)
    t = grid.transform
    assert t is not None
    # %g keeps 6 significant digits of the pixel size: the rebuilt grid matches to that precision
    assert rebuilt.c == pytest.approx(t.c, rel=1e-9, abs=1e-6 * t.a)
    assert rebuilt.f == pytest.approx(t.f, rel=1e-9, abs=1e-6 * abs(t.e))
    assert xres == pytest.approx(t.a, rel=1e-5) and yres == pytest.approx(-t.e, rel=1e-5)


def test_every_difference_is_named_on_one_line() -> None:
    a = PixelGrid.of((100, 200), "EPSG:32633", (10, 0, 500000, 0, -10, 4000000))
    b = PixelGrid.of((100, 201), CRS.from_epsg(4326), (10, 0, 500010, 0, -10, 4000000))
    with pytest.raises(InputError) as info:
        check_same_grid(a, b, names=("image", "labels"), paths=(Path("a.tif"), Path("b.tif")))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("image a.tif and labels b.tif are not on the same grid: different CRS (image EPSG:32633, "
                              "labels EPSG:4326); different shape (image 100x200, labels 100x201 rows x cols); "
                              "different transform (image (10, 0, 500000, 0, -10, 4000000), labels (10, 0, 500010")
    assert message.endswith("resample the labels onto the image grid: gdalwarp -t_srs EPSG:32633 -te 500000 3999000 "
                            "502000 4000000 -tr 10 10 -r near b.tif b_on_grid.tif; then use b_on_grid.tif as the "
                            "labels")


def test_one_georeferenced_raster_and_one_not() -> None:
    a = PixelGrid.of((4, 4), None, None)
    b = PixelGrid.of((4, 4), None, from_origin(0, 4, 1, 1))
    assert grid_differences(a, b, ("a", "b")) == ["different transform (a none, b (1, 0, 0, 0, -1, 4))"]
    with pytest.raises(InputError, match=r"the a's pixels are on the b's grid but its georeferencing is missing: "
                       r"give it the b's: gdal_translate -a_ullr 0 4 4 0 a.tif a_georef.tif; then use a_georef.tif "
                       r"as the a$"):
        check_same_grid(a, b, names=("a", "b"), paths=(Path("a.tif"), Path("b.tif")))
    with pytest.raises(InputError, match=r"resample the b onto the a grid \(gdalwarp -t_srs/-te/-tr\)$"):
        check_same_grid(PixelGrid.of((4, 5), None, None), b, names=("a", "b"), paths=(Path("a.tif"), Path("b.tif")))
    check_same_grid(a, a, names=("a", "b"), paths=(Path("a.tif"), Path("b.tif")))


def test_a_crs_that_is_not_understood_is_an_input_error() -> None:
    with pytest.raises(InputError, match="not understood"):
        PixelGrid.of((1, 1), "not a crs", None)
