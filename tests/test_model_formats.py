"""Model package weight formats (safetensors, .pt state dicts, TorchScript, ONNX) and package archives."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import tarfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from segflow.errors import ModelError
from segflow.models import load_module, resolve_package
from segflow.models.arch import build_architecture
from segflow.models.formats import OnnxModule, pickle_globals
from segflow.tile_infer import TileInferParams, tile_infer

from .helpers import random_image, spec_dict, write_geotiff

UNET_ARGS: dict[str, Any] = {"channels": [4, 8]}
BANDS, CLASSES, TILE = 3, 3, 32


def unet(seed: int = 0, args: dict[str, Any] | None = None) -> nn.Module:
    """A tiny 2D U-Net with random parameters and batch-norm statistics, in eval mode."""
    net = build_architecture("unet", spatial_dims=2, in_channels=BANDS, out_channels=CLASSES, **(args or UNET_ARGS))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                values = torch.rand(t.shape, generator=gen) + 0.5 if "running_var" in name else \
                    torch.randn(t.shape, generator=gen) * 0.3
                t.copy_(values)
    return net.eval()


def write_package(root: Path, weights: str, save: Callable[[Path], object], **extra: Any) -> Path:
    """A package folder with ``model.yaml`` (tiny U-Net contract) and the weights written by ``save``."""
    root.mkdir(parents=True, exist_ok=True)
    extra.setdefault("architecture", {"name": "unet", "args": UNET_ARGS})
    spec = spec_dict(bands=BANDS, classes=CLASSES, tile=TILE, weights=weights, **extra)
    (root / "model.yaml").write_text(yaml.safe_dump(spec))
    save(root / weights)
    return root


def export_onnx(net: nn.Module, path: Path, example: torch.Tensor | None = None) -> None:
    axes = {0: "n", 2: "y", 3: "x"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, BANDS, TILE, TILE) if example is None else example,), str(path),
                          opset_version=17, dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": axes, "logits": axes})


def savers(net: nn.Module) -> dict[str, tuple[str, Callable[[Path], None]]]:
    state = net.state_dict()

    def trace(p: Path) -> None:
        torch.jit.trace(net, torch.zeros(1, BANDS, TILE, TILE), check_trace=False).save(str(p))

    return {
        "safetensors": ("model.safetensors", lambda p: save_file(dict(state), str(p))),
        "pt": ("model.pt", lambda p: torch.save(state, p)),
        "pth-checkpoint": ("model.pth", lambda p: torch.save({"state_dict": state, "epoch": 7}, p)),
        "pt-model-key": ("weights.pt", lambda p: torch.save({"model": state, "optimizer": {"lr": 0.1}}, p)),
        "torchscript": ("model.ts", trace),
        "onnx": ("model.onnx", lambda p: export_onnx(net, p)),
    }


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return unet()


@pytest.mark.parametrize("kind", ["safetensors", "pt", "pth-checkpoint", "pt-model-key", "torchscript", "onnx"])
def test_every_format_gives_the_same_outputs(kind: str, net: nn.Module, tmp_path: Path) -> None:
    weights, save = savers(net)[kind]
    pkg = write_package(tmp_path / kind, weights, save)
    module = load_module(resolve_package(pkg))
    x = torch.randn(2, BANDS, 27, 41, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = net(x)
        got = module.to("cpu").eval()(x)
    assert isinstance(got, torch.Tensor) and got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_onnx_module_acts_like_a_module(net: nn.Module, tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "o", "model.onnx", lambda p: export_onnx(net, p))
    module = load_module(resolve_package(pkg))
    assert isinstance(module, OnnxModule)
    assert module.to(torch.device("cpu")) is module and module.eval() is module
    assert module.providers[0] == "CPUExecutionProvider" or "CUDAExecutionProvider" in module.providers
    out = module(torch.zeros(1, BANDS, 8, 8))
    assert out.device.type == "cpu" and out.shape == (1, CLASSES, 8, 8)


def test_onnx_input_checks(tmp_path: Path) -> None:
    two_bands = build_architecture("unet", spatial_dims=2, in_channels=2, out_channels=CLASSES, channels=(4, 8))
    pkg = write_package(tmp_path / "c", "model.onnx",
                        lambda p: export_onnx(two_bands.eval(), p, torch.zeros(1, 2, TILE, TILE)))
    with pytest.raises(ModelError, match=r"takes 2 input channels but model\.yaml declares 3 bands"):
        load_module(resolve_package(pkg))

    class TwoInputs(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a + b

    def save_two(p: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(TwoInputs(), (torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)), str(p),
                              opset_version=17, dynamo=False, input_names=["a", "b"])

    pkg2 = write_package(tmp_path / "two", "model.onnx", save_two)
    with pytest.raises(ModelError, match=r"has 2 inputs \(a, b\).*exactly one tensor"):
        load_module(resolve_package(pkg2))
    pkg3 = write_package(tmp_path / "junk", "model.onnx", lambda p: p.write_bytes(b"not onnx at all"))
    with pytest.raises(ModelError, match="is not a loadable ONNX model"):
        load_module(resolve_package(pkg3))


def test_onnx_with_static_spatial_axes_needs_a_fixed_tile(net: nn.Module, tmp_path: Path) -> None:
    def static(p: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.zeros(1, BANDS, TILE, TILE),), str(p), opset_version=17, dynamo=False,
                              input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "n"}})

    loose = write_package(tmp_path / "loose", "model.onnx", static)
    with pytest.raises(ModelError, match=rf"only takes windows of \({TILE}, {TILE}\) pixels.*fixed_tile: true"):
        load_module(resolve_package(loose))
    fixed = write_package(tmp_path / "fixed", "model.onnx", static, fixed_tile=True)
    out = load_module(resolve_package(fixed))(torch.zeros(2, BANDS, TILE, TILE))
    assert out.shape == (2, CLASSES, TILE, TILE)


class Payload:
    """Unpickling this runs ``open(marker, "w")``: the file appears if the pickle is ever executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


class SystemPayload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("container", ["torch.save", "pickle.dump", "in-state-dict"])
def test_pickle_with_code_is_refused_and_never_runs(container: str, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"

    def save(p: Path) -> None:
        if container == "torch.save":
            torch.save(Payload(marker), p)
        elif container == "pickle.dump":
            p.write_bytes(pickle.dumps(Payload(marker)))
        else:
            torch.save({"state_dict": {"w": torch.zeros(2)}, "hook": Payload(marker)}, p)

    pkg = write_package(tmp_path / "evil", "model.pt", save)
    with pytest.raises(ModelError) as info:
        load_module(resolve_package(pkg))
    message = str(info.value)
    assert message.startswith("refusing to load model.pt: it is a pickled checkpoint that carries code (")
    assert "io.open" in message and "save a state dict (torch.save(model.state_dict()))" in message
    assert "\n" not in message
    assert not marker.exists(), "the payload must never run"


def test_whole_pickled_module_is_refused_with_its_class_name(net: nn.Module, tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "whole", "model.pt", lambda p: torch.save(net, p))
    with pytest.raises(ModelError, match=r"model\.pt: .*carries code \(segflow\.models\.arch\.unet\.UNet, "):
        load_module(resolve_package(pkg))
    ts = write_package(tmp_path / "ts", "model.pt",
                       lambda p: torch.jit.trace(net, torch.zeros(1, BANDS, 8, 8), check_trace=False).save(str(p)))
    with pytest.raises(ModelError, match=r"is a TorchScript archive.*rename it to model\.ts"):
        load_module(resolve_package(ts))


def test_pickle_globals_is_static() -> None:
    assert "posix.system" in pickle_globals(pickle.dumps(SystemPayload(), protocol=4)) or \
        "nt.system" in pickle_globals(pickle.dumps(SystemPayload(), protocol=4))
    assert pickle_globals(pickle.dumps(SystemPayload(), protocol=0))


def test_weights_that_do_not_fit_the_architecture_are_named(net: nn.Module, tmp_path: Path) -> None:
    state = net.state_dict()
    wider = {"name": "unet", "args": {"channels": [4, 16]}}
    pkg = write_package(tmp_path / "w", "model.safetensors", lambda p: save_file(dict(state), str(p)),
                        architecture=wider)
    with pytest.raises(ModelError, match=r"do not match architecture 'unet' with args \{'channels': \[4, 16\]\}: "
                                         r".*shape mismatch .* in file vs .* in model"):
        load_module(resolve_package(pkg))
    partial = {k: v for k, v in state.items() if not k.startswith("head")}
    partial["extra.weight"] = torch.zeros(1)
    pkg2 = write_package(tmp_path / "m", "model.safetensors", lambda p: save_file(partial, str(p)))
    with pytest.raises(ModelError, match=r"missing keys head\.bias, head\.weight; unexpected keys extra\.weight"):
        load_module(resolve_package(pkg2))
    prefixed = {f"module.{k}": v for k, v in state.items()}
    pkg3 = write_package(tmp_path / "dp", "model.pt", lambda p: torch.save(prefixed, p))
    assert isinstance(load_module(resolve_package(pkg3)), nn.Module), "DataParallel 'module.' prefix accepted"


def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_bad_weights_files_are_refused(net: nn.Module, tmp_path: Path) -> None:
    state = dict(net.state_dict())
    no_arch = write_package(tmp_path / "a", "model.safetensors", lambda p: save_file(state, str(p)), architecture=None)
    spec = yaml.safe_load((no_arch / "model.yaml").read_text())
    spec.pop("architecture")
    (no_arch / "model.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ModelError, match=r"hold only parameters but model\.yaml declares no architecture"):
        load_module(resolve_package(no_arch))
    h5 = write_package(tmp_path / "h5", "model.h5", lambda p: p.write_bytes(b"\x89HDF"))
    with pytest.raises(ModelError, match=r"unsupported format; use one of \.safetensors, \.pt, \.pth, \.ts, \.onnx"):
        load_module(resolve_package(h5))
    broken = write_package(tmp_path / "b", "model.safetensors", lambda p: p.write_bytes(b"garbage"))
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_module(resolve_package(broken))
    garbage = write_package(tmp_path / "g", "model.pt", lambda p: p.write_bytes(b"garbage bytes"))
    with pytest.raises(ModelError, match=r"refusing to load model\.pt: it is not a plain state dict of tensors"):
        load_module(resolve_package(garbage))
    cut = write_package(tmp_path / "cut", "model.pt", lambda p: p.write_bytes(_saved(state)[:300]))
    with pytest.raises(ModelError, match=r"cannot read model\.pt as a PyTorch state dict \(.*\); the file is corrupt"):
        load_module(resolve_package(cut))
    odd = write_package(tmp_path / "odd", "model.pt", lambda p: torch.save({"epoch": 3, "lr": 0.1}, p))
    with pytest.raises(ModelError, match=r"holds a dict with keys \['epoch', 'lr'\] but no state dict"):
        load_module(resolve_package(odd))
    outside = write_package(tmp_path / "out", "model.pt", lambda p: torch.save(state, p))
    spec = yaml.safe_load((outside / "model.yaml").read_text())
    spec["weights"] = "../out/model.pt"
    (outside / "model.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ModelError, match="outside its package"):
        resolve_package(outside)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_geotiff(tmp_path_factory.mktemp("fmt") / "scene.tif", random_image((BANDS, 70, 90), seed=5))


def test_tile_infer_with_safetensors_and_onnx_packages(net: nn.Module, scene: Path, tmp_path: Path) -> None:
    st = write_package(tmp_path / "st", "model.safetensors", lambda p: save_file(dict(net.state_dict()), str(p)))
    ox = write_package(tmp_path / "ox", "model.onnx", lambda p: export_onnx(net, p))
    labels = {}
    for name, pkg in (("st", st), ("ox", ox)):
        result = tile_infer(scene, tmp_path / f"out-{name}", TileInferParams(model=str(pkg), chunk=48, batch=4))
        assert result.windows_evaluated > 0
        with rasterio.open(tmp_path / f"out-{name}" / "labels.tif") as ds:
            labels[name] = ds.read(1)
    assert labels["st"].shape == (70, 90) and (labels["st"] != 255).all()
    assert np.mean(labels["st"] == labels["ox"]) > 0.999


# --------------------------------------------------------------------------- archives


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SEGFLOW_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "packages"


@pytest.fixture(scope="module")
def st_package(tmp_path_factory: pytest.TempPathFactory, net: nn.Module) -> Path:
    return write_package(tmp_path_factory.mktemp("pkg") / "unet-pkg", "model.safetensors",
                         lambda p: save_file(dict(net.state_dict()), str(p)))


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz", ".tgz", ".tar"])
@pytest.mark.parametrize("nested", [True, False])
def test_package_archives_resolve_and_load(suffix: str, nested: bool, st_package: Path, net: nn.Module,
                                           cache: Path, tmp_path: Path) -> None:
    archive = tmp_path / f"pkg{suffix}"
    prefix = "unet-pkg/" if nested else ""
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for f in st_package.iterdir():
                zf.write(f, prefix + f.name)
    else:
        with tarfile.open(archive, "w:gz" if suffix != ".tar" else "w") as tar:
            for f in st_package.iterdir():
                tar.add(f, prefix + f.name)
    package = resolve_package(archive)
    assert package.archive == archive.resolve() and package.archive_sha256 and len(package.archive_sha256) == 64
    assert package.root.is_relative_to(cache) and package.source == str(archive.resolve())
    assert package.weights_sha256 == resolve_package(st_package).weights_sha256
    record = package.provenance()
    assert record["archive_sha256"] == package.archive_sha256 and record["weights_sha256"] == package.weights_sha256
    x = torch.randn(1, BANDS, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(load_module(package)(x), net(x), atol=1e-5, rtol=1e-5)
    again = resolve_package(archive)
    assert again.root == package.root, "unpacked once, then reused from the cache"
    assert [p.name for p in cache.iterdir()] == [package.archive_sha256], "no temporary folders left"


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("pkg/model.yaml")
        ok.size = 4
        tar.addfile(ok, io.BytesIO(b"x: 1"))
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 5) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = size if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(("member", "why"), [
    (_member("../evil"), "climbs out of the package"),
    (_member("pkg/../../evil"), "climbs out of the package"),
    (_member("/tmp/segflow-evil-abs"), "absolute path"),
    (_member("pkg/link", tarfile.SYMTYPE, "../../evil"), "link pointing outside"),
    (_member("pkg/abs-link", tarfile.SYMTYPE, "/etc/passwd"), "link to the absolute path"),
    (_member("pkg/hard", tarfile.LNKTYPE, "../evil"), "link pointing outside"),
    (_member("pkg/dev", tarfile.CHRTYPE), "device file"),
    (_member("pkg/fifo", tarfile.FIFOTYPE), "device file, FIFO"),
])
def test_malicious_tar_is_refused_and_writes_nothing_outside(member: tarfile.TarInfo, why: str, cache: Path,
                                                             tmp_path: Path) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    archive = _tar_with(work / "evil.tar.gz", member, b"evil!")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ModelError, match=f"refusing to unpack evil.tar.gz: member .*{why}"):
        resolve_package(archive)
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if not p.is_relative_to(cache))
    assert [p for p in after if p not in before and not str(p).startswith("cache")] == []
    assert not (tmp_path / "a" / "evil").exists() and not Path("/tmp/segflow-evil-abs").exists()
    assert not cache.exists() or list(cache.iterdir()) == [], "nothing reaches the cache"


def test_malicious_zip_and_non_packages_are_refused(cache: Path, tmp_path: Path) -> None:
    evil = tmp_path / "sub" / "evil.zip"
    evil.parent.mkdir()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("model.yaml", "x: 1")
        zf.writestr("../evil", "evil!")
    with pytest.raises(ModelError, match=r"refusing to unpack evil.zip: member '\.\./evil' climbs out"):
        resolve_package(evil)
    assert not (tmp_path / "evil").exists()
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("a/readme.txt", "hi")
        zf.writestr("b/readme.txt", "hi")
    with pytest.raises(ModelError, match=r"not a model package archive: expected model\.yaml at its root"):
        resolve_package(empty)
    truncated = tmp_path / "cut.tar.gz"
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        info = tarfile.TarInfo("model.yaml")
        info.size = 5000
        tar.addfile(info, io.BytesIO(os.urandom(5000)))
    truncated.write_bytes(data.getvalue()[:200])
    with pytest.raises(ModelError, match="cannot unpack"):
        resolve_package(truncated)
    assert not cache.exists() or list(cache.iterdir()) == []
    shutil.rmtree(tmp_path / "sub")


def test_links_through_links_cannot_escape(cache: Path, tmp_path: Path) -> None:
    archive = tmp_path / "chain.tar"
    with tarfile.open(archive, "w") as tar:
        ok = tarfile.TarInfo("pkg/model.yaml")
        ok.size = 4
        tar.addfile(ok, io.BytesIO(b"x: 1"))
        for name, target in (("pkg/sub", "."), ("pkg/sub/x", "../../escape")):  # lexically inside, really not
            tar.addfile(_member(name, tarfile.SYMTYPE, target))
        evil = _member("pkg/sub/x/evil", size=3)
        tar.addfile(evil, io.BytesIO(b"bad"))
    with pytest.raises(ModelError, match=r"refusing to unpack chain\.tar: member 'pkg/sub/x' is unsafe"):
        resolve_package(archive)
    assert not (cache / "escape").exists() and list(cache.iterdir()) == []


def test_zip_symlinks_are_refused(cache: Path, tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("model.yaml", "x: 1")
        link = zipfile.ZipInfo("model.safetensors")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(ModelError, match=r"member 'model\.safetensors' is a symbolic link"):
        resolve_package(archive)
