"""Vector labels in training (issue 13, defect 4): a CRS that cannot be right and unknown classes are refused
with one line before training; class_map and unknown_classes: skip."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from rasterio.warp import transform as warp_transform

from segflow.cli import main
from segflow.errors import InputError, SegflowWarning
from segflow.training.chips import VectorSource
from segflow.training.config import train_config_from_dict
from segflow.training.sources import IGNORE
from tests.helpers import CRS, TRANSFORM, write_geotiff

NAMES = ["background", "water", "vegetation", "building"]
X0, Y0 = TRANSFORM.c, TRANSFORM.f  # top-left corner of the image, 10 m pixels, EPSG:32632


def _square(col: int, row: int, size: int, *, x0: float = X0, y0: float = Y0, pixel: float = 10.0
            ) -> list[list[list[float]]]:
    left, top = x0 + pixel * col, y0 - pixel * row
    right, bottom = left + pixel * size, top - pixel * size
    return [[[left, top], [right, top], [right, bottom], [left, bottom], [left, top]]]


def _geojson(path: Path, features: list[tuple[Any, list[list[list[float]]]]], crs: str | None = None) -> Path:
    data: dict[str, Any] = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"class": value}, "geometry": {"type": "Polygon", "coordinates": ring}}
        for value, ring in features]}
    if crs is not None:
        data["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return write_geotiff(tmp_path / "img.tif", np.full((2, 64, 64), 500, dtype=np.uint16))


def test_projected_coordinates_read_as_lon_lat_are_refused_before_proj(tmp_path: Path, image: Path) -> None:
    """The user's file: UTM coordinates, no crs member (so EPSG:4326 by the GeoJSON spec); where the polygons
    are is checked before what they are (the unknown class is reported once the CRS is right)."""
    labels = _geojson(tmp_path / "utm.geojson", [("building", _square(4, 8, 10))] * 3 + [("shed", _square(0, 0, 1))])
    with pytest.raises(InputError) as info:
        VectorSource(image, labels, [("a", 1)], NAMES)
    message = str(info.value)
    assert "\n" not in message and "PROJ" not in message
    assert re.search(r"coordinates such as \(6\d{5}, 5\d{6}\) cannot be longitude/latitude", message)
    assert "their CRS is EPSG:4326 (assumed: the GeoJSON has no crs member), the image's is EPSG:32632" in message
    assert "set `crs:` of this vector source" in message and "crs: EPSG:32632" in message
    # Declaring the CRS fixes it: the polygon lands where it was drawn.
    with pytest.raises(InputError, match=r"'shed' \(1\)"):
        VectorSource(image, labels, [("a", 1)], NAMES, crs=CRS)
    source = VectorSource(image, labels, [("a", 1)], NAMES, crs=CRS, class_map={"shed": "background"})
    expected = np.zeros((32, 32), np.uint8)
    expected[8:18, 4:14] = 3
    assert np.array_equal(source.read((0, 0), (32, 32)).labels, expected)


def test_polygons_that_miss_the_image_are_refused(tmp_path: Path, image: Path) -> None:
    # The image's corner in lon/lat, then polygons 2 degrees east of it: valid lon/lat, far away.
    lon, lat = warp_transform(CRS, "EPSG:4326", [X0], [Y0])
    far = [("water", _square(k, k, 1, x0=lon[0] + 2.0, y0=lat[0], pixel=1e-4)) for k in range(5)]
    labels = _geojson(tmp_path / "far.geojson", far)
    with pytest.raises(InputError) as info:
        VectorSource(image, labels, [("a", 1)], NAMES)
    message = str(info.value)
    assert message.startswith(f"vector labels {labels}: 0 of 5 polygons intersect the image; their CRS is "
                              "EPSG:4326 (assumed: the GeoJSON has no crs member), the image's is EPSG:32632 —")
    # The same polygons moved onto the image are fine; one of six on it is enough.
    near = [("water", _square(10, 10, 1, x0=lon[0], y0=lat[0], pixel=1e-4))]
    source = VectorSource(image, _geojson(tmp_path / "near.geojson", far + near), [("a", 1)], NAMES)
    assert len(source.geometries) == 6 and (source.read((0, 0), (64, 64)).labels == 1).sum() > 0
    # A declared CRS that is wrong (the UTM zone next door) misses too, and says where the CRS came from.
    zone33 = _geojson(tmp_path / "z33.geojson", [("water", _square(4, 8, 10))], crs="EPSG:32633")
    with pytest.raises(InputError, match=r"0 of 1 polygons intersect the image; their CRS is EPSG:32633 "
                                         r"\(the GeoJSON's crs member\)"):
        VectorSource(image, zone33, [("a", 1)], NAMES)
    with pytest.raises(InputError, match=r"\(set by crs: of this vector source\)"):
        VectorSource(image, zone33, [("a", 1)], NAMES, crs="EPSG:32633")


def test_unknown_classes_listed_mapped_or_skipped(tmp_path: Path, image: Path) -> None:
    features = [("residential", _square(0, 0, 4)), ("residential", _square(10, 0, 4)), ("parking", _square(20, 0, 4)),
                ("building", _square(30, 0, 4)), (None, _square(40, 0, 4))]
    labels = _geojson(tmp_path / "osm.geojson", features, crs=CRS)
    with pytest.raises(InputError) as info:
        VectorSource(image, labels, [("a", 1)], NAMES)
    message = str(info.value)
    assert "\n" not in message
    assert "4 of 5 polygons have a 'class' not among the model's classes" in message
    assert "'residential' (2), 'parking' (1), None (1)" in message and "class_map" in message
    # class_map: names, indices and 'ignore'; keys compared as text.
    mapped = VectorSource(image, labels, [("a", 1)], NAMES, class_map={"residential": "building", "parking": "ignore",
                                                                        "None": 2})
    chip = mapped.read((0, 0), (4, 64)).labels
    assert (chip[:, 0:4] == 3).all() and (chip[:, 10:14] == 3).all() and (chip[:, 20:24] == IGNORE).all()
    assert (chip[:, 30:34] == 3).all() and (chip[:, 40:44] == 2).all() and (chip[:, 4:10] == 0).all()
    # skip: left out with one warning naming them; their pixels are background.
    with pytest.warns(SegflowWarning, match=r"4 of 5 polygons .*'residential' \(2\).*left out"):
        skipped = VectorSource(image, labels, [("a", 1)], NAMES, unknown_classes="skip")
    chip = skipped.read((0, 0), (4, 64)).labels
    assert (chip[:, 30:34] == 3).all() and (np.delete(chip, np.s_[30:34], axis=1) == 0).all()
    with pytest.raises(InputError, match="class_map maps 'parking' to 'road'"):
        VectorSource(image, labels, [("a", 1)], NAMES, class_map={"parking": "road"})


def _train_yaml(tmp_path: Path, image: Path, labels: Path, **vector: Any) -> Path:
    raw = {
        "model": {"name": "v", "architecture": {"name": "unet", "args": {"channels": [4, 8]}},
                  "bands": [{"name": "a", "index": 1}, {"name": "b", "index": 2}], "chip": 32,
                  "classes": [{"name": n} for n in NAMES]},
        "data": {"vectors": [{"image": str(image), "labels": str(labels), **vector}]},
        "epochs": 1, "batch_size": 2, "chips_per_epoch": 2, "device": "cpu", "output": str(tmp_path / "run"),
    }
    train_config_from_dict(raw)  # valid as a config: the problem is in the data
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_segflow_train_exits_2_with_one_line_not_an_internal_error(tmp_path: Path, image: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    labels = _geojson(tmp_path / "utm.geojson", [("building", _square(4, 8, 10))])
    code = main(["train", "--config", str(_train_yaml(tmp_path, image, labels)), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "internal error" not in err
    assert "cannot be longitude/latitude" in err and "set `crs:` of this vector source" in err
    assert not (tmp_path / "run" / "package").exists()
    unknown = _geojson(tmp_path / "u.geojson", [("residential", _square(4, 8, 10))], crs=CRS)
    assert main(["train", "--config", str(_train_yaml(tmp_path, image, unknown)), "-q"]) == 2
    assert "'residential' (1)" in capsys.readouterr().err
    mapped = _train_yaml(tmp_path, image, unknown, class_map={"residential": "building"})
    assert main(["train", "--config", str(mapped), "-q"]) == 0, capsys.readouterr().err
