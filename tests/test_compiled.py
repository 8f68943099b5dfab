"""--compile: torch.compile of eager networks gives the probabilities of the usual path, padded to one shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segflow.compiled import can_compile, padded
from segflow.predict import Predictor

from .helpers import RandomConvNet, make_spec


def test_padded_appends_zero_windows_and_keeps_the_memory_order() -> None:
    x = torch.rand(3, 2, 5, 5).contiguous(memory_format=torch.channels_last)
    out = padded(x, 8)
    assert out.shape == (8, 2, 5, 5) and torch.equal(out[:3], x) and not out[3:].any()
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert padded(x, 2) is x


def test_only_eager_networks_are_compiled() -> None:
    net = RandomConvNet(3, 3)
    assert can_compile(net)
    assert not can_compile(torch.jit.trace(net.eval(), torch.zeros(1, 3, 8, 8)))


@pytest.mark.slow
def test_a_compiled_network_gives_the_usual_probabilities_for_full_and_short_batches() -> None:
    spec = make_spec(bands=3, classes=3, tile=32)
    rng = np.random.default_rng(0)
    windows = rng.random((7, 3, 32, 32), dtype=np.float32) * 1000
    usual = Predictor(RandomConvNet(3, 3, seed=1), spec, device="cpu", batch_size=4)
    compiled = Predictor(RandomConvNet(3, 3, seed=1), spec, device="cpu", batch_size=4, compile=True)
    expected = usual(windows)
    got = compiled(windows)  # a batch of 4, then a short one of 3, padded to 4
    assert type(compiled.module).__name__ == "OptimizedModule" and compiled.pad_to == 4
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert compiled(windows[:1]).shape == (1, 3, 32, 32)


def test_a_network_that_fails_to_compile_runs_as_usual(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    spec = make_spec(bands=3, classes=3, tile=32)
    windows = np.random.default_rng(1).random((2, 3, 32, 32), dtype=np.float32)
    predictor = Predictor(RandomConvNet(3, 3, seed=2), spec, device="cpu", batch_size=4, compile=True)
    expected = Predictor(RandomConvNet(3, 3, seed=2), spec, device="cpu", batch_size=4)(windows)
    np.testing.assert_allclose(predictor(windows), expected, rtol=1e-4, atol=1e-5)
    assert predictor.pad_to == 0 and type(predictor.module).__name__ != "OptimizedModule"
