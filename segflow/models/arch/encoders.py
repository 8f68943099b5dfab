"""Encoders in torchvision's layout: ResNet-18/34/50 and VGG-11 trunks as 2D feature extractors.

Axis order ``(N, C, Y, X)``. Each trunk's ``state_dict()`` has exactly the keys and shapes of
``torchvision.models.resnet18/34/50().state_dict()`` or ``vgg11().state_dict()`` without the
classifier (``fc.*``, ``classifier.*``): ``conv1.weight``, ``bn1.running_mean``,
``layer1.0.conv1.weight``, ..., ``layer4.2.bn3.running_var``, ``features.0.weight``, ... The layer
structure follows torchvision's ``torchvision/models/resnet.py`` (v1.5 bottleneck: the stride is on
the 3x3 conv; ``replace_stride_with_dilation`` for output strides 16 and 8) and ``vgg.py``
(configuration "A", no batch norm), so torchvision's ImageNet weights, saved as a state-dict file,
load into them (:func:`~segflow.models.arch.encoder_weights.load_encoder_weights`). Torchvision
itself is not needed (nor importable with the CPU torch here).

``forward`` returns the feature maps at the end of each stage, shallowest first, at the
reductions (input size / feature size) in :attr:`TorchvisionEncoder.reductions`:

* ResNet: ``(2, 4, 8, 16, 32)``: the stem's ReLU (64 channels), then ``layer1`` .. ``layer4``;
* VGG-11: ``(1, 2, 4, 8, 16, 32)``: the ReLU before each max-pool, then the last max-pool.

An ``output_stride`` of 16 or 8 (DeepLabV3+) replaces the last strides by dilation, as
torchvision's ``replace_stride_with_dilation`` does for ResNets (VGG-11: the max-pools past the
output stride become identities and the convolutions after them are dilated); the parameter
shapes do not change. The trunks' normalisation is always BatchNorm, as in torchvision (its
running statistics are part of the pretrained weights).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from segflow.errors import ConfigError
from segflow.models.arch.options import check_choice

__all__ = [
    "BUILTIN",
    "ENCODER_NAMES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ResNetTrunk",
    "TorchvisionEncoder",
    "VGG11Trunk",
    "build_encoder",
    "check_encoder",
]

#: The ``encoder`` option's value for an architecture's own encoder (its default).
BUILTIN = "builtin"
ENCODER_NAMES = ("resnet18", "resnet34", "resnet50", "vgg11")
#: torchvision's ImageNet normalisation of RGB values in [0, 1]: (x - mean) / std, channels R, G, B.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_OUTPUT_STRIDES = (32, 16, 8)


class TorchvisionEncoder(nn.Module):
    """Base of the trunks: ``forward(x)`` gives the stage features, shallowest first.

    ``reductions[i]`` is the input size divided by feature ``i``'s size (for input sizes that are
    multiples of 32), ``channels[i]`` its channel count; ``first_conv`` the state-dict key of the
    first convolution's weight ``(64, in_channels, k, k)``; ``classifier_prefixes`` the keys of
    torchvision's classifier, which the trunk does not have.
    """

    name: str
    reductions: tuple[int, ...]
    channels: tuple[int, ...]
    first_conv: ClassVar[str]
    classifier_prefixes: ClassVar[tuple[str, ...]]

    def __init__(self, name: str, in_channels: int) -> None:
        super().__init__()
        self.name = name
        self.in_channels = in_channels

    def _init_weights(self) -> None:
        """torchvision's initialisation: Kaiming normal (fan_out, ReLU) convs, zero biases, unit BatchNorm."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock`` (two 3x3 convs); dilation allowed (torchvision refuses it)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (1x1, strided/dilated 3x3, 1x1 to 4 x planes)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_RESNETS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}
# torchvision's replace_stride_with_dilation for layer2, layer3, layer4
_DILATE = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}


class ResNetTrunk(TorchvisionEncoder):
    """ResNet-18/34/50 without ``avgpool``/``fc``: features of the stem and of ``layer1`` .. ``layer4``.

    ``base_width`` (64 in the paper and torchvision) sets the stem's channels and ``layer1``'s planes,
    doubled at each later layer; only 64 takes torchvision's ImageNet weights, a smaller one makes a slim
    trunk (16: about 1/16 of the parameters) for small models."""

    first_conv = "conv1.weight"
    classifier_prefixes = ("fc.",)

    def __init__(self, name: str, in_channels: int, output_stride: int = 32, base_width: int = 64) -> None:
        super().__init__(name, in_channels)
        if isinstance(base_width, bool) or not isinstance(base_width, int) or base_width < 4:
            raise ConfigError(f"base_width={base_width!r} is invalid for encoder {name!r}; use an int >= 4 (64 as "
                              "torchvision)")
        block, layers = _RESNETS[name]
        b = base_width
        self._inplanes, self._dilation = b, 1
        self.conv1 = nn.Conv2d(in_channels, b, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(b)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        dilate = _DILATE[output_stride]
        self.layer1 = self._make_layer(block, b, layers[0], 1, False)
        self.layer2 = self._make_layer(block, 2 * b, layers[1], 2, dilate[0])
        self.layer3 = self._make_layer(block, 4 * b, layers[2], 2, dilate[1])
        self.layer4 = self._make_layer(block, 8 * b, layers[3], 2, dilate[2])
        width = b * block.expansion
        self.channels = (b, width, 2 * width, 4 * width, 8 * width)
        self.reductions = tuple(min(r, output_stride) for r in (2, 4, 8, 16, 32))
        self._init_weights()

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, count: int, stride: int,
                    dilate: bool) -> nn.Sequential:
        """torchvision's ``ResNet._make_layer``: the first block strides (or keeps the previous dilation)."""
        previous = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self._inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self._inplanes, planes, stride, previous, downsample)]
        self._inplanes = planes * block.expansion
        layers += [block(self._inplanes, planes, 1, self._dilation, None) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features ``(N, channels[i], Y / reductions[i], X / reductions[i])``, shallowest first."""
        stem = self.relu(self.bn1(self.conv1(x)))
        f4 = self.layer1(self.maxpool(stem))
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        return [stem, f4, f8, f16, self.layer4(f16)]


_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")  # torchvision's cfgs["A"]


class VGG11Trunk(TorchvisionEncoder):
    """VGG-11 ``features`` (configuration "A", no batch norm): the ReLU before each max-pool, and the last pool."""

    first_conv = "features.0.weight"
    classifier_prefixes = ("classifier.",)

    def __init__(self, name: str, in_channels: int, output_stride: int = 32) -> None:
        super().__init__(name, in_channels)
        layers: list[nn.Module] = []
        cin, reduction, dilation = in_channels, 1, 1
        taps, channels, reductions = [], [], []
        for value in _VGG11:
            if value == "M":
                taps.append(len(layers) - 1)  # the ReLU before the pool
                channels.append(cin)
                reductions.append(reduction)
                if reduction < output_stride:
                    layers.append(nn.MaxPool2d(2, stride=2))
                    reduction *= 2
                else:  # past the output stride: no pooling, the convs after it dilated instead
                    layers.append(nn.Identity())
                    dilation *= 2
                continue
            assert isinstance(value, int)
            layers += [nn.Conv2d(cin, value, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
            cin = value
        self.features = nn.Sequential(*layers)
        self._taps = (*taps, len(layers) - 1)
        self.channels = (*channels, cin)
        self.reductions = (*reductions, reduction)
        self._init_weights()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features ``(N, channels[i], Y / reductions[i], X / reductions[i])``, shallowest first."""
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self._taps:
                out.append(x)
        return out


def build_encoder(name: str, in_channels: int, *, output_stride: int = 32, base_width: int = 64
                  ) -> TorchvisionEncoder:
    """Trunk ``name`` (one of :data:`ENCODER_NAMES`) for ``in_channels`` input bands, randomly initialised
    as torchvision does; ``output_stride`` 32, 16 or 8; ``base_width`` for ResNets only (see ResNetTrunk)."""
    if output_stride not in _OUTPUT_STRIDES:
        raise ConfigError(f"output_stride={output_stride!r} is invalid for encoder {name!r}; use 32, 16 or 8")
    if name in _RESNETS:
        return ResNetTrunk(name, in_channels, output_stride, base_width)
    if base_width != 64:
        raise ConfigError(f"base_width is for ResNet encoders; {name!r} has torchvision's widths")
    if name == "vgg11":
        return VGG11Trunk(name, in_channels, output_stride)
    raise ConfigError(f"unknown encoder {name!r}; known: {', '.join(ENCODER_NAMES)}")


def _plain(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value


def check_encoder(arch: str, options: dict[str, Any], defaults: dict[str, Any], spatial_dims: int,
                  builtin_only: tuple[str, ...], encoder_only: tuple[str, ...] = ()) -> str:
    """The validated ``encoder`` option of ``arch``: ``"builtin"`` or one of :data:`ENCODER_NAMES`.

    A torchvision encoder is 2D only; the options in ``builtin_only`` shape the built-in encoder and
    must keep their defaults with another encoder (and ``encoder_only`` ones theirs with the
    built-in), so that no option is silently ignored.
    """
    name = str(check_choice(arch, "encoder", options["encoder"], (BUILTIN, *ENCODER_NAMES)))
    if name != BUILTIN and spatial_dims != 2:
        raise ConfigError(f"{arch}: encoder={name!r} is a 2D network (torchvision's layout) and cannot be used with "
                          f"spatial_dims={spatial_dims}; use encoder={BUILTIN!r} for {spatial_dims}D")
    ignored = builtin_only if name != BUILTIN else encoder_only
    for key in ignored:
        if _plain(options[key]) != _plain(defaults[key]):
            which = f"the built-in encoder, which encoder={name!r} replaces" if name != BUILTIN else \
                f"the decoder of a torchvision encoder ({', '.join(ENCODER_NAMES)})"
            raise ConfigError(f"{arch}: {key}={options[key]!r} applies to {which}; remove {key} or set encoder "
                              f"to {'builtin' if name != BUILTIN else 'one of ' + ', '.join(ENCODER_NAMES)}")
    return name
