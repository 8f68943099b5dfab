"""What a tile-infer run is asked for (:class:`TileInferParams`) and what it reports (:class:`RunResult`).

Plain data, importable without the pipeline's heavy modules; :mod:`segflow.tile_infer` runs them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .crf import CRFParams
from .errors import ConfigError
from .features import VectorOptions
from .precision import PRECISIONS
from .predict import TTA_MODES
from .tiling import BLEND_MODES

__all__ = ["RunResult", "TileInferParams"]


@dataclass(frozen=True)
class TileInferParams:
    """Every knob of a tile-infer run (``None`` = the model package's default).

    ``model`` ``None`` takes the built-in default for the input: :data:`segflow.tile_infer.DEFAULT_MODELS` by its
    spatial dimensions (a raster or a volume).
    """

    model: str | None = None
    tile: int | None = None
    overlap: float | None = None
    blend: str = "gaussian"
    chunk: int | None = None  # None: DEFAULT_CHUNK for the input's dimensions
    batch: int = 16
    device: str = "auto"
    save_scores: bool = False
    bands: Mapping[str, int] = field(default_factory=dict)
    amp: bool = True  # False: the same as precision="fp32" (the CLI's --no-amp)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (segflow.precision.resolve_precision)
    tta: str = "none"  # none | flips: test-time mirroring over the spatial axes, averaged before blending
    compile: bool = False  # torch.compile the network (eager networks only; segflow.compiled)
    pacs: str | None = None  # deliver seg.dcm there (see segflow.io.pacs.parse_pacs)
    meshes: bool = False  # volumes: a surface mesh per instance in meshes/ (segflow.io.meshes)
    vectorize: str | None = None  # rasters: objects as polygons in this format (segflow.io.vector_sink)
    vector_options: VectorOptions = field(default_factory=VectorOptions)
    postgis: str | None = None  # rasters: also the polygons in this PostGIS table (segflow.io.postgis)
    panoptic: bool = False  # rasters: panoptic.tif, class and instance ids (segflow.io.panoptic)
    crf: CRFParams | None = None  # rasters: refine the blended probabilities with a dense CRF (segflow.crf_pass)
    opening: int = 0  # rasters: morphological smoothing radii in pixels (segflow.smooth_pass)
    closing: int = 0
    scene_id: str | None = None  # rasters: the polygons' scene_id (default: the input's file name without suffix)
    deliver: bool = True  # deliver to ``pacs`` / ``postgis`` after publishing (False: a later step does it)

    def check(self) -> None:
        if self.blend not in BLEND_MODES:
            raise ConfigError(f"blend must be one of {', '.join(BLEND_MODES)}, got {self.blend!r}")
        if self.chunk is not None and self.chunk < 1:
            raise ConfigError(f"chunk must be >= 1 pixel, got {self.chunk}; e.g. --chunk 2048")
        if self.batch < 1:
            raise ConfigError(f"batch must be >= 1 window, got {self.batch}; e.g. --batch 16")
        if self.tile is not None and self.tile < 1:
            raise ConfigError(f"tile must be >= 1 pixel, got {self.tile}; e.g. --tile 512")
        if self.overlap is not None and not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"overlap must be >= 0 and < 1, got {self.overlap}; e.g. --overlap 0.25")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not self.amp and self.precision not in ("auto", "fp32"):
            raise ConfigError(f"--no-amp means --precision fp32 but --precision {self.precision} was given too; "
                              "give one of them")
        if self.tta not in TTA_MODES:
            raise ConfigError(f"tta must be one of {', '.join(TTA_MODES)}, got {self.tta!r}")

    @property
    def asked_precision(self) -> str:
        """The precision asked for: ``precision``, or ``fp32`` when ``amp`` is False."""
        return self.precision if self.amp else "fp32"


@dataclass(frozen=True)
class RunResult:
    """What a run produced and how it went."""

    outputs: dict[str, Path]
    windows_total: int
    windows_evaluated: int
    windows_skipped: int
    chunks: int
    wall_seconds: float
    megapixels: float
    chunks_computed: int = 0
    chunks_reused: int = 0
    delivered: tuple[str, ...] = ()  # SOP Instance UIDs confirmed at the PACS
    rows_delivered: int | None = None  # polygons confirmed in the PostGIS table
    reexported: bool = False  # the published masks were this run's: only the exports were written again

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.wall_seconds if self.wall_seconds > 0 else math.inf

    def summary(self) -> str:
        where = ", ".join(str(p) for p in self.outputs.values())
        reused = f", {self.chunks_reused} reused from an earlier attempt" if self.chunks_reused else ""
        sent = f" | {len(self.delivered)} instance(s) stored at the PACS (confirmed)" if self.delivered else ""
        if self.rows_delivered is not None:
            sent += f" | {self.rows_delivered} polygon(s) in PostGIS (confirmed)"
        return (f"wrote {where} | {self.windows_evaluated} windows evaluated ({self.windows_skipped} nodata "
                f"skipped) in {self.chunks} chunks{reused} | {self.wall_seconds:.1f} s | "
                f"{self.megapixels_per_second:.2f} MP/s{sent}")
