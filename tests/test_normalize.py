"""Normalisation: the predictor (torch, on the device) and training (numpy) do the same arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from segflow.models.package import Normalization
from segflow.normalize import normalize_array
from segflow.predict import InputNormalize

MODES = [
    Normalization(mode="none"),
    Normalization(mode="scale", scale=0.0001, offset=-0.5),
    Normalization(mode="meanstd", mean=[100.0, -20.0], std=[50.0, 4.0]),
    Normalization(mode="ct_window", center=40.0, width=400.0),
]


@pytest.mark.parametrize("norm", MODES, ids=lambda n: n.mode)
@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
def test_predictor_and_training_normalise_alike(norm: Normalization, spatial: tuple[int, ...]) -> None:
    x = np.random.default_rng(0).uniform(-1200, 3000, size=(2, *spatial)).astype(np.float32)
    ours = normalize_array(x, norm)
    theirs = InputNormalize(norm, 2, len(spatial))(torch.from_numpy(x)[None])[0].numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_ct_window_maps_the_window_to_unit_range() -> None:
    norm = Normalization(mode="ct_window", center=40.0, width=400.0)
    hu = np.array([[[-1000.0, -160.0, 40.0, 240.0, 3000.0]]], dtype=np.float32)
    np.testing.assert_allclose(normalize_array(hu, norm), [[[0.0, 0.0, 0.5, 1.0, 1.0]]], atol=1e-6)


@pytest.mark.parametrize(("fields", "message"), [
    ({"mode": "ct_window", "center": 40.0}, "needs 'center' and 'width'"),
    ({"mode": "ct_window", "center": 40.0, "width": 0.0}, "width must be > 0"),
    ({"mode": "meanstd", "mean": [1.0]}, "needs both 'mean' and 'std'"),
])
def test_bad_normalisation_is_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Normalization(**fields)


@pytest.mark.parametrize("norm", MODES, ids=lambda n: n.mode)
@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8, np.float32])
def test_raw_integer_bands_become_float32_inputs(norm: Normalization, dtype: type) -> None:
    """Raw sensor values (uint16 reflectance, int16 HU) give float32 network inputs in every mode, equal to the
    arithmetic done in float64 to float32 precision."""
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(np.float32)
    low, high = max(float(info.min), -3000.0), min(float(info.max), 10000.0)
    x = np.random.default_rng(1).uniform(low, high, size=(2, 7, 9)).astype(dtype)
    out = normalize_array(x, norm)
    assert out.dtype == np.float32 and out.shape == x.shape
    wide = x.astype(np.float64)
    if norm.mode == "meanstd":
        expected = (wide - np.array(norm.mean)[:, None, None]) / np.array(norm.std)[:, None, None]
    elif norm.mode == "scale":
        expected = wide * norm.scale + norm.offset
    elif norm.mode == "ct_window":
        lo = norm.center - norm.width / 2
        expected = (np.clip(wide, lo, lo + norm.width) - lo) / norm.width
    else:
        expected = wide
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_a_mode_alone_in_model_yaml_is_that_mode() -> None:
    """``normalization: none`` in model.yaml means ``{mode: none}``; a mode that needs values says which."""
    from segflow.models.package import ModelSpec

    base = {"name": "x", "spatial_dims": 2, "weights": "m.ts", "tile": 64, "classes": [{"name": "a"}, {"name": "b"}]}

    def spec(norm: object) -> ModelSpec:
        bands = [{"name": "r", "index": 1}]
        return ModelSpec.model_validate({**base, "input": {"bands": bands, "normalization": norm}})

    assert spec("none").input.normalization == Normalization(mode="none")
    with pytest.raises(ValidationError, match="needs both 'mean' and 'std'"):
        spec("meanstd")
