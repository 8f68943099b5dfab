"""Tests of segflow train: config validation, chip sources, sampling, training, resume, packages, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from segflow.cli.train import train_cmd
from segflow.errors import ConfigError, InputError, ModelError, OutputError
from segflow.models import load_module
from segflow.models.arch import build_architecture
from segflow.models.package import ModelSpec, resolve_package
from segflow.models.writer import write_package
from segflow.predict import Predictor
from segflow.synthetic import CLASSES, synthesize_block, write_synthetic_scene
from segflow.training.chips import RasterPairSource, SyntheticSceneSource, VectorSource
from segflow.training.config import TrainConfig, load_train_config, train_config_from_dict
from segflow.training.loop import TrainProgress, train
from segflow.training.sampling import ChipSampler, hold_out
from segflow.training.sources import IGNORE
from tests.helpers import CRS, TRANSFORM, tiny_train_dict, write_geotiff

BANDS: list[dict[str, Any]] = [{"name": n, "index": i + 1} for i, n in enumerate(("blue", "green", "red", "nir"))]
CLASS_LIST = [
    {"name": "background", "color": [200, 200, 200]},
    {"name": "water", "color": [30, 90, 220]},
    {"name": "vegetation", "color": [40, 160, 60]},
    {"name": "building", "kind": "thing", "color": [220, 60, 60]},
]


def _raw(tmp: Path, **extra: Any) -> dict[str, Any]:
    raw = tiny_train_dict(tmp, {"name": "unet", "args": {"channels": [4, 8]}}, name="tiny-net", classes=CLASS_LIST)
    raw.update(extra)
    return raw


def _config(tmp: Path, **extra: Any) -> TrainConfig:
    return train_config_from_dict(_raw(tmp, **extra))


@pytest.fixture(scope="module")
def scene_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pair")
    scene = write_synthetic_scene(root / "image.tif", width=160, height=144, seed=4, truth_path=root / "labels.tif",
                                  tiled_block=64)
    assert scene.truth_path is not None
    return scene.path, scene.truth_path


# ----------------------------------------------------------------------------- config


def test_config_from_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(_raw(tmp_path)))
    config = load_train_config(path)
    assert config.model.chip_shape == (32, 32) and config.model.tile_shape == (48, 48)
    assert config.package_dir == tmp_path / "run" / "package"
    assert config.optimizer.name == "adamw" and config.loss == "ce"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"epochs": 0}, ["epochs", "greater than or equal to 1"]),
        ({"epoch": 3}, ["epoch", "Extra inputs"]),
        ({"data": {}}, ["no source"]),
        ({"data": {"synthetic": {"kind": "volumes", "size": 32}}}, ["volumes", "spatial_dims 2"]),
        ({"class_weights": [1.0, 2.0]}, ["class_weights", "4 finite weights"]),
        ({"batch_size": 16}, ["chips_per_epoch", "batch_size"]),
        ({"validation": {"fraction": 0.0}}, ["validation"]),
        ({"optimizer": {"lr": -1}}, ["optimizer.lr"]),
    ],
)
def test_bad_config_gives_one_line_config_error(tmp_path: Path, change: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        train_config_from_dict(_raw(tmp_path, **change))
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_bad_model_fields(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    raw["model"]["chip"] = [32, 32, 32]
    with pytest.raises(ConfigError, match="chip"):
        train_config_from_dict(raw)
    raw = _raw(tmp_path)
    raw["model"]["bands"] = [{"name": "swir", "index": 1}]
    with pytest.raises(ConfigError, match="swir"):
        train_config_from_dict(raw)


def test_unreadable_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_train_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_train_config(bad)


def test_unsuitable_loss_and_architecture(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="softmax"):
        train(_config(tmp_path, loss="bce"))
    raw = _raw(tmp_path)
    raw["model"]["architecture"] = {"name": "unet", "args": {"widths": [4]}}
    with pytest.raises(ConfigError, match="widths"):
        train(train_config_from_dict(raw))


# ----------------------------------------------------------------------------- chip sources


def test_raster_pair_windowed_reads_match_the_files(scene_pair: tuple[Path, Path]) -> None:
    image_path, labels_path = scene_pair
    source = RasterPairSource(image_path, labels_path, [(b["name"], b["index"]) for b in BANDS], 4)
    with rasterio.open(image_path) as ds:
        full = ds.read().astype(np.float32)
    with rasterio.open(labels_path) as ds:
        truth = ds.read(1)
    chip = source.read((20, 30), (32, 40))
    assert np.array_equal(chip.image, full[:, 20:52, 30:70])
    assert np.array_equal(chip.labels, truth[20:52, 30:70]) and chip.valid.all()
    edge = source.read((130, 150), (32, 32))  # leaves the scene: padded, ignored
    assert np.array_equal(edge.image[:, :14, :10], full[:, 130:, 150:])
    assert (edge.labels[14:, :] == IGNORE).all() and not edge.valid[:, 10:].any()
    source.close()


def test_raster_pair_grid_checks(tmp_path: Path, scene_pair: tuple[Path, Path]) -> None:
    image_path, labels_path = scene_pair
    bands = [("red", 3)]
    with rasterio.open(labels_path) as ds:
        labels = ds.read()
        transform = ds.transform
    shifted = write_geotiff(tmp_path / "shifted.tif", labels, crs="EPSG:32633",
                            transform=transform @ transform.translation(1, 0))
    with pytest.raises(InputError, match="transform"):
        RasterPairSource(image_path, shifted, bands, 4)
    other_crs = write_geotiff(tmp_path / "crs.tif", labels, crs="EPSG:32632", transform=transform)
    with pytest.raises(InputError, match="CRS"):
        RasterPairSource(image_path, other_crs, bands, 4)
    small = write_geotiff(tmp_path / "small.tif", labels[:, :100], crs="EPSG:32633", transform=transform)
    with pytest.raises(InputError, match="same grid"):
        RasterPairSource(image_path, small, bands, 4)
    wide = write_geotiff(tmp_path / "wide.tif", labels.astype(np.uint16), crs="EPSG:32633", transform=transform)
    with pytest.raises(InputError, match="uint8"):
        RasterPairSource(image_path, wide, bands, 4)
    with pytest.raises(InputError, match="not found"):
        RasterPairSource(tmp_path / "nope.tif", labels_path, bands, 4)
    with pytest.raises(InputError, match="band 9"):
        RasterPairSource(image_path, labels_path, [("red", 9)], 4)
    too_many = RasterPairSource(image_path, labels_path, bands, 2)  # truth holds classes 0..3
    with pytest.raises(InputError, match=r"holds label [23]"):
        too_many.read((0, 0), (144, 160))


def test_vector_labels_rasterised_per_chip(tmp_path: Path) -> None:
    image = np.full((2, 64, 64), 500, dtype=np.uint16)
    path = write_geotiff(tmp_path / "img.tif", image)
    x0, y0 = TRANSFORM.c, TRANSFORM.f  # top-left corner, 10 m pixels

    def square(col: int, row: int, size: int) -> list[list[list[float]]]:
        left, top = x0 + 10 * col, y0 - 10 * row
        right, bottom = left + 10 * size, top - 10 * size
        return [[[left, top], [right, top], [right, bottom], [left, bottom], [left, top]]]

    features = [
        {"type": "Feature", "properties": {"class": "building"}, "geometry": {"type": "Polygon",
                                                                             "coordinates": square(4, 8, 10)}},
        {"type": "Feature", "properties": {"class": 1}, "geometry": {"type": "Polygon",
                                                                    "coordinates": square(40, 40, 20)}},
    ]
    geojson = tmp_path / "labels.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "crs": {"type": "name", "properties":
                                   {"name": f"urn:ogc:def:crs:{CRS.replace(':', '::')}"}}, "features": features}))
    names = ["background", "water", "vegetation", "building"]
    source = VectorSource(path, geojson, [("a", 1), ("b", 2)], names)
    chip = source.read((0, 0), (32, 32))
    expected = np.zeros((32, 32), dtype=np.uint8)
    expected[8:18, 4:14] = 3
    assert np.array_equal(chip.labels, expected)
    far = source.read((32, 32), (32, 32))
    assert (far.labels[8:28, 8:28] == 1).all() and far.labels.sum() == 400
    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"class": "road"}, "geometry": features[0]["geometry"]}]}))
    with pytest.raises(InputError, match="road"):
        VectorSource(path, bad, [("a", 1)], names, crs=CRS)


def test_synthetic_source_maps_classes_by_name() -> None:
    source = SyntheticSceneSource(3, (256, 256), ["red", "nir"], ["background", "building", "water"])
    chip = source.read((64, 64), (64, 64))
    image, truth = synthesize_block(64, 64, 64, 64, seed=3, bands=("red", "nir"))
    assert np.array_equal(chip.image, image.astype(np.float32))
    expected = np.select([truth == CLASSES.index("building"), truth == CLASSES.index("water")], [1, 2], 0)
    assert np.array_equal(chip.labels, expected)
    with pytest.raises(ConfigError, match="do not match"):
        SyntheticSceneSource(3, (64, 64), ["red"], ["sky", "sea"])


def test_sampler_is_deterministic_and_avoids_held_out_cells() -> None:
    sources = [SyntheticSceneSource(s, (128, 96), ["red"], ["background", "water"]) for s in (1, 2)]
    holdout = hold_out(sources, (32, 32), 0.25, np.random.default_rng(0))
    assert sum(int(m.sum()) for m in holdout.masks) == 6  # 25 % of 2 x (4 x 3) cells
    sampler = ChipSampler(sources, (32, 32), holdout)
    draws = [sampler.sample(np.random.default_rng([9, i])) for i in range(300)]
    assert draws == [sampler.sample(np.random.default_rng([9, i])) for i in range(300)]
    for source, start in draws:
        assert not holdout.overlaps(source, start)
    for source, start in holdout.cells():
        assert holdout.overlaps(source, start)
    assert {d[0] for d in draws} == {0, 1}
    with pytest.raises(ConfigError, match="too few"):
        hold_out(sources[:1], (128, 96), 0.5, np.random.default_rng(0))


# ----------------------------------------------------------------------------- training


def _weights(package: Path) -> dict[str, torch.Tensor]:
    return load_file(str(package / "model.safetensors"))


def test_train_on_raster_pairs_writes_a_loadable_package(tmp_path: Path, scene_pair: tuple[Path, Path]) -> None:
    image_path, labels_path = scene_pair
    config = _config(tmp_path, data={"pairs": [{"image": str(image_path), "labels": str(labels_path)}]},
                     validation={"fraction": 0.2, "chips": 4}, class_weights=[1.0, 1.0, 1.0, 2.0],
                     loss={"name": "ce+jaccard", "alpha": 0.7},
                     test={"pairs": [{"image": str(image_path), "labels": str(labels_path)}]})
    events: list[TrainProgress] = []
    result = train(config, progress=events.append)
    assert [e.phase for e in events] == ["train", "train", "validate"]
    package = result.package_dir
    assert sorted(p.name for p in package.iterdir()) == ["README.md", "model.safetensors", "model.yaml"]
    spec = ModelSpec.model_validate(yaml.safe_load((package / "model.yaml").read_text()))
    assert spec.weights == "model.safetensors" and spec.tile_shape == (48, 48)
    assert spec.input.normalization.mode == "meanstd" and spec.input.normalization.mean is not None
    assert [c.kind for c in spec.classes] == ["stuff", "stuff", "stuff", "thing"]
    assert "mean IoU" in spec.description and "Sliding-window test" in spec.description
    assert result.test is not None and result.test.pixels == 144 * 160
    assert "building" in result.validation.object_f1
    readme = (package / "README.md").read_text()
    assert "Measured quality" in readme and "s per epoch" in readme
    # The loader's contract: build from model.yaml, load the state dict strictly.
    assert spec.architecture is not None
    net = build_architecture(spec.architecture.name, spatial_dims=2, in_channels=len(spec.input.bands),
                             out_channels=len(spec.classes), **spec.architecture.args)
    net.load_state_dict(_weights(package), strict=True)
    net.eval()
    # The package's normalisation (applied by Predictor) is the one used in training.
    with rasterio.open(image_path) as ds:
        window = ds.read(window=rasterio.windows.Window(0, 0, 48, 48)).astype(np.float32)[None]
    mean = np.asarray(spec.input.normalization.mean, np.float32)[None, :, None, None]
    std = np.asarray(spec.input.normalization.std, np.float32)[None, :, None, None]
    with torch.no_grad():
        direct = torch.softmax(net(torch.from_numpy((window - mean) / std)), dim=1).numpy()
    predicted = Predictor(net, spec, device="cpu").predict_batch(window)
    assert np.allclose(direct, predicted, atol=1e-5)
    loaded = load_module(resolve_package(package))  # the package loader builds the same network
    with torch.no_grad():
        x = torch.from_numpy((window - mean) / std)
        assert torch.equal(loaded(x), net(x))


class _Stop(Exception):
    pass


def _stop_after_epoch(epoch: int) -> Any:
    def progress(event: TrainProgress) -> None:
        if event.phase == "validate" and event.epoch == epoch:
            raise _Stop

    return progress


def test_resume_after_interruption_gives_identical_weights(tmp_path: Path) -> None:
    straight = train(_config(tmp_path / "a", epochs=2))
    interrupted = _config(tmp_path / "b", epochs=2)
    with pytest.raises(_Stop):
        train(interrupted, progress=_stop_after_epoch(2))  # epoch 1 checkpointed, stopped before epoch 2's
    assert torch.load(interrupted.output / "checkpoint.pt", weights_only=True)["epoch"] == 1
    resumed = train(train_config_from_dict({**_raw(tmp_path / "b", epochs=2), "resume": True}))
    assert [r.epoch for r in resumed.history] == [1, 2]
    for name, tensor in _weights(straight.package_dir).items():
        assert torch.equal(tensor, _weights(resumed.package_dir)[name]), name
    a = torch.load(straight.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["history"][1]["train_loss"] == b["history"][1]["train_loss"]


def test_one_epoch_plus_resumed_epoch_equals_two_epochs(tmp_path: Path) -> None:
    constant = {"lr": 0.002, "schedule": "constant", "warmup": 0.0}
    straight = train(_config(tmp_path / "a", epochs=2, optimizer=constant, export="last"))
    train(_config(tmp_path / "b", epochs=1, optimizer=constant, export="last"))
    resumed = train(_config(tmp_path / "b", epochs=2, optimizer=constant, export="last", resume=True))
    for name, tensor in _weights(straight.package_dir).items():
        assert torch.equal(tensor, _weights(resumed.package_dir)[name]), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_precision_training_on_cuda_and_resume(tmp_path: Path) -> None:
    config = _config(tmp_path, device="cuda", amp=True, epochs=2)
    with pytest.raises(_Stop):
        train(config, progress=_stop_after_epoch(2))
    state = torch.load(config.output / "checkpoint.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0 and "cuda" in state["rng"]  # GradScaler and CUDA RNG saved
    resumed = train(train_config_from_dict({**_raw(tmp_path, device="cuda", amp=True, epochs=2), "resume": True}))
    assert resumed.device.startswith("cuda") and [r.epoch for r in resumed.history] == [1, 2]
    assert all(np.isfinite(r.train_loss) for r in resumed.history)
    module = load_module(resolve_package(resumed.package_dir))  # loads on the CPU
    assert all(p.device.type == "cpu" for p in module.parameters())


def test_resume_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(_config(tmp_path, resume=True))
    train(_config(tmp_path))
    with pytest.raises(ConfigError, match="differs from the checkpoint's in seed"):
        train(_config(tmp_path, resume=True, seed=5, epochs=2))


def test_train_3d_on_synthetic_volumes(tmp_path: Path) -> None:
    raw = _raw(tmp_path, data={"synthetic": {"kind": "volumes", "count": 2, "size": 24, "seed": 3}},
               test={"synthetic": {"kind": "volumes", "count": 1, "size": [20, 24, 24], "seed": 50}},
               chips_per_epoch=4, batch_size=2)
    raw["model"].update(spatial_dims=3, bands=[{"name": "ct"}], chip=16, tile=16,
                        classes=[{"name": "background"}, {"name": "organ"}, {"name": "lesion", "kind": "thing"}])
    result = train(train_config_from_dict(raw))
    spec = resolve_package(result.package_dir).spec
    assert spec.spatial_dims == 3 and spec.tile_shape == (16, 16, 16)
    assert result.test is not None and result.test.pixels == 20 * 24 * 24
    assert result.history[0].validation.pixels > 0


def test_package_never_replaces_a_foreign_directory(tmp_path: Path) -> None:
    foreign = tmp_path / "docs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="refusing"):
        train(_config(tmp_path, package=str(foreign)))
    assert (foreign / "notes.txt").read_text() == "keep me"
    contract = {"name": "x", "spatial_dims": 2, "input": {"bands": [{"name": "a"}]}, "tile": 8,
                "classes": [{"name": "a"}, {"name": "b"}], "weights": "model.safetensors",
                "architecture": {"name": "unet", "args": {"channels": [2, 4]}}}
    net = build_architecture("unet", spatial_dims=2, in_channels=1, out_channels=2, channels=[2, 4])
    target = write_package(tmp_path / "pkg", contract, net.state_dict(), "# x\n")
    write_package(target, contract, net.state_dict(), "# y\n")  # replacing a package is fine
    with pytest.raises(ConfigError, match="tile"):
        write_package(tmp_path / "bad", {**contract, "tile": 0}, net.state_dict(), "")
    wrong = build_architecture("unet", spatial_dims=2, in_channels=1, out_channels=3, channels=[2, 4])
    with pytest.raises(ModelError, match="shape mismatch"):
        write_package(tmp_path / "wrong", contract, wrong.state_dict(), "")
    assert not (tmp_path / "wrong").exists()
    assert (target / "README.md").read_text() == "# y\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pkg")]


# ----------------------------------------------------------------------------- command line


def test_cli_image_labels_then_resume(tmp_path: Path, scene_pair: tuple[Path, Path]) -> None:
    image_path, labels_path = scene_pair
    out = tmp_path / "cli"
    runner = CliRunner()
    args = ["--image", str(image_path), "--labels", str(labels_path), "--output", str(out), "--device", "cpu",
            "--chip", "32", "--batch-size", "4", "--chips-per-epoch", "8"]
    first = runner.invoke(train_cmd, [*args, "--epochs", "1"], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "wrote" in first.output and "s/epoch" in first.output
    spec = resolve_package(out / "package").spec
    assert spec.class_names == CLASSES  # from the truth raster's 'classes' tag
    assert [b.name for b in spec.input.bands] == ["blue", "green", "red", "nir"]
    second = runner.invoke(train_cmd, [*args, "--epochs", "2", "--resume", "--quiet"], catch_exceptions=False)
    assert second.exit_code == 0 and second.output == ""
    history = json.loads((out / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    readme = (out / "package" / "README.md").read_text()
    assert "--resume" in readme and "--chips-per-epoch 8" in readme


def test_cli_config_file_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(_raw(tmp_path, epochs=3)))
    runner = CliRunner()
    result = runner.invoke(train_cmd, ["--config", str(path), "--epochs", "1", "--output", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "history.json").read_text())["best_epoch"] == 1
    none = runner.invoke(train_cmd, [])
    assert isinstance(none.exception, ConfigError) and "--config" in str(none.exception)
    unpaired = runner.invoke(train_cmd, ["--image", "a.tif"])
    assert isinstance(unpaired.exception, ConfigError) and "--labels" in str(unpaired.exception)
    bad = runner.invoke(train_cmd, ["--config", str(path), "--epochs", "0"])
    assert isinstance(bad.exception, ConfigError) and "epochs" in str(bad.exception)


# ----------------------------------------------------------------------------- built-in demo packages


@pytest.mark.parametrize("name", ["demo-unet-2d", "demo-unet-3d"])
def test_builtin_demo_packages_load_and_segment(name: str) -> None:
    from segflow.models import builtin_names
    from segflow.synthetic.volume import synthesize_volume
    from segflow.training.chips import VolumeSource
    from segflow.training.evaluation import evaluate_sliding_window

    assert name in builtin_names()
    package = resolve_package(name)
    size = sum(p.stat().st_size for p in package.root.iterdir())
    assert size < 2.5e6  # both demo packages together stay under 5 MB
    assert package.spec.weights == "model.safetensors" and "mean IoU" in package.spec.description
    module = load_module(package)
    if package.spec.spatial_dims == 2:
        source = SyntheticSceneSource(777, (256, 256), [b.name for b in package.spec.input.bands], CLASSES)
        metrics = evaluate_sliding_window(module, package.spec, [source], device="cpu")
        assert metrics.mean_iou > 0.85
    else:
        image, truth = synthesize_volume(48, seed=777)
        metrics = evaluate_sliding_window(module, package.spec, [VolumeSource(image, truth, "v")], device="cpu")
        assert metrics.dice[1] > 0.85  # organ


# ----------------------------------------------------------------------------- it learns


def test_a_short_run_on_a_learnable_problem_lowers_the_loss_and_changes_the_weights(tmp_path: Path) -> None:
    """Synthetic scenes are learnable: after 3 short epochs the package beats its own initial weights on a
    scene never seen in training, and every parameter has moved."""
    config = _config(tmp_path, epochs=3, chips_per_epoch=16, export="last",
                     optimizer={"lr": 0.01, "schedule": "constant", "warmup": 0.0})
    result = train(config)
    losses = [r.train_loss for r in result.history]
    assert losses[-1] < 0.9 * losses[0], losses
    package = resolve_package(result.package_dir)
    torch.manual_seed(config.seed)  # the trainer's initial weights: same seed, same architecture
    arch = config.model.architecture
    initial = build_architecture(arch.name, spatial_dims=2, in_channels=len(BANDS), out_channels=len(CLASS_LIST),
                                 **arch.args).eval()
    trained = _weights(result.package_dir)
    unchanged = [name for name, p in initial.named_parameters() if torch.equal(p.detach(), trained[name])]
    assert not unchanged, f"parameters never updated: {unchanged}"
    source = SyntheticSceneSource(99, (256, 256), [b["name"] for b in BANDS], [c["name"] for c in CLASS_LIST])
    chip = source.read((0, 0), (96, 96))
    assert chip.valid.all()

    def held_out(net: torch.nn.Module) -> tuple[float, float]:
        """Mean negative log-likelihood of the truth and pixel accuracy, through the package's Predictor."""
        probs = Predictor(net, package.spec, device="cpu").predict_batch(chip.image[None])[0]
        truth = chip.labels[None].astype(np.int64)
        nll = float(-np.log(np.take_along_axis(probs, truth, axis=0) + 1e-7).mean())
        return nll, float((probs.argmax(axis=0) == chip.labels).mean())

    nll_before, accuracy_before = held_out(initial)
    nll_after, accuracy_after = held_out(load_module(package).eval())
    assert nll_after < 0.75 * nll_before, (nll_before, nll_after)
    assert accuracy_after > 0.6 and accuracy_after > accuracy_before + 0.3, (accuracy_before, accuracy_after)
