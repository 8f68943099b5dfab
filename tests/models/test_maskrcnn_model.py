"""Mask R-CNN end to end: input checks, output contract, and that it learns synthetic rectangles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segflow.errors import ConfigError, InputError
from segflow.models.maskrcnn import MaskRCNN, MaskRCNNConfig, RoISettings, RPNSettings

SMALL = MaskRCNNConfig(
    num_classes=3, in_channels=2, fpn_width=32,
    rpn=RPNSettings(anchor_sizes=(8.0, 16.0, 32.0, 64.0, 128.0), pre_nms_top_n=(300, 300),
                    post_nms_top_n=(100, 100), batch_per_image=64),
    roi=RoISettings(representation=64, mask_width=16, mask_convs=2, batch_per_image=64),
)


def _scene(rng: np.random.Generator, size: int = 64) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """1-3 non-overlapping rectangles (touching allowed) of class 1 (bright band 0) or 2 (band 1)."""
    img = rng.normal(0, 0.1, (2, size, size)).astype(np.float32)
    occupied = np.zeros((size, size), bool)
    boxes, labels, masks = [], [], []
    for _ in range(int(rng.integers(1, 4))):
        for _try in range(20):
            h, w = (int(v) for v in rng.integers(10, 26, 2))
            y, x = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
            if not occupied[y:y + h, x:x + w].any():
                break
        else:
            continue
        occupied[y:y + h, x:x + w] = True
        c = int(rng.integers(1, 3))
        img[c - 1, y:y + h, x:x + w] += 1.0
        m = np.zeros((size, size), np.float32)
        m[y:y + h, x:x + w] = 1
        boxes.append([x, y, x + w, y + h])
        labels.append(c)
        masks.append(m)
    return torch.from_numpy(img), {"boxes": torch.tensor(boxes, dtype=torch.float32),
                                   "labels": torch.tensor(labels), "masks": torch.from_numpy(np.stack(masks))}


def test_output_contract_any_size() -> None:
    torch.manual_seed(0)
    model = MaskRCNN(SMALL)
    images = torch.randn(2, 2, 50, 77)
    targets = [_scene(np.random.default_rng(i), 50)[1] for i in range(2)]
    targets = [{**t, "masks": torch.nn.functional.pad(t["masks"], (0, 27))} for t in targets]
    losses = model(images, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box", "loss_classifier", "loss_box_reg", "loss_mask"}
    sum(losses.values()).backward()  # type: ignore[union-attr]
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert isinstance(out, list) and len(out) == 2
    for det in out:
        d = det["boxes"].shape[0]
        assert det["masks"].shape == (d, 50, 77) and det["masks"].dtype == torch.bool
        assert det["scores"].shape == det["labels"].shape == (d,)
        assert d <= SMALL.roi.detections_per_image
        if d:
            assert float(det["boxes"][:, 2].max()) <= 77 and float(det["boxes"][:, 3].max()) <= 50
            assert int(det["labels"].min()) >= 1 and int(det["labels"].max()) <= 2


def test_input_errors() -> None:
    model = MaskRCNN(SMALL)
    with pytest.raises(InputError, match="float"):
        model(torch.zeros(1, 3, 32, 32))
    with pytest.raises(InputError, match="one target dict"):
        model(torch.zeros(1, 2, 32, 32))
    bad = {"boxes": torch.zeros(1, 4), "labels": torch.tensor([3]), "masks": torch.zeros(1, 32, 32)}
    with pytest.raises(InputError, match=r"labels must be in 1\.\.2"):
        model(torch.zeros(1, 2, 32, 32), [bad])
    with pytest.raises(ConfigError, match="num_classes"):
        MaskRCNNConfig(num_classes=1)
    with pytest.raises(ConfigError, match="depth"):
        MaskRCNNConfig(depth="resnet7")


@pytest.mark.slow
def test_learns_rectangles() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = [_scene(rng) for _ in range(32)]
    model = MaskRCNN(SMALL)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    history = []
    for step in range(200):
        batch = [data[(2 * step + i) % len(data)] for i in range(2)]
        losses = model(torch.stack([b[0] for b in batch]), [b[1] for b in batch])
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        opt.step()
        history.append(float(loss.detach()))  # type: ignore[union-attr]
    assert np.mean(history[-20:]) < np.mean(history[:5]) / 2
    model.eval()
    test = [_scene(np.random.default_rng(100 + i)) for i in range(8)]
    with torch.no_grad():
        out = model(torch.stack([t[0] for t in test]))
    ious = []
    for (_, target), det in zip(test, out, strict=True):
        confident = det["scores"] > 0.5
        for gm, gl in zip(target["masks"].bool(), target["labels"], strict=True):
            same = confident & (det["labels"] == gl)
            inter = (det["masks"][same] & gm).sum(dim=(1, 2)).float()
            union = (det["masks"][same] | gm).sum(dim=(1, 2)).float()
            ious.append(float((inter / union).max()) if int(same.sum()) else 0.0)
    assert np.mean(np.array(ious) > 0.5) >= 0.75, ious
