"""quicklook.png's parts, each against its closed form or numpy's reference: the sampling grid, the display
bands and their stretch, the labels sampled one store chunk at a time, outlines, the blend, polygons, the
title and legend, the read-back check and the sink's refusals. Small arrays, in-process."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from PIL import Image, ImageDraw, ImageFont
from rasterio.transform import from_origin
from scipy import ndimage

from segflow.errors import ConfigError, InputError, OutputError
from segflow.io import preview, quicklook
from segflow.io.mask_store import MaskStore
from segflow.io.quicklook import ALPHA, PALETTE, QuicklookSink, render_quicklook, sample_labels
from segflow.io.readers import open_scene
from segflow.labels import LABEL_NODATA
from segflow.models.package import ModelSpec
from segflow.scene import Scene
from segflow.tiling import Box

from .test_quicklook import make_store, spec_of


def exact_centres(n_src: int, n_dst: int) -> np.ndarray:
    """floor((i + 1/2) * N / n) in integers: the source pixel holding output pixel i's centre."""
    return np.array([(2 * i + 1) * n_src // (2 * n_dst) for i in range(n_dst)], dtype=np.int64)


def write_tif(path: Path, data: np.ndarray, names: list[str | None] | None = None, **profile: Any) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs="EPSG:32633", transform=from_origin(0, 0, 1, 1), **profile) as ds:
        ds.write(data)
        for i, name in enumerate(names or []):
            if name is not None:
                ds.set_band_description(i + 1, name)
    return path


# ---- the sampling grid -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_src", [1, 2, 3, 7, 64, 100, 767, 768, 1000, 4097, 100_003])
def test_sample_index_is_the_pixel_holding_each_centre(n_src: int) -> None:
    for n_dst in sorted({1, 2, 3, 5, 64, 99, 256, 513, n_src, max(1, n_src // 3), max(1, n_src - 1)}):
        got = preview.sample_index(n_src, n_dst)
        assert got.dtype == np.int64 and got.shape == (n_dst,)
        if n_dst <= n_src:
            assert np.array_equal(got, exact_centres(n_src, n_dst)), (n_src, n_dst)


def test_sample_index_never_reaches_past_the_last_pixel() -> None:
    assert preview.sample_index(3, 6).tolist() == [0, 0, 1, 1, 2, 2]  # more outputs than pixels: each twice
    assert preview.sample_index(1, 4).tolist() == [0, 0, 0, 0]
    assert preview.sample_index(5, 1).tolist() == [2]
    assert preview.sample_index(4, 1).tolist() == [2]  # the centre 2.0 lies in pixel 2


def test_output_shape_closed_form() -> None:
    assert preview.output_shape((768, 1024), 512) == (384, 512)
    assert preview.output_shape((1024, 768), 512) == (512, 384)
    assert preview.output_shape((1000, 1000), 1000) == (1000, 1000)  # exactly the limit: unchanged
    assert preview.output_shape((1001, 1000), 1000) == (1000, 999)
    assert preview.output_shape((3, 2), 2) == (2, 1)  # 2 / 1.5 = 1.33 rounds to 1
    assert preview.output_shape((5, 3), 2) == (2, 1)  # 3 / 2.5 = 1.2
    assert preview.output_shape((7, 3), 2) == (2, 1)  # 3 / 3.5 = 0.86 rounds to 1
    assert preview.output_shape((100, 5), 10) == (10, 1)  # 0.5 rounds to 0: at least 1
    assert preview.output_shape((5, 100), 10) == (1, 10)
    assert preview.output_shape((30, 20), 60) == (30, 20)  # never enlarged


# ---- display bands, their source and the stretch -----------------------------------------------------------

def test_display_bands_are_red_green_blue_by_name_else_the_first() -> None:
    assert preview._display_bands(["Blue", "GREEN", "red", "nir"]) == [2, 1, 0]
    assert preview._display_bands(["nir", "red", "green", "blue"]) == [1, 2, 3]
    assert preview._display_bands(["nir", "red", "green"]) == [0]
    assert preview._display_bands(["band1", "band2", "band3"]) == [0]
    assert preview._display_bands(["swir"]) == [0]


def test_a_file_scene_is_read_by_gdal_only_at_its_own_size(tmp_path: Path) -> None:
    data = np.arange(3 * 40 * 60, dtype=np.uint16).reshape(3, 40, 60)
    path = write_tif(tmp_path / "s.tif", data, ["red", "green", "blue"])
    scene = open_scene(path)
    assert preview._file_source(scene) == scene.source == str(path)
    assert preview._file_source(scene.select_bands([1])) == str(path)  # fewer bands, same raster
    assert preview._file_source(replace(scene, data=scene.data[:, :20])) is None  # cut: not the file's size
    assert preview._file_source(replace(scene, data=scene.data[:, :, :30])) is None
    assert preview._file_source(replace(scene, source="")) is None
    assert preview._file_source(Scene.from_array(data)) is None  # no driver
    assert preview._file_source(replace(Scene.from_array(data), source=str(path), meta=dict(scene.meta))) == str(path)
    meta = {k: v for k, v in scene.meta.items() if k != "driver"}
    assert preview._file_source(replace(scene, meta=meta)) is None


def test_a_cut_file_scene_is_sampled_from_its_own_pixels(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(1, 1000, (3, 40, 60), dtype=np.uint16)
    scene = open_scene(write_tif(tmp_path / "s.tif", data, ["red", "green", "blue"]))
    cut = replace(scene, data=scene.data[:, 10:30, 20:60])
    values, valid = preview.read_decimated(cut, (10, 20))
    expected = data[[0, 1, 2], 10:30, 20:60][:, exact_centres(20, 10)][:, :, exact_centres(40, 20)]
    assert np.array_equal(values, expected) and valid.all() and valid.shape == (10, 20)


def test_gdal_reads_the_first_band_grey_without_rgb_names(tmp_path: Path) -> None:
    data = np.random.default_rng(2).integers(0, 999, (4, 30, 50), dtype=np.uint16)
    path = write_tif(tmp_path / "s.tif", data, [None, "Red", "Green", "Blue"])
    values, valid = preview._read_gdal(str(path), (15, 25))
    assert values.shape == (3, 15, 25)
    assert np.array_equal(values, data[[1, 2, 3]][:, exact_centres(30, 15)][:, :, exact_centres(50, 25)])
    path = write_tif(tmp_path / "grey.tif", data, [None, "red", "green", None])  # no blue: the first band
    values, valid = preview._read_gdal(str(path), (15, 25))
    assert np.array_equal(values, data[[0]][:, exact_centres(30, 15)][:, :, exact_centres(50, 25)])
    assert valid.dtype == bool and valid.all()


def test_gdal_validity_follows_nodata_over_every_band_and_nan(tmp_path: Path) -> None:
    data = np.ones((3, 20, 20), dtype=np.float32)
    data[:, :5] = -1  # every band nodata: invalid
    data[0, 5:10] = -1  # one band only: still data
    data[1, 10:12, :4] = np.nan  # NaN: invalid whatever the nodata rule
    data[2, 12, 4:8] = np.inf
    path = write_tif(tmp_path / "f.tif", data, ["red", "green", "blue"], nodata=-1)
    values, valid = preview.read_decimated(open_scene(path), (20, 20))
    expected = np.ones((20, 20), dtype=bool)
    expected[:5] = False
    expected[10:12, :4] = False
    expected[12, 4:8] = False
    assert np.array_equal(valid, expected)
    assert values.dtype == np.float32 and np.array_equal(values, data, equal_nan=True)


def test_integer_files_keep_their_values_whatever_their_size(tmp_path: Path) -> None:
    data = np.full((1, 10, 10), 60000, dtype=np.uint16)
    values, valid = preview._read_gdal(str(write_tif(tmp_path / "u.tif", data)), (5, 5))
    assert values.dtype == np.uint16 and (values == 60000).all() and valid.all()


def test_an_unreadable_file_is_one_line_input_error(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "gone.tif", np.zeros((1, 8, 8), dtype=np.uint8))
    scene = open_scene(path)
    path.write_bytes(b"not a tiff any more")
    with pytest.raises(InputError) as info:
        preview.read_decimated(scene, (4, 4))
    message = str(info.value)
    assert message.startswith(f"cannot read {path} for quicklook.png (")
    assert message.endswith("); check that the input is still there and readable")
    assert "\n" not in message and "  " not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_dask_sampling_without_a_validity_is_all_valid() -> None:
    data = np.random.default_rng(3).integers(0, 9, (2, 33, 47), dtype=np.int16)
    values, valid = preview.read_decimated(Scene.from_array(data, chunks=10), (11, 13))
    assert type(values) is np.ndarray and values.dtype == np.int16
    assert np.array_equal(values, data[[0]][:, exact_centres(33, 11)][:, :, exact_centres(47, 13)])
    assert valid.dtype == bool and valid.shape == (11, 13) and valid.all()
    nodata = Scene.from_array(data, chunks=10, nodata=0)
    values, valid = preview.read_decimated(nodata, (11, 13))
    expected = (data != 0).any(axis=0)[exact_centres(33, 11)][:, exact_centres(47, 13)]
    assert valid.dtype == bool and np.array_equal(valid, expected) and not valid.all()


@pytest.mark.parametrize("n", [1, 2, 3, 4, 10, 51, 100, 1001])
def test_percentiles_equal_numpys_linear_percentiles(n: int) -> None:
    rng = np.random.default_rng(n)
    for values in (rng.normal(size=n), rng.integers(0, 4, n).astype(np.float64), np.arange(n, 0, -1.0)):
        for qs in ((2.0, 98.0), (0.0, 100.0), (50.0,), (25.0, 75.0, 99.9)):
            got = preview._percentiles(values.copy(), qs)
            np.testing.assert_allclose(got, np.percentile(values, qs), rtol=0, atol=1e-12)


def test_percentiles_interpolate_between_neighbours() -> None:
    assert preview._percentiles(np.array([4.0, 0.0, 2.0]), (2.0, 98.0)) == pytest.approx([0.08, 3.92], abs=1e-12)
    assert preview._percentiles(np.array([7, 1], dtype=np.uint8), (50.0,)) == [4.0]  # not wrapped in uint8


def reference_stretch(values: np.ndarray, valid: np.ndarray, low: float = 2, high: float = 98) -> np.ndarray:
    out = np.zeros((*values.shape[1:], 3))
    for c in range(3):
        band = values[min(c, values.shape[0] - 1)].astype(np.float64)
        if not valid.any():
            continue
        lo, hi = np.percentile(band[valid], [low, high])
        out[..., c] = 128 if hi <= lo else np.rint(np.clip((band - lo) * 255 / (hi - lo), 0, 255))
    out[~valid] = 0
    return out


def test_stretch_against_its_closed_form() -> None:
    rng = np.random.default_rng(4)
    values = rng.integers(0, 5000, (3, 37, 41)).astype(np.uint16)
    values[1] = values[1] // 3 + 7  # another range per band
    valid = rng.random((37, 41)) > 0.2
    values[:, ~valid] = 65535  # extreme values where invalid: they must not move the percentiles
    got = preview.stretch(values.copy(), valid)
    assert got.dtype == np.uint8 and got.shape == (37, 41, 3)
    assert np.abs(got.astype(int) - reference_stretch(values, valid)).max() <= 1
    assert (got[~valid] == 0).all() and (got[valid] == 255).any() and (got[valid] == 0).any()
    got = preview.stretch(values.copy(), valid, low=10, high=60)
    assert np.abs(got.astype(int) - reference_stretch(values, valid, 10, 60)).max() <= 1


def test_stretch_maps_the_percentiles_to_0_and_255_exactly() -> None:
    band = np.arange(101, dtype=np.float32).reshape(1, 1, 101)  # 2nd percentile 2, 98th 98
    got = preview.stretch(band, np.ones((1, 101), dtype=bool))[0, :, 0]
    assert (got[:3] == 0).all() and (got[98:] == 255).all()
    assert got[50] == round(48 * 255 / 96) and got[3] == round(255 / 96)


def test_stretch_of_a_single_band_is_grey_and_of_a_constant_band_mid_grey() -> None:
    values = np.random.default_rng(5).random((1, 9, 9)).astype(np.float32)
    valid = np.ones((9, 9), dtype=bool)
    valid[0, 0] = False
    got = preview.stretch(values, valid)
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 0] == got[..., 2]).all()
    assert got[0, 0].tolist() == [0, 0, 0] and got[valid].max() == 255
    constant = np.full((3, 4, 4), 9.0)
    constant[2] = np.arange(16).reshape(4, 4)
    got = preview.stretch(constant, np.ones((4, 4), dtype=bool))
    assert (got[..., :2] == 128).all() and got[..., 2].max() == 255 and got[..., 2].min() == 0


def test_stretch_without_valid_pixels_is_dark() -> None:
    got = preview.stretch(np.full((3, 5, 6), 7, dtype=np.uint8), np.zeros((5, 6), dtype=bool))
    assert got.shape == (5, 6, 3) and (got == 0).all()


# ---- labels sampled from the store -------------------------------------------------------------------------

def test_sample_labels_equals_the_whole_array_sampled(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 4, (300, 530)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.1] = LABEL_NODATA
    spec = spec_of([None] * 5)
    store = make_store(tmp_path / "m.zarr", labels, spec, chunk=70)
    for shape in ((300, 530), (100, 177), (7, 3), (1, 1), (299, 1)):
        got, present = sample_labels(store, shape, 5)
        assert got.dtype == np.uint8 and got.shape == shape
        assert np.array_equal(got, labels[exact_centres(300, shape[0])][:, exact_centres(530, shape[1])])
        assert present == (0, 1, 2, 3)


def test_sample_labels_reads_sharded_stores_by_shard(tmp_path: Path) -> None:
    labels = np.zeros((1024, 1100), dtype=np.uint8)
    labels[700:, 1030:] = 2
    spec = spec_of([None] * 3)
    store = make_store(tmp_path / "m.zarr", labels, spec, chunk=1024)  # shards of 1024 with chunks of 512
    assert store.labels.shards == (1024, 1024)
    reads: list[Box] = []
    read = store.read_labels

    def counted(box: Box) -> np.ndarray:
        reads.append(box)
        return read(box)

    store.read_labels = counted  # type: ignore[method-assign]
    got, present = sample_labels(store, (256, 275), 3)
    assert reads == [Box((0, 0), (1024, 1024)), Box((0, 1024), (1024, 1100))]
    assert present == (0, 2)
    assert np.array_equal(got, labels[exact_centres(1024, 256)][:, exact_centres(1100, 275)])


def test_classes_present_anywhere_count_even_between_samples(tmp_path: Path) -> None:
    labels = np.zeros((600, 40), dtype=np.uint8)
    labels[599, 39] = 3  # a block taller than the counting strip: its last row still counts
    labels[300, 1] = 1
    labels[5:9, 5] = LABEL_NODATA
    spec = spec_of([None] * 4)
    got, present = sample_labels(make_store(tmp_path / "m.zarr", labels, spec, chunk=600), (3, 2), 4)
    assert present == (0, 1, 3)  # nodata is not a class
    assert (got == 0).all()  # neither sampled


def test_a_label_beyond_the_model_is_refused_in_full(tmp_path: Path) -> None:
    labels = np.zeros((30, 30), dtype=np.uint8)
    labels[29, 29] = 7
    labels[0, 0] = 5
    labels[1, 1] = 2
    store = make_store(tmp_path / "m.zarr", labels, spec_of([None] * 3), chunk=16)
    with pytest.raises(InputError) as info:
        sample_labels(store, (4, 4), 3)
    assert str(info.value) == (f"{store.path} holds label 5 but the model has 3 classes (0..2); make the quicklook "
                               "with the model the store was made with")
    assert sample_labels(store, (4, 4), 8)[1] == (0, 2, 5, 7)
    labels[:] = 0
    labels[3, 3] = 3
    store = make_store(tmp_path / "n.zarr", labels, spec_of([None] * 3), chunk=16)
    with pytest.raises(InputError, match="holds label 3 but the model has 3 classes"):
        sample_labels(store, (4, 4), 3)


# ---- outlines, blend, polygons -----------------------------------------------------------------------------

def test_outline_against_a_morphological_reference() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, (60, 70)).astype(np.uint8)
    labels = ndimage.median_filter(labels, size=5)
    labels[rng.random(labels.shape) < 0.02] = LABEL_NODATA
    cross = ndimage.generate_binary_structure(2, 1)
    differs = np.zeros(labels.shape, dtype=bool)
    for v in np.unique(labels):
        inside = labels == v
        differs |= inside & ~ndimage.binary_erosion(inside, cross, border_value=1)
    expected = differs & (labels != 0) & (labels != LABEL_NODATA)
    got = quicklook._outline(labels)
    assert got.dtype == bool and np.array_equal(got, expected) and got.any()


def test_outline_of_one_pixel_and_at_the_borders() -> None:
    labels = np.zeros((4, 5), dtype=np.uint8)
    labels[0, 4] = 1  # corner: neighbours left and below
    labels[2, 2] = 2
    got = quicklook._outline(labels)
    assert np.argwhere(got).tolist() == [[0, 4], [2, 2]]
    assert not quicklook._outline(np.full((3, 3), 2, dtype=np.uint8)).any()  # no other label: no outline
    horizontal = np.array([[1, 2]], dtype=np.uint8)
    vertical = horizontal.T.copy()
    assert quicklook._outline(horizontal).tolist() == [[True, True]]
    assert quicklook._outline(vertical).tolist() == [[True], [True]]


def test_paint_blends_each_class_and_draws_outlines_opaque() -> None:
    rng = np.random.default_rng(8)
    labels = ndimage.median_filter(rng.integers(0, 4, (600, 50)).astype(np.uint8), size=7)  # > one strip
    labels[550:] = LABEL_NODATA
    base = rng.integers(0, 256, (600, 50, 3)).astype(np.uint8)
    colors = [(1, 2, 3), (250, 0, 10), (0, 200, 100), (30, 60, 90)]
    lut = np.asarray(colors, dtype=np.float32)
    painted = (labels != 0) & (labels != LABEL_NODATA)
    blend = base.astype(np.float32)
    blend[painted] = np.rint(blend[painted] * np.float32(1 - ALPHA) + lut[labels[painted]] * np.float32(ALPHA))
    got = quicklook._paint(base.copy(), labels, colors, outlines=False)
    assert got.dtype == np.uint8 and np.array_equal(got, blend)
    exact = base[painted] * (1 - ALPHA) + lut[labels[painted]] * ALPHA
    assert np.abs(got[painted] - exact).max() <= 0.5 + 1e-4
    assert np.array_equal(got[~painted], base[~painted])
    edges = quicklook._outline(labels)
    blend[edges] = lut[labels[edges]]
    out = base.copy()
    assert quicklook._paint(out, labels, colors, outlines=True) is out  # in place
    assert np.array_equal(out, blend.astype(np.uint8)) and edges[300:].any()


def test_a_multipolygon_with_a_hole_draws_every_ring_in_its_class_colour(tmp_path: Path) -> None:
    geometry = pytest.importorskip("shapely.geometry")
    spec = spec_of([[0, 0, 0], [255, 0, 0], [0, 0, 255]])
    store = make_store(tmp_path / "m.zarr", np.zeros((100, 100), dtype=np.uint8), spec)
    scene = Scene.from_array(np.full((1, 100, 100), 5, dtype=np.uint8))
    shell = geometry.Polygon([(20, 20), (60, 20), (60, 60), (20, 60)], [[(30, 30), (40, 30), (40, 40), (30, 40)]])
    multi = geometry.MultiPolygon([shell, geometry.box(65, 20, 90, 50)])  # clear of the title and the legend
    image = np.asarray(render_quicklook(scene, store, spec, polygons=[(multi, 2)]).image)
    blue = (image == (0, 0, 255)).all(axis=2)
    expected = np.zeros_like(blue)
    for x0, y0, x1, y1 in ((20, 20, 60, 60), (30, 30, 40, 40), (65, 20, 90, 50)):  # both rings, the second part
        expected[y0 - 1:y1, [x0 - 1, x1 - 1]] = expected[[y0 - 1, y1 - 1], x0 - 1:x1] = True
    assert np.array_equal(blue, expected)


def test_polygon_colours_from_the_labels_under_them(tmp_path: Path) -> None:
    geometry = pytest.importorskip("shapely.geometry")
    spec = spec_of([[0, 0, 0], [255, 0, 0], [0, 0, 255]])
    labels = np.zeros((400, 800), dtype=np.uint8)
    labels[:, 400:] = 2
    labels[320:, :300] = LABEL_NODATA
    store = make_store(tmp_path / "m.zarr", labels, spec)
    scene = Scene.from_array(np.full((1, 400, 800), 5, dtype=np.uint8))
    polygons = [geometry.box(400, 100, 480, 160),  # over class 2: blue
                geometry.box(200, 330, 260, 380),  # over label nodata: white
                geometry.box(700, 200, 1000, 260),  # reaches past the right edge: its point is clamped
                (geometry.box(500, 60, 560, 100), 9),  # a class the model lacks: white
                geometry.box(100, 100, 160, 160)]  # over class 0: its colour, black
    image = np.asarray(render_quicklook(scene, store, spec, max_side=400, polygons=polygons).image)
    assert image.shape == (200, 400, 3)
    assert (image[49, 200:240] == (0, 0, 255)).all()  # top edge y = 100 -> 50, drawn on row 49
    assert (image[164, 100:130] == 255).all()
    assert (image[99, 350:400] == (0, 0, 255)).all()  # clamped point inside the scene: class 2
    assert (image[29, 250:280] == 255).all()
    assert (image[49, 50:79] == 0).all() and (image[60, 60] == 128).all()  # class 0: black ring over grey


def test_polygon_point_is_clamped_at_the_edges() -> None:
    geometry = pytest.importorskip("shapely.geometry")
    labels = np.zeros((40, 40), dtype=np.uint8)
    labels[0, 1:-1], labels[-1, 1:-1], labels[1:-1, -1], labels[1:-1, 0] = 1, 2, 3, 4
    colors = [(0, 0, 0), (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0)]
    cases = [(geometry.box(15, -30, 25, 3), 1), (geometry.box(15, 37, 25, 70), 2),  # mostly above / below
             (geometry.box(37, 15, 70, 25), 3), (geometry.box(-30, 15, 3, 25), 4)]  # mostly right / left
    for polygon, k in cases:
        point = polygon.representative_point()
        assert not (0 <= point.x < 40 and 0 <= point.y < 40)  # its point lies outside the scene
        picture = Image.new("RGB", (40, 40))
        quicklook._draw_polygons(picture, [polygon], labels, (40, 40), colors)
        drawn = {tuple(v) for v in np.asarray(picture).reshape(-1, 3).tolist()} - {(0, 0, 0)}
        assert drawn == {colors[k]}, (polygon.bounds, drawn)


def test_polygons_scale_to_the_picture() -> None:
    geometry = pytest.importorskip("shapely.geometry")
    labels = np.zeros((20, 10), dtype=np.uint8)  # the picture: half the rows, a quarter of the columns
    labels[10:, 5:] = 1
    picture = Image.new("RGB", (10, 20))
    quicklook._draw_polygons(picture, [geometry.box(24, 24, 36, 36)], labels, (40, 40), [(0, 0, 0), (9, 99, 199)])
    drawn = np.argwhere((np.asarray(picture) == (9, 99, 199)).all(axis=2))
    assert drawn[:, 0].min() == 11 and drawn[:, 0].max() == 17  # rows 24..36 / 2, half a pixel before
    assert drawn[:, 1].min() == 5 and drawn[:, 1].max() == 8  # columns 24..36 / 4


# ---- title, legend, read-back, sink ------------------------------------------------------------------------

def test_drawable_text_follows_the_font() -> None:
    bitmap = ImageFont.load_default_imagefont()
    assert quicklook._drawable("Zürich ℃ 東京", bitmap) == "Zürich ? ??"
    free = ImageFont.load_default(size=12)
    if isinstance(free, ImageFont.FreeTypeFont):
        assert quicklook._drawable("Zürich ℃ 東京", free) == "Zürich ℃ 東京"


def legend_spec(n: int) -> ModelSpec:
    return spec_of([[40 + 7 * i, 200 - 5 * i, 7 * i] for i in range(n)])


def test_annotate_boxes_and_colours() -> None:
    spec = legend_spec(4)
    entries = quicklook.legend_entries([0, 2, 3], spec)
    image = Image.new("RGB", (800, 600), (128, 128, 128))
    title_box, legend_box = quicklook._annotate(image, "scene.tif  |  model toy", entries)
    size, pad = 10, 3  # 800 / 80 = 10 px text, a third of it as padding
    assert title_box == (0, 0, 800, size + 2 * pad)
    pixels = np.asarray(image).astype(int)
    title = pixels[:title_box[3]]
    assert (title >= 240).all(axis=2).sum() > 10 and (title > 150).all(axis=2).sum() > 50  # white text, antialiased
    assert (np.abs(title[:, -50:] - round(128 * 85 / 255)) <= 1).all()  # dark veil at 170/255 over grey
    assert (pixels[title_box[3]:legend_box[1]] == 128).all()  # the scene shows between the boxes
    x0, y0, x1, y1 = legend_box
    assert (x0, y0, y1) == (pad, 600 - pad - (3 * (size + pad) + pad), 600 - pad) and x1 > x0 + size + 3 * pad
    assert (pixels[y1:] == 128).all() and (pixels[:, :x0][title_box[3]:] == 128).all()
    inside = pixels[y0:y1, x0:x1].reshape(-1, 3)
    for k, _, color in entries:
        filled = (inside == color).all(axis=1).sum()
        assert filled >= (size - 2) ** 2 if k else 0 < filled < (size - 2) ** 2  # class 0: a hollow swatch
    assert (pixels[y0:y1, x1:] == 128).all()


def test_a_long_legend_wraps_into_columns() -> None:
    spec = legend_spec(30)
    entries = quicklook.legend_entries(range(30), spec)
    image = Image.new("RGB", (400, 200), (128, 128, 128))
    title_box, (x0, y0, x1, y1) = quicklook._annotate(image, "t", entries)
    size, pad = 10, 3
    per_column = (200 - title_box[3] - 4 * pad) // (size + pad)
    assert per_column == 13 and y1 - y0 == per_column * (size + pad) + pad
    columns = -(-30 // per_column)
    pixels = np.asarray(image)
    for k in (1, 13, 26, 29):  # first of each column and the last: swatches of their colour
        assert (pixels[y0:y1, x0:x1] == entries[k][2]).all(axis=2).sum() >= (size - 2) ** 2
    assert columns == 3 and x1 - x0 > 3 * (size + 3 * pad)
    assert y0 >= title_box[3]


def test_a_picture_without_room_for_the_legend_gets_none(tmp_path: Path) -> None:
    entries = quicklook.legend_entries(range(6), legend_spec(6))
    for size in ((30, 12), (2, 300)):  # a strip too low for a row of the legend, one too narrow for its margin
        image = Image.new("RGB", size, (128, 128, 128))
        title_box, legend_box = quicklook._annotate(image, "a long title that does not fit", entries)
        assert title_box == (0, 0, size[0], min(size[1], 16)) and legend_box == (0, size[1], 0, size[1])
        assert (np.asarray(image)[title_box[3]:] == 128).all()
    image = Image.new("RGB", (30, 30), (128, 128, 128))  # room for one row: one column per class
    _, (x0, y0, x1, y1) = quicklook._annotate(image, "t", entries)
    assert (x0, y0, x1, y1) == (3, 16, 30, 30)
    spec = spec_of([None, [255, 0, 0]])  # a scene of 6 rows: its quick-look is a strip without a legend
    labels = np.zeros((6, 3000), dtype=np.uint8)
    labels[:, 1000:] = 1
    got = render_quicklook(Scene.from_array(np.ones((1, 6, 3000), dtype=np.uint8)),
                           make_store(tmp_path / "m.zarr", labels, spec), spec)
    assert got.image.size == (2048, 4) and got.legend_box == (0, 4, 0, 4) and [k for k, _, _ in got.legend] == [0, 1]


def test_no_legend_without_classes() -> None:
    image = Image.new("RGB", (200, 100), (128, 128, 128))
    title_box, legend_box = quicklook._annotate(image, "t", [])
    assert legend_box == (0, 100, 0, 100) and title_box == (0, 0, 200, 16)
    assert (np.asarray(image)[16:] == 128).all()


def test_title_names_the_scene_file_and_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    titles: list[str] = []
    annotate = quicklook._annotate

    def kept(image: Image.Image, title: str, legend: list[Any]) -> Any:
        titles.append(title)
        return annotate(image, title, legend)

    monkeypatch.setattr(quicklook, "_annotate", kept)
    spec = spec_of([None, None], name="roads")
    store = make_store(tmp_path / "m.zarr", np.zeros((20, 20), dtype=np.uint8), spec)
    path = write_tif(tmp_path / "scene one.tif", np.ones((1, 20, 20), dtype=np.uint8))
    render_quicklook(open_scene(path), store, spec)
    render_quicklook(Scene.from_array(np.ones((1, 20, 20), dtype=np.uint8)), store, spec)
    render_quicklook(replace(Scene.from_array(np.ones((1, 20, 20), dtype=np.uint8)), source=""), store, spec)
    assert titles == ["scene one.tif  |  model roads", "<array>  |  model roads", "<array>  |  model roads"]


def test_quicklook_max_side_and_entries(tmp_path: Path) -> None:
    spec = spec_of([None, [255, 0, 0]])
    labels = np.ones((90, 300), dtype=np.uint8)
    store = make_store(tmp_path / "m.zarr", labels, spec)
    scene = Scene.from_array(np.ones((1, 90, 300), dtype=np.uint8))
    got = render_quicklook(scene, store, spec, max_side=100)
    assert got.image.size == (100, 30) and got.image.mode == "RGB"
    assert got.legend == [(1, "c1", (255, 0, 0))]
    assert render_quicklook(scene, store, spec).image.size == (300, 90)  # the default, 2048, never enlarges
    assert QuicklookSink(scene, spec).max_side == 2048


def test_sink_writes_and_verifies_the_png(tmp_path: Path) -> None:
    spec = spec_of([None, [255, 0, 0], [0, 255, 0]])
    labels = np.zeros((50, 80), dtype=np.uint8)
    labels[10:40, 10:70] = 1
    labels[20:30, 30:50] = 2
    store = make_store(tmp_path / "m.zarr", labels, spec)
    scene = Scene.from_array(np.random.default_rng(9).integers(0, 99, (1, 50, 80), dtype=np.uint8))
    sink = QuicklookSink(scene, spec, max_side=40, name="look.png")
    assert sink.entries == ("look.png",)
    folder = tmp_path / "out"
    folder.mkdir()
    path = sink.write(store, folder)
    assert path == folder / "look.png" and sorted(p.name for p in folder.iterdir()) == ["look.png"]
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (40, 25)
        expected = render_quicklook(scene, store, spec, max_side=40).image
        assert np.array_equal(np.asarray(im), np.asarray(expected))


def test_verify_refuses_a_truncated_or_different_file(tmp_path: Path) -> None:
    image = Image.fromarray(np.random.default_rng(10).integers(0, 255, (600, 300, 3), dtype=np.uint8))
    path = tmp_path / "q.png"
    image.save(path, format="PNG")
    quicklook._verify(path, image)  # as written
    other = image.copy()
    other.putpixel((299, 599), (0, 0, 0) if image.getpixel((299, 599)) != (0, 0, 0) else (1, 1, 1))
    with pytest.raises(OutputError) as info:
        quicklook._verify(path, other)  # the last pixel of the last strip differs
    assert str(info.value) == (f"{path} does not read back as written (its pixels differ from what was written); "
                               "the disk may be full or failing: check the filesystem and run again (nothing was "
                               "published)")
    for changed in (image.crop((0, 0, 300, 599)), image.convert("RGBA")):
        with pytest.raises(OutputError, match="its pixels differ"):
            quicklook._verify(path, changed)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(OutputError) as info:
        quicklook._verify(path, image)
    message = str(info.value)
    assert message.startswith(f"{path} does not read back as written (") and "its pixels differ" not in message
    assert "\n" not in message and len(message) < 400
    path.write_bytes(b"")
    with pytest.raises(OutputError, match="does not read back as written"):
        quicklook._verify(path, image)


def test_sink_refusals_in_full() -> None:
    spec = spec_of([None, None])
    scene = Scene.from_array(np.zeros((1, 4, 5), dtype=np.uint8))
    for bad in (0, -3, True, 2.5, "2048", None):
        with pytest.raises(ConfigError) as info:
            QuicklookSink(scene, spec, max_side=bad)  # type: ignore[arg-type]
        assert str(info.value) == (f"quicklook max_side must be a positive number of pixels, got {bad!r}; e.g. 2048")
    assert QuicklookSink(scene, spec, max_side=1).max_side == 1
    volume = Scene.from_array(np.zeros((1, 2, 4, 5), dtype=np.uint8))
    with pytest.raises(ConfigError) as info:
        QuicklookSink(volume, spec)
    assert str(info.value) == "quicklook.png is for 2D rasters; <array> has axes CZYX"
    with pytest.raises(ConfigError) as info:
        render_quicklook(replace(volume, source=""), None, spec)  # type: ignore[arg-type]
    assert str(info.value) == "quicklook.png is for 2D rasters; the scene has axes CZYX"
    multi = ModelSpec.model_validate({
        "name": "tags", "spatial_dims": 2, "architecture": {"name": "none"}, "tile": 64,
        "input": {"bands": [{"name": "b1", "index": 1}]},
        "output": {"activation": "sigmoid", "multilabel": True},
        "classes": [{"name": "a"}, {"name": "b"}]})
    with pytest.raises(ConfigError) as info:
        QuicklookSink(scene, multi)
    assert str(info.value) == ("a quick-look paints one class per pixel, but model 'tags' is multi-label (its classes "
                               "may overlap); look at the per-class bands of labels.tif instead")


def test_a_store_of_another_size_is_refused_in_full(tmp_path: Path) -> None:
    spec = spec_of([None, None])
    store = make_store(tmp_path / "m.zarr", np.zeros((40, 50), dtype=np.uint8), spec)
    scene = replace(Scene.from_array(np.zeros((1, 41, 50), dtype=np.uint8)), source="s.tif")
    with pytest.raises(ConfigError) as info:
        render_quicklook(scene, store, spec)
    assert str(info.value) == (f"mask store {store.path} is 40x50 (rows x cols) but scene s.tif is 41x50; pass the "
                               "scene the store was made from")
    with pytest.raises(ConfigError, match=r"is 40x50 .* is 40x49"):
        render_quicklook(Scene.from_array(np.zeros((1, 40, 49), dtype=np.uint8)), store, spec)


def test_palette_colours_by_class_index() -> None:
    spec = spec_of([None] * 23)
    colors = quicklook.class_colors(spec)
    assert colors[:20] == PALETTE and colors[20:] == PALETTE[:3] and len(PALETTE) == 20
    assert all(type(c) is tuple for c in colors)
    spec = spec_of([[1, 2, 3], None])
    assert quicklook.class_colors(spec) == ((1, 2, 3), PALETTE[1])


# ---- found by mutation testing: exact sizes, colours and checks --------------------------------------------

VEIL_OVER_WHITE = round(255 * (255 - 170) / 255)  # the title's and legend's veil, black at 170/255, over white


def test_title_and_legend_sizes_follow_the_picture() -> None:
    spec = legend_spec(3)
    entries = quicklook.legend_entries([1, 2], spec)
    for width, size in ((100, 10), (1240, 16), (2000, 25), (2400, 28), (4000, 28)):  # 1/80 of the side, 10..28
        pad = size // 3
        height = max(100, width // 2)
        image = Image.new("RGB", (width, height), (255, 255, 255))
        title_box, legend_box = quicklook._annotate(image, "t", entries)
        assert title_box == (0, 0, width, size + 2 * pad), width
        assert legend_box[1] == height - pad - (2 * (size + pad) + pad) and legend_box[3] == height - pad


def test_the_veil_covers_the_title_and_legend_boxes_exactly() -> None:
    image = Image.new("RGB", (400, 300), (255, 255, 255))
    entries = quicklook.legend_entries([1], legend_spec(2))
    title_box, (x0, y0, x1, y1) = quicklook._annotate(image, "", entries)
    pixels = np.asarray(image).astype(int)
    assert (pixels[:title_box[3]] == VEIL_OVER_WHITE).all()  # every column, no text
    assert (pixels[title_box[3]:y0] == 255).all() and (pixels[y1:] == 255).all()
    assert (pixels[title_box[3]:, x1:] == 255).all()
    legend = pixels[y0:y1, x0:x1]
    for edge in (legend[0], legend[-1], legend[:, 0], legend[:, -1]):
        assert (edge == VEIL_OVER_WHITE).all()
    assert (pixels[title_box[3]:, :x0] == 255).all()


def test_legend_swatches_and_text_at_a_large_size() -> None:
    spec = legend_spec(3)
    entries = quicklook.legend_entries([0, 1, 2], spec)
    size, pad = 25, 8  # 2000 px wide
    image = Image.new("RGB", (2000, 1000), (255, 255, 255))
    _, (x0, y0, x1, y1) = quicklook._annotate(image, "Ag title", entries)
    font = ImageFont.load_default(size=size)
    text = max(round(ImageDraw.Draw(image).textlength(name, font=font)) for _, name, _ in entries)
    assert (x0, y0, y1) == (pad, 1000 - pad - (3 * (size + pad) + pad), 1000 - pad)
    assert x1 == x0 + (size + 3 * pad + text) + pad
    pixels = np.asarray(image).astype(int)
    for n, (k, _, color) in enumerate(entries):
        x, y = x0 + pad, y0 + pad + n * (size + pad)
        swatch = pixels[y:y + size, x:x + size]
        ring = np.ones((size, size), dtype=bool)
        width = 3 if k == 0 else 1  # class 0 hollow, its ring size // 8 thick; the others filled, outlined white
        ring[width:-width, width:-width] = False
        if k == 0:
            assert np.array_equal((swatch == color).all(axis=2), ring)
        else:
            assert ((swatch == color).all(axis=2) == ~ring).all() and (swatch[ring] == 255).all()
        assert (pixels[y - 1, x:x + size] == VEIL_OVER_WHITE).all() and (pixels[y + size, x:x + size] ==
                                                                          VEIL_OVER_WHITE).all()
        words = pixels[y:y + size + pad, x + size + pad:x1]
        rows = np.flatnonzero(np.any(np.all(words >= 250, axis=2), axis=1))
        assert rows.size and rows.max() - rows.min() >= 14  # text of size 25, not the default font's 10
    title = pixels[:size + 2 * pad, :400]
    rows = np.flatnonzero(np.any(np.all(title >= 250, axis=2), axis=1))
    assert rows.max() - rows.min() >= 14


def test_a_title_beyond_latin_1_is_drawn_as_itself_with_freetype() -> None:
    if not isinstance(ImageFont.load_default(size=12), ImageFont.FreeTypeFont):
        pytest.skip("Pillow without FreeType draws Latin-1 only")
    drawn = []
    for title in ("東京", "??"):
        image = Image.new("RGB", (400, 100), (255, 255, 255))
        quicklook._annotate(image, title, [])
        drawn.append(np.asarray(image)[:16])
    assert not np.array_equal(drawn[0], drawn[1])


def test_legend_names_beyond_latin_1_are_measured_and_drawn_as_themselves() -> None:
    font = ImageFont.load_default(size=10)
    if not isinstance(font, ImageFont.FreeTypeFont):
        pytest.skip("Pillow without FreeType draws Latin-1 only")
    drawn = []
    for name in ("東京東京東京", "??????"):
        image = Image.new("RGB", (400, 200), (255, 255, 255))
        _, (_, y0, x1, y1) = quicklook._annotate(image, "", [(1, name, (0, 0, 255))])
        assert x1 == 3 + 10 + 9 + round(ImageDraw.Draw(image).textlength(name, font=font)) + 3
        drawn.append(np.asarray(image)[y0:y1, 3 + 3 + 10 + 3:3 + 3 + 10 + 3 + 24])  # the text's first 24 columns
    assert not np.array_equal(drawn[0], drawn[1])


def test_the_legend_wraps_by_the_room_left() -> None:
    entries = quicklook.legend_entries(range(30), legend_spec(30))
    for height, per_column in ((197, 13), (196, 12)):  # (height - title 16 - 4 pads) // rows of 13
        image = Image.new("RGB", (600, height), (255, 255, 255))
        _, (x0, y0, x1, y1) = quicklook._annotate(image, "t", entries)
        assert y1 - y0 == min(height - 16, per_column * 13 + 3), height
        columns = -(-30 // per_column)
        pixels = np.asarray(image)
        last = entries[-1][2]  # the last class's swatch: in the last column, at row (29 % per_column)
        xs = np.nonzero((pixels == last).all(axis=2))[1]
        assert xs.size and xs.min() > x0 + (columns - 1) * (10 + 9), height
    six = entries[:6]
    image = Image.new("RGB", (600, 30), (255, 255, 255))  # no room for a second row: six columns of one
    _, (x0, y0, x1, y1) = quicklook._annotate(image, "t", six)
    font = ImageFont.load_default(size=10)
    text = max(round(ImageDraw.Draw(image).textlength(name, font=font)) for _, name, _ in six)
    assert (x0, y0, x1, y1) == (3, 16, 3 + 6 * (10 + 9 + text) + 3, 30)
    image = Image.new("RGB", (3, 300), (255, 255, 255))  # as narrow as the margin: no legend
    assert quicklook._annotate(image, "t", entries)[1] == (0, 300, 0, 300)


def test_a_polygon_of_the_class_just_beyond_the_colours_is_white(tmp_path: Path) -> None:
    geometry = pytest.importorskip("shapely.geometry")
    picture = Image.new("RGB", (40, 40))
    colors = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    quicklook._draw_polygons(picture, [(geometry.box(10, 10, 30, 30), 3), (geometry.box(5, 5, 8, 8), -1)],
                             np.zeros((40, 40), dtype=np.uint8), (40, 40), colors)
    drawn = {tuple(v) for v in np.asarray(picture).reshape(-1, 3).tolist()}
    assert drawn == {(0, 0, 0), (255, 255, 255)}


def test_sink_draws_its_polygons(tmp_path: Path) -> None:
    geometry = pytest.importorskip("shapely.geometry")
    spec = spec_of([None, [255, 0, 0], [0, 0, 255]])
    labels = np.zeros((100, 100), dtype=np.uint8)
    labels[40:60, 40:60] = 1
    store = make_store(tmp_path / "m.zarr", labels, spec)
    scene = Scene.from_array(np.full((1, 100, 100), 5, dtype=np.uint8))
    path = QuicklookSink(scene, spec, polygons=[(geometry.box(20, 20, 80, 80), 2)]).write(store, tmp_path)
    with Image.open(path) as im:
        image = np.asarray(im)
    assert (image[19, 20:80] == (0, 0, 255)).all()
    assert not (image == (255, 0, 0)).all(axis=2)[:, 30:].any()  # no label outline, only the legend's swatch


def test_sample_labels_steps_rows_and_columns_by_their_own_chunk(tmp_path: Path) -> None:
    labels = np.random.default_rng(11).integers(0, 3, (130, 210)).astype(np.uint8)
    store = MaskStore.create(tmp_path / "m.zarr", labels.shape, (40, 100), ["a", "b", "c"], save_scores=False,
                             attrs={})
    store.write(Box((0, 0), labels.shape), labels)
    reads: list[Box] = []
    read = store.read_labels

    def counted(box: Box) -> np.ndarray:
        reads.append(box)
        return read(box)

    store.read_labels = counted  # type: ignore[method-assign]
    got, present = sample_labels(store, (65, 105), 3)
    assert len(reads) == 4 * 3 and reads[1] == Box((0, 100), (40, 200)) and reads[3] == Box((40, 0), (80, 100))
    assert np.array_equal(got, labels[exact_centres(130, 65)][:, exact_centres(210, 105)]) and present == (0, 1, 2)


@pytest.mark.parametrize("size", [(300, 600), (700, 90)])
def test_verify_compares_every_pixel(tmp_path: Path, size: tuple[int, int]) -> None:
    image = Image.fromarray(np.zeros((size[1], size[0], 3), dtype=np.uint8))
    path = tmp_path / "q.png"
    image.save(path, format="PNG")
    for x, y in ((0, 0), (size[0] - 1, 0), (0, size[1] - 1), (size[0] - 1, size[1] - 1), (size[0] // 2, 300)):
        other = image.copy()
        other.putpixel((x, min(y, size[1] - 1)), (0, 0, 1))
        with pytest.raises(OutputError, match="its pixels differ"):
            quicklook._verify(path, other)


def test_verify_names_the_decoders_reason_cut_to_160_characters(tmp_path: Path) -> None:
    folder = tmp_path / ("deep" * 12) / ("er" * 40)
    folder.mkdir(parents=True)
    path = folder / "q.png"
    path.write_bytes(b"\x89PNG not really")
    with pytest.raises(OSError) as decoded:
        Image.open(path)
    reason = str(decoded.value).strip()
    assert len(reason) > 170
    with pytest.raises(OutputError) as info:
        quicklook._verify(path, Image.new("RGB", (4, 4)))
    assert f"({reason[:160]}); the disk may be full" in str(info.value)


def test_gdal_validity_is_sampled_on_the_picture_grid(tmp_path: Path) -> None:
    data = np.ones((3, 40, 60), dtype=np.uint16)
    data[:, :20, :30] = 0  # nodata over every band in the top-left quarter
    path = write_tif(tmp_path / "n.tif", data, [" Red ", "green", "BLUE "], nodata=0)  # names as written, trimmed
    values, valid = preview.read_decimated(open_scene(path), (10, 15))
    expected = np.ones((10, 15), dtype=bool)
    expected[:5, :7] = False  # output rows 0..4 sample rows 2..18; columns 0..6 sample columns 2..26
    assert valid.shape == (10, 15) and np.array_equal(valid, expected)
    assert values.shape == (3, 10, 15) and (values[:, expected] == 1).all() and (values[:, ~expected] == 0).all()


def test_an_unreadable_file_names_gdals_reason(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "gone.tif", np.zeros((1, 8, 8), dtype=np.uint8))
    scene = open_scene(path)
    path.write_bytes(b"not a tiff any more")
    with pytest.raises(InputError, match=r"\(.*not recognized as being in a supported file format\.?\)"):
        preview.read_decimated(scene, (4, 4))


def test_stretch_of_three_bands_two_rows_high_keeps_each_band() -> None:
    values = np.zeros((3, 2, 5), dtype=np.float32)
    values[0] = np.arange(10).reshape(2, 5)
    values[1] = 9 - np.arange(10).reshape(2, 5)
    values[2] = 9 - np.arange(10).reshape(2, 5)
    got = preview.stretch(values, np.ones((2, 5), dtype=bool))
    assert got[0, 0].tolist() == [0, 255, 255] and got[1, 4].tolist() == [255, 0, 0]


def test_stretch_of_a_ramp_exactly() -> None:
    ramp = np.arange(101, dtype=np.uint16).reshape(1, 1, 101)  # percentiles 2 and 98; 255 / 96 = 85 / 32 exact
    got = preview.stretch(ramp, np.ones((1, 101), dtype=bool))[0, :, 0]
    expected = np.rint(np.clip((np.arange(101) - 2) * 255 / 96, 0, 255))
    assert np.array_equal(got, expected) and got[92] == 239
