"""--crf in the pipeline: the refined labels do not depend on the chunking and differ from the plain run's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from segflow.crf import CRFParams
from segflow.errors import ConfigError
from segflow.synthetic import write_synthetic_scene
from segflow.tile_infer import TileInferParams, tile_infer


def test_crf_labels_are_chunk_invariant_and_refine_the_plain_labels(tmp_path: Path) -> None:
    scene = tmp_path / "s.tif"
    write_synthetic_scene(scene, width=300, height=260, seed=2)
    strong = CRFParams(iterations=3, radius=3, bilateral_weight=10.0, spatial_weight=5.0)
    labels = {}
    for name, chunk, crf in (("a", 64, strong), ("b", 512, strong), ("plain", 512, None)):
        tile_infer(scene, tmp_path / name, TileInferParams(model="spectral-landcover", chunk=chunk, crf=crf))
        with rasterio.open(tmp_path / name / "labels.tif") as ds:
            labels[name] = ds.read(1)
    np.testing.assert_array_equal(labels["a"], labels["b"])
    assert 0 < np.mean(labels["a"] != labels["plain"]) < 0.2
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    assert record["parameters"]["crf"]["iterations"] == 3 and record["parameters"]["save_scores"] is True
    assert (tmp_path / "a" / "mask.zarr" / "scores").exists()  # the CRF's input, kept


def test_crf_is_refused_for_volumes(tmp_path: Path) -> None:
    import nibabel as nib

    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), dtype=np.int16) - 1000, np.eye(4)), path)
    with pytest.raises(ConfigError, match="--crf refines 2D rasters"):
        tile_infer(path, tmp_path / "out", TileInferParams(crf=CRFParams()))
