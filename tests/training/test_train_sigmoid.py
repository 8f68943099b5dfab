"""Training sigmoid models: binary and multi-label, from config to package to tile-infer; their labels and refusals.

The learnable problems: a 2-band raster whose band 1 is a set of boxes and band 2 a set of discs (plus noise),
so "box" and "disc" are visible in the image and overlap; a short run must lower the loss, change the weights,
write the output spec to model.yaml, and the package run by tile-infer must give the truth back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
import yaml
from safetensors.torch import load_file

from segflow.cli._app import main
from segflow.errors import ConfigError, InputError
from segflow.models.arch import build_architecture
from segflow.models.output import OutputSpec
from segflow.models.package import ModelSpec
from segflow.tile_infer import TileInferParams, tile_infer
from segflow.training.chips import RasterPairSource, SyntheticSceneSource, VectorSource
from segflow.training.config import train_config_from_dict
from segflow.training.evaluation import MetricsAccumulator, accumulator_for
from segflow.training.loop import train
from segflow.training.output_metrics import MultiLabelAccumulator, predict_labels
from segflow.training.sources import IGNORE
from tests.helpers import TRANSFORM, write_geotiff

SHAPE = (96, 96)


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """Image ``(2, Y, X)`` float32 (boxes in band 1, discs in band 2, noise) and truth planes ``(2, Y, X)`` bool."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    boxes = np.zeros(SHAPE, bool)
    discs = np.zeros(SHAPE, bool)
    for _ in range(6):
        y, x, h, w = rng.integers(0, 80, 2).tolist() + rng.integers(8, 24, 2).tolist()
        boxes[y : y + h, x : x + w] = True
    for _ in range(8):
        cy, cx, r = [*rng.integers(10, 86, 2).tolist(), int(rng.integers(10, 18))]
        discs |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    image = np.stack([boxes + rng.normal(0, 0.15, SHAPE), discs + rng.normal(0, 0.15, SHAPE)]).astype(np.float32)
    return image, np.stack([boxes, discs])


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sigmoid")
    image, truth = _scene()
    assert (truth[0] & truth[1]).sum() > 200  # the classes overlap
    return {"image": write_geotiff(root / "image.tif", image), "truth": truth,
            "binary": write_geotiff(root / "binary.tif", truth[:1].astype(np.uint8)),
            "planes": write_geotiff(root / "planes.tif", truth.astype(np.uint8), descriptions=["box", "disc"])}


def _raw(scene: dict[str, Any], out: Path, labels: Path, classes: list[dict[str, Any]], output: dict[str, Any],
         loss: object, **extra: Any) -> dict[str, Any]:
    pair = {"image": str(scene["image"]), "labels": str(labels)}
    raw: dict[str, Any] = {
        "model": {"name": "sig", "architecture": {"name": "unet", "args": {"channels": [4, 8]}},
                  "bands": [{"name": "b1", "index": 1}, {"name": "b2", "index": 2}], "chip": 32, "tile": 32,
                  "normalization": {"mode": "none"}, "classes": classes, "output": output},
        "data": {"pairs": [pair]}, "validation": {"pairs": [pair], "chips": 9},
        "augment": {"gain": 0, "offset": 0, "noise": 0}, "loss": loss, "optimizer": {"lr": 0.02},
        "epochs": 6, "batch_size": 8, "chips_per_epoch": 96, "device": "cpu", "output": str(out)}
    raw.update(extra)
    return raw


def _check_learnt(package: Path, losses: list[float], channels: int) -> ModelSpec:
    """The loss fell, every weight moved from its (seed 0) initial value, the head has ``channels`` outputs."""
    assert losses[-1] < 0.6 * losses[0], losses
    weights = load_file(str(package / "model.safetensors"))
    torch.manual_seed(0)  # as the run initialises its network
    initial = build_architecture("unet", spatial_dims=2, in_channels=2, out_channels=channels,
                                 channels=[4, 8]).state_dict()
    assert set(weights) == set(initial)
    moved = [k for k in initial if k.endswith("weight") and not torch.equal(weights[k], initial[k])]
    assert moved == [k for k in initial if k.endswith("weight")]
    head = [k for k, v in initial.items() if v.ndim == 4][-1]
    assert weights[head].shape[0] == channels  # the network's output channels
    spec = ModelSpec.model_validate(yaml.safe_load((package / "model.yaml").read_text()))
    assert spec.output_channels == channels
    return spec


@pytest.mark.slow
def test_binary_sigmoid_model_trains_and_tile_infer_gives_the_boxes(scene: dict[str, Any], tmp_path: Path) -> None:
    classes = [{"name": "background"}, {"name": "box", "kind": "thing"}]
    raw = _raw(scene, tmp_path / "run", scene["binary"], classes, {"activation": "sigmoid"}, "bce", epochs=4)
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(config_path), "--quiet"]) == 0
    package = tmp_path / "run" / "package"
    text = yaml.safe_load((package / "model.yaml").read_text())
    assert text["output"] == {"activation": "sigmoid"}
    history = json.loads((tmp_path / "run" / "history.json").read_text())["epochs"]
    spec = _check_learnt(package, [e["train_loss"] for e in history], 1)
    assert not spec.multilabel and spec.output.activation == "sigmoid"
    assert main(["run", "tile-infer", "-i", str(scene["image"]), "-o", str(tmp_path / "out"), "-m", str(package),
                 "--device", "cpu", "--chunk", "64"]) == 0
    with rasterio.open(tmp_path / "out" / "labels.tif") as ds:
        labels = ds.read(1)
        assert ds.count == 1 and ds.transform == TRANSFORM
    agree = (labels == scene["truth"][0]).mean()
    assert agree > 0.95, agree


@pytest.mark.slow
def test_multilabel_model_trains_and_tile_infer_gives_overlapping_planes(scene: dict[str, Any], tmp_path: Path) -> None:
    classes = [{"name": "box", "kind": "thing"}, {"name": "disc"}]
    output = {"activation": "sigmoid", "multilabel": True, "thresholds": [0.5, 0.4]}
    raw = _raw(scene, tmp_path / "run", scene["planes"], classes, output, {"name": "bce+jaccard", "alpha": 0.7},
               test={"pairs": [{"image": str(scene["image"]), "labels": str(scene["planes"])}]})
    result = train(train_config_from_dict(raw))
    spec = _check_learnt(result.package_dir, [r.train_loss for r in result.history], 2)
    assert yaml.safe_load((result.package_dir / "model.yaml").read_text())["output"] == output
    assert spec.multilabel and spec.thresholds == (0.5, 0.4)
    assert set(result.validation.iou) and min(result.validation.iou) > 0.7, result.validation
    assert result.test is not None and result.test.class_names == ("box", "disc")  # sliding window, per plane
    assert min(result.test.iou) > 0.85 and "box" in result.test.object_f1, result.test
    tile_infer(scene["image"], tmp_path / "out", TileInferParams(model=str(result.package_dir), device="cpu",
                                                                 chunk=64))
    with rasterio.open(tmp_path / "out" / "labels.tif") as ds:
        planes = ds.read()
        assert ds.descriptions == ("box", "disc")
    truth = scene["truth"]
    for k in range(2):
        agree = (planes[k] == truth[k]).mean()
        assert agree > 0.95, (k, agree)
    both = (planes[0] == 1) & (planes[1] == 1)
    assert both.sum() > 0.7 * (truth[0] & truth[1]).sum()  # overlaps are predicted as overlaps


# ----------------------------------------------------------------------------- config and refusals

CLASSES2 = [{"name": "background"}, {"name": "box"}]


@pytest.mark.parametrize(("model", "extra", "words"), [
    ({"output": {"activation": "sigmoid"}, "classes": [*CLASSES2, {"name": "disc"}]}, {}, ["exactly 2 classes"]),
    ({"output": {"activation": "none"}}, {}, ["returns logits", "softmax or sigmoid"]),
    ({"output": {"activation": "sigmoid", "multilabel": True, "thresholds": [0.5]}}, {}, ["1 values for 2 classes"]),
    ({"output": {"activation": "softmax", "multilabel": True}}, {}, ["softmax makes them compete"]),
    ({"output": {"activation": "sigmoid", "multilabel": True}}, {"class_weights": [1.0, 2.0]},
     ["class_weights", "weighted_bce"]),
    ({}, {"border_weights": {"sigma": 0}}, ["border_weights.sigma"]),
])
def test_bad_output_settings_are_one_line_config_errors(tmp_path: Path, model: dict[str, Any], extra: dict[str, Any],
                                                       words: list[str]) -> None:
    raw = {"model": {"name": "m", "bands": [{"name": "b1", "index": 1}], "classes": CLASSES2, **model},
           "data": {"pairs": [{"image": "a.tif", "labels": "b.tif"}]}, **extra}
    with pytest.raises(ConfigError) as info:
        train_config_from_dict(raw)
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_multilabel_volumes_are_refused(tmp_path: Path) -> None:
    raw = {"model": {"name": "m", "spatial_dims": 3, "bands": [{"name": "ct"}], "classes": CLASSES2, "chip": 16,
                     "output": {"activation": "sigmoid", "multilabel": True}},
           "data": {"synthetic": {"kind": "volumes", "size": 32}}}
    with pytest.raises(ConfigError, match="for volumes use softmax or a binary sigmoid"):
        train_config_from_dict(raw)


@pytest.mark.parametrize(("output", "loss", "words"), [
    (None, "bce", ["does not fit a softmax model", "ce+jaccard"]),
    ({"activation": "sigmoid"}, "ce", ["does not fit a sigmoid model", "bce, weighted_bce"]),
    ({"activation": "sigmoid"}, {"name": "focal", "alpha": [0.3, 0.7]}, ["binary sigmoid model", "per-class"]),
    (None, {"name": "focal", "alpha": 0.25}, ["softmax model", "one alpha per class"]),
])
def test_losses_that_do_not_fit_the_output_are_refused(scene: dict[str, Any], tmp_path: Path, output: Any,
                                                       loss: object, words: list[str]) -> None:
    raw = _raw(scene, tmp_path / "run", scene["binary"], CLASSES2, output or {"activation": "softmax"}, loss,
               epochs=1, chips_per_epoch=8)
    with pytest.raises(ConfigError) as info:
        train(train_config_from_dict(raw))
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_border_weights_need_instances(scene: dict[str, Any], tmp_path: Path) -> None:
    raw = _raw(scene, tmp_path / "run", scene["binary"], CLASSES2, {"activation": "sigmoid"}, "bce",
               border_weights={"w0": 10, "sigma": 5})
    with pytest.raises(ConfigError, match=r"border_weights need instance ids, which .*binary\.tif does not have"):
        train(train_config_from_dict(raw))


# ----------------------------------------------------------------------------- labels of multi-label models


def test_multiband_label_raster_reads_planes_and_checks_them(scene: dict[str, Any], tmp_path: Path) -> None:
    bands = [("b1", 1), ("b2", 2)]
    source = RasterPairSource(scene["image"], scene["planes"], bands, 2, multilabel=True, class_names=["box", "disc"])
    chip = source.read((-4, 90), (16, 16))  # partly outside: padded with IGNORE in every plane
    assert chip.labels.shape == (2, 16, 16) and source.label_planes == 2
    np.testing.assert_array_equal(chip.labels[:, 4:, :6], scene["truth"][:, :12, 90:])
    assert (chip.labels[:, :4] == IGNORE).all() and (chip.labels[:, :, 6:] == IGNORE).all()
    with pytest.raises(InputError, match="bands \\['box', 'disc'\\] but the model classes are \\['disc', 'box'\\]"):
        RasterPairSource(scene["image"], scene["planes"], bands, 2, multilabel=True, class_names=["disc", "box"])
    with pytest.raises(InputError, match="needs 3 uint8 bands"):
        RasterPairSource(scene["image"], scene["planes"], bands, 3, multilabel=True, class_names=["a", "b", "c"])
    bad = write_geotiff(tmp_path / "bad.tif", np.full((2, *SHAPE), 2, np.uint8))
    with pytest.raises(InputError, match="band 1 holds 2 near row 0 col 0: a multi-label raster holds 0"):
        RasterPairSource(scene["image"], bad, bands, 2, multilabel=True).read((0, 0), (8, 8))


def test_overlapping_polygons_of_two_classes_give_overlapping_planes(scene: dict[str, Any], tmp_path: Path) -> None:
    x0, y0 = TRANSFORM.c, TRANSFORM.f  # 10 m pixels, north up

    def square(col: int, row: int, size: int, cls: str) -> dict[str, Any]:
        xa, ya, xb, yb = x0 + 10 * col, y0 - 10 * row, x0 + 10 * (col + size), y0 - 10 * (row + size)
        return {"type": "Feature", "properties": {"class": cls},
                "geometry": {"type": "Polygon", "coordinates": [[[xa, ya], [xb, ya], [xb, yb], [xa, yb], [xa, ya]]]}}

    path = tmp_path / "labels.geojson"
    features = [square(10, 10, 20, "box"), square(20, 20, 20, "disc"), square(50, 50, 10, "ignore")]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features,
                                "crs": {"type": "name", "properties": {"name": "EPSG:32632"}}}))
    source = VectorSource(scene["image"], path, [("b1", 1), ("b2", 2)], ["box", "disc"], multilabel=True,
                          class_map={"ignore": "ignore"})
    chip = source.read((0, 0), (64, 64))
    expected = np.zeros((2, 64, 64), np.uint8)
    expected[0, 10:30, 10:30] = 1
    expected[1, 20:40, 20:40] = 1
    expected[:, 50:60, 50:60] = IGNORE
    np.testing.assert_array_equal(chip.labels, expected)
    ids = source.read_instances((0, 0), (64, 64))
    assert set(np.unique(ids).tolist()) == {0, 1, 2}  # the ignored polygon is no instance
    assert (ids[20:30, 20:30] == 2).all() and (ids[10:20, 10:20] == 1).all()  # the later polygon wins


def test_synthetic_scene_gives_one_plane_per_named_class() -> None:
    source = SyntheticSceneSource(3, (256, 256), ["red", "nir"], ["building", "water"], multilabel=True)
    chip = source.read((0, 0), (128, 128))
    plain = SyntheticSceneSource(3, (256, 256), ["red", "nir"], ["background", "water", "vegetation", "building"])
    truth = plain.read((0, 0), (128, 128)).labels
    np.testing.assert_array_equal(chip.labels, np.stack([truth == 3, truth == 1]).astype(np.uint8))
    with pytest.raises(ConfigError, match="multi-label classes \\['cloud'\\] are not synthetic scene classes"):
        SyntheticSceneSource(3, (256, 256), ["red"], ["building", "cloud"], multilabel=True)


# ----------------------------------------------------------------------------- predictions and metrics


def test_predicted_labels_follow_the_output_kind() -> None:
    logits = torch.tensor([[[[-1.0, 0.0, 0.2]], [[0.3, 0.4, -0.5]]]])  # (1, 2, 1, 3)
    np.testing.assert_array_equal(predict_labels(logits, None), [[[1, 1, 0]]])
    binary = accumulator_for(["bg", "fg"], [], OutputSpec(activation="sigmoid"))
    assert isinstance(binary, MetricsAccumulator)
    np.testing.assert_array_equal(binary.predict(logits[:, :1]), [[[0, 0, 1]]])  # p > 0.5, as argmax [1 - p, p]
    multi = accumulator_for(["a", "b"], [], OutputSpec(activation="sigmoid", multilabel=True, thresholds=[0.5, 0.59]))
    assert isinstance(multi, MultiLabelAccumulator)
    # sigmoid(0.3) = 0.574 < 0.59, sigmoid(0.4) = 0.599 >= 0.59; sigmoid(0) = 0.5 >= 0.5
    np.testing.assert_array_equal(multi.predict(logits), [[[[0, 1, 1]], [[0, 1, 0]]]])


def test_multilabel_metrics_are_per_class_binary_counts() -> None:
    acc = MultiLabelAccumulator(["a", "b"], [1], [0.5, 0.5])
    truth = np.array([[[1, 1, 0, 0, IGNORE]], [[0, 1, 1, 0, 0]]], np.uint8)
    pred = np.array([[[1, 0, 1, 0, 1]], [[0, 1, 1, IGNORE, 0]]], np.uint8)
    acc.update(pred, truth)
    m = acc.result()
    # a: tp 1, fp 1, fn 1 (the ignored pixel is left out); b: tp 2, fp 0, fn 0, and a miss (255) on a 0 pixel
    assert m.iou == pytest.approx((1 / 3, 1.0)) and m.dice == pytest.approx((0.5, 1.0))
    assert m.mean_iou == pytest.approx(2 / 3)
    assert m.pixel_accuracy == pytest.approx((2 + 4) / (4 + 5))
    assert m.object_f1 == {"b": 1.0} and m.pixels == 5


def test_checkpoints_written_before_output_specs_still_resume(scene: dict[str, Any], tmp_path: Path) -> None:
    from segflow.training.checkpoint import _fingerprint

    softmax = train_config_from_dict(_raw(scene, tmp_path, scene["binary"], CLASSES2, {"activation": "softmax"}, "ce"))
    fingerprint = _fingerprint(softmax)
    assert "output" not in fingerprint["model"] and "border_weights" not in fingerprint  # as old checkpoints hold
    sigmoid = train_config_from_dict(_raw(scene, tmp_path, scene["binary"], CLASSES2, {"activation": "sigmoid"}, "bce",
                                          border_weights={}))
    fingerprint = _fingerprint(sigmoid)
    assert fingerprint["model"]["output"]["activation"] == "sigmoid"
    assert fingerprint["border_weights"] == {"w0": 10.0, "sigma": 5.0}
