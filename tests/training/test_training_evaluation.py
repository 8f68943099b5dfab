"""Sliding-window evaluation during training: uncovered truth is a miss, objects are whole across chunk seams;
the package's weights file is byte-reproducible."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, safe_open

from segflow.models.arch import build_architecture
from segflow.models.package import ModelSpec
from segflow.models.writer import WEIGHTS, write_package
from segflow.training.evaluation import evaluate_sliding_window
from segflow.training.sources import IGNORE, Chip, ChipSource, Start
from tests.helpers import Threshold, spec_dict


class ArraySource(ChipSource):
    """An in-memory 2D source: image ``(1, Y, X)``, labels ``(Y, X)``, validity ``(Y, X)``."""

    def __init__(self, image: np.ndarray, labels: np.ndarray, valid: np.ndarray):
        self.image, self.labels, self.valid = image.astype(np.float32), labels.astype(np.uint8), valid
        self.spatial_shape = labels.shape
        self.num_bands = 1
        self.description = "array"

    def read_inside(self, start: Start, shape: tuple[int, ...]) -> Chip:
        where = tuple(slice(s, s + n) for s, n in zip(start, shape, strict=True))
        return Chip(self.image[(slice(None), *where)], self.labels[where].copy(), self.valid[where])


def _spec() -> ModelSpec:
    d = spec_dict(bands=1, classes=2, tile=16, activation="none")  # weights: unused, the module is given
    d.update(input={"bands": [{"name": "b1", "index": 1}], "normalization": {"mode": "none"}},
             classes=[{"name": "background"}, {"name": "house", "kind": "thing"}])
    return ModelSpec.model_validate(d)


def test_truth_without_a_prediction_counts_as_a_miss() -> None:
    """The network predicts the truth exactly where the input is valid; a 16 x 16 block of house pixels has no
    valid input, so no prediction: those pixels are missed (not dropped)."""
    truth = np.zeros((64, 64), np.uint8)
    truth[8:40, 8:40] = 1  # 1024 house pixels
    valid = np.ones((64, 64), bool)
    valid[8:24, 8:24] = False  # 256 of them without input
    source = ArraySource(truth[None].astype(np.float32), truth, valid)
    metrics = evaluate_sliding_window(Threshold(0.5), _spec(), [source], device="cpu", chunk=32)
    assert metrics.pixels == 64 * 64  # every labelled pixel is counted
    assert metrics.iou[1] == pytest.approx((1024 - 256) / 1024)
    assert metrics.iou[0] == 1.0
    assert metrics.pixel_accuracy == pytest.approx((4096 - 256) / 4096)
    assert metrics.dice[1] == pytest.approx(2 * 768 / (2 * 768 + 256))


@pytest.mark.parametrize("chunk", [16, 32, 64])
def test_an_object_cut_by_a_chunk_border_counts_once(chunk: int) -> None:
    """Truth house rows 10-20, cols 24-40 (cut at col 32 by 16- and 32-pixel chunks); the prediction is shifted
    to cols 29-45: IoU 110 / 210 >= 0.5, one match. Matched per chunk, the left halves (IoU 3/8) would not
    match: F1 0.5 instead of 1."""
    truth = np.zeros((64, 64), np.uint8)
    truth[10:20, 24:40] = 1
    image = np.zeros((1, 64, 64), np.float32)
    image[0, 10:20, 29:45] = 1.0
    source = ArraySource(image, truth, np.ones((64, 64), bool))
    metrics = evaluate_sliding_window(Threshold(0.5), _spec(), [source], device="cpu", chunk=chunk)
    assert metrics.object_f1 == {"house": 1.0}
    assert metrics.iou[1] == pytest.approx(110 / 210)


def test_objects_only_where_truth_is_scored_and_missing_prediction_misses_them() -> None:
    truth = np.zeros((48, 48), np.uint8)
    truth[4:12, 4:12] = 1  # found
    truth[30:40, 30:40] = 1  # no input there: missed
    truth[4:12, 30:40] = IGNORE  # a predicted house on unlabelled ground: not scored
    image = np.zeros((1, 48, 48), np.float32)
    image[0, 4:12, 4:12] = 1.0
    image[0, 4:12, 30:40] = 1.0
    valid = np.ones((48, 48), bool)
    valid[30:40, 30:40] = False
    source = ArraySource(image, truth, valid)
    metrics = evaluate_sliding_window(Threshold(0.5), _spec(), [source], device="cpu", chunk=24)
    assert metrics.object_f1["house"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))  # tp 1, fp 0, fn 1


def test_package_weights_are_byte_reproducible(tmp_path: Path) -> None:
    """safetensors writes its header from a hash map (metadata key order varies); the package writer sorts it."""
    net = build_architecture("unet", spatial_dims=2, in_channels=2, out_channels=3, channels=[4, 8])
    contract = {"name": "repro", "spatial_dims": 2, "input": {"bands": [{"name": "a"}, {"name": "b"}]}, "tile": 16,
                "classes": [{"name": "x"}, {"name": "y"}, {"name": "z"}], "weights": WEIGHTS,
                "architecture": {"name": "unet", "args": {"channels": [4, 8]}}}
    digests = set()
    for k in range(8):
        package = write_package(tmp_path / f"p{k}", contract, net.state_dict(), "# r\n")
        digests.add(hashlib.sha256((package / WEIGHTS).read_bytes()).hexdigest())
    assert len(digests) == 1
    data = (tmp_path / "p0" / WEIGHTS).read_bytes()
    size = int.from_bytes(data[:8], "little")
    assert size % 8 == 0 and data[8:8 + size].decode().startswith('{"__metadata__":{"format":"pt","model":"repro"}')
    loaded = load_file(str(tmp_path / "p0" / WEIGHTS))
    assert loaded.keys() == net.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())
    with safe_open(str(tmp_path / "p0" / WEIGHTS), "pt") as f:
        assert f.metadata() == {"format": "pt", "model": "repro"}
