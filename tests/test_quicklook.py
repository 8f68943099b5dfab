"""quicklook.png: the scene decimated, the labels blended over it, outlines, legend, title; bounded memory."""

from __future__ import annotations

import shutil
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.enums import Resampling

from segflow.errors import ConfigError, InputError
from segflow.io.mask_store import MaskStore
from segflow.io.quicklook import (
    ALPHA,
    PALETTE,
    QuicklookSink,
    class_colors,
    legend_entries,
    output_shape,
    read_decimated,
    render_quicklook,
    sample_index,
)
from segflow.io.readers import open_scene
from segflow.labels import LABEL_NODATA
from segflow.models.package import ModelSpec, resolve_package
from segflow.scene import Scene
from segflow.synthetic import write_synthetic_scene
from segflow.tile_infer import TileInferParams, tile_infer
from segflow.tiling import Box

MAX_SIDE = 512


def centres(n_src: int, n_dst: int) -> np.ndarray:
    """Reference nearest sampling: the source pixel whose extent holds the output pixel's centre."""
    return np.array([int((i + 0.5) * n_src // n_dst) for i in range(n_dst)])


def spec_of(colors: list[Any], name: str = "toy") -> ModelSpec:
    return ModelSpec.model_validate({
        "name": name, "spatial_dims": 2, "architecture": {"name": "none"}, "tile": 64,
        "input": {"bands": [{"name": "b1", "index": 1}]},
        "classes": [{"name": f"c{i}", "color": c} for i, c in enumerate(colors)],
    })


def make_store(path: Path, labels: np.ndarray, spec: ModelSpec, chunk: int = 64) -> MaskStore:
    store = MaskStore.create(path, labels.shape, (chunk, chunk), spec.class_names, save_scores=False, attrs={})
    store.write(Box((0, 0), labels.shape), labels)
    return store


def outside(box: tuple[int, int, int, int], r: np.ndarray, c: np.ndarray, margin: int = 2) -> np.ndarray:
    x0, y0, x1, y1 = box
    return ~((c >= x0 - margin) & (c < x1 + margin) & (r >= y0 - margin) & (r < y1 + margin))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ql")
    scene_path = root / "scene.tif"
    write_synthetic_scene(scene_path, width=1024, height=768, seed=3, nodata=0)
    tile_infer(scene_path, root / "out", TileInferParams(model="spectral-landcover"))
    store = MaskStore.open(root / "out" / "mask.zarr")
    scene = open_scene(scene_path)
    spec = resolve_package("spectral-landcover").spec
    png = QuicklookSink(scene, spec, max_side=MAX_SIDE).write(store, root)
    rendered = render_quicklook(scene, store, spec, max_side=MAX_SIDE)
    return {"path": scene_path, "store": store, "scene": scene, "spec": spec, "png": png, "rendered": rendered}


def reference_base(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """GDAL's own decimated read of red, green, blue, stretched 2–98 % with numpy; and GDAL's validity."""
    with rasterio.open(path) as ds:
        idx = [list(ds.descriptions).index(n) + 1 for n in ("red", "green", "blue")]
        values = ds.read(idx, out_shape=(3, *shape)).astype(np.float64)
        valid = ds.dataset_mask(out_shape=shape) > 0
    base = np.zeros((*shape, 3))
    for c in range(3):
        lo, hi = np.percentile(values[c][valid], [2, 98])
        base[..., c] = np.clip((values[c] - lo) / (hi - lo) * 255, 0, 255)
    base[~valid] = 0
    return base, valid


def test_png_size_and_aspect(run: dict[str, Any]) -> None:
    with Image.open(run["png"]) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        width, height = im.size
        assert np.array_equal(np.asarray(im), np.asarray(run["rendered"].image))
    assert max(width, height) == MAX_SIDE
    assert abs(height - width * 768 / 1024) <= 1
    assert output_shape((768, 1024), 4096) == (768, 1024)  # never enlarged
    assert output_shape((10, 100_000), 2048) == (1, 2048)


def test_pixels_show_their_class_blend(run: dict[str, Any]) -> None:
    rendered, store, spec = run["rendered"], run["store"], run["spec"]
    image = np.asarray(rendered.image).astype(np.float64)
    shape = image.shape[:2]
    base, valid = reference_base(run["path"], shape)
    full = store.labels[:]
    labels = full[centres(768, shape[0])][:, centres(1024, shape[1])]
    colors = np.asarray([c.color for c in spec.classes], dtype=np.float64)
    blends = [base] + [base * (1 - ALPHA) + colors[k] * ALPHA for k in range(1, len(colors))]
    rng = np.random.default_rng(0)
    checked = 0
    for k in range(len(colors)):
        same = labels == k  # 3x3 neighbourhood all k: away from boundaries (and outlines)
        interior = same.copy()
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                interior[1:-1, 1:-1] &= same[1 + dr:shape[0] - 1 + dr, 1 + dc:shape[1] - 1 + dc]
        interior[[0, -1], :] = interior[:, [0, -1]] = False
        r, c = np.nonzero(interior)
        keep = outside(rendered.title_box, r, c) & outside(rendered.legend_box, r, c)
        r, c = r[keep], c[keep]
        assert r.size > 50, f"class {k} has too few interior pixels to check"
        for i in rng.choice(r.size, 25, replace=False):
            got = image[r[i], c[i]]
            distances = [np.abs(got - b[r[i], c[i]]).sum() for b in blends]
            assert int(np.argmin(distances)) == k
            np.testing.assert_allclose(got, blends[k][r[i], c[i]], atol=1.01)
            checked += 1
    assert checked == 25 * len(colors)
    # nodata (the synthetic scene's top-left triangle): dark, and no label painted over it
    r, c = np.nonzero(~valid)
    keep = outside(rendered.title_box, r, c) & outside(rendered.legend_box, r, c)
    assert keep.sum() > 100
    assert (labels[r[keep], c[keep]] == LABEL_NODATA).all()
    assert (image[r[keep], c[keep]] == 0).all()


def test_outlines_follow_label_boundaries(run: dict[str, Any]) -> None:
    rendered, store, spec = run["rendered"], run["store"], run["spec"]
    image = np.asarray(rendered.image)
    shape = image.shape[:2]
    labels = store.labels[:][centres(768, shape[0])][:, centres(1024, shape[1])]
    # pixels of water (1) that touch vegetation (2) on their right are opaque water colour
    r, c = np.nonzero((labels[:, :-1] == 1) & (labels[:, 1:] == 2))
    keep = outside(rendered.title_box, r, c) & outside(rendered.legend_box, r, c)
    assert keep.sum() > 5
    assert (image[r[keep], c[keep]] == spec.classes[1].color).all()
    assert (image[r[keep], c[keep] + 1] == spec.classes[2].color).all()


def test_legend_lists_exactly_the_present_classes(run: dict[str, Any]) -> None:
    rendered, store, spec = run["rendered"], run["store"], run["spec"]
    present = sorted(int(v) for v in np.unique(store.labels[:]) if v != LABEL_NODATA)
    assert [k for k, _, _ in rendered.legend] == present == [0, 1, 2]
    assert rendered.legend == legend_entries(present, spec)
    x0, y0, x1, y1 = rendered.legend_box
    assert x1 - x0 > 20 and y1 - y0 > 3 * 10
    inside = np.asarray(rendered.image)[y0:y1, x0:x1].reshape(-1, 3)
    for k, _, color in rendered.legend:
        if k:  # painted classes have a filled swatch of exactly their colour
            assert (inside == color).all(axis=1).sum() > 25
    assert (inside == 255).all(axis=1).sum() > 20  # white text
    assert legend_entries([2, 0, 2], spec) == [(0, "background", (200, 200, 200)), (2, "vegetation", (40, 160, 60))]


def test_gdal_decimation_and_dask_sampling_agree(run: dict[str, Any]) -> None:
    """Both readers sample pixel centres: GDAL's out_shape read equals the dask scene sampled by sample_index."""
    scene, shape = run["scene"], (200, 300)
    assert np.array_equal(sample_index(768, 200), centres(768, 200))
    gdal_values, gdal_valid = read_decimated(scene, shape)
    array_scene = Scene.from_array(scene.data, band_names=scene.band_names, nodata=scene.nodata)
    assert array_scene.meta == {}  # not a file: sampled through dask
    dask_values, dask_valid = read_decimated(array_scene, shape)
    full = scene.data.compute()
    expected = full[[2, 1, 0]][:, centres(768, 200)][:, :, centres(1024, 300)]  # red, green, blue
    assert np.array_equal(gdal_values, expected) and np.array_equal(dask_values, expected)
    assert np.array_equal(gdal_valid, dask_valid) and 0 < (~dask_valid).sum()
    grey_values, _ = read_decimated(array_scene.select_bands([3]), shape)  # no RGB: the first band
    assert np.array_equal(grey_values, full[[3]][:, centres(768, 200)][:, :, centres(1024, 300)])


def test_gdal_reads_overviews_when_the_file_has_them(run: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "with_overviews.tif"
    shutil.copy(run["path"], path)
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([4], Resampling.average)
    with rasterio.open(path, overview_level=0) as ov:
        assert (ov.height, ov.width) == (192, 256)
        expected = ov.read([3, 2, 1])  # red, green, blue
    values, _ = read_decimated(open_scene(path), (192, 256))
    assert np.array_equal(values, expected)
    assert not np.array_equal(values, read_decimated(run["scene"], (192, 256))[0])  # not the nearest samples


def test_toy_scene_closed_form(tmp_path: Path) -> None:
    """A constant image is mid grey (128): every pixel's colour follows in closed form from its label."""
    spec = spec_of([None, [255, 0, 0], None, [0, 255, 0]])  # classes 0 and 2 without colour: the palette's
    labels = np.ones((400, 640), dtype=np.uint8)
    labels[:, 320:] = 2
    labels[:40, :] = 0
    labels[360:, :] = LABEL_NODATA
    labels[200:280, 400:520] = LABEL_NODATA  # where the image is nodata (9, brighter than the data)
    store = make_store(tmp_path / "m.zarr", labels, spec, chunk=96)  # chunks do not divide the scene
    pixels = np.full((1, 400, 640), 7, dtype=np.uint16)
    pixels[:, 200:280, 400:520] = 9
    scene = Scene.from_array(pixels, chunks=150, nodata=9)
    got = render_quicklook(scene, store, spec, max_side=320)
    image = np.asarray(got.image).astype(int)
    assert image.shape == (200, 320, 3)  # output pixel i shows source pixel 2i + 1
    assert class_colors(spec) == (PALETTE[0], (255, 0, 0), PALETTE[2], (0, 255, 0))
    blend = [np.rint(128 * (1 - ALPHA) + np.asarray(c) * ALPHA) for c in class_colors(spec)]
    x_legend, y_title = got.legend_box[2], got.title_box[3]
    assert x_legend < 100 and y_title < 19
    # rows 20..179: class 1 in columns 0..159, class 2 in 160..319; outlines 1 px on each side of the seam
    assert (image[60, x_legend + 1:159] == blend[1]).all() and (image[60, 161:319] == blend[2]).all()
    assert (image[60, 159] == (255, 0, 0)).all() and (image[60, 160] == PALETTE[2]).all()
    assert (image[21:179, 180] == blend[2]).all()
    assert (image[100:140, 200:260] == 0).all()  # image nodata: dark, unpainted
    assert (image[99, 200:260] == PALETTE[2]).all() and (image[140, 200:260] == PALETTE[2]).all()
    assert (image[20, 180] == PALETTE[2]).all() and (image[179, 180] == PALETTE[2]).all()  # next to 0 / nodata
    assert (image[y_title:20, 100:] == 128).all()  # class 0: not painted
    assert (image[180:, x_legend:] == 128).all()  # label nodata: not painted (the image is valid there)
    assert [k for k, _, _ in got.legend] == [0, 1, 2]  # class 3 is absent: not listed
    assert not (image == (0, 255, 0)).all(axis=2).any()


def test_polygons_replace_label_outlines(tmp_path: Path) -> None:
    geometry = pytest.importorskip("shapely.geometry")
    spec = spec_of([[0, 0, 0], [255, 0, 0], [0, 0, 255]])
    labels = np.zeros((400, 400), dtype=np.uint8)
    labels[100:300, 100:300] = 1
    store = make_store(tmp_path / "m.zarr", labels, spec)
    scene = Scene.from_array(np.full((1, 400, 400), 5, dtype=np.uint8))
    polygons = [(geometry.box(200, 200, 360, 360), 2),  # (x0, y0, x1, y1) in full-scene pixels, class given
                geometry.box(60, 60, 100, 100)]  # class from the labels under it: 0, black
    got = render_quicklook(scene, store, spec, max_side=200, polygons=polygons)
    image = np.asarray(got.image).astype(int)
    ring = np.zeros((200, 200), dtype=bool)  # edges at output 100 and 180, drawn on the pixel before
    ring[99:180, [99, 179]] = ring[[99, 179], 99:180] = True
    assert np.array_equal((image == (0, 0, 255)).all(axis=2), ring)
    small = np.zeros((200, 200), dtype=bool)
    small[29:50, [29, 49]] = small[[29, 49], 29:50] = True
    assert np.array_equal((image[:100, :100] == 0).all(axis=2), small[:100, :100])
    red = np.rint([128 * (1 - ALPHA) + 255 * ALPHA, 128 * (1 - ALPHA), 128 * (1 - ALPHA)])
    assert (image[50:150, 50] == red).all() and (image[50, 50:150] == red).all()  # no label outline drawn
    red_outline = (image == (255, 0, 0)).all(axis=2)
    x0, y0, x1, y1 = got.legend_box
    assert red_outline[y0:y1, x0:x1].any() and red_outline.sum() == red_outline[y0:y1, x0:x1].sum()  # legend only


def test_refusals(tmp_path: Path) -> None:
    spec = spec_of([None, None])
    store = make_store(tmp_path / "m.zarr", np.full((40, 50), 3, dtype=np.uint8), spec)
    scene = Scene.from_array(np.zeros((1, 40, 50), dtype=np.uint8))
    with pytest.raises(InputError, match="holds label 3 but the model has 2 classes"):
        render_quicklook(scene, store, spec)
    with pytest.raises(ConfigError, match="pass the scene the store was made from"):
        render_quicklook(Scene.from_array(np.zeros((1, 41, 50), dtype=np.uint8)), store, spec)
    with pytest.raises(ConfigError, match="for 2D rasters"):
        QuicklookSink(Scene.from_array(np.zeros((1, 4, 5, 6), dtype=np.uint8)), spec)
    with pytest.raises(ConfigError, match="max_side"):
        QuicklookSink(scene, spec, max_side=0)
    assert QuicklookSink(scene, spec).entries == ("quicklook.png",)


@pytest.mark.slow
@pytest.mark.parametrize("reader", ["gdal", "dask"])
def test_memory_stays_bounded_on_a_large_scene(reader: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.getbasetemp() / "ql-large"
    n = 8192
    if not (root / "done").exists():
        root.mkdir(exist_ok=True)
        write_synthetic_scene(root / "big.tif", width=n, height=n, seed=1, bands=("red", "green", "blue"))
        spec = resolve_package("spectral-landcover").spec
        store = MaskStore.create(root / "m.zarr", (n, n), (2048, 2048), spec.class_names, save_scores=False,
                                 attrs={})
        for r in range(0, n, 2048):
            for c in range(0, n, 2048):
                store.write(Box((r, c), (r + 2048, c + 2048)), np.full((2048, 2048), (r + c) // 2048 % 3, np.uint8))
        (root / "done").touch()
    spec = resolve_package("spectral-landcover").spec
    scene = open_scene(root / "big.tif")
    if reader == "dask":
        scene = Scene.from_array(scene.data, band_names=scene.band_names, nodata=scene.nodata)
    store = MaskStore.open(root / "m.zarr")
    out = tmp_path_factory.mktemp(f"ql-{reader}")
    tracemalloc.start()
    try:
        path = QuicklookSink(scene, spec).write(store, out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    scene_bytes = scene.data.nbytes  # 3 x 8192 x 8192 x uint16 = 384 MiB
    assert peak < scene_bytes / 4, f"peak {peak >> 20} MiB"
    with Image.open(path) as im:
        assert im.size == (2048, 2048)
