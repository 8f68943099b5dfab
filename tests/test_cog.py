"""labels.tif as GIS software sees it: the exact grid (any affine), class-only overviews, colours and class names.

GDAL's own answers are the reference: rasterio (GDAL 3.10) for pixels, transform and colour
table, and the ``gdalinfo`` command for the category names and the raster attribute table.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import Affine

from segflow.geometry import RasterGeometry
from segflow.io.cog import palette, pam_sidecar, presence_table_xml, write_label_cog
from segflow.io.mask_store import MaskStore
from segflow.labels import LABEL_NODATA
from segflow.synthetic import CLASSES, TRUTH_NODATA, synthesize_block
from segflow.tile_infer import TileInferParams, tile_infer
from segflow.tiling import Box

from .helpers import CRS, write_geotiff

COLORS = ((200, 200, 200), (30, 90, 220), None, (220, 60, 60))  # class 2 has no colour: opaque black


NORTH_UP = Affine(10, 0, 600000, 0, -10, 5100000)
Colors = tuple[tuple[int, int, int] | None, ...]


def label_cog(tmp_path: Path, labels: np.ndarray, transform: Affine | None = NORTH_UP,
              names: tuple[str, ...] = CLASSES, colors: Colors | None = COLORS) -> Path:
    """``labels.tif`` written by the sink's own function from a mask store holding ``labels`` (Y, X)."""
    store = MaskStore.create(tmp_path / "mask.zarr", labels.shape, (256, 256), names, save_scores=False, attrs={})
    store.write(Box((0, 0), labels.shape), labels)
    geometry = RasterGeometry(crs=CRS, transform=None if transform is None else tuple(transform)[:6])
    return write_label_cog(store, tmp_path / "labels.tif", geometry, names, colors, rows=100)


def gdalinfo(path: Path) -> dict[str, Any]:
    if shutil.which("gdalinfo") is None:
        pytest.fail("gdalinfo is missing; install GDAL's command-line tools (gdal-bin, make setup)")
    out = subprocess.run(["gdalinfo", "-json", str(path)], capture_output=True, text=True, check=True)
    info: dict[str, Any] = json.loads(out.stdout)
    return info


# a, b, c, d, e, f: b and d differ in each, so a swap of the rotation terms shows
TRANSFORMS = {
    "rotated 30 degrees, 10 x 20 m pixels": Affine.translation(500000.5, 4100000.25) @ Affine.rotation(30.0)
    @ Affine.scale(10.0, -20.0),
    "sheared": Affine(10.0, 2.5, 600000.0, -1.25, -10.0, 5100000.0),
    "south-up": Affine(0.25, 0.0, 12.5, 0.0, 0.25, -45.0),
    "south-up and rotated": Affine.translation(7.0, 47.0) @ Affine.rotation(-12.0) @ Affine.scale(1e-4, 2e-4),
    "x flipped": Affine(-3.0, 0.0, 1000.0, 0.0, -3.0, 2000.0),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_any_affine_transform_is_written_and_read_back_exactly(name: str, tmp_path: Path) -> None:
    transform = TRANSFORMS[name]
    assert transform.b != transform.d or transform.b == transform.d == 0
    labels = np.random.default_rng(1).integers(0, 4, (130, 170), dtype=np.uint8)
    path = label_cog(tmp_path, labels, transform)
    with rasterio.open(path) as ds:
        assert ds.transform == transform, f"{name}: wrote {tuple(transform)[:6]}, read {tuple(ds.transform)[:6]}"
        assert ds.crs == rasterio.crs.CRS.from_string(CRS)
        np.testing.assert_array_equal(ds.read(1), labels)
        # the far corner lands where the transform puts it: no axis swapped or flipped
        assert ds.transform @ (170, 130) == transform @ (170, 130)
    c, a, b, f, d, e = gdalinfo(path)["geoTransform"]  # printed to 12 digits
    np.testing.assert_allclose([a, b, c, d, e, f], tuple(transform)[:6], rtol=1e-11, atol=0)


def test_a_rotated_scene_gets_its_exact_grid_end_to_end(tmp_path: Path) -> None:
    transform = TRANSFORMS["rotated 30 degrees, 10 x 20 m pixels"]
    image, _ = synthesize_block(0, 0, 64, 96, seed=4, bands=("blue", "green", "red", "nir"))
    scene = write_geotiff(tmp_path / "rotated.tif", image, transform=transform)
    tile_infer(scene, tmp_path / "out", TileInferParams(model="spectral-landcover", tile=32))
    with rasterio.open(tmp_path / "out" / "labels.tif") as ds, rasterio.open(scene) as src:
        assert src.transform == transform and ds.transform == transform
        assert (ds.width, ds.height) == (96, 64)


def _checkerboards(shape: tuple[int, int]) -> np.ndarray:
    """Real-looking labels (the synthetic scene's truth, with its nodata corner) and a fine class pattern.

    The pattern alternates classes 0 and 3, and 1 and 3, pixel by pixel and in 2-pixel stripes,
    so that an averaging resampler makes values found nowhere in an overview pixel's footprint.
    """
    _, truth = synthesize_block(0, 0, *shape, seed=11, nodata=0, scene_shape=shape)
    labels = np.where(truth == TRUTH_NODATA, LABEL_NODATA, truth).astype(np.uint8)
    rows, cols = np.indices((512, 512))
    labels[-512:, -512:] = np.where((rows + cols) % 2 == 0, 0, 3)
    labels[-512:, :512] = np.where((cols // 2) % 2 == 0, 1, 3)
    labels[-512:, 512:1024] = np.where((rows + cols) % 2 == 0, LABEL_NODATA, 2)
    return labels


def test_overviews_hold_only_class_ids_and_nodata_each_taken_from_its_footprint(tmp_path: Path) -> None:
    labels = _checkerboards((2048, 3072))
    assert {0, 1, 2, 3, LABEL_NODATA} == set(np.unique(labels).tolist())
    path = label_cog(tmp_path, labels)
    with rasterio.open(path) as ds:
        factors = ds.overviews(1)
    assert factors == [2, 4, 8]
    allowed = set(range(len(CLASSES))) | {LABEL_NODATA}
    for level, f in enumerate(factors):
        with rasterio.open(path, overview_level=level) as ov:
            pixels = ov.read(1)
        assert pixels.shape == (2048 // f, 3072 // f)
        assert set(np.unique(pixels).tolist()) <= allowed, f"overview 1/{f} holds values other than classes and nodata"
        footprints = labels.reshape(2048 // f, f, 3072 // f, f)
        found = (footprints == pixels[:, None, :, None]).any(axis=(1, 3))
        assert found.all(), (f"overview 1/{f}: {int((~found).sum())} pixels hold a value found nowhere in the "
                             "pixels they stand for (resampled by averaging, not nearest)")


def test_labels_tif_is_a_deflate_cog_of_512_tiles_with_its_class_tags(tmp_path: Path) -> None:
    """What GDAL's COG driver was asked for, read back: layout, compression, tiles, nodata, the band's name and
    class tags; the raw file written before it is gone. Uneven sizes: the last row of windows is short."""
    labels = np.random.default_rng(3).integers(0, 4, (1100, 700)).astype(np.uint8)
    labels[:5] = LABEL_NODATA
    path = label_cog(tmp_path, labels)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tif") == ["labels.tif"]
    with rasterio.open(path) as ds:
        structure = ds.tags(ns="IMAGE_STRUCTURE")
        assert structure["LAYOUT"] == "COG" and structure["COMPRESSION"] == "DEFLATE"
        assert ds.block_shapes == [(512, 512)] and ds.is_tiled
        assert ds.count == 1 and ds.dtypes == ("uint8",) and ds.nodata == LABEL_NODATA
        assert ds.descriptions == ("labels",) and ds.colorinterp == (ColorInterp.palette,)
        assert ds.overviews(1) == [2, 4], "overviews down to one 512 tile (OVERVIEWS=AUTO)"
        assert ds.tags()["class_names"] == ",".join(CLASSES)
        assert ds.tags(1) == {f"class_{i}": n for i, n in enumerate(CLASSES)}
        assert ds.crs == rasterio.crs.CRS.from_user_input(CRS) and ds.transform == NORTH_UP
        np.testing.assert_array_equal(ds.read(1), labels)


def test_ground_control_points_without_a_crs_are_written_as_they_are(tmp_path: Path) -> None:
    """Pixel-to-map points of an unknown CRS (a scanned map before referencing): kept, with no CRS invented."""
    store = MaskStore.create(tmp_path / "mask.zarr", (20, 30), (256, 256), CLASSES, save_scores=False, attrs={})
    store.write(Box((0, 0), (20, 30)), np.zeros((20, 30), np.uint8))
    points = ((0.0, 0.0, 100.0, 200.0, 0.0), (19.0, 29.0, 130.0, 180.0, 5.0), (0.0, 29.0, 130.0, 200.0, 0.0))
    path = write_label_cog(store, tmp_path / "labels.tif", RasterGeometry(gcps=points), CLASSES, COLORS)
    with rasterio.open(path) as ds:
        found, crs = ds.gcps
    assert crs is None and [(g.row, g.col, g.x, g.y, g.z) for g in found] == list(points)


def test_a_failed_write_leaves_neither_the_raw_file_nor_a_cog(tmp_path: Path) -> None:
    store = MaskStore.create(tmp_path / "mask.zarr", (300, 40), (256, 256), CLASSES, save_scores=False, attrs={})
    store.write(Box((0, 0), (300, 40)), np.zeros((300, 40), np.uint8))
    reads = []

    def read_labels(box: Box) -> np.ndarray:
        reads.append(box)
        if len(reads) == 2:
            raise OSError("disk gone")
        return np.zeros(box.shape, np.uint8)

    store.read_labels = read_labels  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk gone"):
        write_label_cog(store, tmp_path / "labels.tif", RasterGeometry(crs=CRS, transform=tuple(NORTH_UP)[:6]),
                        CLASSES, COLORS, rows=100)
    assert not [p.name for p in tmp_path.iterdir() if p.suffix == ".tif"]


def test_colour_table_has_opaque_classes_and_a_transparent_nodata(tmp_path: Path) -> None:
    path = label_cog(tmp_path, np.array([[0, 1, 2, 3, LABEL_NODATA]] * 3, dtype=np.uint8))
    with rasterio.open(path) as ds:
        cmap = ds.colormap(1)
        assert ds.nodata == LABEL_NODATA
    for value, color in enumerate(COLORS):
        assert cmap[value] == (*(color or (0, 0, 0)), 255), value
    assert cmap[LABEL_NODATA] == (0, 0, 0, 0), "nodata must be transparent"
    table = gdalinfo(path)["bands"][0]["colorTable"]["entries"]
    assert table[LABEL_NODATA] == [0, 0, 0, 0] and table[1] == [30, 90, 220, 255]
    # A TIFF colour map has no alpha: GDAL makes the entry of the nodata value transparent on reading.
    # The table handed to GDAL says so too, for drivers that keep alpha (PNG, VRT, a later copy).
    assert palette(COLORS, LABEL_NODATA) == {0: (200, 200, 200, 255), 1: (30, 90, 220, 255), 2: (0, 0, 0, 255),
                                             3: (220, 60, 60, 255), LABEL_NODATA: (0, 0, 0, 0)}
    assert palette(None, LABEL_NODATA) is None and palette((None, None), LABEL_NODATA) is None


def test_gdalinfo_shows_class_names_and_the_attribute_table_of_the_published_labels(tmp_path: Path) -> None:
    image, _ = synthesize_block(0, 0, 64, 64, seed=2, bands=("blue", "green", "red", "nir"))
    scene = write_geotiff(tmp_path / "scene.tif", image)
    out = tmp_path / "out"
    result = tile_infer(scene, out, TileInferParams(model="spectral-landcover", tile=32))
    assert pam_sidecar(out / "labels.tif").is_file(), "the class table is published with labels.tif"
    assert set(result.outputs) >= {"labels.tif", "labels.tif.aux.xml"}
    info = gdalinfo(out / "labels.tif")
    band = info["bands"][0]
    assert band["categories"] == ["background", "water", "vegetation"]
    assert band["colorInterpretation"] == "Palette" and band["noDataValue"] == LABEL_NODATA
    rat = info["rat"]
    assert rat["tableType"] == "thematic"
    # GDAL's field usages: 5 = MinMax (the pixel value), 2 = Name, 6-9 = Red, Green, Blue, Alpha
    assert [(f["name"], f["usage"]) for f in rat["fieldDefn"]] == [
        ("Value", 5), ("Class", 2), ("Red", 6), ("Green", 7), ("Blue", 8), ("Alpha", 9)]
    assert [row["f"] for row in rat["row"]] == [
        [0, "background", 200, 200, 200, 255], [1, "water", 30, 90, 220, 255], [2, "vegetation", 40, 160, 60, 255]]
    text = subprocess.run(["gdalinfo", str(out / "labels.tif")], capture_output=True, text=True, check=True).stdout
    assert "Categories:" in text and "1: water" in text


def _canonical(element: Any) -> str:
    return ET.canonicalize(ET.tostring(element, encoding="unicode"), strip_text=True)


@pytest.mark.parametrize("colors", [COLORS, None])
def test_the_sidecar_is_what_gdal_itself_writes_for_these_categories_and_table(tmp_path: Path,
                                                                             colors: Colors | None) -> None:
    """GDAL reads PAM element names case-insensitively, other readers may not: the sidecar's elements are
    GDAL's own, i.e. what GDAL writes back (its VRT serialisation of the band) once it has read them."""
    path = label_cog(tmp_path, np.zeros((8, 8), dtype=np.uint8), colors=colors)
    ours = ET.parse(pam_sidecar(path)).getroot()
    assert ours.tag == "PAMDataset" and [(b.tag, b.attrib) for b in ours] == [("PAMRasterBand", {"band": "1"})]
    vrt = tmp_path / "labels.vrt"
    subprocess.run(["gdal_translate", "-q", "-of", "VRT", str(path), str(vrt)], check=True)
    gdal = ET.parse(vrt).getroot().find("VRTRasterBand")
    assert gdal is not None
    for name in ("CategoryNames", "GDALRasterAttributeTable"):
        mine, theirs = ours[0].find(name), gdal.find(name)
        assert mine is not None and theirs is not None, name
        assert _canonical(mine) == _canonical(theirs), name


def test_any_class_name_survives_and_classes_without_colours_get_no_colour_columns(tmp_path: Path) -> None:
    names = ("sea & lakes", "<built-up>", "forêt \"dense\"")
    path = label_cog(tmp_path, np.zeros((8, 8), dtype=np.uint8), names=names, colors=None)
    info = gdalinfo(path)
    assert info["bands"][0]["categories"] == list(names)
    assert "colorTable" not in info["bands"][0]
    assert [f["name"] for f in info["rat"]["fieldDefn"]] == ["Value", "Class"]
    assert [row["f"] for row in info["rat"]["row"]] == [[i, n] for i, n in enumerate(names)]


def test_a_multilabel_sidecar_names_each_band_and_its_two_categories() -> None:
    """Element names exactly as GDAL writes them (GDAL reads them case-insensitively, other readers may not);
    test_multilabel.py compares a run's sidecar with GDAL's own VRT."""
    band = ('  <PAMRasterBand band="{}">\n    <Description>{}</Description>\n    <CategoryNames>\n'
            "      <Category>absent</Category>\n      <Category>present</Category>\n    </CategoryNames>\n"
            "  </PAMRasterBand>\n")
    assert presence_table_xml(["cloud", "a & b"]) == (
        "<PAMDataset>\n" + band.format(1, "cloud") + band.format(2, "a &amp; b") + "</PAMDataset>\n")
