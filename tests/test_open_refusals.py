"""Why a raster cannot be opened, in one line, checked in full in-process (segflow.io.geotiff).

tests/test_bad_inputs.py meets the same inputs through the command line (exit code, one line on stderr,
earlier outputs kept); here each message is compared whole, and GDAL's error chain is turned into GDAL's
own words without rasterio's generic wrapper.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from rasterio.errors import RasterioError

from segflow.errors import InputError
from segflow.io.geotiff import _block_detail, _container_error, gdal_message, open_geotiff

from .helpers import random_image, write_geotiff
from .test_gdal_inputs import corrupt_middle_block, write_netcdf


def refusal(name: str | Path) -> str:
    with pytest.raises(InputError) as info:
        open_geotiff(name)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_missing_plain_path(tmp_path: Path) -> None:
    assert refusal(tmp_path / "nope.tif") == f"input file not found: {tmp_path / 'nope.tif'}; check the path"


def test_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.tif").write_bytes(b"")
    assert refusal(tmp_path / "empty.tif") == f"input {tmp_path / 'empty.tif'} is empty (0 bytes); re-create or " \
                                              "re-download it"


def test_a_file_that_is_not_a_raster(tmp_path: Path) -> None:
    path = tmp_path / "notes.tif"
    path.write_text("not a raster\n")
    message = refusal(path)
    assert message.startswith(f"{path} is not a raster GDAL can read (") and message.endswith("); expected a GeoTIFF")
    assert "not recognized as being in a supported file format" in message
    assert "See previous exception" not in message


def test_a_directory_without_a_raster(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "readme.txt").write_text("x")
    message = refusal(folder)
    assert message.startswith(f"input {folder} is a directory with no DICOM images and not a raster GDAL reads "
                              "(GDAL: ")
    assert message.endswith("); give a raster file such as a GeoTIFF, or a folder holding one DICOM series")


def test_a_gdal_name_that_opens_nothing(tmp_path: Path) -> None:
    scene = write_geotiff(tmp_path / "s.tif", random_image((1, 8, 8)))
    for name in (f"/vsizip/{tmp_path}/missing.zip/x.tif", f"GTIFF_DIR:7:{scene}"):
        message = refusal(name)
        assert message.startswith(f"input not found: GDAL cannot open {name} (")
        assert message.endswith("); check the name (a path, /vsizip/archive.zip/scene.tif, "
                                'NETCDF:"file.nc":variable...)')


def test_a_missing_variable_of_a_container_lists_the_variables(tmp_path: Path) -> None:
    few = write_netcdf(tmp_path / "few.nc", ["temp", "rain"])
    message = refusal(f'NETCDF:"{few}":snow')
    gdal = re.escape(f'NETCDF:"{few}":snow')
    assert re.fullmatch(rf"GDAL cannot open {gdal} \(.+\); {re.escape(str(few))} holds these netCDF subdatasets: "
                        rf'NETCDF:"{re.escape(str(few))}":temp, NETCDF:"{re.escape(str(few))}":rain; pass one of '
                        rf"them, e.g. --input 'NETCDF:\"{re.escape(str(few))}\":temp'", message), message
    many = write_netcdf(tmp_path / "many.nc", [f"v{i:02d}" for i in range(13)])
    message = refusal(f'NETCDF:"{many}":snow')
    assert f'NETCDF:"{many}":v09 and 3 more; pass one of them' in message and ":v10" not in message


def test_a_container_without_pixels_of_its_own(tmp_path: Path) -> None:
    few = write_netcdf(tmp_path / "few.nc", ["temp", "rain"])
    assert refusal(few) == (f"{few} is a netCDF container of 2 subdataset(s) and has no pixels itself; pick one by "
                            f"its GDAL name, e.g. --input 'NETCDF:\"{few}\":temp' (subdatasets: NETCDF:\"{few}\":temp, "
                            f"NETCDF:\"{few}\":rain)")


def test_the_container_message_lists_ten_and_counts_the_rest() -> None:
    names = [f"N:{i}" for i in range(12)]
    message = str(_container_error("c.h5", "HDF5", names))
    assert message == ("c.h5 is a HDF5 container of 12 subdataset(s) and has no pixels itself; pick one by its GDAL "
                       f"name, e.g. --input N:0 (subdatasets: {', '.join(names[:10])} and 2 more)")
    assert str(_container_error("c.h5", "HDF5", names[:10])).endswith(f"(subdatasets: {', '.join(names[:10])})")


def _vrt(path: Path, bands: str, size: tuple[int, int] = (6, 5)) -> Path:
    path.write_text(f'<VRTDataset rasterXSize="{size[0]}" rasterYSize="{size[1]}">{bands}</VRTDataset>')
    return path


def _band(n: int, dtype: str, source: Path) -> str:
    return (f'<VRTRasterBand dataType="{dtype}" band="{n}"><SimpleSource><SourceFilename relativeToVRT="0">'
            f"{source}</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>")


class _Reshaped:
    """A dataset that claims another size (GDAL opens no raster of 0 bands or 0 pixels)."""

    def __init__(self, ds: object, **sizes: int):
        self._ds, self._sizes = ds, sizes

    def __getattr__(self, name: str) -> object:
        return self._sizes[name] if name in self._sizes else getattr(self._ds, name)

    def __enter__(self) -> _Reshaped:
        return self

    def __exit__(self, *exc: object) -> None:
        self._ds.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(("sizes", "shown"), [({"count": 0}, "0 bands, 6x5"), ({"width": 0}, "1 bands, 0x5"),
                                              ({"height": 0}, "1 bands, 6x0")])
def test_a_raster_without_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sizes: dict[str, int],
                                  shown: str) -> None:
    import segflow.io.geotiff as geotiff

    path = write_geotiff(tmp_path / "s.tif", random_image((1, 5, 6)))
    monkeypatch.setattr(geotiff, "_open", lambda name: _Reshaped(rasterio.open(name), **sizes))
    assert refusal(path) == f"{path} has no pixels ({shown})"


def test_bands_of_different_types(tmp_path: Path) -> None:
    source = write_geotiff(tmp_path / "s.tif", random_image((1, 5, 6)))
    path = _vrt(tmp_path / "mixed.vrt", _band(1, "UInt16", source) + _band(2, "Float32", source))
    assert refusal(path) == f"{path} mixes band data types ['float32', 'uint16']; convert it to one type"
    same = _vrt(tmp_path / "same.vrt", _band(1, "UInt16", source) + _band(2, "UInt16", source))
    assert open_geotiff(same).data.shape == (2, 5, 6)


def test_complex_samples_are_refused_with_the_amplitude_command(tmp_path: Path) -> None:
    path = tmp_path / "slc.tif"
    with rasterio.open(path, "w", driver="GTiff", width=4, height=3, count=1, dtype="complex64") as dst:
        dst.write((np.ones((1, 3, 4)) + 1j).astype(np.complex64))
    assert refusal(path) == (
        f"{path} holds complex64 samples (complex, e.g. SAR single-look complex); models take real bands: compute "
        f"amplitude first, e.g. gdal_calc.py -A {path} --allBands=A --calc='numpy.absolute(A)' --type=Float32 "
        f"--outfile={tmp_path / 'slc_amplitude.tif'}")


def _chain(*texts: str) -> BaseException:
    """Exceptions raised inside one another: the last text is the outermost."""
    exc: BaseException | None = None
    for text in texts:
        new = RasterioError(text)
        new.__cause__ = exc
        exc = new
    assert exc is not None
    return exc


def test_gdal_message_is_gdal_s_words_oldest_first() -> None:
    exc = _chain("TIFFFillTile: Read error at row 0, col 0, tile 3; got 0 bytes",
                 "band 1: IReadBlock failed at X offset 1, Y offset 0",
                 "Read failed. See previous exception for details.")
    assert gdal_message(exc) == ("TIFFFillTile: Read error at row 0, col 0, tile 3; got 0 bytes / band 1: IReadBlock "
                                 "failed at X offset 1, Y offset 0")


def test_gdal_message_drops_repeats_and_parts_of_longer_messages_and_joins_lines() -> None:
    exc = _chain("short", "a  longer\nmessage with short in it", "another", "another")
    assert gdal_message(exc) == "a longer message with short in it / another"


def test_gdal_message_follows_implicit_chains_and_stops_at_cycles() -> None:
    inner = RasterioError("inner")
    outer = RasterioError("outer")
    outer.__context__ = inner
    inner.__context__ = outer  # a cycle
    assert gdal_message(outer) == "inner / outer"


def test_gdal_message_falls_back_to_the_exception_itself() -> None:
    assert gdal_message(RasterioError("Read failed. See previous exception for details.")) == \
        "Read failed. See previous exception for details."
    assert gdal_message(RasterioError("")) == "RasterioError"
    assert gdal_message(RasterioError("a\n  b")) == "a b"


def test_block_detail_says_nothing_it_cannot_locate(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "b.tif", random_image((2, 40, 40)), block=16)
    message = "band 2: IReadBlock failed at X offset 1, Y offset 2"
    with rasterio.open(path) as ds:
        offset = ds.get_tag_item("BLOCK_OFFSET_1_2", "TIFF", bidx=2)
        size = ds.get_tag_item("BLOCK_SIZE_1_2", "TIFF", bidx=2)
        assert _block_detail(ds, str(path), message) == (
            f"; block x 1, y 2 of band 2 is {size} bytes at byte offset {offset} of the {path.stat().st_size}-byte "
            "file b.tif")
        assert _block_detail(ds, f"/vsizip/{tmp_path}/a.zip/b.tif", message) == (
            f"; block x 1, y 2 of band 2 is {size} bytes at byte offset {offset}"), "no local file: no file size"
        assert _block_detail(ds, str(path), "some other failure") == ""
        assert _block_detail(ds, str(path), "band 2: IReadBlock failed at X offset 9, Y offset 9") == "", "no block"
        assert _block_detail(ds, str(path), "band 7: IReadBlock failed at X offset 1, Y offset 2") == "", "no band"
    assert _block_detail(ds, str(path), message) == "", "a closed dataset"
    assert _block_detail(None, str(path), message) == ""
    other = SimpleNamespace(closed=False, driver="HFA", get_tag_item=lambda *a, **k: "1")
    assert _block_detail(other, str(path), message) == "", "only GeoTIFF blocks are located"


def test_a_corrupt_block_read_later_names_the_window_and_the_block(tmp_path: Path) -> None:
    scene = write_geotiff(tmp_path / "scene.tif", random_image((2, 96, 96), seed=3), block=32)
    bad, offset = corrupt_middle_block(scene, tmp_path / "bad.tif")
    opened = open_geotiff(bad, chunk=32)  # the last block is sound: it opens
    np.testing.assert_array_equal(opened.data[:, :32, :32].compute(), rasterio.open(scene).read(window=((0, 32),
                                                                                                         (0, 32))))
    with pytest.raises(InputError) as info:
        opened.data[:, 32:64, 32:64].compute()
    message = str(info.value)
    assert message.startswith(f"cannot read window rows 32:64 cols 32:64 of {bad}: the file is truncated or corrupt "
                              "(GDAL: ")
    assert "; block x 1, y 1 of band 1 is " in message and f" bytes at byte offset {offset} of the " in message
    assert message.endswith("-byte file bad.tif; re-create or re-download it")


def test_a_name_too_long_for_the_system_is_not_found(tmp_path: Path) -> None:
    name = str(tmp_path / ("a" * 5000 + ".tif"))  # stat() fails with ENAMETOOLONG, not ENOENT
    assert refusal(name) == f"input file not found: {name}; check the path"


def test_a_gdal_name_inside_a_file_that_is_no_container(tmp_path: Path) -> None:
    notes = tmp_path / "notes.zip"
    notes.write_text("not an archive")
    name = f"/vsizip/{notes}/x.tif"
    message = refusal(name)
    assert message.startswith(f"input not found: GDAL cannot open {name} (")


def test_exactly_ten_variables_are_all_listed_without_a_count(tmp_path: Path) -> None:
    ten = write_netcdf(tmp_path / "ten.nc", [f"v{i}" for i in range(10)])
    message = refusal(f'NETCDF:"{ten}":snow')
    assert f'NETCDF:"{ten}":v9; pass one of them' in message and "more" not in message


def test_block_detail_needs_both_the_offset_and_the_size() -> None:
    message = "band 1: IReadBlock failed at X offset 0, Y offset 0"
    for missing in ("OFFSET", "SIZE"):
        ds = SimpleNamespace(closed=False, driver="GTiff",
                             get_tag_item=lambda item, *a, missing=missing, **k: None if missing in item else "8")
        assert _block_detail(ds, "x.tif", message) == ""


def test_complex_samples_without_a_local_file_suggest_a_local_output() -> None:
    with rasterio.MemoryFile(filename="slc.tif") as memory:
        with memory.open(driver="GTiff", width=4, height=3, count=1, dtype="complex64") as dst:
            dst.write(np.ones((1, 3, 4), dtype=np.complex64))
        assert refusal(memory.name).endswith(f"-A {memory.name} --allBands=A --calc='numpy.absolute(A)' "
                                             "--type=Float32 --outfile=input_amplitude.tif")
