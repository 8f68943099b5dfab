"""The spectral-index models follow their stated rule exactly: strict thresholds, undefined 0/0 fires nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from segflow.errors import ConfigError, ModelError
from segflow.models import resolve_package
from segflow.models.loading import load_module
from segflow.models.spectral import build_spectral_index
from segflow.tile_infer import TileInferParams, tile_infer

from .helpers import write_geotiff

BACKGROUND, WATER, VEGETATION = 0, 1, 2


def landcover(green: np.ndarray, red: np.ndarray, nir: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Labels of the built-in spectral-landcover module (band order green, red, nir) for 1-D pixel arrays."""
    module = load_module(resolve_package("spectral-landcover"))
    x = torch.from_numpy(np.stack([green, red, nir]).astype(np.float32) * np.float32(scale))
    with torch.no_grad():
        scores = module(x[None, :, None, :])[0, :, 0, :].numpy()
    assert scores.dtype == np.float32 and set(np.unique(scores)) <= {0.0, 1.0}
    np.testing.assert_array_equal(scores.sum(0), 1.0)  # one-hot: the blend of any windows keeps the class
    return scores.argmax(0)


def reference(green: np.ndarray, red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """The rule of model.yaml in exact integer arithmetic: water where NDWI > 0, else vegetation where NDVI > 2/5."""
    g, r, n = (v.astype(np.int64) for v in (green, red, nir))
    water = (g + n != 0) & ((g - n) * np.sign(g + n) > 0)
    vegetation = (n + r != 0) & (5 * (n - r) * np.sign(n + r) > 2 * (n + r) * np.sign(n + r))
    return np.where(water, WATER, np.where(vegetation, VEGETATION, BACKGROUND))


CASES = {  # name: (green, red, nir, class)
    "NDWI exactly 0, NDVI high": (1000, 100, 1000, VEGETATION),
    "NDWI exactly 0, NDVI low": (1000, 900, 1000, BACKGROUND),
    "all zero (0/0)": (0, 0, 0, BACKGROUND),
    "NDWI undefined, red only": (0, 500, 0, BACKGROUND),
    "NDVI undefined, green only": (500, 0, 0, WATER),
    "NDWI tiny positive": (65535, 0, 65534, WATER),
    "NDWI tiny negative, NDVI at threshold": (69, 30, 70, BACKGROUND),
    "NDVI exactly 0.4": (10, 30, 70, BACKGROUND),
    "NDVI exactly 0.4, large values": (10, 28086, 65534, BACKGROUND),
    "NDVI just above 0.4": (10, 28086, 65535, VEGETATION),
    "NDVI just below 0.4": (10, 28087, 65534, BACKGROUND),
}


@pytest.mark.parametrize("name", list(CASES))
def test_ties_and_undefined_indices_follow_the_stated_rule(name: str) -> None:
    green, red, nir, expected = CASES[name]
    got = landcover(np.array([green]), np.array([red]), np.array([nir]))
    assert reference(np.array([green]), np.array([red]), np.array([nir]))[0] == expected, "the case itself is wrong"
    assert got[0] == expected, f"{name}: got class {got[0]}, the rule says {expected}"


def test_every_16_bit_pixel_matches_exact_arithmetic_and_scaling_does_not_matter() -> None:
    rng = np.random.default_rng(8)
    k = rng.integers(0, 65535 // 7 + 1, 20000)
    ties = (np.full_like(k, 100), 3 * k, 7 * k)  # NDVI exactly 0.4 (and 0/0 at k = 0)
    near = (rng.integers(0, 100, 20000), 3 * k, np.minimum(7 * k + rng.integers(-1, 2, 20000), 65535))
    g = rng.integers(0, 65536, 50000)
    water_ties = (g, rng.integers(0, 65536, 50000), g + rng.integers(-1, 2, 50000).clip(-g, 65535 - g))
    uniform = tuple(rng.integers(0, 65536, 50000) for _ in range(3))
    small = tuple(rng.integers(0, 4, 5000) for _ in range(3))  # many zeros and exact ties
    green, red, nir = (np.concatenate(parts) for parts in zip(ties, near, water_ties, uniform, small, strict=True))
    expected = reference(green, red, nir)
    assert {BACKGROUND, WATER, VEGETATION} <= set(np.unique(expected))
    np.testing.assert_array_equal(landcover(green, red, nir), expected)
    # reflectance-like scaling by a power of two is exact in float32: the classes must not move
    np.testing.assert_array_equal(landcover(green, red, nir, scale=2.0**-16), expected)


def test_soft_threshold_arguments_are_refused_with_a_fix() -> None:
    with pytest.raises(ConfigError, match=r"takes only 'rules', got sharpness .*remove it"):
        build_spectral_index(["green", "nir"], [["ndwi", 0.0]], sharpness=20.0)
    with pytest.raises(ConfigError, match="unknown spectral index 'ndbi'"):
        build_spectral_index(["green", "nir"], [["ndbi", 0.0]])
    with pytest.raises(ConfigError, match="needs bands"):
        build_spectral_index(["green", "nir"], [["ndvi", 0.4]])


def test_the_packages_state_the_rule_exactly(tmp_path: Path) -> None:
    description = " ".join(resolve_package("spectral-landcover").spec.description.split())
    for phrase in ("NDWI == 0 is not water", "> 0.4 (strictly)", "0/0", "is background"):
        assert phrase in description, phrase
    source = resolve_package("ndwi-water").root / "model.yaml"
    old = source.read_text(encoding="utf-8")
    assert "sharpness" not in old
    (tmp_path / "soft").mkdir()
    (tmp_path / "soft" / "model.yaml").write_text(
        old.replace("args: {rules: [[ndwi, 0.0]]}", "args: {rules: [[ndwi, 0.0]], sharpness: 20.0}"), encoding="utf-8")
    with pytest.raises(ModelError, match=r"cannot build architecture 'spectral-index'.*sharpness"):
        load_module(resolve_package(str(tmp_path / "soft")))


def test_zero_fill_without_a_nodata_tag_is_background_and_with_a_tag_nodata(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    image = np.zeros((4, 64, 96), dtype=np.uint16)
    image[1] = rng.integers(2000, 3000, (64, 96))  # green
    image[2] = rng.integers(100, 200, (64, 96))  # red
    image[3] = rng.integers(100, 200, (64, 96))  # nir: dark, so water
    image[:, :, :32] = 0  # fill
    image[1, :, 32:48] = image[3, :, 32:48] = 1500  # NDWI exactly 0, NDVI high: vegetation
    expected = np.full((64, 96), WATER, dtype=np.uint8)
    expected[:, :32] = BACKGROUND
    expected[:, 32:48] = VEGETATION
    plain = write_geotiff(tmp_path / "plain.tif", image)
    tile_infer(plain, tmp_path / "a", TileInferParams(model="spectral-landcover", tile=32, overlap=0.5))
    with rasterio.open(tmp_path / "a" / "labels.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), expected)
    tagged = write_geotiff(tmp_path / "tagged.tif", image, nodata=0)
    tile_infer(tagged, tmp_path / "b", TileInferParams(model="spectral-landcover", tile=32, overlap=0.5))
    expected[:, :32] = 255
    with rasterio.open(tmp_path / "b" / "labels.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), expected)
