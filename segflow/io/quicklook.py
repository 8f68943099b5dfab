"""``quicklook.png``: a small picture of a 2D run — the scene, its labels over it, a legend and a title.

People look before they read. The picture is at most ``max_side`` pixels on its longer side and
is built without the full-resolution scene or mask in memory:

- the scene is read decimated: through GDAL (``rasterio`` ``out_shape``, which uses the file's
  overviews when it has them) for a scene opened from a raster file, else by nearest sampling of
  the scene's lazy dask array, chunk by chunk. It shows the bands named ``red``/``green``/``blue``
  when all three exist (of the *file* the scene was opened from: a scene cut down to a model's
  bands still shows in true colour), else the first band as grey; each band is stretched
  linearly between its 2nd and 98th percentile over the picture's valid pixels; nodata is dark;
- the labels are sampled at the same pixels (nearest), one store chunk at a time, and painted
  over the image at :data:`ALPHA` opacity in the class colours; class 0 (background) and
  :data:`~segflow.labels.LABEL_NODATA` are not painted;
- outlines: on the sampled grid, every painted pixel that has a 4-neighbour of another label is
  drawn opaque in its class colour (1 px); or, when polygons are given, their rings are drawn instead;
- a title (scene and model name) and a legend (the classes present anywhere in the store).

Pixel sampling: output pixel ``i`` of ``n`` shows source pixel ``floor((i + 0.5) * N / n)`` of ``N``
(:func:`sample_index`, in integers), GDAL's nearest-neighbour convention (GDAL computes it in floating point
and may take the pixel before when a centre lies exactly on a pixel edge). Axis order is ``(Y, X)`` (rows,
columns) for grids and ``(rows, columns, RGB)`` for pictures; polygon coordinates are ``(x, y)`` =
(column, row) in pixel units of the full scene, with (0, 0) the top-left corner of the first pixel.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import ConfigError, InputError, OutputError
from ..labels import LABEL_NODATA
from ..tiling import Box
from .atomic import atomic_path
from .mask_store import MaskStore
from .preview import output_shape, read_decimated, sample_index, stretch

if TYPE_CHECKING:
    from ..models.package import ModelSpec
    from ..scene import Scene

__all__ = ["ALPHA", "PALETTE", "Quicklook", "QuicklookSink", "class_colors", "legend_entries", "output_shape",
           "read_decimated", "render_quicklook", "sample_index", "sample_labels", "stretch"]

RGB = tuple[int, int, int]
Rect = tuple[int, int, int, int]  # (x0, y0, x1, y1), end exclusive

ALPHA = 0.45
"""Opacity of the class colours painted over the scene."""

PALETTE: tuple[RGB, ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128),
)
"""Colours of classes that declare none: class ``i`` gets ``PALETTE[i % len(PALETTE)]`` (Sasha Trubetskoy's 20)."""

_POLYGON_DEFAULT: RGB = (255, 255, 255)  # a polygon over unlabelled pixels and given without a class
_STRIP = 256  # rows of a store block counted at once (bounds the bincount's int64 copy)


def class_colors(spec: ModelSpec) -> tuple[RGB, ...]:
    """Each class's colour: the model's own, else :data:`PALETTE` by class index."""
    return tuple(tuple(c.color) if c.color is not None else PALETTE[i % len(PALETTE)]  # type: ignore[misc]
                 for i, c in enumerate(spec.classes))


def legend_entries(present: Iterable[int], spec: ModelSpec) -> list[tuple[int, str, RGB]]:
    """``(class index, name, colour)`` of the classes in ``present``, by index."""
    colors = class_colors(spec)
    return [(k, spec.classes[k].name, colors[k]) for k in sorted(set(present))]


def sample_labels(store: MaskStore, shape: tuple[int, int], num_classes: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """The store's labels sampled on a ``(rows, cols)`` grid (nearest, :func:`sample_index`), read one store
    chunk at a time, and the classes present anywhere in the store (nodata excluded).

    A label that is neither a class of the model (``0..num_classes-1``) nor nodata is refused.
    """
    height, width = store.shape
    rows, cols = sample_index(height, shape[0]), sample_index(width, shape[1])
    chunk = getattr(store.labels, "shards", None) or store.labels.chunks
    step_r, step_c = int(chunk[0]), int(chunk[1])
    out = np.full(shape, LABEL_NODATA, dtype=np.uint8)
    seen = np.zeros(256, dtype=bool)
    for r0 in range(0, height, step_r):
        r1 = min(r0 + step_r, height)
        i0, i1 = np.searchsorted(rows, [r0, r1])
        for c0 in range(0, width, step_c):
            c1 = min(c0 + step_c, width)
            j0, j1 = np.searchsorted(cols, [c0, c1])
            block = store.read_labels(Box((r0, c0), (r1, c1)))
            for s in range(0, block.shape[0], _STRIP):
                seen |= np.bincount(block[s:s + _STRIP].ravel(), minlength=256) > 0
            out[i0:i1, j0:j1] = block[rows[i0:i1] - r0][:, cols[j0:j1] - c0]
    seen[LABEL_NODATA] = False
    unknown = [v for v in np.flatnonzero(seen) if v >= num_classes]
    if unknown:
        raise InputError(f"{store.path} holds label {int(unknown[0])} but the model has {num_classes} classes "
                         f"(0..{num_classes - 1}); make the quicklook with the model the store was made with")
    return out, tuple(int(v) for v in np.flatnonzero(seen))


def _outline(labels: np.ndarray) -> np.ndarray:
    """Painted pixels (a class other than 0, not nodata) with a 4-neighbour of another label."""
    edge = np.zeros(labels.shape, dtype=bool)
    dx = labels[:, 1:] != labels[:, :-1]
    dy = labels[1:, :] != labels[:-1, :]
    edge[:, 1:] = dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    return edge & (labels != 0) & (labels != LABEL_NODATA)


def _paint(base: np.ndarray, labels: np.ndarray, colors: Sequence[RGB], outlines: bool) -> np.ndarray:
    """Blend the class colours over ``base`` (``(rows, cols, 3)`` uint8, changed in place and returned) at
    :data:`ALPHA`; outlines opaque. Done by strips of rows, so the temporaries stay small."""
    lut = np.zeros((256, 3), dtype=np.float32)
    lut[: len(colors)] = np.asarray(colors, dtype=np.float32)
    edges = _outline(labels) if outlines else None
    for r0 in range(0, labels.shape[0], _STRIP):
        strip, rgb = labels[r0:r0 + _STRIP], base[r0:r0 + _STRIP]
        painted = (strip != 0) & (strip != LABEL_NODATA)
        mixed = rgb[painted].astype(np.float32) * np.float32(1 - ALPHA) + lut[strip[painted]] * np.float32(ALPHA)
        rgb[painted] = np.rint(mixed).astype(np.uint8)
        if edges is not None:
            edge = edges[r0:r0 + _STRIP]
            rgb[edge] = lut[strip[edge]].astype(np.uint8)
    return base


def _rings(geometry: Any) -> Iterable[Sequence[tuple[float, float]]]:
    """Exterior and interior rings of a shapely (Multi)Polygon, as ``(x, y)`` sequences."""
    parts = getattr(geometry, "geoms", None)
    for polygon in (parts if parts is not None else [geometry]):
        yield list(polygon.exterior.coords)
        for ring in polygon.interiors:
            yield list(ring.coords)


def _draw_polygons(image: Image.Image, polygons: Iterable[Any], labels: np.ndarray, scene_shape: Sequence[int],
                   colors: Sequence[RGB]) -> None:
    """Draw each polygon's rings (1 px) in its class colour: the class given as ``(polygon, class)``, else the
    sampled label under its representative point (white where that is nodata)."""
    sy, sx = labels.shape[0] / scene_shape[0], labels.shape[1] / scene_shape[1]
    draw = ImageDraw.Draw(image)
    for item in polygons:
        geometry, k = item if isinstance(item, tuple) else (item, None)
        if k is None:
            point = geometry.representative_point()
            r = min(labels.shape[0] - 1, max(0, int(point.y * sy)))
            c = min(labels.shape[1] - 1, max(0, int(point.x * sx)))
            k = int(labels[r, c])
        color = colors[k] if 0 <= k < len(colors) else _POLYGON_DEFAULT
        for ring in _rings(geometry):
            draw.line([(x * sx - 0.5, y * sy - 0.5) for x, y in ring], fill=color, width=1)


@dataclass(frozen=True)
class Quicklook:
    """A rendered quick-look: the picture, the legend's entries and where the title and legend boxes lie
    (``(x0, y0, x1, y1)`` in picture pixels, end exclusive; the picture shows the scene everywhere else)."""

    image: Image.Image
    legend: list[tuple[int, str, RGB]]
    title_box: Rect
    legend_box: Rect


def _drawable(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> str:
    """``text`` as ``font`` can draw it: Pillow's bitmap font only has Latin-1."""
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", errors="replace").decode("latin-1")


def _annotate(image: Image.Image, title: str, legend: list[tuple[int, str, RGB]]) -> tuple[Rect, Rect]:
    """Draw the title bar (top) and the legend box (bottom left) on ``image``; return both boxes."""
    width, height = image.size
    size = max(10, min(28, round(max(width, height) / 80)))
    pad = size // 3
    font = ImageFont.load_default(size=size)  # Pillow's bitmap font, of fixed size, where it lacks FreeType
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    title_box = (0, 0, width, min(height, size + 2 * pad))
    draw.rectangle((0, 0, title_box[2] - 1, title_box[3] - 1), fill=(0, 0, 0, 170))
    draw.text((pad, pad), _drawable(title, font), fill=(255, 255, 255, 255), font=font)
    empty = (0, height, 0, height)
    legend_box = _draw_legend(draw, legend, font, (size, pad), (title_box[3], width, height)) if legend else empty
    image.paste(Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB"))
    return title_box, legend_box


def _draw_legend(draw: ImageDraw.ImageDraw, legend: list[tuple[int, str, RGB]],
                 font: ImageFont.FreeTypeFont | ImageFont.ImageFont, sizes: tuple[int, int],
                 room: tuple[int, int, int]) -> Rect:
    """Draw the legend's box in the bottom-left corner of a ``(top, width, height)`` room (below the title), in
    columns when it is too tall, with text of ``sizes = (size, pad)``; return the box. A picture with no room for
    it (a strip a few pixels high or wide) gets none: an empty box."""
    (size, pad), (top, width, height) = sizes, room
    row = size + pad
    per_column = min(len(legend), max(1, (height - top - 4 * pad) // row))
    columns = -(-len(legend) // per_column)
    text = max(round(draw.textlength(_drawable(name, font), font=font)) for _, name, _ in legend)
    column_width = size + 3 * pad + text
    x0, y0 = pad, max(top, height - pad - min(height, per_column * row + pad))
    x1, y1 = min(width, x0 + columns * column_width + pad), min(height, y0 + per_column * row + pad)
    if x1 <= x0 or y1 <= y0:
        return (0, height, 0, height)
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(0, 0, 0, 170))
    for n, (k, name, color) in enumerate(legend):
        x, y = x0 + pad + (n // per_column) * column_width, y0 + pad + (n % per_column) * row
        swatch = (x, y, x + size - 1, y + size - 1)
        if k == 0:  # background is not painted over the scene: a hollow swatch
            draw.rectangle(swatch, outline=(*color, 255), width=max(1, size // 8))
        else:
            draw.rectangle(swatch, fill=(*color, 255), outline=(255, 255, 255, 255))
        draw.text((x + size + pad, y), _drawable(name, font), fill=(255, 255, 255, 255), font=font)
    return (x0, y0, x1, y1)


def _check_2d(scene: Scene) -> None:
    if scene.spatial_dims != 2:
        raise ConfigError(f"quicklook.png is for 2D rasters; {scene.source or 'the scene'} has axes {scene.axes}")


def render_quicklook(scene: Scene, store: MaskStore, spec: ModelSpec, *, max_side: int = 2048,
                     polygons: Iterable[Any] | None = None) -> Quicklook:
    """Render the quick-look of ``store`` (the labels of ``scene`` by the model ``spec``); see the module doc.

    ``polygons``: shapely (Multi)Polygons, or ``(polygon, class index)`` pairs, in pixel coordinates
    ``(x = column, y = row)`` of the full scene; their outlines replace the label outlines.
    """
    _check_2d(scene)
    if store.shape != scene.spatial_shape:
        raise ConfigError(f"mask store {store.path} is {store.shape[0]}x{store.shape[1]} (rows x cols) but scene "
                          f"{scene.source} is {scene.spatial_shape[0]}x{scene.spatial_shape[1]}; pass the scene "
                          "the store was made from")
    shape = output_shape(scene.spatial_shape, max_side)
    values, valid = read_decimated(scene, shape)
    base = stretch(values, valid)
    del values
    labels, present = sample_labels(store, shape, len(spec.classes))
    colors = class_colors(spec)
    image = Image.fromarray(_paint(base, labels, colors, outlines=polygons is None), mode="RGB")
    del base
    if polygons is not None:
        _draw_polygons(image, polygons, labels, scene.spatial_shape, colors)
    legend = legend_entries(present, spec)
    name = Path(scene.source).name if scene.source else "<array>"
    title_box, legend_box = _annotate(image, f"{name}  |  model {spec.name}", legend)
    return Quicklook(image, legend, title_box, legend_box)


def _verify(path: Path, image: Image.Image) -> None:
    """The PNG at ``path`` decodes to exactly ``image``."""
    try:
        with Image.open(path) as saved:
            same = saved.size == image.size and saved.mode == image.mode
            for y in range(0, image.size[1], _STRIP) if same else ():
                box = (0, y, image.size[0], min(y + _STRIP, image.size[1]))
                same = same and saved.crop(box).tobytes() == image.crop(box).tobytes()
    except OSError as exc:
        same, detail = False, str(exc).strip()[:160]
    else:
        detail = "its pixels differ from what was written"
    if not same:
        raise OutputError(f"{path} does not read back as written ({detail}); the disk may be full or failing: "
                          "check the filesystem and run again (nothing was published)")


@dataclass(frozen=True)
class QuicklookSink:
    """``quicklook.png``: the scene downsampled to ``max_side`` pixels (longer side) with the labels over it.

    ``polygons`` (optional; iterated once per write): see :func:`render_quicklook`.
    """

    scene: Scene
    spec: ModelSpec
    max_side: int = 2048
    polygons: Iterable[Any] | None = field(default=None, hash=False)
    name: str = "quicklook.png"

    def __post_init__(self) -> None:
        if isinstance(self.max_side, bool) or not isinstance(self.max_side, int) or self.max_side < 1:
            raise ConfigError(f"quicklook max_side must be a positive number of pixels, got {self.max_side!r}; "
                              "e.g. 2048")
        if self.spec.multilabel:
            raise ConfigError(f"a quick-look paints one class per pixel, but model {self.spec.name!r} is multi-label "
                              "(its classes may overlap); look at the per-class bands of labels.tif instead")
        _check_2d(self.scene)

    @property
    def entries(self) -> tuple[str, ...]:
        return (self.name,)

    def write(self, store: MaskStore, folder: Path) -> Path:
        rendered = render_quicklook(self.scene, store, self.spec, max_side=self.max_side, polygons=self.polygons)
        path = Path(folder) / self.name
        with atomic_path(path) as temp:
            rendered.image.save(temp, format="PNG")
        _verify(path, rendered.image)
        return path
