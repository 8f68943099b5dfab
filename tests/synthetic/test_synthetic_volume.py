"""Tests of segflow.synthetic.volume: determinism, anatomy, intensities and argument checks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from segflow.errors import ConfigError
from segflow.synthetic.volume import CLASSES, HU, MIN_SIZE, synthesize_volume

ORGAN = CLASSES.index("organ")
LESION = CLASSES.index("lesion")


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    return synthesize_volume((40, 64, 64), seed=3)


def test_same_seed_same_volume_and_seeds_differ() -> None:
    a_image, a_truth = synthesize_volume(32, seed=7)
    b_image, b_truth = synthesize_volume(32, seed=7)
    c_image, c_truth = synthesize_volume(32, seed=8)
    assert np.array_equal(a_image, b_image) and np.array_equal(a_truth, b_truth)
    assert not np.array_equal(a_image, c_image)
    assert not np.array_equal(a_truth, c_truth)


def test_shapes_dtypes_and_axis_order(volume: tuple[np.ndarray, np.ndarray]) -> None:
    image, truth = volume
    assert image.shape == truth.shape == (40, 64, 64)
    assert image.dtype == np.int16 and truth.dtype == np.uint8
    assert set(np.unique(truth)) <= {0, 1, 2}
    cube_image, _ = synthesize_volume(MIN_SIZE, seed=0)
    assert cube_image.shape == (MIN_SIZE,) * 3


def test_anatomy_organ_and_lesions(volume: tuple[np.ndarray, np.ndarray]) -> None:
    _, truth = volume
    organ = truth == ORGAN
    lesion = truth == LESION
    assert 0.03 < organ.mean() < 0.4
    assert lesion.any()
    # Lesions lie inside the organ: filling the organ's holes covers every lesion voxel.
    whole = ndimage.binary_fill_holes(organ | lesion)
    assert np.array_equal(whole & lesion, lesion)
    touching = ndimage.binary_dilation(lesion) & ~lesion
    assert (truth[touching] != 0).mean() > 0.9  # lesion borders are organ (or the volume edge)


def test_intensities_are_ct_like(volume: tuple[np.ndarray, np.ndarray]) -> None:
    image, truth = volume
    organ_mean = image[truth == ORGAN].mean()
    lesion_mean = image[truth == LESION].mean()
    assert abs(organ_mean - HU.organ) < 15
    assert lesion_mean < organ_mean - 30
    corners = image[:, :3, :3]
    assert corners.mean() < -900  # air outside the body
    body = (image > -500) & (truth == 0)
    assert HU.fat - 40 < image[body].mean() < HU.muscle + 20
    assert 5 < image[truth == ORGAN].std() < 60  # noisy, not constant


@pytest.mark.parametrize("shape", [8, (16, 16), (16, 16, 15), "32", True, (16.0, 16, 16)])
def test_bad_shapes_raise_one_line_config_errors(shape: object) -> None:
    with pytest.raises(ConfigError, match="shape") as info:
        synthesize_volume(shape, seed=0)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("seed", [-1, 1.5, "a", None])
def test_bad_seed(seed: object) -> None:
    with pytest.raises(ConfigError, match="seed"):
        synthesize_volume(16, seed=seed)  # type: ignore[arg-type]
