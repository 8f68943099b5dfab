"""mask.zarr: labels and scores as users read them — scores NaN exactly where labels are nodata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from segflow.io.mask_store import MaskStore
from segflow.labels import LABEL_NODATA
from segflow.tile_infer import TileInferParams, tile_infer
from segflow.tiling import Box

from .helpers import make_ts_package, random_image, write_geotiff


def _nodata_scene(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 3-band uint16 scene with nodata 0 and its nodata mask (Y, X): a corner larger than a
    window (whole windows skipped), a disk (windows half in, half out) and scattered pixels."""
    image = random_image((3, *shape), seed=seed) + 1  # no accidental zeros
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    nodata = (yy < 45) & (xx < 70)
    nodata |= (yy - 100) ** 2 + (xx - 110) ** 2 < 22**2
    nodata |= np.random.default_rng(seed).random(shape) < 0.01
    image[:, nodata] = 0
    partial = image.copy()
    partial[0, 140:, :] = 0  # one band of three at nodata: still data (GDAL's rule: all bands)
    return partial, nodata


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ts_package(tmp_path_factory.mktemp("pkg") / "net", bands=3, classes=4, tile=32)


@pytest.mark.parametrize("chunk", [64, 512])
def test_scores_are_nan_exactly_where_labels_are_nodata(tmp_path: Path, package: Path, chunk: int) -> None:
    image, nodata = _nodata_scene((170, 190), seed=11)
    scene = write_geotiff(tmp_path / "scene.tif", image, nodata=0)
    tile_infer(scene, tmp_path / "out", TileInferParams(model=str(package), chunk=chunk, batch=8, save_scores=True,
                                                         device="cpu"))
    group = zarr.open_group(str(tmp_path / "out" / "mask.zarr"), mode="r")
    labels, scores = group["labels"][:], group["scores"][:]
    assert scores.dtype == np.float16 and scores.shape == (4, *nodata.shape)
    np.testing.assert_array_equal(labels == LABEL_NODATA, nodata)
    np.testing.assert_array_equal(np.isnan(scores), np.broadcast_to(nodata, scores.shape))
    valid = scores[:, ~nodata].astype(np.float32)
    assert (valid >= 0).all() and (valid <= 1).all()
    np.testing.assert_allclose(valid.sum(axis=0), 1.0, atol=4e-3)  # softmax probabilities, float16
    chosen = np.take_along_axis(valid, labels[~nodata][None].astype(np.int64), axis=0)[0]
    np.testing.assert_allclose(chosen, valid.max(axis=0), atol=1e-3)  # labels are the arg-max of the scores


def test_store_write_sets_nan_where_not_valid_and_keeps_the_rest(tmp_path: Path) -> None:
    store = MaskStore.create(tmp_path / "mask.zarr", (40, 50), (20, 25), ["a", "b"], save_scores=True, attrs={})
    rng = np.random.default_rng(0)
    box = Box((20, 25), (40, 50))
    scores = rng.random((2, 20, 25)).astype(np.float32)
    valid = rng.random((20, 25)) > 0.3
    labels = np.where(valid, scores.argmax(axis=0), LABEL_NODATA).astype(np.uint8)
    store.write(box, labels, scores, valid)
    store.write(Box((0, 25), (20, 50)), np.zeros((20, 25), np.uint8), scores, None)  # all valid
    reread = MaskStore.open(tmp_path / "mask.zarr")
    assert reread.scores is not None
    written = np.asarray(reread.scores[(slice(None), *box.slices)])
    np.testing.assert_array_equal(np.isnan(written), np.broadcast_to(~valid, written.shape))
    np.testing.assert_array_equal(written[:, valid], scores[:, valid].astype(np.float16))
    np.testing.assert_array_equal(reread.read_labels(box), labels)
    np.testing.assert_array_equal(np.asarray(reread.scores[:, :20, 25:]), scores.astype(np.float16))
    untouched = np.asarray(reread.scores[:, :, :25])  # never written: the fill values
    assert np.isnan(untouched).all() and (reread.read_labels(Box((0, 0), (40, 25))) == LABEL_NODATA).all()
