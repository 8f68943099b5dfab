"""Multi-label models (classes that may overlap): thresholds per class, per-class planes in mask.zarr,
a band per class in labels.tif, overlapping polygons per class, a 4D NIfTI, overlapping DICOM SEG
segments; every output that needs one class per pixel refused up front.

The stand-in network returns its input bands as logits, so with ``normalization: none`` the probability of
class k at a pixel is ``sigmoid(band_k)`` whatever the window: the expected planes are known in closed form
from how the scene was drawn.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import geopandas as gpd
import nibabel as nib
import numpy as np
import pytest
import rasterio
import shapely
import torch
import yaml
import zarr
from rasterio.enums import ColorInterp
from scipy import ndimage
from torch import nn

from segflow.engine import PredictorFactory
from segflow.errors import ConfigError, ModelError
from segflow.io.cog import write_label_cog
from segflow.io.mask_store import MaskStore
from segflow.io.vector_sink import vectorize_run
from segflow.labels import LABEL_NODATA
from segflow.models.package import ModelSpec, load_spec, resolve_package
from segflow.scene import Scene
from segflow.stitch import blend_chunks
from segflow.tile_infer import TileInferParams, tile_infer
from segflow.tiling import Box, ChunkGrid, WindowGrid

from .helpers import CRS, TRANSFORM, make_ts_package, random_image, spec_dict, write_geotiff

NAMES = ("building", "cloud", "shadow")
THRESHOLDS = (0.5, 0.3, 0.8)
NODATA = -9999.0
SHAPE = (150, 170)
PIXEL_AREA = abs(TRANSFORM.a * TRANSFORM.e)


class Logits(nn.Module):
    """The input bands as they are: each channel is the logit of one class."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


def logits_package(root: Path, *, spatial_dims: int = 2, thresholds: tuple[float, ...] | None = THRESHOLDS,
                   names: tuple[str, ...] = NAMES, tile: int = 32, **output: Any) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, len(names), *(8,) * spatial_dims)
    torch.jit.trace(Logits(), example).save(str(root / "model.ts"))
    out: dict[str, Any] = {"activation": "sigmoid", "multilabel": True, **output}
    if thresholds is not None:
        out["thresholds"] = list(thresholds)
    spec = {"name": "overlaps", "version": "1", "spatial_dims": spatial_dims, "weights": "model.ts",
            "input": {"bands": [{"name": f"b{i}", "index": i + 1} for i in range(len(names))],
                      "normalization": {"mode": "none"}},
            "tile": tile, "overlap": 0.25, "output": out,
            "classes": [{"name": n, "kind": "thing" if i == 0 else "stuff"} for i, n in enumerate(names)]}
    (root / "model.yaml").write_text(yaml.safe_dump(spec))
    return root


def overlapping_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logit bands ``(3, Y, X)`` float32, the expected planes ``(3, Y, X)`` bool and the valid mask ``(Y, X)``.

    building (threshold 0.5): two rectangles at +3 (p 0.95); cloud (0.3): a disc at -0.5 (p 0.378, present
    only because its threshold is 0.3); shadow (0.8): a rectangle at 2.5 (p 0.924) and one at 1.0 (p 0.731:
    above 0.5 but absent at 0.8). Elsewhere -3 (p 0.047). A corner is nodata in every band.
    """
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    building = np.zeros(SHAPE, bool)
    building[20:60, 30:90] = True
    building[100:130, 10:50] = True
    cloud = (yy - 70) ** 2 + (xx - 100) ** 2 < 35**2
    shadow = np.zeros(SHAPE, bool)
    shadow[50:110, 60:140] = True
    weak = np.zeros(SHAPE, bool)
    weak[120:145, 100:160] = True
    bands = np.full((3, *SHAPE), -3.0, np.float32)
    bands[0][building] = 3.0
    bands[1][cloud] = -0.5
    bands[2][weak] = 1.0
    bands[2][shadow] = 2.5
    valid = np.ones(SHAPE, bool)
    valid[:10, 150:] = False
    bands[:, ~valid] = NODATA
    return bands, np.stack([building, cloud, shadow]) & valid, valid


def expected_planes(present: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = present.astype(np.uint8)
    out[:, ~valid] = LABEL_NODATA
    return out


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return logits_package(tmp_path_factory.mktemp("pkg") / "overlaps")


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    bands, present, valid = overlapping_scene()
    path = write_geotiff(tmp_path_factory.mktemp("scene") / "scene.tif", bands, nodata=NODATA)
    return path, present, valid


@pytest.fixture(scope="module")
def run(package: Path, scene: tuple[Path, np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    tile_infer(scene[0], out, TileInferParams(model=str(package), chunk=64, batch=8, device="cpu", save_scores=True,
                                              vectorize="gpkg"))
    return out


# ----------------------------------------------------------------------------- model.yaml


def test_the_spec_takes_thresholds_per_class_and_defaults_to_one_half() -> None:
    spec = ModelSpec.model_validate(spec_dict(classes=3, output={"activation": "sigmoid", "multilabel": True}))
    assert spec.multilabel and spec.output_channels == 3 and spec.thresholds == (0.5, 0.5, 0.5)
    given = ModelSpec.model_validate(spec_dict(classes=3, output={"activation": "none", "multilabel": True,
                                                                  "thresholds": [0.2, 0.5, 0.9]}))
    assert given.thresholds == (0.2, 0.5, 0.9) and given.output_channels == 3
    binary = ModelSpec.model_validate(spec_dict(classes=2, activation="sigmoid"))
    assert not binary.multilabel and binary.output_channels == 1 and binary.thresholds is None


@pytest.mark.parametrize(("output", "classes", "message"), [
    ({"activation": "softmax", "multilabel": True}, 3, "softmax makes them compete"),
    ({"activation": "sigmoid", "multilabel": True, "thresholds": [0.5, 0.5]}, 3, "2 values for 3 classes"),
    ({"activation": "sigmoid", "multilabel": True, "thresholds": [0.5, 1.0, 0.5]}, 3, r"between 0 and 1.*1\.0"),
    ({"activation": "sigmoid", "multilabel": True, "thresholds": [0.0, 0.5, 0.5]}, 3, "strictly between 0 and 1"),
    ({"activation": "sigmoid", "thresholds": [0.5, 0.5]}, 2, "thresholds are for multi-label outputs"),
    ({"activation": "sigmoid"}, 3, "exactly 2 classes .*multilabel: true"),
])
def test_contradictory_output_specs_are_refused_in_one_line(tmp_path: Path, output: dict[str, Any], classes: int,
                                                           message: str) -> None:
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(spec_dict(classes=classes, output=output)))
    with pytest.raises(ModelError, match=message) as caught:
        load_spec(tmp_path / "model.yaml")
    assert "\n" not in str(caught.value)


# ----------------------------------------------------------------------------- the run


def test_planes_are_the_closed_form_masks_and_the_store_says_what_it_holds(
        run: Path, scene: tuple[Path, np.ndarray, np.ndarray]) -> None:
    _, present, valid = scene
    store = MaskStore.open(run / "mask.zarr")
    assert store.multilabel and store.thresholds == THRESHOLDS and store.shape == SHAPE
    attrs = store.attrs
    assert attrs["label_kind"] == "multilabel" and attrs["class_names"] == list(NAMES)
    group = zarr.open_group(str(run / "mask.zarr"), mode="r")
    assert "labels" not in group and group["present"].dtype == np.uint8
    np.testing.assert_array_equal(group["present"][:], expected_planes(present, valid))
    assert (present[1] & present[2]).sum() > 500 and (present[0] & present[1]).sum() > 200  # overlaps exist
    scores = group["scores"][:].astype(np.float32)
    np.testing.assert_allclose(scores[:, valid], 1 / (1 + np.exp(-overlapping_scene()[0][:, valid])), atol=1e-3)
    with pytest.raises(ConfigError, match=r"multi-label masks .* per-class bands of labels\.tif"):
        store.read_labels(Box((0, 0), (4, 4)))


def test_labels_tif_has_a_band_per_class_named_and_grey(
        run: Path, scene: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    _, present, valid = scene
    with rasterio.open(run / "labels.tif") as ds:
        assert ds.count == 3 and ds.dtypes == ("uint8",) * 3 and ds.nodata == LABEL_NODATA
        assert ds.descriptions == NAMES
        assert ds.colorinterp == (ColorInterp.gray, ColorInterp.undefined, ColorInterp.undefined)
        assert ds.tags()["label_kind"] == "multilabel" and ds.tags(2)["class_name"] == "cloud"
        assert ds.crs.to_string() == CRS and ds.transform == TRANSFORM
        np.testing.assert_array_equal(ds.read(), expected_planes(present, valid))
        assert ds.get_tag_item("LAYOUT", "IMAGE_STRUCTURE") == "COG"
    info = json.loads(subprocess.run(["gdalinfo", "-json", str(run / "labels.tif")], capture_output=True, text=True,
                                     check=True).stdout)  # GDAL reads the PAM sidecar's categories per band
    assert [(b["band"], b["description"], b["categories"]) for b in info["bands"]] == [
        (k + 1, name, ["absent", "present"]) for k, name in enumerate(NAMES)]
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(run / "labels.tif") as ds:  # the TIFF alone
        assert ds.descriptions == NAMES
        assert [ds.tags(k + 1) for k in range(len(NAMES))] == [
            {"class_id": str(k), "class_name": name} for k, name in enumerate(NAMES)]
    # GDAL reads PAM element names case-insensitively, other readers may not: the elements are GDAL's own
    ours = ET.parse(run / "labels.tif.aux.xml").getroot()
    assert ours.tag == "PAMDataset"
    assert [(b.tag, b.attrib) for b in ours] == [("PAMRasterBand", {"band": str(k + 1)}) for k in range(len(NAMES))]
    vrt = tmp_path / "labels.vrt"
    subprocess.run(["gdal_translate", "-q", "-of", "VRT", str(run / "labels.tif"), str(vrt)], check=True)
    theirs = ET.parse(vrt).getroot().findall("VRTRasterBand")
    for mine, gdal in zip(ours, theirs, strict=True):
        for name in ("Description", "CategoryNames"):
            assert ET.canonicalize(ET.tostring(mine.find(name), encoding="unicode"), strip_text=True) == \
                ET.canonicalize(ET.tostring(gdal.find(name), encoding="unicode"), strip_text=True), name


def test_a_large_multilabel_cog_keeps_zero_one_nodata_in_its_overviews(tmp_path: Path) -> None:
    """Overviews by NEAREST: every overview pixel is one of the planes' own pixels (never an average)."""
    from segflow.geometry import RasterGeometry

    shape = (1100, 1300)
    rng = np.random.default_rng(5)
    planes = (rng.random((3, *shape)) > 0.5).astype(np.uint8)
    planes[:, :100, :100] = LABEL_NODATA
    store = MaskStore.create(tmp_path / "mask.zarr", shape, (512, 512), NAMES, save_scores=False, attrs={},
                             thresholds=THRESHOLDS)
    for start in [(r, c) for r in range(0, shape[0], 512) for c in range(0, shape[1], 512)]:
        box = Box(start, (min(start[0] + 512, shape[0]), min(start[1] + 512, shape[1])))
        store.write(box, planes[(slice(None), *box.slices)])
    geometry = RasterGeometry(crs=rasterio.crs.CRS.from_string(CRS).to_wkt(), transform=tuple(TRANSFORM)[:6])
    path = write_label_cog(store, tmp_path / "labels.tif", geometry, NAMES, rows=64)
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(ds.read(), planes)
        assert len(ds.overviews(1)) >= 1
    with rasterio.open(path, overview_level=0) as ov:
        first = ov.read()
    assert first.shape == (3, 550, 650)
    np.testing.assert_array_equal(first, planes[:, ::2, ::2])  # GDAL's nearest at factor 2: a block's first pixel


def test_polygons_per_class_overlap_and_have_the_masks_areas(run: Path,
                                                            scene: tuple[Path, np.ndarray, np.ndarray]) -> None:
    _, present, _ = scene
    frame = gpd.read_file(run / "instances.gpkg")
    assert set(frame["class_name"]) == set(NAMES)  # class 0 included: there is no background
    assert frame["instance_id"].is_unique
    for k, name in enumerate(NAMES):
        rows = frame[frame["class_name"] == name]
        assert (rows["class_id"] == k).all()
        assert len(rows) == ndimage.label(present[k])[1]
        assert rows["area_px"].sum() == present[k].sum()
        assert math.isclose(rows.geometry.area.sum(), present[k].sum() * PIXEL_AREA, rel_tol=1e-9)
        assert (rows["mean_score"] > THRESHOLDS[k]).all()
    both = shapely.intersection(frame[frame["class_id"] == 1].union_all(), frame[frame["class_id"] == 2].union_all())
    assert math.isclose(both.area, (present[1] & present[2]).sum() * PIXEL_AREA, rel_tol=1e-9)
    first = frame.groupby("class_id")["instance_id"].min()  # 1 + class_id * pixels + its first pixel's flat index
    assert first.to_dict() == {k: 1 + k * present[k].size + int(np.flatnonzero(present[k])[0]) for k in range(3)}


def test_segflow_vectorize_of_the_run_gives_the_same_rows(run: Path, package: Path, tmp_path: Path) -> None:
    written = vectorize_run(run, tmp_path / "again.gpkg", model=str(package))
    again, first = gpd.read_file(tmp_path / "again.gpkg"), gpd.read_file(run / "instances.gpkg")
    assert written == len(first) == len(again)
    assert sorted(again["instance_id"]) == sorted(first["instance_id"])


def test_the_nightly_report_counts_each_class_own_pixels(run: Path, scene: tuple[Path, np.ndarray, np.ndarray]
                                                          ) -> None:
    from segflow.batch.item import _histogram

    np.testing.assert_array_equal(_histogram(run, 3), scene[1].sum(axis=(1, 2)))


def test_no_quicklook_and_the_run_record(run: Path) -> None:
    assert not (run / "quicklook.png").exists()
    record = json.loads((run / "run.json").read_text())
    assert record["model"]["classes"] == list(NAMES)


def test_thresholds_come_from_the_blended_probabilities(tmp_path: Path) -> None:
    """With a network that has spatial context, planes are exactly ``blended p >= threshold`` of the whole-array
    float32 blend, and bitwise the same for every chunking (scores too)."""
    thresholds = [0.45, 0.5, 0.6]
    pkg = make_ts_package(tmp_path / "net", bands=3, classes=3, tile=32,
                          output={"activation": "sigmoid", "multilabel": True, "thresholds": thresholds})
    image = random_image((3, 90, 110), seed=2)
    path = write_geotiff(tmp_path / "scene.tif", image)
    results = {}
    for chunk in (32, 48, 1000):
        out = tmp_path / f"out{chunk}"
        tile_infer(path, out, TileInferParams(model=str(pkg), chunk=chunk, batch=4, device="cpu", save_scores=True))
        group = zarr.open_group(str(out / "mask.zarr"), mode="r")
        results[chunk] = (group["present"][:], group["scores"][:])
    for chunk in (32, 48):
        np.testing.assert_array_equal(results[chunk][0], results[1000][0])
        np.testing.assert_array_equal(results[chunk][1].view(np.uint16), results[1000][1].view(np.uint16))
    predictor = PredictorFactory(resolve_package(pkg), "cpu", 4, "fp32").build()  # as the run's workers build it
    scene = Scene.from_array(image.astype(np.float32))
    grid = WindowGrid.create(scene.spatial_shape, (32, 32), 0.25)
    (whole,) = blend_chunks(scene, grid, ChunkGrid.create(scene.spatial_shape, 1000), predictor, "gaussian", 3,
                            keep_scores=True)
    assert whole.scores is not None
    want = (whole.scores >= np.float32(thresholds)[:, None, None]).astype(np.uint8)
    np.testing.assert_array_equal(results[1000][0], want)
    assert 0 < want.mean() < 1 and (want.sum(axis=0) >= 2).any()  # something present, classes overlapping


def test_binary_sigmoid_is_unchanged(tmp_path: Path) -> None:
    """One channel, two classes: labels are the arg-max of ``[1 - p, p]`` (class 1 where p > 0.5), one band."""
    root = tmp_path / "binary"
    root.mkdir()
    torch.jit.trace(Logits(), torch.zeros(1, 1, 8, 8)).save(str(root / "model.ts"))
    spec = spec_dict(bands=1, classes=2, activation="sigmoid")
    spec["input"]["normalization"] = {"mode": "none"}
    (root / "model.yaml").write_text(yaml.safe_dump(spec))
    band = np.linspace(-2, 2, 60 * 70, dtype=np.float32).reshape(1, 60, 70)
    band[0, 0, 0] = 0.0  # p = 0.5 exactly: a tie, class 0 as arg-max gives it
    write_geotiff(tmp_path / "scene.tif", band)
    out = tmp_path / "out"
    tile_infer(tmp_path / "scene.tif", out, TileInferParams(model=str(root), chunk=32, device="cpu"))
    group = zarr.open_group(str(out / "mask.zarr"), mode="r")
    assert "present" not in group and group.attrs["label_kind"] == "single"
    np.testing.assert_array_equal(group["labels"][:], (band[0] > 0).astype(np.uint8))
    with rasterio.open(out / "labels.tif") as ds:
        assert ds.count == 1 and ds.descriptions == ("labels",) and "label_kind" not in ds.tags()
        np.testing.assert_array_equal(ds.read(1), (band[0] > 0).astype(np.uint8))


# ----------------------------------------------------------------------------- resume


def test_a_killed_multilabel_run_resumes_to_the_same_planes(tmp_path: Path, package: Path,
                                                            scene: tuple[Path, np.ndarray, np.ndarray]) -> None:
    _, present, valid = scene
    out = tmp_path / "out"
    env = {**{k: v for k, v in os.environ.items() if k != "SEGFLOW_FAILPOINT"}, "SEGFLOW_FAILPOINT": "chunk:4"}
    done = subprocess.run([sys.executable, "-m", "segflow", "run", "tile-infer", "-i", str(scene[0]), "-o", str(out),
                           "-m", str(package), "--chunk", "48", "--device", "cpu", "-q"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == -9, done.stderr
    result = tile_infer(scene[0], out, TileInferParams(model=str(package), chunk=48, device="cpu"))
    assert result.chunks_reused == 4 and result.chunks_computed == 16 - 4
    group = zarr.open_group(str(out / "mask.zarr"), mode="r")
    np.testing.assert_array_equal(group["present"][:], expected_planes(present, valid))
    with rasterio.open(out / "labels.tif") as ds:
        np.testing.assert_array_equal(ds.read(), expected_planes(present, valid))


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("params", "message"), [
    ({"panoptic": True}, "--panoptic gives each pixel one class .* use --vectorize"),
    ({"crf": "default"}, "--crf refines one class per pixel"),
    ({"opening": 2}, "--opening/--closing smooth .* --min-area / --fill-holes"),
    ({"closing": 1}, "--opening/--closing"),
    ({"vectorize": "gpkg", "separate": "watershed"}, "--separate watershed splits .* use --separate none"),
    ({"meshes": True}, "--meshes meshes instances"),
])
def test_outputs_that_need_one_class_per_pixel_are_refused_before_anything_runs(
        tmp_path: Path, package: Path, scene: tuple[Path, np.ndarray, np.ndarray], params: dict[str, Any],
        message: str) -> None:
    from segflow.crf import CRFParams
    from segflow.features import VectorOptions

    if params.pop("crf", None):
        params["crf"] = CRFParams()
    if "separate" in params:
        params["vector_options"] = VectorOptions(separate=params.pop("separate"))
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message) as caught:
        tile_infer(scene[0], out, TileInferParams(model=str(package), device="cpu", **params))
    assert "\n" not in str(caught.value) and "multi-label" in str(caught.value)
    assert not out.exists() or not any(out.iterdir())


def test_readers_of_single_labels_refuse_a_multilabel_store(run: Path, package: Path,
                                                            scene: tuple[Path, np.ndarray, np.ndarray]) -> None:
    from segflow.io.instances_sink import InstancesSink
    from segflow.io.quicklook import QuicklookSink
    from segflow.io.readers import open_scene

    store = MaskStore.open(run / "mask.zarr")
    spec = resolve_package(package).spec
    with pytest.raises(ConfigError, match="multi-label masks"):
        _ = store.labels
    with pytest.raises(ConfigError, match="quick-look paints one class per pixel"):
        QuicklookSink(open_scene(scene[0]), spec)
    with pytest.raises(ConfigError, match="multi-label masks"):
        InstancesSink(open_scene(scene[0]), spec).write(store, run.parent / "scratch")
    done = subprocess.run([sys.executable, "-m", "segflow", "eval", "--pred", str(run), "--truth", str(scene[0])],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


# ----------------------------------------------------------------------------- volumes


@pytest.mark.parametrize("grid", [{}, {"spacing": [1.0, 0.35, 0.4], "orientation": "RAS"}])
def test_a_volume_gives_a_4d_one_hot_nifti_on_the_inputs_grid(tmp_path: Path, grid: dict[str, Any]) -> None:
    """On the input's grid, and through a model grid of its own (half the voxel size, RAS: the input is LAS)."""
    pkg = logits_package(tmp_path / "vol", spatial_dims=3, tile=8)
    if grid:
        spec = yaml.safe_load((pkg / "model.yaml").read_text())
        (pkg / "model.yaml").write_text(yaml.safe_dump({**spec, **grid}))
    zz, yy, xx = np.mgrid[:14, :12, :10]
    bands = np.full((3, 14, 12, 10), -3.0, np.float32)
    bands[0][(zz < 7)] = 3.0
    bands[1][(yy - 6) ** 2 + (xx - 5) ** 2 < 16] = -0.5
    bands[2][zz > 4] = 2.5
    present = bands > np.log(np.array(THRESHOLDS) / (1 - np.array(THRESHOLDS)))[:, None, None, None]
    affine = np.array([[-0.8, 0, 0, 10], [0, 0.7, 0, -20], [0, 0, 2.0, 5], [0, 0, 0, 1]])
    data = np.transpose(bands, (3, 2, 1, 0))  # (c, z, y, x) -> NIfTI (i, j, k, c)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, tmp_path / "vol.nii.gz")
    out = tmp_path / "out"
    tile_infer(tmp_path / "vol.nii.gz", out, TileInferParams(model=str(pkg), chunk=6, device="cpu"))
    if grid:
        assert json.loads((out / "run.json").read_text())["effective"]["model_grid"]["shape"] == [28, 24, 20]
    labels = nib.load(out / "labels.nii.gz")
    assert labels.shape == (10, 12, 14, 3)
    np.testing.assert_array_equal(labels.affine, nib.load(tmp_path / "vol.nii.gz").affine)  # as stored (float32)
    got = np.transpose(np.asarray(labels.dataobj), (3, 2, 1, 0))  # back to (class, z, y, x)
    want = present.astype(np.uint8)
    if grid:  # scores interpolated there and back mix neighbours at boundaries: compare where a voxel's 3x3x3
        # neighbourhood is all one value (the overlaps, and the cloud present only by its 0.3, lie there too)
        inner = np.stack([ndimage.minimum_filter(p, 3, mode="nearest") == ndimage.maximum_filter(p, 3, mode="nearest")
                          for p in present])
        assert inner.mean() > 0.5 and (inner & present).any(axis=(1, 2, 3)).all()
        assert (inner[1] & inner[2] & present[1] & present[2]).any()
        got, want = got[inner], want[inner]
    np.testing.assert_array_equal(got, want)
    assert labels.header.get_xyzt_units() == ("mm", "unknown") and float(labels.header["pixdim"][4]) == 1.0
    assert labels.header["descrip"].tobytes().startswith(b"segflow overlaps multi-label: t0 building; t1 cloud")
    table = json.loads(labels.header.extensions[0].get_content().decode())["segflow"]
    assert table["multilabel"] is True and table["labels"]["2"]["name"] == "shadow"
    assert not (out / "instances.csv").exists()  # one class per pixel: not made for overlapping classes


def test_a_dicom_series_gets_overlapping_binary_segments(tmp_path: Path) -> None:
    import highdicom as hd

    from segflow.io.dicom import open_dicom_series
    from segflow.io.dicom_seg import DicomSegSink

    from .test_dicom import CT5N, dciodvfy

    scene = open_dicom_series(CT5N)
    spec = ModelSpec.model_validate({"name": "m", "version": "1", "spatial_dims": 3, "weights": "m.ts",
                                     "input": {"bands": [{"name": "ct"}]}, "tile": 8,
                                     "output": {"activation": "sigmoid", "multilabel": True},
                                     "classes": [{"name": n} for n in ("liver", "lesion", "kidney")]})
    store = MaskStore.create(tmp_path / "mask.zarr", (5, 16, 16), (5, 16, 16), spec.class_names, save_scores=False,
                             attrs={}, thresholds=spec.thresholds)
    planes = np.zeros((3, 5, 16, 16), np.uint8)
    planes[0, 0:4, 2:12, 2:12] = 1
    planes[1, 1:3, 4:8, 5:9] = 1  # inside the liver: overlapping segments
    planes[1, 0, 0, 0] = LABEL_NODATA
    planes[:, 0, 0, 0] = LABEL_NODATA
    store.write(Box((0, 0, 0), (5, 16, 16)), planes)
    path = DicomSegSink.for_scene(scene, spec).write(store, tmp_path)
    dciodvfy(path)
    seg = hd.seg.segread(path)
    assert list(seg.get_segment_numbers()) == [1, 2, 3] and seg.SegmentationType == "BINARY"
    assert [seg.get_segment_description(n).segment_label for n in (1, 2, 3)] == ["liver", "lesion", "kidney"]
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=scene.meta["sop_instance_uids"],
                                            combine_segments=False)
    want = np.moveaxis(planes == 1, 0, -1)
    np.testing.assert_array_equal(got.astype(bool), want)
