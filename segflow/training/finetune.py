"""Fine-tuning: start a training run from the weights of an existing model package.

``init: PACKAGE`` in the config (or ``segflow train --init PACKAGE``; a built-in name, a package
folder, its ``model.yaml`` or an archive) loads the package's parameter weights
(``.safetensors``, or ``.pt``/``.pth`` state dicts) into the network the config builds, after
the run's seeded initialisation and before the first step. The package must describe the same
network body:

* the same architecture: name, spatial dims and options (defaults filled in on both sides);
* the same input bands, by name and order;
* the same classes and output (activation, channels) — or, when only those differ, every layer
  but the output head is loaded and the head keeps its fresh (seeded) initialisation, said in a
  one-line note (a :class:`~segflow.errors.SegflowWarning`). The head is found by building the
  architecture with two different output-channel counts: the parameters whose shapes change.

Anything else is refused with one :class:`~segflow.errors.ConfigError` line. Unless the config
gives a normalisation of its own (``model.normalization`` with values, or another mode), the run
uses the package's, so the inputs mean what the loaded weights expect. ``--resume`` restores the
checkpoint's weights instead; ``init`` then only has to match the checkpoint's config.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, SegflowWarning
from ..models.arch import architecture_info, build_architecture
from ..models.formats import load_state_dict_file
from ..models.package import Normalization, resolve_package
from ..models.writer import plain
from .config import TrainConfig

__all__ = ["InitWeights", "apply_init", "load_init"]


@dataclass(frozen=True)
class InitWeights:
    """The weights to start from: ``state`` (CPU tensors), the package's normalisation when the run
    takes it (else None), whether the head is re-initialised, and the package's name for reports."""

    state: dict[str, torch.Tensor]
    normalization: Normalization | None
    reinit_head: bool
    source: str
    classes: tuple[str, ...]


def _effective_args(name: str, args: dict[str, Any]) -> dict[str, Any]:
    try:
        defaults = architecture_info(name).defaults
    except ConfigError:
        return plain(dict(args))
    return plain({**defaults, **args})


def _output_channels(config: TrainConfig) -> int:
    output = config.model.output
    return 1 if output.activation == "sigmoid" and not output.multilabel else len(config.model.classes)


def load_init(config: TrainConfig) -> InitWeights:
    """Read and check the package ``config.init`` against the config (see the module docstring).

    Raises
    ------
    ConfigError
        A package whose architecture or bands differ, or whose weights are not a state dict.
    ModelError
        A package that cannot be found or read.
    """
    assert config.init is not None
    package = resolve_package(config.init)
    spec, model = package.spec, config.model
    where = f"init {config.init!r}"
    weights = package.weights_path
    if spec.architecture is None or weights is None or weights.suffix.lower() not in (".safetensors", ".pt", ".pth"):
        raise ConfigError(f"{where}: package {spec.name!r} holds no parameter weights for an architecture "
                          f"(weights: {spec.weights}); fine-tuning needs a .safetensors state dict, as segflow train "
                          "writes")
    arch, their_arch = model.architecture, spec.architecture
    ours = (arch.name, model.spatial_dims, _effective_args(arch.name, arch.args))
    theirs = (their_arch.name, spec.spatial_dims, _effective_args(their_arch.name, their_arch.args))
    if ours != theirs:
        raise ConfigError(f"{where}: its architecture {theirs[0]} {theirs[2]} ({theirs[1]}D) differs from the config's "
                          f"{ours[0]} {ours[2]} ({ours[1]}D); fine-tuning needs the same network: copy "
                          "model.architecture and spatial_dims from the package's model.yaml")
    bands = [b.name.lower() for b in model.bands]
    package_bands = [b.name.lower() for b in spec.input.bands]
    if bands != package_bands:
        raise ConfigError(f"{where}: its input bands {package_bands} differ from the config's {bands}; fine-tuning "
                          "needs the same bands in the same order (the first layer's weights are per band)")
    same = spec.class_names == model.class_names and spec.output_channels == _output_channels(config)
    norm = model.normalization
    own = norm.mode != "meanstd" or norm.mean is not None
    return InitWeights(dict(load_state_dict_file(weights)), None if own else spec.input.normalization, not same,
                       f"{spec.name} {spec.version} ({package.source})", tuple(spec.class_names))


def _head_keys(config: TrainConfig) -> set[str]:
    """The parameters whose shapes depend on the number of output channels (the head)."""
    arch = config.model.architecture
    shapes = []
    with torch.random.fork_rng(devices=[]):  # leave the run's seeded RNG untouched
        for out in (2, 3):
            net = build_architecture(arch.name, spatial_dims=config.model.spatial_dims,
                                     in_channels=len(config.model.bands), out_channels=out, **arch.args)
            shapes.append({k: tuple(v.shape) for k, v in net.state_dict().items()})
    return {k for k in shapes[0] if shapes[0][k] != shapes[1].get(k)}


def apply_init(model: nn.Module, init: InitWeights, config: TrainConfig) -> str | None:
    """Copy ``init``'s weights into ``model`` in place (the head kept when ``init.reinit_head``).

    Returns the note said about a re-initialised head (also warned), else None.
    """
    head = _head_keys(config) if init.reinit_head else set()
    current = model.state_dict()
    missing = sorted(k for k in current if k not in head and k not in init.state)
    unexpected = sorted(k for k in init.state if k not in current and k not in head)
    wrong = sorted(k for k in current if k not in head and k in init.state
                   and tuple(init.state[k].shape) != tuple(current[k].shape))
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        raise ConfigError(f"init {config.init!r}: its weights do not fit the network ({len(missing)} missing, "
                          f"{len(unexpected)} unexpected, {len(wrong)} of another shape, e.g. {first!r}); "
                          "the package's weights must match its own model.yaml architecture")
    loaded = {k: (current[k] if k in head else init.state[k].to(current[k].dtype)) for k in current}
    model.load_state_dict(loaded, strict=True)
    if not head:
        return None
    note = (f"init {init.source}: its classes {list(init.classes)} (or output) differ from the config's "
            f"{list(config.model.class_names)}: the output head ({', '.join(sorted(head))}) is re-initialised, every "
            "other layer is loaded")
    warnings.warn(note, SegflowWarning, stacklevel=2)
    return note
