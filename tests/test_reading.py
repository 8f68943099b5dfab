"""How rasters are read: the nodata rule (mask bands, alpha, nodata values, NaN) and scale/offset.

References are GDAL's own answers: rasterio's ``dataset_mask()`` (GDAL's dataset mask) for the
cases GDAL covers, ``gdal_translate -unscale`` for scale/offset; the documented deviations
("Nodata" in the README) are tested against the closed form.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.enums import ColorInterp
from rasterio.env import get_gdal_config, set_gdal_config

from segflow.bands import assemble_scene
from segflow.errors import InputError
from segflow.io.geotiff import (
    _chunking,
    _dataset,
    _token,
    cap_gdal_cache,
    close_datasets,
    gdal_cache_limit,
    open_geotiff,
)
from segflow.io.readers import open_scene
from segflow.models.package import ModelSpec, resolve_package
from segflow.scene import Scene
from segflow.tile_infer import TileInferParams, tile_infer
from segflow.tiling import Box

from .helpers import CRS, TRANSFORM, make_spec, random_image, write_geotiff


def spec_reading(indices: list[int], **input_extra: Any) -> ModelSpec:
    """A model contract that reads these 1-based bands of the image."""
    spec = make_spec(bands=len(indices))
    data = spec.model_dump()
    data["input"]["bands"] = [{"name": f"b{i}", "index": i} for i in indices]
    data["input"].update(input_extra)
    return ModelSpec.model_validate(data)


def valid_of(scene: Scene) -> np.ndarray:
    v = scene.valid
    return np.ones(scene.spatial_shape, dtype=bool) if v is None else np.asarray(v.compute())


def gdal_valid(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.dataset_mask() > 0


def model_valid(path: Path, indices: list[int]) -> np.ndarray:
    """Validity of the pixels a model reading ``indices`` sees (the assembled scene, as tile_infer builds it)."""
    return valid_of(assemble_scene(spec_reading(indices), {"image": open_scene(path)}))


def set_alpha(path: Path, band: int) -> Path:
    with rasterio.open(path, "r+") as ds:
        ci = list(ds.colorinterp)
        ci[band - 1] = ColorInterp.alpha
        ds.colorinterp = ci
    return path


# ----------------------------------------------------------------------------- nodata values


def test_nodata_needs_every_band_and_matches_gdal(tmp_path: Path) -> None:
    image = random_image((3, 40, 50), seed=1) + 1
    image[:, :5, :] = 0  # every band nodata: invalid
    image[0, 10:15, :] = 0  # one band nodata: still data (GDAL's rule, and ours)
    image[:2, 20:25, :] = 0  # two of three bands
    path = write_geotiff(tmp_path / "nd.tif", image, nodata=0)
    ours = model_valid(path, [1, 2, 3])
    np.testing.assert_array_equal(ours, gdal_valid(path))
    assert not ours[:5].any() and ours[5:].all()


def test_nodata_is_decided_by_the_bands_the_model_reads(tmp_path: Path) -> None:
    """The documented deviation: GDAL asks all bands, segflow the model's (band 3 here is unused)."""
    image = random_image((3, 30, 40), seed=2) + 1
    image[:2, :6, :] = 0  # the model's bands 1 and 2 hold only nodata; band 3 holds data
    path = write_geotiff(tmp_path / "nd.tif", image, nodata=0)
    assert gdal_valid(path)[:6].all(), "GDAL: band 3 holds data, so the pixel is valid"
    ours = model_valid(path, [1, 2])
    assert not ours[:6].any() and ours[6:].all()
    np.testing.assert_array_equal(model_valid(path, [1, 2, 3]), gdal_valid(path))


# ----------------------------------------------------------------------------- mask bands and alpha


def write_masked(path: Path, image: np.ndarray, mask: np.ndarray) -> Path:
    """A tiled GeoTIFF of ``image`` with ``mask`` as its internal per-dataset mask band."""
    count, height, width = image.shape
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=image.dtype.name,
                           tiled=True, blockxsize=16, blockysize=16) as dst:
            dst.write(image)
            dst.write_mask(mask)
    return path


def test_internal_mask_band_masks_like_gdal(tmp_path: Path) -> None:
    image = random_image((3, 40, 50), seed=3)
    mask = np.full((40, 50), 255, dtype=np.uint8)
    mask[5:12, 7:30] = 0
    path = write_masked(tmp_path / "masked.tif", image, mask)
    assert not path.with_suffix(".tif.msk").exists(), "the mask is inside the file"
    reference = gdal_valid(path)
    assert not reference.all()
    np.testing.assert_array_equal(model_valid(path, [1, 2, 3]), reference)
    np.testing.assert_array_equal(model_valid(path, [2]), reference)


@pytest.mark.parametrize(("count", "dtype"), [(4, "uint8"), (2, "uint8"), (4, "uint16")])
def test_alpha_band_of_2_and_4_band_files_masks_like_gdal(tmp_path: Path, count: int, dtype: str) -> None:
    image = random_image((count, 30, 40), seed=4, dtype=dtype)
    top = np.iinfo(dtype).max
    alpha = np.full((30, 40), top, dtype=dtype)
    alpha[:, :6] = 0
    alpha[:, 6:9] = 1  # partly transparent is data, as in GDAL's mask
    alpha[3:8, 20:25] = 0
    image[-1] = alpha
    path = set_alpha(write_geotiff(tmp_path / "alpha.tif", image), count)
    reference = gdal_valid(path)
    assert not reference[:, :6].any() and reference[:, 6:9].all(), "GDAL uses this alpha band as the mask"
    np.testing.assert_array_equal(model_valid(path, list(range(1, count))), reference)


def test_alpha_band_of_a_7_band_file_masks_where_gdal_does_not(tmp_path: Path) -> None:
    """gdalwarp -dstalpha on a 6-band scene: band 7 is alpha; GDAL ignores it, segflow masks."""
    image = random_image((7, 30, 40), seed=5)
    image[6] = 65535
    image[6, :, :10] = 0
    image[6, 12:14, :] = 7
    path = set_alpha(write_geotiff(tmp_path / "seven.tif", image), 7)
    assert gdal_valid(path).all(), "GDAL treats alpha as a mask only in 2- and 4-band files"
    np.testing.assert_array_equal(model_valid(path, [2, 3, 4]), image[6] != 0)


def test_alpha_band_is_never_fed_to_a_model_unless_picked(tmp_path: Path) -> None:
    image = random_image((4, 20, 20), seed=6, dtype="uint8")
    path = set_alpha(write_geotiff(tmp_path / "rgba.tif", image), 4)
    scene = open_scene(path)
    assert scene.alpha_bands == (3,) and scene.num_bands == 4, "band numbers stay as in the file"
    with pytest.raises(InputError, match=r"band 4 of .*rgba\.tif is an alpha band .* --band b4=N"):
        assemble_scene(spec_reading([2, 3, 4]), {"image": scene})
    chosen = assemble_scene(spec_reading([2, 3, 4]), {"image": scene}, {"b4": 4})
    np.testing.assert_array_equal(chosen.data.compute(), image[1:])


def test_mask_band_and_alpha_together_in_chunked_windows(tmp_path: Path) -> None:
    """A 7-band file with an internal mask band and an alpha band: a pixel is valid where both say so, read
    as dask chunks smaller than the file (each window reads its own part of the mask), in the file's dtype."""
    image = random_image((7, 48, 64), seed=9, dtype="uint8")
    image[6] = 255
    image[6, 30:40, :] = 0
    mask = np.full((48, 64), 255, dtype=np.uint8)
    mask[:, 50:60] = 0
    mask[2:5, 3:9] = 0
    path = write_masked(tmp_path / "both.tif", image, mask)
    set_alpha(path, 7)
    scene = open_geotiff(path, chunk=16)
    assert scene.data.chunks[1:] == ((16,) * 3, (16,) * 4)
    assert scene.mask is not None and scene.mask.chunks == ((16,) * 3, (16,) * 4)
    assert scene.mask.name.startswith("mask-") and scene.mask.name[5:] == scene.data.name[5:]
    want = (mask > 0) & (image[6] > 0)
    np.testing.assert_array_equal(valid_of(scene), want)
    box = Box((20, 24), (46, 62))
    data, valid = scene.read(box)
    assert data.dtype == np.uint8 and valid is not None
    np.testing.assert_array_equal(data, image[(slice(None), *box.slices)])
    np.testing.assert_array_equal(valid, want[box.slices])


def test_what_a_plain_geotiff_scene_records(tmp_path: Path) -> None:
    """The run record's view of the input (``meta``), band names from descriptions, no mask where the file has
    none, the CRS and transform, and a file without georeferencing (GDAL's identity transform) as none."""
    image = random_image((3, 20, 30), seed=13, dtype="int16")
    path = write_geotiff(tmp_path / "plain.tif", image, block=16, descriptions=["Red ", "", "NIR"])
    scene = open_geotiff(path)
    assert scene.meta == {"driver": "GTiff", "dtype": "int16", "block_shape": [16, 16], "width": 30, "height": 20,
                          "count": 3}
    assert scene.band_names == ("red", "band2", "nir") and scene.mask is None and scene.valid is None
    assert scene.nodata is None and scene.gcps == () and scene.rpcs is None and scene.alpha_bands == ()
    assert rasterio.crs.CRS.from_wkt(scene.crs) == rasterio.crs.CRS.from_user_input(CRS)
    assert scene.transform == tuple(TRANSFORM)[:6]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rasterio: not georeferenced
        bare = open_geotiff(write_geotiff(tmp_path / "bare.tif", image, crs=None))
    assert bare.crs is None and bare.transform is None


def test_alpha_bands_are_recorded_by_their_band_numbers(tmp_path: Path) -> None:
    path = set_alpha(write_geotiff(tmp_path / "rgba.tif", random_image((4, 10, 12), seed=3, dtype="uint8")), 4)
    scene = open_geotiff(path)
    assert scene.meta["alpha_bands"] == [4] and scene.alpha_bands == (3,)
    assert scene.mask is not None and scene.mask.dtype == bool and scene.data.dtype == np.uint8


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1)])
def test_rasters_one_pixel_wide_or_tall_are_read(tmp_path: Path, shape: tuple[int, int]) -> None:
    image = random_image((2, *shape), seed=4, dtype="uint16")
    scene = open_geotiff(write_geotiff(tmp_path / "thin.tif", image, tiled=False))
    np.testing.assert_array_equal(scene.data.compute(), image)


@pytest.mark.parametrize("key", [np.s_[1:3, 3:19, 5:21], np.s_[3], np.s_[:, 5], np.s_[2, 7, 9], np.s_[:, ::3],
                                 np.s_[:, 17:2:-2, ::-1], np.s_[::-1, 3:4], np.s_[:, 5:5], np.s_[[3, 0], 1:19:5],
                                 np.s_[-1, -3:, -7::2]])
def test_any_slicing_of_a_scene_reads_those_pixels(tmp_path: Path, key: Any) -> None:
    """dask hands the slicing (indices, steps, reversed ranges) to the reader: it fuses it into the read."""
    image = random_image((4, 20, 24), seed=5, dtype="uint8")
    image[3] = np.where(np.arange(24) % 5 == 0, 0, 255).astype(np.uint8)  # an alpha band
    scene = open_geotiff(set_alpha(write_geotiff(tmp_path / "four.tif", image, block=16), 4), chunk=16)
    got = scene.data[key].compute()
    assert got.shape == image[key].shape and got.dtype == np.uint8
    np.testing.assert_array_equal(got, image[key])
    assert scene.mask is not None
    spatial = key[1:] if isinstance(key, tuple) else ()
    mask = scene.mask[spatial].compute()
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, (image[3] > 0)[spatial])


def test_the_default_chunks_are_1024_pixels_a_side(tmp_path: Path) -> None:
    path = tmp_path / "rows.tif"
    with rasterio.open(path, "w", driver="GTiff", width=10, height=2100, count=1, dtype="uint8",
                       blockysize=1) as dst:
        dst.write(np.zeros((1, 2100, 10), dtype=np.uint8))
    assert open_geotiff(path).data.chunks == ((1,), (1024, 1024, 52), (10,))


def test_a_multipage_tiff_is_read_as_its_first_page(tmp_path: Path) -> None:
    """GDAL lists the pages of a multi-page TIFF as subdatasets, but the first page's bands are the raster."""
    from PIL import Image

    pages = [Image.fromarray(np.full((6, 8), v, dtype=np.uint8)) for v in (7, 9)]
    path = tmp_path / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    with rasterio.open(path) as ds:
        assert ds.count == 1 and len(ds.subdatasets) == 2
    np.testing.assert_array_equal(open_geotiff(path).data.compute(), np.full((1, 6, 8), 7, dtype=np.uint8))


def test_a_file_removed_after_opening_is_a_one_line_error(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "gone.tif", random_image((1, 20, 20), seed=6), block=16)
    scene = open_geotiff(path)
    close_datasets()  # no cached handle: the read opens the file again
    path.unlink()
    with pytest.raises(InputError) as info:
        scene.data[:, :16, :16].compute()
    message = str(info.value)
    assert message.startswith(f"cannot read window rows 0:16 cols 0:16 of {path}: the file is truncated or corrupt")
    assert "No such file or directory" in message and "\n" not in message


def test_more_bands_than_rows_or_columns_read_whole(tmp_path: Path) -> None:
    image = random_image((6, 2, 3), seed=10, dtype="int16")
    scene = open_geotiff(write_geotiff(tmp_path / "thin.tif", image))
    np.testing.assert_array_equal(scene.data.compute(), image)
    np.testing.assert_array_equal(scene.select_bands([4, 1]).data.compute(), image[[4, 1]])


@pytest.mark.parametrize("band", [1, 4])
def test_a_damaged_last_block_of_the_first_or_last_band_is_found_on_opening(tmp_path: Path, band: int) -> None:
    """Only the last block (bottom right, partial) of one band is damaged: opening reads exactly that block of the
    first and the last band, and says which block it is and where it lies in the file."""
    path = tmp_path / "damaged.tif"
    image = random_image((4, 40, 56), seed=12, dtype="uint16")
    with rasterio.open(path, "w", driver="GTiff", width=56, height=40, count=4, dtype="uint16", tiled=True,
                       blockxsize=16, blockysize=16, compress="deflate", interleave="band") as dst:
        dst.write(image)
    with rasterio.open(path) as ds:
        offset, size = (int(ds.get_tag_item(f"BLOCK_{k}_3_2", "TIFF", bidx=band)) for k in ("OFFSET", "SIZE"))
    data = bytearray(path.read_bytes())
    data[offset:offset + size] = random.Random(band).randbytes(size)
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as found:
        open_geotiff(path)
    message = str(found.value)
    assert message.startswith(f"cannot read its last block of {path}: the file is truncated or corrupt (GDAL: ")
    assert f"; block x 3, y 2 of band {band} is {size} bytes at byte offset {offset} of the " in message
    assert message.endswith("; re-create or re-download it")


def test_the_dask_name_of_a_raster_changes_with_its_name_size_and_time(tmp_path: Path) -> None:
    """Dask caches by name: a file rewritten in place (same name) must not reuse the old pixels."""
    path = write_geotiff(tmp_path / "a.tif", random_image((1, 8, 8), seed=1))
    first = _token(str(path))
    assert _token(str(path)) == first
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    touched = _token(str(path))
    assert touched != first, "same size, newer modification time"
    write_geotiff(path, random_image((1, 16, 16), seed=1))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert _token(str(path)) not in (first, touched), "another size, the same time as before"
    copy = tmp_path / "b.tif"
    shutil.copy2(path, copy)
    assert _token(str(copy)) != _token(str(path)), "another name"
    assert _token("/vsimem/nothing.tif") == _token("/vsimem/nothing.tif") != _token("/vsimem/other.tif")
    assert open_geotiff(path).data.name == f"read-{_token(str(path))}"


def test_gdal_cache_cap_lowers_but_never_raises_and_the_limit_restores() -> None:
    before = get_gdal_config("GDAL_CACHEMAX")
    try:
        set_gdal_config("GDAL_CACHEMAX", 1 << 30)
        cap_gdal_cache(256 << 20)
        assert get_gdal_config("GDAL_CACHEMAX") == 256 << 20
        cap_gdal_cache(512 << 20)
        assert get_gdal_config("GDAL_CACHEMAX") == 256 << 20, "a lower cache is kept"
        with gdal_cache_limit(64 << 20):
            assert get_gdal_config("GDAL_CACHEMAX") == 64 << 20
        assert get_gdal_config("GDAL_CACHEMAX") == 256 << 20
    finally:
        set_gdal_config("GDAL_CACHEMAX", before)


@pytest.mark.parametrize(("block", "shape", "target", "want"), [
    ((256, 256), (10000, 9000), 1024, (1024, 1024)),  # tiles: whole tiles, the target a side
    ((300, 200), (10000, 9000), 1024, (900, 1000)),  # the most whole tiles within the target
    ((512, 512), (10000, 9000), 256, (512, 512)),  # a tile larger than the target: one tile
    ((512, 512), (400, 300), 1024, (400, 300)),  # one tile covers the file
    ((512, 512), (512, 512), 256, (512, 512)),  # exactly one tile
    ((1, 10000), (5000, 10000), 1024, (104, 10000)),  # one-row strips: about target² pixels of rows
    ((16, 10000), (5000, 10000), 1024, (96, 10000)),  # 16-row strips: whole strips
    ((16, 100000), (5000, 100000), 1024, (16, 100000)),  # a strip over target²: one strip
    ((1, 3000), (50, 3000), 1024, (50, 3000)),  # a short file of long rows: every row
    ((64, 64), (4096, 4096), 1000, (960, 960)),
    ((1, 4096), (5000, 4096), 1024, (1024, 4096)),  # exactly 4 x target²: not yet cut down
    ((1, 4500), (5000, 4500), 1024, (233, 4500)),  # just over 4 x target²: about target² pixels of rows
    ((1, 1024), (100, 1024), 32, (1, 1024)),  # a row holds target² pixels: one row
])
def test_dask_chunks_are_whole_blocks_near_the_target(block: tuple[int, int], shape: tuple[int, int], target: int,
                                                     want: tuple[int, int]) -> None:
    got = _chunking(block, *shape, target)
    assert got == want
    assert all(isinstance(v, int) for v in got)


def test_each_thread_reuses_its_dataset_until_they_are_closed(tmp_path: Path) -> None:
    path = str(write_geotiff(tmp_path / "a.tif", random_image((1, 8, 8), seed=1)))
    first = _dataset(path)
    assert _dataset(path) is first and not first.closed
    other: list[Any] = []
    thread = threading.Thread(target=lambda: other.append(_dataset(path)))
    thread.start()
    thread.join()
    assert other[0] is not first, "GDAL handles are not shared across threads"
    close_datasets()
    assert first.closed and other[0].closed
    again = _dataset(path)
    assert again is not first and not again.closed
    close_datasets()


# ----------------------------------------------------------------------------- NaN


def test_nan_in_a_band_the_model_reads_is_nodata_and_in_an_unused_band_is_not(tmp_path: Path) -> None:
    image = random_image((3, 20, 30), seed=7, dtype="float32")
    image[0, :4, :] = np.nan  # band 1 only
    image[1, 10, 10] = np.inf
    path = write_geotiff(tmp_path / "f.tif", image)
    assert model_valid(path, [2, 3])[:4].all(), "NaN in band 1, which the model does not read"
    ours = model_valid(path, [1, 2])
    expected = np.ones((20, 30), dtype=bool)
    expected[:4] = False
    expected[10, 10] = False
    np.testing.assert_array_equal(ours, expected)


def test_nan_nodata_is_stricter_than_gdal(tmp_path: Path) -> None:
    """GDAL (nodata NaN) masks a pixel only where every band is NaN; a model cannot take any NaN."""
    image = random_image((2, 10, 12), seed=8, dtype="float32")
    image[0, :3] = np.nan
    image[:, 5] = np.nan
    path = write_geotiff(tmp_path / "nan.tif", image, nodata=float("nan"))
    reference = gdal_valid(path)
    assert reference[:3].all() and not reference[5].any()
    ours = model_valid(path, [1, 2])
    assert not ours[:3].any() and not ours[5].any() and ours[6:].all()


# ----------------------------------------------------------------------------- scale and offset


def write_scaled(path: Path, image: np.ndarray, scales: list[float], offsets: list[float],
                 nodata: float | None = None) -> Path:
    write_geotiff(path, image, nodata=nodata)
    with rasterio.open(path, "r+") as ds:
        ds.scales = tuple(scales)
        ds.offsets = tuple(offsets)
    return path


def gdal_unscaled(path: Path, out: Path) -> np.ndarray:
    if shutil.which("gdal_translate") is None:
        pytest.skip("gdal_translate is not installed (Debian gdal-bin)")
    subprocess.run(["gdal_translate", "-q", "-unscale", "-ot", "Float32", str(path), str(out)], check=True)
    with rasterio.open(out) as ds:
        return ds.read()


@pytest.mark.services
@pytest.mark.parametrize(("scale", "offset"), [(2.0, 0.0), (1.0, 5.0), (1.0, 0.0)])
def test_a_scale_alone_or_an_offset_alone_is_applied(scale: float, offset: float) -> None:
    stored = np.arange(12, dtype=np.uint16).reshape(1, 3, 4)
    scene = Scene.from_array(stored, scales=(scale,), offsets=(offset,))
    physical = scene.scaled()
    np.testing.assert_array_equal(physical.data.compute(), stored * scale + offset)
    assert (physical is scene) == (scale == 1.0 and offset == 0.0)


def test_scaled_values_keep_the_validity_of_the_stored_ones() -> None:
    """Nodata is a stored value: after scaling, a physical value equal to it is data (the scene's nodata is
    gone, its validity kept as the mask) and the scene declares no scale any more."""
    stored = np.array([[[0, 3, 5], [3, 0, 7]]], dtype=np.int16)
    scene = Scene.from_array(stored, nodata=0, scales=(1.0,), offsets=(-3.0,))
    physical = scene.scaled()
    assert physical.nodata is None and physical.scales == () and physical.offsets == ()
    np.testing.assert_array_equal(physical.data.compute(), stored - 3.0)
    np.testing.assert_array_equal(physical.valid.compute(), stored[0] != 0)
    assert physical.scaled() is physical


def test_selected_bands_keep_their_alpha_roles_scales_and_offsets() -> None:
    stored = np.arange(4 * 6, dtype=np.uint16).reshape(4, 2, 3)
    plain = Scene.from_array(stored, alpha_bands=(3,))
    picked = plain.select_bands([3, 1])
    assert picked.alpha_bands == (0,) and picked.scales == () and picked.offsets == ()
    assert picked.band_names == ("band4", "band2")
    np.testing.assert_array_equal(picked.data.compute(), stored[[3, 1]])
    scaled = Scene.from_array(stored, scales=(1.0, 2.0, 3.0, 4.0), offsets=(0.5, 0.0, 0.25, 0.0))
    again = scaled.select_bands([2, 0])
    assert again.scales == (3.0, 1.0) and again.offsets == (0.25, 0.5) and again.alpha_bands == ()


def test_scale_and_offset_are_applied_as_gdal_does(tmp_path: Path) -> None:
    image = random_image((3, 30, 40), seed=9)
    path = write_scaled(tmp_path / "dn.tif", image, [0.0001, 0.0002, 1.0], [-0.1, 0.05, 0.0])
    scene = assemble_scene(spec_reading([1, 2, 3]), {"image": open_scene(path)})
    assert scene.data.dtype == np.float32
    values = scene.data.compute()
    np.testing.assert_allclose(values, gdal_unscaled(path, tmp_path / "unscaled.tif"), rtol=1e-6, atol=1e-7)
    assert scene.meta["values"] == [{"band": "band1", "scale": 0.0001, "offset": -0.1},
                                    {"band": "band2", "scale": 0.0002, "offset": 0.05},
                                    {"band": "band3", "scale": 1.0, "offset": 0.0}]
    raw = assemble_scene(spec_reading([1, 2, 3], values="raw"), {"image": open_scene(path)})
    assert raw.data.dtype == np.uint16 and raw.meta["values"] == "raw"
    np.testing.assert_array_equal(raw.data.compute(), image)


def test_nodata_is_compared_on_stored_values_before_scaling(tmp_path: Path) -> None:
    image = random_image((2, 20, 20), seed=10) + 1
    image[:, :5] = 0
    path = write_scaled(tmp_path / "dn.tif", image, [0.0001, 0.0001], [-0.1, -0.1], nodata=0)
    scene = assemble_scene(spec_reading([1, 2]), {"image": open_scene(path)})
    np.testing.assert_array_equal(valid_of(scene), gdal_valid(path))
    assert not valid_of(scene)[:5].any() and valid_of(scene)[5:].all()


def test_only_the_model_bands_scaling_matters(tmp_path: Path) -> None:
    image = random_image((3, 10, 10), seed=11)
    path = write_scaled(tmp_path / "dn.tif", image, [1.0, 1.0, 0.5], [0.0, 0.0, 3.0])
    scene = assemble_scene(spec_reading([1, 2]), {"image": open_scene(path)})
    assert scene.data.dtype == np.uint16, "no band the model reads is scaled: stored values, stored type"
    np.testing.assert_array_equal(scene.data.compute(), image[:2])


def test_spectral_model_reads_reflectance_and_run_json_says_so(tmp_path: Path) -> None:
    """Reflectance stored as DN * 0.0001 - 0.1: the thresholds apply to reflectance, not to DN."""
    rng = np.random.default_rng(12)
    dn = rng.integers(800, 3000, size=(4, 48, 64)).astype("uint16")
    path = write_scaled(tmp_path / "dn.tif", dn, [0.0001] * 4, [-0.1] * 4)
    reflectance = (dn.astype(np.float32) * np.float32(0.0001) + np.float32(-0.1)).astype(np.float32)
    physical = write_geotiff(tmp_path / "reflectance.tif", reflectance)
    params = TileInferParams(tile=32, chunk=32)
    tile_infer(str(path), tmp_path / "scaled", params)
    tile_infer(physical, tmp_path / "physical", params)
    labels = {name: rasterio.open(tmp_path / name / "labels.tif").read(1) for name in ("scaled", "physical")}
    np.testing.assert_array_equal(labels["scaled"], labels["physical"])
    record = json.loads((tmp_path / "scaled" / "run.json").read_text())["input"]["values"]
    assert record == [{"band": f"band{i}", "scale": 0.0001, "offset": -0.1} for i in (2, 3, 4)]

    package = tmp_path / "raw-model"
    shutil.copytree(resolve_package("spectral-landcover").root, package)
    spec = yaml.safe_load((package / "model.yaml").read_text())
    spec["input"]["values"] = "raw"
    (package / "model.yaml").write_text(yaml.safe_dump(spec))
    tile_infer(path, tmp_path / "raw", TileInferParams(model=str(package), tile=32, chunk=32))
    tile_infer(write_geotiff(tmp_path / "plain.tif", dn), tmp_path / "plain", params)
    raw_labels = rasterio.open(tmp_path / "raw" / "labels.tif").read(1)
    np.testing.assert_array_equal(raw_labels, rasterio.open(tmp_path / "plain" / "labels.tif").read(1))
    assert json.loads((tmp_path / "raw" / "run.json").read_text())["input"]["values"] == "raw"
    assert (raw_labels != labels["scaled"]).mean() > 0.05, "the offset changes the indices, hence the classes"


# ----------------------------------------------------------------------------- end to end: gdalwarp -dstalpha


@pytest.mark.services
def test_transparent_border_of_a_warped_scene_is_nodata(tmp_path: Path) -> None:
    """The issue's case: gdalwarp -dstalpha on a 6-band scene; the border must not become water."""
    if shutil.which("gdalwarp") is None:
        pytest.skip("gdalwarp is not installed (Debian gdal-bin)")
    rng = np.random.default_rng(13)
    six = rng.integers(500, 3000, size=(6, 60, 80)).astype("uint16")
    src = write_geotiff(tmp_path / "six.tif", six)
    warped = tmp_path / "warped.tif"
    subprocess.run(["gdalwarp", "-q", "-dstalpha", "-t_srs", "EPSG:4326", "-r", "near", str(src), str(warped)],
                   check=True)
    with rasterio.open(warped) as ds:
        assert ds.count == 7 and ds.colorinterp[6] == ColorInterp.alpha
        border = ds.read(7) == 0
        assert border.any() and gdal_valid(warped).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tile_infer(warped, tmp_path / "out", TileInferParams(tile=32, chunk=32))
    labels = rasterio.open(tmp_path / "out" / "labels.tif").read(1)
    np.testing.assert_array_equal(labels == 255, border)


def test_scaling_rounds_once_like_gdal_unscale(tmp_path: Path) -> None:
    """stored * scale + offset in double precision, then float32: bit-identical to gdal_translate -unscale."""
    if shutil.which("gdal_translate") is None:
        pytest.skip("gdal_translate is not installed (Debian package gdal-bin)")
    rng = np.random.default_rng(5)
    stored = rng.integers(0, 10000, size=(2, 64, 64), dtype=np.uint16)
    src = tmp_path / "dn.tif"
    with rasterio.open(src, "w", driver="GTiff", width=64, height=64, count=2, dtype="uint16") as ds:
        ds.write(stored)
        ds.scales = (0.0001, 0.0001)
        ds.offsets = (-0.1, -0.1)
    ref = tmp_path / "ref.tif"
    subprocess.run(["gdal_translate", "-q", "-unscale", "-ot", "Float32", str(src), str(ref)], check=True)
    with rasterio.open(ref) as ds:
        want = ds.read()
    got = open_scene(str(src)).scaled().data.compute()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
