"""Training features (issue 13): the schedule across --resume with more epochs (defect 5), poly, gradient
clipping, mid-epoch checkpoints, early stopping, balanced class weights, 2D foreground oversampling, validation
split warnings and fine-tuning from a package."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from segflow.cli import main
from segflow.errors import ConfigError, SegflowWarning
from segflow.models import load_module
from segflow.models.arch import build_architecture
from segflow.models.package import resolve_package
from segflow.synthetic import write_synthetic_scene
from segflow.training.balance import ClassCounts, median_frequency_weights
from segflow.training.chips import RasterPairSource, SyntheticSceneSource
from segflow.training.config import train_config_from_dict
from segflow.training.data import _prepare_data
from segflow.training.finetune import apply_init, load_init
from segflow.training.loop import TrainProgress, _train_step, train
from segflow.training.run import _build_run
from segflow.training.sampling import ChipSampler
from segflow.training.schedule import ScheduleSpan, lr_factor
from segflow.training.stopping import epochs_since_improvement
from tests.helpers import write_geotiff

BANDS: list[dict[str, Any]] = [{"name": n, "index": i + 1} for i, n in enumerate(("blue", "green", "red", "nir"))]
CLASSES = [{"name": "background"}, {"name": "water"}, {"name": "vegetation"}, {"name": "building", "kind": "thing"}]


def _raw(out: Path, **extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "model": {"name": "tiny", "architecture": {"name": "unet", "args": {"channels": [4, 8]}}, "bands": BANDS,
                  "chip": 32, "classes": CLASSES},
        "data": {"synthetic": {"kind": "scenes", "count": 2, "size": 128, "seed": 1}},
        "validation": {"chips": 4},
        "epochs": 1, "batch_size": 4, "chips_per_epoch": 8, "device": "cpu", "output": str(out),
    }
    raw.update(extra)
    return raw


def _train(out: Path, progress: Any = None, **extra: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SegflowWarning)  # tiny validation splits warn; tested below
        return train(train_config_from_dict(_raw(out, **extra)), progress=progress)


class _Stop(Exception):
    pass


def _recorder(lrs: list[tuple[int, int, float]], stop: tuple[str, int, int] | None = None) -> Any:
    def progress(event: TrainProgress) -> None:
        if event.phase == "train":
            lrs.append((event.epoch, event.step, event.lr))
        if stop is not None and (event.phase, event.epoch, event.step) == stop:
            raise _Stop

    return progress


# ----------------------------------------------------------------------------- schedules (defect 5)


def test_schedule_factors_in_closed_form() -> None:
    poly = lr_factor(ScheduleSpan.plan("poly", 2, 50, 0.0))
    assert [poly(s) for s in (0, 25, 50, 99, 100, 150)] == pytest.approx(
        [1.0, 0.75**0.9, 0.5**0.9, 0.01**0.9, 0.0, 0.0])
    cosine = lr_factor(ScheduleSpan.plan("cosine", 2, 50, 0.1))  # 10 warm-up steps, then 90 of cosine
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(55) == pytest.approx(0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine(100) == cosine(1000) == pytest.approx(0.02)  # after the end: the final learning rate
    assert lr_factor(ScheduleSpan.plan("constant", 2, 50, 0.0))(77) == 1.0


def test_resume_with_more_epochs_continues_the_schedule_without_a_jump(tmp_path: Path) -> None:
    """The user's report: after resuming a 2-epoch cosine run with epochs 4 the LR jumped back up. Now the first
    two epochs follow the uninterrupted 2-epoch run step for step, and the extra epochs run at its final LR."""
    raw = {"optimizer": {"lr": 0.01, "schedule": "cosine", "warmup": 0.25}, "epochs": 2}
    straight: list[tuple[int, int, float]] = []
    _train(tmp_path / "a", _recorder(straight), **raw)
    resumed: list[tuple[int, int, float]] = []
    with pytest.raises(_Stop):  # killed after epoch 1's checkpoint, during epoch 2
        _train(tmp_path / "b", _recorder(resumed, ("train", 2, 1)), **raw)
    resumed = [r for r in resumed if r[0] == 1]
    result = _train(tmp_path / "b", _recorder(resumed), **{**raw, "epochs": 4, "resume": True})
    assert [r.epoch for r in result.history] == [1, 2, 3, 4]
    steps = 2
    assert [r[:2] for r in resumed] == [(e, s) for e in range(1, 5) for s in range(1, steps + 1)]
    assert [r[2] for r in resumed[: 2 * steps]] == [r[2] for r in straight]  # the original schedule, exactly
    final = 0.01 * lr_factor(ScheduleSpan.plan("cosine", 2, steps, 0.25))(2 * steps)
    assert final == pytest.approx(0.0002)
    assert [r[2] for r in resumed[2 * steps:]] == pytest.approx([final] * (2 * steps))
    values = [r[2] for r in resumed]
    warm = int(0.25 * 2 * steps)
    assert all(b <= a + 1e-15 for a, b in zip(values[warm:], values[warm + 1:], strict=False))  # never up again
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert history["schedule"]["epochs"] == 2 and history["schedule"]["total_steps"] == 2 * steps
    assert [e["lr"] for e in history["epochs"]][2:] == pytest.approx([final, final])
    readme = (result.package_dir / "README.md").read_text()
    assert "extended by 2 epochs at its final learning rate" in readme


def test_poly_schedule_and_its_extension_refused(tmp_path: Path) -> None:
    lrs: list[tuple[int, int, float]] = []
    _train(tmp_path, _recorder(lrs), optimizer={"lr": 0.01, "schedule": "poly", "warmup": 0.0}, epochs=2)
    assert [r[2] for r in lrs] == pytest.approx([0.01 * (1 - s / 4) ** 0.9 for s in range(4)])
    with pytest.raises(ConfigError, match=r"poly schedule was planned for 2 epochs and ends at learning rate 0"):
        _train(tmp_path, optimizer={"lr": 0.01, "schedule": "poly", "warmup": 0.0}, epochs=3, resume=True)


# ----------------------------------------------------------------------------- gradient clipping


def test_clip_grad_norm_bounds_the_gradient_of_every_step(tmp_path: Path) -> None:
    norms = {}
    for clip in (None, 0.05):
        optimizer = {"lr": 0.001, "clip_grad_norm": clip} if clip else {"lr": 0.001}
        config = train_config_from_dict(_raw(tmp_path / str(clip), optimizer=optimizer))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SegflowWarning)
            data = _prepare_data(config, None)
        run = _build_run(config, torch.device("cpu"), 2)
        assert run.clip == clip
        _train_step(run, *data.batch(1, 0))
        grads = [p.grad for p in run.model.parameters() if p.grad is not None]
        norms[clip] = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        data.close()
    assert norms[None] > 0.05 and norms[0.05] == pytest.approx(0.05, rel=1e-4)


# ----------------------------------------------------------------------------- mid-epoch checkpoints


def test_kill_and_resume_in_the_middle_of_an_epoch_gives_identical_weights(tmp_path: Path) -> None:
    raw = {"epochs": 2, "chips_per_epoch": 16, "checkpoint_every_steps": 1}
    straight = _train(tmp_path / "a", **raw)
    with pytest.raises(_Stop):  # epoch 2, after step 2 (checkpointed), before step 3
        _train(tmp_path / "b", _recorder([], ("train", 2, 2)), **raw)
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and state["partial"]["step"] == 2
    assert json.loads((tmp_path / "b" / "history.json").read_text())["partial_epoch"] == {
        "epoch": 2, "steps_done": 2, "steps": 4}
    steps: list[tuple[int, int, float]] = []
    resumed = _train(tmp_path / "b", _recorder(steps), **{**raw, "resume": True, "checkpoint_every_steps": 3})
    assert [s[:2] for s in steps] == [(2, 3), (2, 4)]  # the remaining steps only
    a, b = load_file(str(straight.package_dir / "model.safetensors")), load_file(str(resumed.package_dir /
                                                                                      "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.history[1].train_loss == resumed.history[1].train_loss  # exactly (epoch 1's: rounded in history)
    assert (straight.package_dir / "model.safetensors").read_bytes() == (resumed.package_dir /
                                                                         "model.safetensors").read_bytes()


# ----------------------------------------------------------------------------- early stopping


def test_epochs_since_improvement() -> None:
    assert epochs_since_improvement([0.1, 0.2, 0.2, 0.25], 0.0) == 0
    assert epochs_since_improvement([0.1, 0.15, 0.2, 0.19], 0.1) == 3  # none > 0.1 + 0.1
    assert epochs_since_improvement([0.1, 0.15, 0.21, 0.3], 0.1) == 1  # 0.21 is; 0.3 is not > 0.21 + 0.1
    assert epochs_since_improvement([0.5, math.nan, 0.4], 0.0) == 2
    assert epochs_since_improvement([math.nan, 0.1], 0.0) == 0


def test_early_stopping_stops_and_packages_the_best_epoch(tmp_path: Path) -> None:
    # min_delta 0.9: no epoch after the first can improve enough, so patience 2 stops after epoch 3.
    result = _train(tmp_path, epochs=8, early_stopping={"patience": 2, "min_delta": 0.9},
                    optimizer={"lr": 0.01, "schedule": "constant", "warmup": 0.0})
    assert [r.epoch for r in result.history] == [1, 2, 3] and result.stopped_early == 3
    mious = [r.validation.mean_iou for r in result.history]
    assert result.exported_epoch == 1 + int(np.argmax(mious))
    state = torch.load(result.checkpoint, weights_only=True)
    package = load_file(str(result.package_dir / "model.safetensors"))
    assert all(torch.equal(package[k], state["best"]["model"][k]) for k in package)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["early_stopping"] == {"patience": 2, "min_delta": 0.9, "epochs_without_gain": 2, "stopped": True}
    assert "early stopping after epoch 3" in result.summary()
    # A resumed run with more patience continues.
    more = _train(tmp_path, epochs=4, early_stopping={"patience": 5, "min_delta": 0.9},
                  optimizer={"lr": 0.01, "schedule": "constant", "warmup": 0.0}, resume=True)
    assert [r.epoch for r in more.history] == [1, 2, 3, 4] and more.stopped_early is None


# ----------------------------------------------------------------------------- balanced class weights


def test_median_frequency_weights_closed_form() -> None:
    counts = ClassCounts(4)
    chip = np.zeros((8, 8), np.uint8)
    chip[:, :2] = 1  # class 1: 16 of 64 pixels
    chip[0, 7] = 255  # unlabelled: left out
    counts.add(chip, 2)
    other = np.zeros((8, 8), np.uint8)
    other[:4] = 2  # class 2: 32 of 64 pixels, only in this chip
    counts.add(other, 2)
    # f0 = (47 + 32) / (63 + 64), f1 = 16 / 63, f2 = 32 / 64; class 3 never appears
    f = np.array([79 / 127, 16 / 63, 0.5])
    weights, absent = median_frequency_weights(counts)
    expected = np.median(f) / f
    assert weights[:3] == pytest.approx(list(expected), rel=1e-5) and absent == [3]
    assert weights[3] == pytest.approx(expected.max(), rel=1e-5)


def test_balanced_class_weights_from_the_training_chips(tmp_path: Path) -> None:
    """Stripes: every chip holds class 1 in one column of four, so f = (0.75, 0.25) in any chip and the weights
    are (0.5 / 0.75, 0.5 / 0.25); class 2 never appears and gets the largest."""
    labels = np.zeros((1, 96, 96), np.uint8)
    labels[0, :, ::4] = 1
    image = write_geotiff(tmp_path / "img.tif", np.stack([labels[0].astype(np.uint16) * 100 + 50] * 2))
    truth = write_geotiff(tmp_path / "lab.tif", labels)
    raw = _raw(tmp_path / "run", data={"pairs": [{"image": str(image), "labels": str(truth)}]},
               class_weights="balanced", validation={"fraction": 0.2, "chips": 4})
    raw["model"].update(bands=[{"name": "a", "index": 1}, {"name": "b", "index": 2}],
                        classes=[{"name": "ground"}, {"name": "line"}, {"name": "other"}])
    with pytest.warns(SegflowWarning, match=r"class_weights: balanced: 'other' never appear"):
        result = train(train_config_from_dict(raw))
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["class_weights"] == pytest.approx([2 / 3, 2.0, 2.0], rel=1e-5)
    assert any("never appear" in w for w in history["warnings"])
    assert "balanced: median frequency" in (result.package_dir / "README.md").read_text()


# ----------------------------------------------------------------------------- 2D foreground oversampling


def test_2d_sources_record_class_locations_and_chips_centre_on_them(tmp_path: Path) -> None:
    labels = np.zeros((1, 200, 300), np.uint8)
    labels[0, 150:160, 250:262] = 3  # one rare 10 x 12 building
    labels[0, :40, :40] = 1
    image = write_geotiff(tmp_path / "img.tif", np.ones((2, 200, 300), np.uint16))
    truth = write_geotiff(tmp_path / "lab.tif", labels)
    source = RasterPairSource(image, truth, [("a", 1), ("b", 2)], 4)
    where = source.class_locations()
    assert sorted(where) == [1, 3] and len(where[3]) == 120 and len(where[1]) == 1600
    assert (labels[0][tuple(where[3].T)] == 3).all() and (labels[0][tuple(where[1].T)] == 1).all()
    sampler = ChipSampler([source], (32, 32), foreground=1.0)
    assert sampler.foreground_classes == (1, 3)
    hits = [source.read(start, (32, 32)).labels for _, start in
            (sampler.sample(np.random.default_rng([5, i])) for i in range(40))]
    assert all((chip == 1).any() or (chip == 3).any() for chip in hits)
    assert sum((chip == 3).any() for chip in hits) >= 10  # the class is drawn uniformly: about half
    uniform = ChipSampler([source], (32, 32))
    assert uniform.foreground_classes == ()
    # Synthetic scenes too; positions hold their class.
    scene = SyntheticSceneSource(3, (256, 256), ["red"], ["background", "water", "vegetation", "building"])
    found = scene.class_locations()
    full = scene.read((0, 0), (256, 256)).labels
    for k, positions in found.items():
        assert k > 0 and (full[tuple(positions.T)] == k).all()


def test_foreground_default_is_off_in_2d_and_config_turns_it_on(tmp_path: Path) -> None:
    config = train_config_from_dict(_raw(tmp_path))
    assert config.sampling.foreground is None and config.sampling.fraction(2) == 0.0
    assert config.sampling.fraction(3) == 0.33
    on = train_config_from_dict(_raw(tmp_path, sampling={"foreground": 1.0}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SegflowWarning)
        data = _prepare_data(on, None)
    try:
        present = sorted({k for s in data.sources for k in s.class_locations()})
        assert data.sampler.foreground == 1.0 and list(data.sampler.foreground_classes) == present
        assert present and 0 not in present
    finally:
        data.close()


# ----------------------------------------------------------------------------- validation split warnings


def test_a_validation_split_too_small_is_warned_about(tmp_path: Path) -> None:
    with pytest.warns(SegflowWarning) as caught:
        _train_config = train_config_from_dict(_raw(tmp_path, validation={"chips": 4}))
        result = train(_train_config)
    messages = [str(w.message) for w in caught]
    chips = result.history[0].validation.pixels // 32**2  # every validation pixel of synthetic scenes is labelled
    assert any(f"validation has {chips} chips, fewer than 16" in m and "validation.chips (now 4)" in m
               for m in messages)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["warnings"] == list(result.warnings) and len(result.warnings) >= 1
    assert all("\n" not in m for m in messages)
    # Separate validation data of 16 chips covering every class: no warning.
    raw = _raw(tmp_path / "ok", validation={"synthetic": {"kind": "scenes", "count": 1, "size": 256, "seed": 9},
                                            "chips": 64})
    raw["data"]["synthetic"]["size"] = 512
    with warnings.catch_warnings():
        warnings.simplefilter("error", SegflowWarning)
        assert train(train_config_from_dict(raw)).warnings == ()


# ----------------------------------------------------------------------------- fine-tuning


def test_init_from_a_package_loads_its_weights(tmp_path: Path) -> None:
    base = _train(tmp_path / "base", epochs=2, chips_per_epoch=16,
                  optimizer={"lr": 0.01, "schedule": "constant", "warmup": 0.0})
    package = base.package_dir
    config = train_config_from_dict(_raw(tmp_path / "ft", init=str(package)))
    init = load_init(config)
    assert not init.reinit_head and init.normalization == resolve_package(package).spec.input.normalization
    run = _build_run(config, torch.device("cpu"), 2)
    assert apply_init(run.model, init, config) is None
    loaded = load_module(resolve_package(package))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in run.model.state_dict().items())
    # End to end: the fine-tuned run starts from the package (its first loss is the trained one's, not a fresh
    # network's).
    first: list[float] = []

    def first_loss(event: TrainProgress) -> None:
        if event.phase == "train" and event.step == 1:
            first.append(event.loss)

    tuned = _train(tmp_path / "ft2", first_loss, init=str(package), optimizer={"lr": 1e-6})
    _train(tmp_path / "fresh", first_loss, optimizer={"lr": 1e-6})
    assert first[0] < 0.9 * first[1], first
    assert f"fine-tuned from `{package}`" in (tuned.package_dir / "README.md").read_text()


def test_init_with_other_classes_reinitialises_the_head(tmp_path: Path) -> None:
    package = _train(tmp_path / "base").package_dir
    raw = _raw(tmp_path / "ft", init=str(package))
    raw["model"]["classes"] = [{"name": "background"}, {"name": "building", "kind": "thing"}]
    config = train_config_from_dict(raw)
    run = _build_run(config, torch.device("cpu"), 2)
    fresh = {k: v.clone() for k, v in run.model.state_dict().items()}
    with pytest.warns(SegflowWarning, match=r"output head \(.*\) is re-initialised, every other layer is loaded"):
        note = apply_init(run.model, load_init(config), config)
    assert note is not None and "\n" not in note
    theirs = load_file(str(package / "model.safetensors"))
    state = run.model.state_dict()
    head = [k for k in state if state[k].shape != theirs[k].shape]
    assert head and all(torch.equal(state[k], fresh[k]) for k in head)  # the seeded fresh head
    assert all(torch.equal(state[k], theirs[k]) for k in state if k not in head)


def test_init_refuses_another_architecture_or_bands(tmp_path: Path) -> None:
    package = _train(tmp_path / "base").package_dir
    raw = _raw(tmp_path / "x", init=str(package))
    raw["model"]["architecture"] = {"name": "unet", "args": {"channels": [4, 16]}}
    with pytest.raises(ConfigError) as info:
        load_init(train_config_from_dict(raw))
    assert "\n" not in str(info.value) and "differs from the config's" in str(info.value)
    raw = _raw(tmp_path / "y", init=str(package))
    raw["model"]["bands"] = BANDS[:3]
    with pytest.raises(ConfigError, match="input bands"):
        load_init(train_config_from_dict(raw))
    net = build_architecture("unet", spatial_dims=2, in_channels=4, out_channels=4, channels=[4, 8])
    assert net is not None


def test_cli_init_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = write_synthetic_scene(tmp_path / "img.tif", width=96, height=96, seed=2, truth_path=tmp_path / "t.tif")
    assert image.truth_path is not None
    args = ["train", "--image", str(image.path), "--labels", str(image.truth_path), "--device", "cpu", "--chip", "32",
            "--batch-size", "2", "--chips-per-epoch", "2", "--epochs", "1", "-q"]
    assert main([*args, "--output", str(tmp_path / "a")]) == 0
    assert main([*args, "--output", str(tmp_path / "b"), "--init", str(tmp_path / "a" / "package")]) == 0
    assert "--init" in (tmp_path / "b" / "package" / "README.md").read_text()
    assert main([*args, "--output", str(tmp_path / "c"), "--init", "demo-unet-3d"]) == 2
    assert "architecture" in capsys.readouterr().err
