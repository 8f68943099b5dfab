"""Reduced precision: which precision a run gets, bf16 really running, and the labels it gives."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import segflow.precision as precision_module
from segflow.cli import main
from segflow.errors import ConfigError, DeviceError, ModelError, SegflowWarning
from segflow.models.package import load_spec, resolve_package
from segflow.precision import cpu_has_native_bf16, outputs_agree, precision_for, resolve_precision
from segflow.predict import Predictor
from segflow.tile_infer import TileInferParams, tile_infer

from .helpers import RandomConvNet, make_spec, make_ts_package, random_image, spec_dict, write_geotiff

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this CPU has native bf16 (PyTorch emulates it where it has not: slower, same numbers)."""
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)


def _devices(monkeypatch: pytest.MonkeyPatch, cpu_bf16: bool, cuda_bf16: bool) -> None:
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: cpu_bf16)
    monkeypatch.setattr(precision_module, "_cuda_has_bf16", lambda device: cuda_bf16)


BOTH = ["fp32", "bf16"]
ALL = ["fp32", "bf16", "fp16"]


@pytest.mark.parametrize(("device", "cpu_bf16", "cuda_bf16", "declared", "asked", "expected"), [
    # auto: the fastest declared precision the device supports; fp32 when nothing is declared
    (CPU, True, False, None, "auto", "fp32"),
    (CPU, True, False, BOTH, "auto", "bf16"),
    (CPU, False, False, BOTH, "auto", "fp32"),
    (CPU, True, False, ["fp32", "fp16"], "auto", "fp32"),
    (CPU, True, False, ["bf16"], "auto", "bf16"),
    (CPU, False, False, ["bf16"], "auto", "fp32"),
    (CUDA, False, True, None, "auto", "fp32"),
    (CUDA, False, True, ALL, "auto", "bf16"),
    (CUDA, False, False, ALL, "auto", "fp16"),
    (CUDA, False, False, BOTH, "auto", "fp32"),
    (CUDA, False, True, ["fp32", "fp16"], "auto", "fp16"),
    # explicit: what was asked, where the device has it
    (CPU, False, False, None, "fp32", "fp32"),
    (CPU, True, False, BOTH, "bf16", "bf16"),
    (CUDA, False, True, BOTH, "bf16", "bf16"),
    (CUDA, False, False, ALL, "fp16", "fp16"),
    (CUDA, False, True, ALL, "FP16", "fp16"),
    (CUDA, False, True, None, "fp32", "fp32"),
])
def test_resolution_table(monkeypatch: pytest.MonkeyPatch, device: torch.device, cpu_bf16: bool, cuda_bf16: bool,
                          declared: list[str] | None, asked: str, expected: str) -> None:
    _devices(monkeypatch, cpu_bf16, cuda_bf16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # declared or fp32: no warning
        assert resolve_precision(asked, device, declared) == expected


@pytest.mark.parametrize(("device", "cpu_bf16", "cuda_bf16", "asked", "needle"), [
    (CPU, False, False, "bf16", "needs a CPU with native bf16 (AVX512_BF16 or AMX-BF16"),
    (CPU, True, False, "fp16", "fp16 is for CUDA devices, not cpu; use --precision bf16"),
    (CUDA, False, False, "bf16", "native bf16 (compute capability 8.0 or newer), which cuda is not"),
])
def test_a_precision_the_device_lacks_is_refused(monkeypatch: pytest.MonkeyPatch, device: torch.device,
                                                 cpu_bf16: bool, cuda_bf16: bool, asked: str, needle: str) -> None:
    _devices(monkeypatch, cpu_bf16, cuda_bf16)
    with pytest.raises(DeviceError, match=r"^[^\n]*$") as caught:
        resolve_precision(asked, device, ALL)
    assert needle in str(caught.value)


def test_an_undeclared_precision_runs_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    _devices(monkeypatch, True, True)
    with pytest.warns(SegflowWarning, match=r"model 'm' is not validated for bf16 \(validated: fp32") as caught:
        assert resolve_precision("bf16", CPU, None, model="model 'm'") == "bf16"
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    with pytest.warns(SegflowWarning, match="not validated for fp16"):
        assert resolve_precision("fp16", CUDA, BOTH) == "fp16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", CPU, None, warn=False) == "bf16"


def test_names_and_a_device_resolved_elsewhere() -> None:
    with pytest.raises(ConfigError, match="unknown precision 'fp8'; use one of auto, fp32, bf16, fp16"):
        resolve_precision("fp8", CPU, None)
    assert resolve_precision("auto", None, BOTH) == "fp32"  # a remote cluster: its devices are not known here
    assert resolve_precision("bf16", None, BOTH) == "bf16"  # checked on the workers


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    assert cpu_has_native_bf16(frozenset({"avx512f", "avx512_bf16"}), "AVX512")
    assert cpu_has_native_bf16(frozenset({"amx_bf16", "amx_tile"}), "AVX512")
    assert not cpu_has_native_bf16(frozenset({"avx512f", "avx512_vnni", "avx512bw"}), "AVX512")
    assert not cpu_has_native_bf16(frozenset(), "DEFAULT")
    assert cpu_has_native_bf16(frozenset(), "AMX")  # where there is no /proc/cpuinfo
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert precision_module._cpuinfo_flags(cpuinfo) == {"fpu", "avx512f", "avx512_bf16", "amx_tile"}
    assert precision_module._cpuinfo_flags(tmp_path / "missing") == frozenset()


def test_an_onnx_network_runs_at_its_file_s_precision(native_bf16: None) -> None:
    spec = make_spec(weights="model.onnx", precisions=["fp32", "bf16"])
    assert precision_for("auto", CPU, spec) == "fp32"  # autocast cannot change what onnxruntime computes
    assert precision_for("fp32", CPU, spec) == "fp32"
    with pytest.raises(ConfigError, match="runs in onnxruntime at its ONNX file's own precision, which --precision "
                                          "bf16 cannot change; use --precision auto or fp32"):
        precision_for("bf16", CPU, spec)
    assert precision_for("auto", CPU, make_spec(precisions=["fp32", "bf16"])) == "bf16"  # TorchScript: autocast


def test_model_yaml_precisions_are_validated(tmp_path: Path) -> None:
    def spec_with(value: object) -> Path:
        path = tmp_path / "model.yaml"
        path.write_text(yaml.safe_dump(spec_dict(precisions=value)))
        return path

    assert load_spec(spec_with(["fp32", "bf16"])).precisions == ["fp32", "bf16"]
    assert load_spec(spec_with(None)).precisions is None
    for bad, needle in ((["fp32", "int8"], "precisions.1"), (["bf16", "bf16"], "at most once"),
                        ([], "precisions"), ("bf16", "precisions")):
        with pytest.raises(ModelError, match=needle):
            load_spec(spec_with(bad))


def test_the_trained_demo_models_declare_bf16_and_the_rule_based_ones_nothing(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Declared after benchmarks/bench_predictor.py measured >= 99.9 % label agreement with fp32."""
    for name in ("demo-unet-2d", "demo-unet-3d"):
        assert resolve_package(name).spec.precisions == ["fp32", "bf16"]
        assert main(["models", "show", name]) == 0
        assert "  precisions: fp32, bf16\n" in capsys.readouterr().out
    for name in ("spectral-landcover", "ct-tissue", "ndvi-vegetation", "ndwi-water"):
        assert resolve_package(name).spec.precisions is None
    assert main(["models", "show", "spectral-landcover"]) == 0
    assert "  precisions: fp32 (none declared)\n" in capsys.readouterr().out


def test_outputs_agree_to_the_precision_s_tolerance() -> None:
    ref = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 4
    assert outputs_agree(ref + 5e-5, ref, "fp32") and not outputs_agree(ref + 1e-2, ref, "fp32")
    bf16 = ref.bfloat16()  # rounding to 8 significant bits is within bf16's tolerance
    assert outputs_agree(bf16, ref, "bf16") and not outputs_agree(bf16, ref, "fp32")
    assert not outputs_agree(ref + 0.1 * ref.abs().max(), ref, "bf16")  # beyond 5 % of the range
    assert outputs_agree(ref + 0.01 * ref.abs().max(), ref, "bf16")  # within 5 % of the range, same labels
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(2, 1, 16, 16, generator=gen) * 4
    tied = torch.cat([base, base + 0.01 * torch.randn(2, 1, 16, 16, generator=gen).sign()], dim=1)
    swapped = tied[:, [1, 0]]  # every value within 0.02 of the reference, nearly every label the other class
    assert torch.allclose(swapped, tied, atol=0.05 * float(tied.abs().max()))
    assert not outputs_agree(swapped, tied, "bf16")


def _windows(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return random_image((n, 3, size, size), seed=seed).astype(np.float32)


def test_bf16_really_runs_in_bf16_and_agrees_with_fp32(native_bf16: None) -> None:
    net = RandomConvNet(3, 3, seed=3).eval()
    spec = make_spec(tile=32, precisions=["fp32", "bf16"])
    x = _windows(6, seed=4)
    seen: list[torch.dtype] = []
    hook = net.a.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    fp32 = Predictor(net, spec, device="cpu", batch_size=3, precision="fp32", optimize=False)
    eager = Predictor(net, spec, device="cpu", batch_size=3, precision="auto", optimize=False)
    assert (fp32.precision, eager.precision, eager.amp_dtype) == ("fp32", "bf16", torch.bfloat16)
    p32 = fp32(x)
    assert seen == [torch.float32] * 2
    seen.clear()
    p16 = eager(x)
    hook.remove()
    assert seen == [torch.bfloat16] * 2  # the first convolution computed in bf16
    assert p16.dtype == np.float32  # probabilities in float32
    np.testing.assert_allclose(p16.sum(1), 1.0, rtol=1e-5)
    agree = float((p16.argmax(1) == p32.argmax(1)).mean())
    assert 0.99 <= agree < 1.0  # close to fp32, and not fp32 itself
    assert np.abs(p16 - p32).max() > 1e-3


def test_the_optimised_cpu_network_is_traced_under_autocast_and_kept(native_bf16: None) -> None:
    net = RandomConvNet(3, 3, seed=3).eval()
    spec = make_spec(tile=32, precisions=["fp32", "bf16"])
    x = _windows(6, seed=4)
    eager = Predictor(net, spec, device="cpu", batch_size=3, optimize=False)(x)
    predictor = Predictor(net, spec, device="cpu", batch_size=3)
    fast = predictor(x)
    assert isinstance(predictor.module, torch.jit.ScriptModule)  # the check accepted it at bf16's tolerance
    assert predictor.memory_format == torch.channels_last
    with torch.inference_mode():  # frozen with bf16 weights: bf16 out even without autocast
        raw = predictor.module(torch.zeros(1, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    assert raw.dtype == torch.bfloat16
    assert float((fast.argmax(1) == eager.argmax(1)).mean()) >= 0.99
    np.testing.assert_allclose(fast, eager, atol=0.05)


def test_the_predictor_refuses_fp16_on_the_cpu_and_bf16_without_native_support(
        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(tile=16, precisions=ALL)
    with pytest.raises(DeviceError, match="fp16 is for CUDA devices"):
        Predictor(RandomConvNet(3, 3), spec, device="cpu", precision="fp16")
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(DeviceError, match="use --precision fp32"):
        Predictor(RandomConvNet(3, 3), spec, device="cpu", precision="bf16")
    assert Predictor(RandomConvNet(3, 3), spec, device="cpu").precision == "fp32"  # auto


def test_no_amp_is_fp32() -> None:
    assert TileInferParams(amp=False).asked_precision == "fp32"
    assert TileInferParams(precision="bf16").asked_precision == "bf16"
    TileInferParams(amp=False, precision="fp32").check()
    with pytest.raises(ConfigError, match="--no-amp means --precision fp32 but --precision bf16 was given"):
        TileInferParams(amp=False, precision="bf16").check()
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16, fp16, got 'half'"):
        TileInferParams(precision="half").check()


def _run_json(out: Path) -> Any:
    return json.loads((out / "run.json").read_text())


def test_the_resolved_precision_is_in_run_json_and_the_fingerprint(native_bf16: None, tmp_path: Path) -> None:
    pkg = make_ts_package(tmp_path / "pkg", tile=32, precisions=["fp32", "bf16"])
    scene = write_geotiff(tmp_path / "s.tif", random_image((3, 70, 60), seed=2))
    out = tmp_path / "out"
    auto = tile_infer(scene, out, TileInferParams(model=str(pkg), device="cpu", chunk=48))
    record = _run_json(out)
    assert record["effective"]["precision"] == "bf16"
    assert record["parameters"]["precision"] == "auto"
    assert auto.chunks_computed == 4
    again = tile_infer(scene, out, TileInferParams(model=str(pkg), device="cpu", chunk=48, precision="bf16"))
    assert again.chunks_computed == 0  # auto resolved to bf16: the same run, nothing recomputed
    fp32 = tile_infer(scene, out, TileInferParams(model=str(pkg), device="cpu", chunk=48, amp=False))
    assert fp32.chunks_computed == 4 and fp32.chunks_reused == 0  # another precision: recomputed
    record32 = _run_json(out)
    assert record32["effective"]["precision"] == "fp32"
    assert record32["run"]["fingerprint"] != record["run"]["fingerprint"]


def test_an_undeclared_precision_warns_once_per_run(native_bf16: None, tmp_path: Path) -> None:
    pkg = make_ts_package(tmp_path / "pkg", tile=32)  # declares no precisions
    scene = write_geotiff(tmp_path / "s.tif", random_image((3, 40, 40), seed=2))
    with pytest.warns(SegflowWarning) as caught:
        tile_infer(scene, tmp_path / "out", TileInferParams(model=str(pkg), device="cpu", precision="bf16"))
    assert [str(w.message) for w in caught if "not validated" in str(w.message)] == [
        "model 'test-net' is not validated for bf16 (validated: fp32, its model.yaml's precisions); its labels may "
        "differ from fp32's"]


def test_cli_precision_flags(tmp_path: Path) -> None:
    pkg = make_ts_package(tmp_path / "pkg", tile=32, precisions=["fp32", "bf16"])
    scene = write_geotiff(tmp_path / "s.tif", random_image((3, 40, 40), seed=2))

    def segflow(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "segflow", "run", "tile-infer", "-i", str(scene), "--model",
                               str(pkg), "--device", "cpu", *args], capture_output=True, text=True, timeout=300)

    refused = segflow("-o", str(tmp_path / "a"), "--precision", "fp16")
    assert refused.returncode == 5 and refused.stderr.strip().splitlines() == [
        "segflow: error: --precision fp16 is for CUDA devices, not cpu; use --precision bf16 (CPUs with native bf16) "
        "or fp32"]
    both = segflow("-o", str(tmp_path / "b"), "--precision", "bf16", "--no-amp")
    assert both.returncode == 2 and "--no-amp means --precision fp32" in both.stderr
    ok = segflow("-o", str(tmp_path / "c"), "--no-amp", "--quiet")
    assert ok.returncode == 0, ok.stderr
    assert _run_json(tmp_path / "c")["effective"]["precision"] == "fp32"
