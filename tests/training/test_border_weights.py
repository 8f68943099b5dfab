"""Border weights from instances: the U-Net map on touching instances in closed form, per chip with a margin,
moved with the chip's augmentation, added to the class weights in a training step; synthetic building ids."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from segflow.synthetic import CLASSES, synthesize_block, synthesize_instances
from segflow.training.border import chip_border
from segflow.training.chips import SyntheticSceneSource
from segflow.training.config import train_config_from_dict
from segflow.training.data import _prepare_data
from segflow.training.loop import _train_step, train
from segflow.training.losses import border_term, unet_weight_map
from segflow.training.losses.weights import border_radius
from segflow.training.output_config import BorderWeightsConfig
from segflow.training.run import _build_run
from tests.helpers import write_geotiff

W0, SIGMA = 10.0, 5.0


def _touching() -> np.ndarray:
    """Two 10 x 10 squares sharing the edge between columns 19 and 20 (no gap)."""
    labels = np.zeros((30, 40), dtype=np.int32)
    labels[10:20, 10:20] = 1
    labels[10:20, 20:30] = 2
    return labels


def _border(d1: float, d2: float) -> float:
    return W0 * math.exp(-((d1 + d2) ** 2) / (2 * SIGMA**2))


def test_touching_squares_get_the_border_weight_along_their_contact() -> None:
    weights = unet_weight_map(_touching(), w0=W0, sigma=SIGMA, class_weights=(1.0, 1.0))
    contact = 1.0 + _border(0.0, 1.0)  # d1 = 0 (own square), d2 = 1 (the other square's next pixel)
    np.testing.assert_allclose(weights[10:20, 19], contact, rtol=1e-6)
    np.testing.assert_allclose(weights[10:20, 20], contact, rtol=1e-6)
    assert contact > 1.0 + 0.98 * W0
    np.testing.assert_allclose(weights[10:20, 10:19], 1.0)  # the rest of the squares: w_c alone
    np.testing.assert_allclose(weights[10:20, 21:30], 1.0)
    assert math.isclose(weights[9, 19], 1.0 + _border(1.0, math.sqrt(2.0)), rel_tol=1e-6)  # above the contact
    assert math.isclose(weights[25, 15], 1.0 + _border(6.0, math.sqrt(61.0)), rel_tol=1e-6)
    np.testing.assert_allclose(border_term(_touching(), w0=W0, sigma=SIGMA), weights - 1.0, atol=2e-6)


def test_diagonal_contact_counts_and_a_gap_is_background() -> None:
    labels = np.zeros((12, 12), dtype=np.int64)
    labels[:5, :5] = 3
    labels[5:10, 5:10] = 8  # touches the first square at one corner only
    term = border_term(labels, w0=W0, sigma=SIGMA)
    assert math.isclose(term[4, 4], _border(0.0, math.sqrt(2.0)), rel_tol=1e-6)
    assert math.isclose(term[5, 5], _border(0.0, math.sqrt(2.0)), rel_tol=1e-6)
    assert term[4, 3] == 0.0 and term[3, 4] == 0.0  # nearest pixel of the other square is sqrt(5) away
    single = np.zeros((12, 12), dtype=np.int64)
    single[2:6, 2:6] = 1
    assert not border_term(single).any()  # one instance: no border


def test_chip_border_reads_instances_beyond_the_chip() -> None:
    source = SyntheticSceneSource(2, (1024, 1024), ["red"], ["background", "building"])
    config = BorderWeightsConfig(w0=W0, sigma=SIGMA)
    start, shape = (200, 900), (64, 64)  # buildings near the chip's edges
    got = chip_border(source, start, shape, config)
    wide = math.ceil(border_radius(SIGMA)) + 16
    ids = synthesize_instances(start[0] - wide, start[1] - wide, shape[0] + 2 * wide, shape[1] + 2 * wide, seed=2)
    expected = border_term(ids, w0=W0, sigma=SIGMA)[wide : wide + 64, wide : wide + 64]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * W0)
    alone = border_term(source.read_instances(start, shape), w0=W0, sigma=SIGMA)
    assert np.abs(alone - expected).max() > 0.1  # the chip alone misses neighbours outside it


def test_synthetic_buildings_are_instances_and_touching_ones_differ() -> None:
    ids = synthesize_instances(300, 200, 192, 256, seed=2)
    _, truth = synthesize_block(300, 200, 192, 256, seed=2)
    np.testing.assert_array_equal(ids > 0, truth == CLASSES.index("building"))
    np.testing.assert_array_equal(synthesize_instances(340, 260, 64, 80, seed=2), ids[40:104, 60:140])
    components = ndimage.label(ids > 0)[1]
    assert components < len(np.unique(ids)) - 1  # some buildings touch: fewer components than instances
    term = border_term(ids, w0=W0, sigma=SIGMA)
    grown = ndimage.grey_dilation(ids, size=3)
    touching = (ids > 0) & (grown != ids) & (grown > 0)
    assert touching.any() and (term[touching] > 0.9 * W0).all()


# ----------------------------------------------------------------------------- the training data and step


def _pair(root: Path) -> dict[str, Any]:
    """A 64 x 64 scene whose band 1 is the instance ids (touching squares well inside), labels ids > 0."""
    ids = np.zeros((64, 64), dtype=np.int32)
    ids[20:30, 18:30] = 4
    ids[20:30, 30:44] = 9
    ids[34:44, 24:36] = 2
    image = write_geotiff(root / "image.tif", ids[None].astype(np.float32))
    labels = write_geotiff(root / "labels.tif", (ids > 0)[None].astype(np.uint8))
    instances = write_geotiff(root / "ids.tif", ids[None])
    return {"image": str(image), "labels": str(labels), "instances": str(instances)}


def _config(root: Path, **extra: Any) -> Any:
    pair = _pair(root)
    raw: dict[str, Any] = {
        "model": {"name": "b", "architecture": {"name": "unet", "args": {"channels": [4, 8]}},
                  "bands": [{"name": "ids", "index": 1}], "chip": 64, "normalization": {"mode": "none"},
                  "classes": [{"name": "background"}, {"name": "square", "kind": "thing"}]},
        "data": {"pairs": [pair]}, "validation": {"pairs": [pair]},
        "augment": {"flips": True, "rot90": True, "gain": 0, "offset": 0, "noise": 0},
        "border_weights": {"w0": W0, "sigma": 2.0}, "epochs": 1, "batch_size": 2, "chips_per_epoch": 4,
        "device": "cpu", "output": str(root / "run")}
    raw.update(extra)
    return train_config_from_dict(raw)


def test_border_term_moves_with_the_augmented_chip(tmp_path: Path) -> None:
    data = _prepare_data(_config(tmp_path), None)
    try:
        seen = set()
        for index in range(8):
            image, labels, term = data.chip(1, index)
            ids = np.rint(image[0]).astype(np.int64)  # the image is the ids, moved by the augmentation
            seen.add(ids.tobytes())
            np.testing.assert_array_equal(labels, (ids > 0).astype(np.uint8))
            np.testing.assert_allclose(term, border_term(ids, w0=W0, sigma=2.0), rtol=1e-6, atol=1e-6)
        assert len(seen) > 2  # several flips/rotations were drawn
        _, labels, terms = data.batch(1, 0)
        assert terms.shape == (2, 64, 64) and terms.dtype == torch.float32 and labels.shape == (2, 64, 64)
    finally:
        data.close()


class _Recorder(nn.Module):
    """A loss that records the pixel weights it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.weight: torch.Tensor | None = None

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        self.weight = weight
        return logits.mean()


@pytest.mark.parametrize("class_weights", [None, [0.5, 2.0]])
def test_step_weights_are_class_weights_plus_the_border_term(tmp_path: Path, class_weights: Any) -> None:
    config = _config(tmp_path, class_weights=class_weights)
    run = _build_run(config, torch.device("cpu"), 2)
    run.loss = _Recorder()
    labels = torch.tensor([[0, 1], [255, 1]]).repeat(1, 4, 4)  # (1, 8, 8)
    term = torch.rand(1, 8, 8)
    _train_step(run, torch.zeros(1, 1, 8, 8), labels, term)
    table = torch.tensor([1.0, 1.0] if class_weights is None else class_weights)
    wc = torch.where(labels == 255, 0.0 if class_weights else 1.0, table[labels.clamp(max=1)])
    assert run.loss.weight is not None
    torch.testing.assert_close(run.loss.weight, wc + term)  # ignored pixels leave the loss whatever their weight


def test_training_with_border_weights_runs_for_softmax_and_sigmoid(tmp_path: Path) -> None:
    for output, loss in (({"activation": "softmax"}, "ce+dice"), ({"activation": "sigmoid"}, "focal")):
        root = tmp_path / output["activation"]
        root.mkdir()
        config = _config(root, loss=loss)
        raw = config.model_dump(mode="json")
        raw["model"]["output"] = output
        result = train(train_config_from_dict(raw))
        assert all(math.isfinite(r.train_loss) for r in result.history)
