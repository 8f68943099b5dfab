"""Tests of segflow.training.augment: image and labels move together, determinism, in-plane 3D rotation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from segflow.errors import ConfigError, InputError
from segflow.training.augment import AugmentParams, augment, flip, jitter_intensity, rotate90

GEOMETRY = AugmentParams(flips=True, rot90=True)


def _coded(shape: tuple[int, ...], channels: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """An image whose every pixel is unique and labels that are a function of channel 0."""
    codes = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    image = np.stack([codes * (c + 1) for c in range(channels)])
    return image, (codes % 7).astype(np.uint8)


@given(
    spatial=st.sampled_from([(8, 8), (6, 10), (4, 8, 8), (3, 5, 7)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_geometry_moves_image_and_labels_together(spatial: tuple[int, ...], seed: int) -> None:
    image, labels = _coded(spatial)
    out_image, out_labels = augment(image, labels, np.random.default_rng(seed), GEOMETRY)
    assert out_image.shape == image.shape and out_labels.shape == labels.shape
    assert np.array_equal(out_labels, (out_image[0] % 7).astype(np.uint8))
    assert np.array_equal(out_image[1], 2 * out_image[0])  # channels moved together
    assert sorted(out_image[0].ravel()) == sorted(image[0].ravel())  # a permutation of the pixels


def test_same_generator_state_same_result_and_seeds_vary() -> None:
    image, labels = _coded((16, 16), channels=3)
    params = AugmentParams(gain=0.1, offset=0.2, noise=0.05)
    first = augment(image, labels, np.random.default_rng(5), params)
    second = augment(image, labels, np.random.default_rng(5), params)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    others = [augment(image, labels, np.random.default_rng(s), params)[1] for s in range(8)]
    assert len({o.tobytes() for o in others}) > 3


def test_rotation_of_volumes_is_in_plane() -> None:
    z = np.arange(5, dtype=np.float32)[:, None, None]
    image = np.broadcast_to(z, (5, 8, 8))[None].copy()
    image[0, :, 0, 1] += 100  # an asymmetric mark in every slice
    labels = np.broadcast_to(np.arange(5, dtype=np.uint8)[:, None, None], (5, 8, 8)).copy()
    for k in range(4):
        rot_image, rot_labels = rotate90(image, labels, k)
        assert np.array_equal(rot_labels, labels)  # slices stay in place
        assert np.array_equal(rot_image[0].min(axis=(1, 2)), np.arange(5))
        assert np.array_equal(rot_image[0, :, :, :] >= 100, np.broadcast_to(rot_image[0, :1] >= 100, (5, 8, 8)))
    params = AugmentParams(flips=False, rot90=True)
    for seed in range(6):
        _, out_labels = augment(image, labels, np.random.default_rng(seed), params)
        assert np.array_equal(out_labels, labels)


def test_flip_and_rotate_match_numpy() -> None:
    image, labels = _coded((4, 6))
    f_image, f_labels = flip(image, labels, (1,))
    assert np.array_equal(f_image, image[:, :, ::-1]) and np.array_equal(f_labels, labels[:, ::-1])
    assert flip(image, labels, ())[0] is image
    square_image, square_labels = _coded((5, 5))
    r_image, r_labels = rotate90(square_image, square_labels, 1)
    assert np.array_equal(r_labels, np.rot90(square_labels))
    assert np.array_equal(r_image[0], np.rot90(square_image[0]))


def test_intensity_jitter_changes_image_only() -> None:
    image, labels = _coded((8, 8), channels=2)
    out_image, out_labels = augment(image, labels, np.random.default_rng(1),
                                    AugmentParams(flips=False, rot90=False, gain=0.2, offset=0.5, noise=0.0))
    assert np.array_equal(out_labels, labels)
    ratio = (out_image - out_image[:, :1, :1]) / np.where(image - image[:, :1, :1] == 0, 1, image - image[:, :1, :1])
    gains = ratio.reshape(2, -1)[:, 1:]
    assert np.allclose(gains, gains[:, :1], rtol=1e-4)  # one gain per channel
    assert np.all(np.abs(gains[:, 0] - 1) <= 0.2 + 1e-6)
    noisy = jitter_intensity(np.zeros((1, 64, 64), np.float32), np.random.default_rng(0), gain=0, offset=0,
                             noise=0.5)
    assert 0.45 < noisy.std() < 0.55 and noisy.dtype == np.float32


def test_no_augmentation_is_identity() -> None:
    image, labels = _coded((6, 6))
    params = AugmentParams(flips=False, rot90=False)
    out_image, out_labels = augment(image, labels, np.random.default_rng(0), params)
    assert np.array_equal(out_image, image) and np.array_equal(out_labels, labels)


def test_errors() -> None:
    with pytest.raises(InputError, match="labels"):
        augment(np.zeros((1, 4, 4)), np.zeros((4, 5)), np.random.default_rng(0), GEOMETRY)
    with pytest.raises(ConfigError, match="gain"):
        AugmentParams(gain=1.5)
    with pytest.raises(ConfigError, match="noise"):
        AugmentParams(noise=-1)
