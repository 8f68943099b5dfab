"""Loading torchvision's ImageNet weights (a state-dict file) into a network's torchvision-layout encoder.

The file is what ``torch.save(torchvision.models.resnet34(weights="IMAGENET1K_V1").state_dict(), path)``
writes (or a ``.safetensors`` file of the same tensors); it is read only with
``torch.load(weights_only=True)`` (:func:`segflow.models.formats.load_state_dict_file`), so a pickle
that carries code is refused, never run. Every key of the encoder must be in the file with its shape;
the classifier's keys (``fc.*``, ``classifier.*``) are ignored; any other key, missing or extra, or a
shape that differs, is a one-line :class:`~segflow.errors.ModelError` naming them (an extra key means
the file is another network's, e.g. ResNet-34 weights for a ResNet-18, which must not half-load).
``*.num_batches_tracked`` counters may be absent (the files torchvision downloads predate them);
they only count training steps and then stay at 0.

Input bands other than 3: the first convolution's RGB weights ``w`` (``(64, 3, k, k)``) are adapted
as segmentation_models_pytorch does (``change_conv_in_channels``, formerly ``patch_first_conv``, in
``segmentation_models_pytorch/encoders/_utils.py``): for 1 band their sum over R, G, B; for ``N``
bands (2 or more than 3) band ``i`` gets ``w[:, i % 3] * 3 / N`` (for 1 band, and for a multiple of 3,
an input whose bands all hold one grey value then gives the first-layer response of that grey in RGB).
Which of the file's RGB weights a band gets depends only on its position: put red, green and blue
first, in that order, when the data has them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from segflow.errors import ConfigError, ModelError
from segflow.models.arch.encoders import ENCODER_NAMES, TorchvisionEncoder

__all__ = ["adapt_first_conv", "encoder_of", "encoder_state", "load_encoder_weights"]

_TRACKED = ".num_batches_tracked"


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """First-conv weights ``(out, 3, k, k)`` of RGB for ``in_channels`` bands, as smp does (module docstring)."""
    if weight.dim() != 4:
        raise ValueError(f"expected conv weights (out, in, k, k), got shape {tuple(weight.shape)}")
    rgb = weight.shape[1]
    if in_channels == rgb:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    index = torch.arange(in_channels) % rgb
    return weight[:, index] * (rgb / in_channels)


def encoder_of(model: nn.Module) -> TorchvisionEncoder:
    """The one torchvision-layout encoder inside ``model`` (ConfigError when there is none)."""
    found = [m for m in model.modules() if isinstance(m, TorchvisionEncoder)]
    if len(found) != 1:
        raise ConfigError(f"encoder weights need a network with one torchvision-layout encoder, this "
                          f"{type(model).__name__} has {len(found)}; set the architecture's option encoder to one of "
                          f"{', '.join(ENCODER_NAMES)} (model.architecture.args.encoder)")
    return found[0]


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def encoder_state(encoder: TorchvisionEncoder, state: Mapping[str, torch.Tensor], source: str
                  ) -> tuple[dict[str, torch.Tensor], bool]:
    """``state`` (torchvision key names) as a complete state dict of ``encoder``, and whether the first
    conv was adapted to another band count; ModelError naming missing, unexpected and mis-shaped keys."""
    own = encoder.state_dict()
    given = {k: v for k, v in state.items() if not k.startswith(encoder.classifier_prefixes)}
    first = encoder.first_conv
    adapted = False
    weight = given.get(first)
    if weight is not None and weight.dim() == 4 and weight.shape[1] == 3 and own[first].shape[1] != 3:
        given[first], adapted = adapt_first_conv(weight, encoder.in_channels), True
    missing = sorted(k for k in own if k not in given and not k.endswith(_TRACKED))
    unexpected = sorted(k for k in given if k not in own)
    shapes = sorted(f"{k} {tuple(given[k].shape)} in file vs {tuple(own[k].shape)}" for k in own
                    if k in given and tuple(given[k].shape) != tuple(own[k].shape))
    problems = [f"{what} {_few(keys)}" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)) if keys]
    if problems:
        raise ModelError(f"encoder weights {source} do not fit encoder {encoder.name} ({'; '.join(problems)}); "
                         f"save torchvision.models.{encoder.name}(weights=...).state_dict() to the file (see the "
                         "README, Training) or choose the encoder the file is for")
    return {k: (given[k] if k in given else own[k]).detach().to(own[k].dtype) for k in own}, adapted


def load_encoder_weights(model: nn.Module, path: str | Path) -> str:
    """Copy torchvision's weights from the file ``path`` into ``model``'s encoder, in place.

    Returns a one-line description of what was loaded. Raises ConfigError for a missing file or a
    model without a torchvision-layout encoder, ModelError for an unreadable, unsafe or unfitting file.
    """
    from segflow.models.formats import load_state_dict_file  # formats reads model packages: import late

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"encoder weights {file}: no such file; give the path of a state dict saved from "
                          "torchvision (see the README, Training)")
    encoder = encoder_of(model)
    state, adapted = encoder_state(encoder, load_state_dict_file(file), file.name)
    encoder.load_state_dict(state, strict=True)
    bands = f"; first convolution adapted from 3 to {encoder.in_channels} bands" if adapted else ""
    return f"encoder {encoder.name} initialised from {file} ({len(state)} tensors{bands})"
