"""Tests of segflow.synthetic: determinism, content, spectra, nodata and the GeoTIFF writer."""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.transform import Affine
from scipy import ndimage

from segflow.errors import ConfigError, OutputError
from segflow.synthetic import (
    BANDS,
    CLASSES,
    TRUTH_NODATA,
    SyntheticScene,
    synthesize_block,
    write_synthetic_scene,
)

BACKGROUND = CLASSES.index("background")
WATER = CLASSES.index("water")
VEGETATION = CLASSES.index("vegetation")
BUILDING = CLASSES.index("building")


def _indices(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NDVI and NDWI of a full-band (blue, green, red, nir) image."""
    _, green, red, nir = image.astype(np.float64)
    return (nir - red) / (nir + red), (green - nir) / (green + nir)


# ----------------------------------------------------------------------------- determinism


@st.composite
def _sub_blocks(draw: st.DrawFn) -> dict[str, object]:
    """A block, a region inside it, and generation options."""
    height = draw(st.integers(1, 90))
    width = draw(st.integers(1, 90))
    dy = draw(st.integers(0, height - 1))
    dx = draw(st.integers(0, width - 1))
    bands = draw(st.permutations(BANDS).flatmap(lambda p: st.integers(1, 4).map(lambda n: tuple(p[:n]))))
    nodata = draw(st.none() | st.integers(0, 65535))
    return {
        "y0": draw(st.integers(-(2**40), 2**40) | st.integers(-100, 100)),
        "x0": draw(st.integers(-(2**40), 2**40) | st.integers(-100, 100)),
        "shape": (height, width),
        "offset": (dy, dx),
        "sub": (draw(st.integers(1, height - dy)), draw(st.integers(1, width - dx))),
        "seed": draw(st.integers(-(2**70), 2**70)),
        "bands": bands,
        "nodata": nodata,
        "scene_shape": draw(st.none() | st.tuples(st.integers(1, 500), st.integers(1, 500))),
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_sub_blocks())
def test_block_equals_cut_out_of_larger_block(case: dict) -> None:
    options = {key: case[key] for key in ("seed", "bands", "nodata", "scene_shape")}
    (height, width), (dy, dx), (sub_h, sub_w) = case["shape"], case["offset"], case["sub"]
    image, truth = synthesize_block(case["y0"], case["x0"], height, width, **options)
    sub_image, sub_truth = synthesize_block(case["y0"] + dy, case["x0"] + dx, sub_h, sub_w, **options)
    assert image.shape == (len(case["bands"]), height, width) and image.dtype == np.uint16
    assert truth.shape == (height, width) and truth.dtype == np.uint8
    np.testing.assert_array_equal(sub_image, image[:, dy : dy + sub_h, dx : dx + sub_w])
    np.testing.assert_array_equal(sub_truth, truth[dy : dy + sub_h, dx : dx + sub_w])


def test_tiles_of_a_block_reassemble_it_exactly() -> None:
    image, truth = synthesize_block(-700, 300, 300, 260, seed=9)
    for y in range(0, 300, 97):
        for x in range(0, 260, 113):
            h, w = min(97, 300 - y), min(113, 260 - x)
            tile_image, tile_truth = synthesize_block(-700 + y, 300 + x, h, w, seed=9)
            np.testing.assert_array_equal(tile_image, image[:, y : y + h, x : x + w])
            np.testing.assert_array_equal(tile_truth, truth[y : y + h, x : x + w])


def test_same_seed_repeats_and_other_seed_differs() -> None:
    first = synthesize_block(0, 0, 128, 128, seed=3)
    again = synthesize_block(0, 0, 128, 128, seed=3)
    other = synthesize_block(0, 0, 128, 128, seed=4)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


# ----------------------------------------------------------------------------- content


@pytest.mark.parametrize("seed", [0, 1, 2, 12345])
def test_every_class_present_in_512_scene(seed: int) -> None:
    _, truth = synthesize_block(0, 0, 512, 512, seed=seed)
    counts = np.bincount(truth.ravel(), minlength=len(CLASSES))
    assert len(counts) == len(CLASSES)
    assert (counts > 0).all(), dict(zip(CLASSES, counts.tolist(), strict=True))


def test_class_fractions_look_like_a_landscape() -> None:
    counts = np.zeros(len(CLASSES))
    for seed in range(3):
        _, truth = synthesize_block(seed * 5000, 0, 1024, 1024, seed=seed)
        counts += np.bincount(truth.ravel(), minlength=len(CLASSES))
    fraction = dict(zip(CLASSES, counts / counts.sum(), strict=True))
    assert 0.03 < fraction["water"] < 0.25, fraction
    assert 0.25 < fraction["vegetation"] < 0.5, fraction
    assert 0.02 < fraction["building"] < 0.15, fraction
    assert fraction["background"] > 0.2, fraction


def test_buildings_are_whole_rectangles_and_some_touch() -> None:
    size = 1024
    _, truth = synthesize_block(0, 0, size, size, seed=5)
    labels, count = ndimage.label(truth == BUILDING)
    assert count > 50
    touching = 0
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if min(s.start for s in box) == 0 or max(s.stop for s in box) == size:
            continue  # cut by the block border
        height, width = box[0].stop - box[0].start, box[1].stop - box[1].start
        # Never clipped by water: sides 6-40 px, a touching pair spans up to 80 px.
        assert 6 <= min(height, width) and max(height, width) <= 80
        # A pair of rectangles sharing an edge forms one non-rectangular component.
        touching += (labels[box] == index).sum() < height * width
    assert touching >= 5


def test_spectral_indices_match_the_classes() -> None:
    image, truth = synthesize_block(2000, -1000, 768, 768, seed=11)
    ndvi, ndwi = _indices(image)
    nir = image[BANDS.index("nir")]
    visible = image[:3].astype(np.float64).mean(axis=0)

    def q(values: np.ndarray, cls: int, quantile: float) -> float:
        return float(np.quantile(values[truth == cls], quantile))

    assert q(ndwi, WATER, 0.05) > 0.2 and q(nir, WATER, 0.95) < 500
    assert q(ndvi, VEGETATION, 0.05) > 0.5
    assert 0.1 <= q(ndvi, BACKGROUND, 0.5) <= 0.2 and q(ndwi, BACKGROUND, 0.95) < 0
    assert q(ndvi, BUILDING, 0.95) < 0.15 and q(ndwi, BUILDING, 0.95) < 0
    assert q(visible, BUILDING, 0.5) > 1.3 * q(visible, BACKGROUND, 0.5)
    assert q(visible, BUILDING, 0.5) > 2.0 * q(visible, VEGETATION, 0.5)


def test_per_pixel_noise_and_smooth_brightness() -> None:
    image, truth = synthesize_block(0, 0, 512, 512, seed=2)
    red = image[BANDS.index("red")].astype(np.float64)
    water = truth == WATER
    # neighbouring water pixels are not identical (noise) yet close (smooth variation)
    pairs = water[:, 1:] & water[:, :-1]
    step = np.abs(red[:, 1:] - red[:, :-1])[pairs] / red[:, 1:][pairs]
    assert 0.005 < float(np.median(step)) < 0.1


def test_band_subset_is_the_same_bands_in_the_asked_order() -> None:
    full, truth = synthesize_block(40, 70, 64, 96, seed=8)
    rgb, rgb_truth = synthesize_block(40, 70, 64, 96, seed=8, bands=("red", "green", "blue"))
    np.testing.assert_array_equal(rgb, full[[2, 1, 0]])
    np.testing.assert_array_equal(rgb_truth, truth)
    nir, _ = synthesize_block(40, 70, 64, 96, seed=8, bands=["nir"])
    np.testing.assert_array_equal(nir, full[3:])


# ----------------------------------------------------------------------------- nodata


def test_nodata_corner_and_no_valid_pixel_equals_nodata() -> None:
    plain, _ = synthesize_block(0, 0, 64, 80, seed=1)
    nodata = int(np.median(plain[0]))  # a value valid pixels really take
    assert (plain == nodata).any()
    image, truth = synthesize_block(0, 0, 64, 80, seed=1, nodata=nodata, scene_shape=(64, 80))
    rows, cols = np.indices((64, 80))
    corner = rows + cols < min(64, 80) // 4
    assert corner.sum() == 16 * 17 // 2
    assert (image[:, corner] == nodata).all()
    assert (truth[corner] == TRUTH_NODATA).all()
    assert not (image[:, ~corner] == nodata).any()
    assert (truth[~corner] < len(CLASSES)).all()
    assert (np.abs(image[:, ~corner].astype(int) - plain[:, ~corner]) <= 1).all()


def test_nodata_without_scene_shape_has_no_corner() -> None:
    image, truth = synthesize_block(0, 0, 32, 32, seed=1, nodata=65535)
    assert not (image == 65535).any()
    assert (truth != TRUTH_NODATA).all()


# ----------------------------------------------------------------------------- writer


def test_written_scene_geometry_and_content(tmp_path: Path) -> None:
    path, truth_path = tmp_path / "scene.tif", tmp_path / "truth.tif"
    scene = write_synthetic_scene(
        path,
        width=300,
        height=200,
        seed=4,
        truth_path=truth_path,
        bands=("red", "green", "blue"),
        crs="EPSG:32632",
        origin=(400000.0, 5100000.0),
        pixel_size=20.0,
        block=64,
        tiled_block=128,
    )
    transform = Affine(20.0, 0.0, 400000.0, 0.0, -20.0, 5100000.0)
    assert scene == SyntheticScene(
        path, truth_path, 300, 200, ("red", "green", "blue"), "EPSG:32632", transform, None
    )
    expected_image, expected_truth = synthesize_block(0, 0, 200, 300, seed=4, bands=("red", "green", "blue"))
    with rasterio.open(path) as src:
        assert (src.width, src.height, src.count) == (300, 200, 3)
        assert src.dtypes == ("uint16",) * 3
        assert src.crs == rasterio.crs.CRS.from_epsg(32632)
        assert src.transform == transform
        assert src.descriptions == ("red", "green", "blue")
        assert src.nodata is None
        assert src.profile["tiled"] and src.block_shapes == [(128, 128)] * 3
        structure = src.tags(ns="IMAGE_STRUCTURE")
        assert structure["COMPRESSION"] == "DEFLATE" and structure["PREDICTOR"] == "2"
        np.testing.assert_array_equal(src.read(), expected_image)
    with rasterio.open(truth_path) as src:
        assert src.dtypes == ("uint8",) and src.nodata is None
        assert src.crs == rasterio.crs.CRS.from_epsg(32632) and src.transform == transform
        assert src.descriptions == ("truth",)
        assert src.tags()["classes"] == ",".join(CLASSES)
        assert src.block_shapes == [(128, 128)]
        assert src.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
        np.testing.assert_array_equal(src.read(1), expected_truth)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif", "truth.tif"]


def test_written_nodata_scene(tmp_path: Path) -> None:
    scene = write_synthetic_scene(
        tmp_path / "s.tif",
        width=96,
        height=80,
        seed=2,
        truth_path=tmp_path / "t.tif",
        nodata=0,
        tiled_block=32,
    )
    assert scene.nodata == 0
    expected_image, expected_truth = synthesize_block(0, 0, 80, 96, seed=2, nodata=0, scene_shape=(80, 96))
    with rasterio.open(scene.path) as src:
        assert src.nodata == 0 and src.descriptions == BANDS
        image = src.read()
    with rasterio.open(tmp_path / "t.tif") as src:
        assert src.nodata == TRUTH_NODATA
        truth = src.read(1)
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(truth, expected_truth)
    assert image[:, 0, 0].tolist() == [0] * 4 and truth[0, 0] == TRUTH_NODATA
    assert (truth == TRUTH_NODATA).sum() == 20 * 21 // 2


def test_written_scene_does_not_depend_on_block(tmp_path: Path) -> None:
    options: dict[str, Any] = {"width": 150, "height": 90, "seed": 6, "tiled_block": 16}
    options["bands"] = ("nir", "red")
    small = write_synthetic_scene(tmp_path / "a.tif", block=17, **options)
    large = write_synthetic_scene(tmp_path / "b.tif", block=4096, **options)
    with rasterio.open(small.path) as a, rasterio.open(large.path) as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_writer_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "scene.tif"
    path.write_bytes(b"old")
    write_synthetic_scene(path, width=20, height=10, tiled_block=16)
    with rasterio.open(path) as src:
        assert (src.width, src.height) == (20, 10)
    assert [p.name for p in tmp_path.iterdir()] == ["scene.tif"]


def test_writer_memory_does_not_grow_with_the_scene(tmp_path: Path) -> None:
    width = height = 2048
    scene_bytes = width * height * (2 * len(BANDS) + 1)
    tracemalloc.start()
    try:
        write_synthetic_scene(
            tmp_path / "s.tif",
            width=width,
            height=height,
            truth_path=tmp_path / "t.tif",
            block=128,
            tiled_block=128,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < scene_bytes / 4, (peak, scene_bytes)


def test_writer_missing_directory_raises_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        write_synthetic_scene(tmp_path / "missing" / "s.tif", width=8, height=8)


# ----------------------------------------------------------------------------- bad parameters


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"width": 0}, "width=0"),
        ({"height": -3}, "height=-3"),
        ({"width": 2.5}, "width=2.5"),
        ({"block": 0}, "block=0"),
        ({"pixel_size": 0.0}, "pixel_size=0.0"),
        ({"pixel_size": -10.0}, "pixel_size=-10.0"),
        ({"pixel_size": math.nan}, "pixel_size=nan"),
        ({"tiled_block": 100}, "tiled_block=100"),
        ({"tiled_block": 8}, "tiled_block=8"),
        ({"nodata": 70000}, "nodata=70000"),
        ({"nodata": -1}, "nodata=-1"),
        ({"bands": ("red", "swir")}, "swir"),
        ({"bands": ("red", "red")}, "red"),
        ({"bands": ()}, "bands=()"),
        ({"crs": "not a crs"}, "not a crs"),
        ({"origin": (1.0,)}, "origin="),
    ],
)
def test_bad_writer_parameters_raise_config_error(tmp_path: Path, options: dict, named: str) -> None:
    arguments = {"width": 16, "height": 16} | options
    with pytest.raises(ConfigError, match="expected") as info:
        write_synthetic_scene(tmp_path / "s.tif", **arguments)
    assert named in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"height": 0}, "height=0"),
        ({"width": -1}, "width=-1"),
        ({"bands": ("ir",)}, "ir"),
        ({"bands": "red"}, "bands='red'"),
        ({"nodata": 65536}, "nodata=65536"),
        ({"scene_shape": (10,)}, "scene_shape="),
        ({"scene_shape": (0, 10)}, "scene_shape[0]=0"),
    ],
)
def test_bad_block_parameters_raise_config_error(options: dict, named: str) -> None:
    arguments = {"y0": 0, "x0": 0, "height": 8, "width": 8} | options
    with pytest.raises(ConfigError, match="expected") as info:
        synthesize_block(**arguments)
    assert named in str(info.value)


def test_truth_path_must_differ_from_image_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="truth_path"):
        write_synthetic_scene(tmp_path / "s.tif", width=8, height=8, truth_path=tmp_path / "s.tif")
