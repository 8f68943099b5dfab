"""segflow train for Mask R-CNN: config refusals, targets from instance ids, a seeded run, resume, the package."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from segflow.errors import ConfigError
from segflow.models import load_module, resolve_package
from segflow.models.maskrcnn import build_maskrcnn
from segflow.synthetic import write_synthetic_scene
from segflow.training.config import train_config_from_dict
from segflow.training.data import _prepare_data
from segflow.training.instance_loop import InstanceTrainResult
from segflow.training.instance_targets import instance_targets
from segflow.training.loop import train
from segflow.training.sources import IGNORE

BANDS = [{"name": n, "index": i + 1} for i, n in enumerate(("blue", "green", "red", "nir"))]
CLASSES = [{"name": "background", "kind": "stuff"}, {"name": "building", "kind": "thing"}]
ARGS = {"depth": "resnet18", "trunk_width": 8, "fpn_width": 16,
        "roi": {"representation": 32, "mask_width": 8, "batch_per_image": 64},
        "rpn": {"anchor_sizes": [8, 16, 32, 64, 128], "pre_nms_top_n": [200, 100], "post_nms_top_n": [100, 50],
                "batch_per_image": 64}}


def _raw(tmp: Path, **extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "model": {"name": "tiny-maskrcnn", "architecture": {"name": "maskrcnn", "args": ARGS}, "bands": BANDS,
                  "chip": 64, "classes": CLASSES, "output": {"activation": "instances", "score_threshold": 0.3}},
        "data": {"synthetic": {"kind": "scenes", "count": 1, "size": 256, "seed": 1}},
        "validation": {"synthetic": {"kind": "scenes", "count": 1, "size": 128, "seed": 5}, "chips": 4},
        "sampling": {"foreground": 0.8},
        "epochs": 2, "batch_size": 2, "chips_per_epoch": 8, "device": "cpu", "output": str(tmp / "run"),
    }
    for key, value in extra.items():
        if key == "model":
            raw["model"] = {**raw["model"], **value}
        else:
            raw[key] = value
    return raw


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(("extra", "message"), [
    ({"model": {"spatial_dims": 3, "chip": 32, "tile": None}}, "maskrcnn is 2D"),
    ({"model": {"classes": [{"name": "background", "kind": "stuff"}, {"name": "road", "kind": "stuff"}]}},
     r"fix the kinds of \['road'\]"),
    ({"model": {"output": {"activation": "softmax"}}}, r"set model.output: \{activation: instances\}"),
    ({"model": {"architecture": {"name": "unet"}}}, "output of Mask R-CNN"),
    ({"loss": "dice"}, r"does not use loss \(loss: Mask R-CNN's loss is the sum"),
    ({"class_weights": [1.0, 2.0], "border_weights": {"w0": 5}}, "does not use class_weights, border_weights"),
    ({"early_stopping": {"patience": 2}}, "does not use early_stopping"),
    ({"optimizer": {"name": "adamw", "momentum": 0.5}}, "momentum is for optimizer name: sgd"),
])
def test_config_refusals(tmp_path: Path, extra: dict[str, Any], message: str) -> None:
    raw = _raw(tmp_path, **extra)
    if raw["model"].get("spatial_dims") == 3:
        raw["data"] = {"synthetic": {"kind": "volumes", "count": 1, "size": 32, "seed": 1}}
        raw["validation"] = {"fraction": 0.5}
        raw["model"]["bands"] = [{"name": "ct"}]
    with pytest.raises(ConfigError, match=message) as info:
        train_config_from_dict(raw)
    assert "\n" not in str(info.value)


def test_sources_without_instances_are_refused(tmp_path: Path) -> None:
    scene = write_synthetic_scene(tmp_path / "image.tif", width=128, height=128, seed=4,
                                  truth_path=tmp_path / "labels.tif")
    raw = _raw(tmp_path, data={"pairs": [{"image": str(scene.path), "labels": str(scene.truth_path)}]})
    raw["model"]["classes"] = [{"name": "background", "kind": "stuff"}, {"name": "water", "kind": "thing"},
                               {"name": "vegetation", "kind": "thing"}, {"name": "building", "kind": "thing"}]
    with pytest.raises(ConfigError, match=r"architecture maskrcnn needs instance ids, which .*image\.tif"):
        train(train_config_from_dict(raw))


# ----------------------------------------------------------------------------- targets


def test_targets_from_hand_made_ids() -> None:
    ids = np.zeros((10, 12), dtype=np.int64)
    labels = np.zeros((10, 12), dtype=np.uint8)
    ids[1:4, 2:7] = 50  # class 1, box x 2..7, y 1..4
    labels[1:4, 2:7] = 1
    ids[5:9, 0:3] = 7  # class 2 by majority (8 px of 2, 4 px of 1)
    labels[5:9, 0:3] = 2
    labels[5:9, 0] = 1
    ids[6, 8:12] = 9  # all ignored: skipped
    labels[6, 8:12] = IGNORE
    ids[8:10, 9:11] = 3  # background: skipped
    ids[0, 11] = 60  # one pixel at the last column: box (11, 0, 12, 1)
    labels[0, 11] = 1
    t = instance_targets(labels, ids, num_classes=3)
    # objects in increasing id order: 7, 50, 60 (3 and 9 skipped)
    assert t["boxes"].tolist() == [[0, 5, 3, 9], [2, 1, 7, 4], [11, 0, 12, 1]]
    assert t["labels"].tolist() == [2, 1, 1]
    assert t["masks"].dtype == torch.uint8 and t["masks"].shape == (3, 10, 12)
    np.testing.assert_array_equal(t["masks"].numpy(), np.stack([ids == 7, ids == 50, ids == 60]).astype(np.uint8))
    empty = instance_targets(labels, np.zeros_like(ids), num_classes=3)
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["masks"].shape == (0, 10, 12)


def test_model_trains_on_chips_without_objects() -> None:
    torch.manual_seed(0)
    model = build_maskrcnn(4, 2, ARGS).train()
    images = torch.randn(2, 4, 64, 64)
    ids = np.zeros((64, 64), dtype=np.int64)
    ids[10:30, 20:40] = 1
    targets = [instance_targets(np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.int64), 2),
               instance_targets((ids > 0).astype(np.uint8), ids, 2)]
    losses = model(images, targets)
    assert isinstance(losses, dict) and all(torch.isfinite(v) for v in losses.values())
    torch.stack(list(losses.values())).sum().backward()
    alone = model(images[:1], targets[:1])  # G = 0 only: no mask loss to learn, but no NaN either
    assert isinstance(alone, dict) and all(torch.isfinite(v) for v in alone.values())


def test_augmented_chips_move_ids_with_labels(tmp_path: Path) -> None:
    """Synthetic buildings are exactly the instances: after flips/rot90 ids > 0 still equals label 1."""
    config = train_config_from_dict(_raw(tmp_path))
    data = _prepare_data(config, None, instances=True)
    try:
        moved = 0
        for i in range(12):
            image, labels, ids = data.chip(1, i)
            assert image.shape == (4, 64, 64) and ids.dtype == np.int64
            np.testing.assert_array_equal(ids > 0, labels == 1)
            moved += int((ids > 0).any())
        assert moved >= 6  # foreground sampling puts most chips on buildings
        assert data.val_ids is not None and data.val_ids.shape == (4, 64, 64)
        np.testing.assert_array_equal(data.val_ids.numpy() > 0, data.val_labels.numpy() == 1)
    finally:
        data.close()


# ----------------------------------------------------------------------------- training


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    """Killed in epoch 2 after a mid-epoch checkpoint, resumed: the same weights and history as one run."""
    whole = train(train_config_from_dict(_raw(tmp_path / "a")))

    class Stop(Exception):
        pass

    def stop(event: Any) -> None:
        if event.phase == "train" and event.epoch == 2 and event.step == 3:
            raise Stop

    with pytest.raises(Stop):
        train(train_config_from_dict(_raw(tmp_path / "b", checkpoint_every_steps=2)), progress=stop)
    assert torch.load(tmp_path / "b" / "run" / "checkpoint.pt", weights_only=True)["partial"]["step"] == 2
    resumed = train(train_config_from_dict(_raw(tmp_path / "b", checkpoint_every_steps=2, resume=True)))
    assert isinstance(whole, InstanceTrainResult) and isinstance(resumed, InstanceTrainResult)
    a, b = _state(tmp_path / "a" / "run"), _state(tmp_path / "b" / "run")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r.train_loss for r in whole.history] == pytest.approx([r.train_loss for r in resumed.history], abs=1e-6)
    assert whole.validation.to_dict() == resumed.validation.to_dict()


def _fixed_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> float:
    """The summed training loss on fixed chips, with the RPN/RoI sampling seeded."""
    targets = [instance_targets(lab.numpy(), idx.numpy(), 2) for lab, idx in zip(labels, ids, strict=True)]
    model = copy.deepcopy(model).train()  # train mode updates batch-norm statistics: leave the model as it is
    torch.manual_seed(123)
    with torch.no_grad():
        losses = model(images, targets)
    assert isinstance(losses, dict)
    return float(sum(losses.values()))


@pytest.mark.slow  # ~15 s alone (more on a busy machine): enough steps for the loss to fall measurably
def test_training_lowers_the_loss_and_the_package_detects_the_same(tmp_path: Path) -> None:
    raw = _raw(tmp_path, epochs=5, chips_per_epoch=16, optimizer={"lr": 0.003, "schedule": "constant"},
               data={"synthetic": {"kind": "scenes", "count": 2, "size": 256, "seed": 1}},
               validation={"synthetic": {"kind": "scenes", "count": 1, "size": 256, "seed": 5}, "chips": 8})
    config = train_config_from_dict(raw)
    result = train(config, command="pytest")
    assert isinstance(result, InstanceTrainResult)
    package = resolve_package(result.package_dir)
    assert package.spec.instances and package.spec.output.min_score == 0.3
    assert package.spec.architecture is not None and package.spec.architecture.args["trunk_width"] == 8
    assert "mask AP" in (result.package_dir / "README.md").read_text()
    loaded = load_module(package)
    best = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)["best"]
    assert best["epoch"] == result.exported_epoch
    assert result.validation.mask_ap == max(r.validation.mask_ap for r in result.history)
    torch.manual_seed(config.seed)  # the run's initial weights
    initial = build_maskrcnn(4, 2, ARGS)
    trained = build_maskrcnn(4, 2, ARGS)
    trained.load_state_dict(best["model"])
    data = _prepare_data(config, None, instances=True)
    data.close()
    assert data.val_ids is not None and int((data.val_ids > 0).sum()) > 500
    before = _fixed_loss(initial, data.val_images, data.val_labels, data.val_ids)
    after = _fixed_loss(trained, data.val_images, data.val_labels, data.val_ids)
    assert after < 0.7 * before, (before, after, [r.train_loss for r in result.history])
    trained.eval()
    with torch.inference_mode():
        mine, theirs = trained(data.val_images), loaded(data.val_images)
    assert sum(len(d["scores"]) for d in mine) > 0
    for d1, d2 in zip(mine, theirs, strict=True):
        assert d1.keys() == d2.keys()
        assert all(torch.equal(d1[k], d2[k]) for k in d1)


def test_sgd_optimizer_and_unchanged_adamw_fingerprint(tmp_path: Path) -> None:
    from segflow.training.checkpoint import _fingerprint
    from segflow.training.run import build_optimizer

    model = torch.nn.Linear(2, 2)
    sgd = build_optimizer(train_config_from_dict(_raw(tmp_path, optimizer={"name": "sgd", "lr": 0.02})), model)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9 and sgd.defaults["lr"] == 0.02
    config = train_config_from_dict(_raw(tmp_path, optimizer={"name": "sgd", "momentum": 0.5}))
    assert build_optimizer(config, model).defaults["momentum"] == 0.5
    adamw = train_config_from_dict(_raw(tmp_path))
    assert isinstance(build_optimizer(adamw, model), torch.optim.AdamW)
    assert "momentum" not in _fingerprint(adamw)["optimizer"]  # checkpoints written before SGD existed resume
    assert _fingerprint(config)["optimizer"]["momentum"] == 0.5


def test_cli_config_file(tmp_path: Path) -> None:
    """``segflow train --config`` re-validates the file's dumped config, defaults included: a Mask R-CNN config
    that names no loss must still be taken (it was refused as 'does not use loss')."""
    import json

    import yaml
    from click.testing import CliRunner

    from segflow.cli.train import train_cmd

    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(_raw(tmp_path)))
    result = CliRunner().invoke(train_cmd, ["--config", str(path), "--epochs", "1", "--chips-per-epoch", "2",
                                            "--output", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 0, result.output
    assert [e["epoch"] for e in json.loads((tmp_path / "o" / "history.json").read_text())["epochs"]] == [1]
    assert resolve_package(tmp_path / "o" / "package").spec.instances
