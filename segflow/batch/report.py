"""The night's report: ``report.md`` and ``report.json`` beside the outputs, one row per item.

Per item: its status (``computed``, ``resumed``, ``unchanged``, ``failed``), the objects and the area
(map units²) or volume (mL) per class, windows evaluated, wall time and throughput, where the outputs
and deliveries went, and the error line of a failed item or delivery. The latest report is
``<output>/report.md`` / ``report.json``; each batch's is also kept under ``<output>/reports/``.

No secret reaches a report: target addresses are shown with their passwords hidden, and every
text is scrubbed of the passwords this process knows (``PGPASSWORD``, ``SEGFLOW_PACS_PASSWORD``).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_write_text

__all__ = ["BatchReport", "ItemReport", "scrub", "write_report"]

SECRET_VARIABLES = ("PGPASSWORD", "SEGFLOW_PACS_PASSWORD")
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^\s/@:]*):([^\s@/]*)@")  # scheme://user:password@


def scrub(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with URL passwords hidden and every known secret replaced by ``***``."""
    known = [*secrets, *(os.environ.get(v, "") for v in SECRET_VARIABLES)]
    for secret in sorted({s for s in known if len(s) >= 3}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return _URL_PASSWORD.sub(r"\1\2:***@", text)


@dataclass
class ItemReport:
    """One item's line of the report (see the module docstring)."""

    name: str
    source: str
    kind: str
    status: str = "pending"
    error: str | None = None
    exit_code: int | None = None
    attempts: int = 0
    windows_evaluated: int = 0
    chunks_computed: int = 0
    chunks_reused: int = 0
    wall_seconds: float = 0.0
    megapixels: float = 0.0
    unit: str = ""
    classes: dict[str, dict[str, float | int]] = field(default_factory=dict)
    outputs: str = ""
    deliveries: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        """Megapixels (megavoxels) per second of this night's work on the item (0 when nothing was computed)."""
        return self.megapixels / self.wall_seconds if self.wall_seconds > 0 and self.chunks_computed else 0.0


@dataclass
class BatchReport:
    """A batch: where it read and wrote, with what, when, and its items."""

    inbox: str
    output: str
    settings: dict[str, Any]
    started_utc: str
    finished_utc: str = ""
    wall_seconds: float = 0.0
    items: list[ItemReport] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # files modified too recently (--min-age): the next batch's
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Items per status, and deliveries confirmed / failed."""
        counts = Counter(i.status for i in self.items)
        for item in self.items:
            for d in item.deliveries.values():
                counts[f"deliveries {d.get('status')}"] += 1
        return dict(counts)

    def failed(self) -> list[ItemReport]:
        """Items that failed, or whose delivery failed."""
        return [i for i in self.items if i.status == "failed"
                or any(d.get("status") == "failed" for d in i.deliveries.values())]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["counts"] = self.counts()
        for item, row in zip(self.items, out["items"], strict=True):
            row["throughput_mp_per_s"] = round(item.throughput, 3)
        return out

    def markdown(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items())) or "no items"
        lines = [f"# segflow batch {self.started_utc}", "",
                 f"Inbox `{self.inbox}` → `{self.output}`: {len(self.items)} item(s): {counts}; "
                 f"{self.wall_seconds:.1f} s.", "",
                 "| item | source | status | objects | labelled area / volume | windows | wall s | throughput | "
                 "delivered |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for i in self.items:
            objects = ", ".join(f"{c} {v['objects']}" for c, v in i.classes.items() if v.get("objects")) or "–"
            names = list(i.classes)[1:]  # class 0, the background, is left out
            extent = ", ".join(f"{c} {_number(i.classes[c]['extent'])}" for c in names if i.classes[c].get("pixels"))
            extent = f"{extent} {_UNITS.get(i.unit, i.unit)}" if extent else "–"
            speed = f"{i.throughput:.2f} {'Mvox/s' if i.unit == 'mL' else 'MP/s'}" if i.throughput else "–"
            delivered = "; ".join(f"{k}: {d.get('status')}" + (f" ({d['count']})" if d.get("count") is not None else "")
                                  for k, d in i.deliveries.items()) or "–"
            lines.append(f"| {i.name} | {i.source} | {i.status} | {objects} | {extent} | {i.windows_evaluated} | "
                         f"{i.wall_seconds:.1f} | {speed} | {delivered} |")
        problems = self.failed()
        if problems:
            lines += ["", "## Failures", ""]
            for i in problems:
                if i.error:
                    lines.append(f"- **{i.name}** ({i.source}): {i.error}")
                for target, d in i.deliveries.items():
                    if d.get("status") == "failed":
                        lines.append(f"- **{i.name}** delivery to {target} ({d.get('attempts')} attempt(s)): "
                                     f"{d.get('error')}")
        if self.waiting:
            lines += ["", f"Left for the next batch (modified too recently): {', '.join(self.waiting)}"]
        for note in self.notes:
            lines += ["", note]
        lines += ["", "Each item's outputs are in its folder under the output folder, with run.json (provenance) and "
                  "the receipts of its deliveries. Areas and volumes are those of the labels (class 0 left out).", ""]
        return "\n".join(lines)


_UNITS = {"m2": "m²", "deg2": "deg²", "crs2": "CRS units²", "px": "px", "mL": "mL"}


def _number(value: float) -> str:
    """A measure as people read it: thousands separated, 3 significant digits below 1000."""
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def write_report(output: str | Path, report: BatchReport, secrets: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.json`` into ``output`` (atomically), and a copy under ``reports/``."""
    folder = Path(output)
    stamp = report.started_utc.replace(":", "").replace("-", "").replace("+0000", "Z")
    md = scrub(report.markdown(), secrets)
    js = scrub(json.dumps(report.as_dict(), indent=2, default=str), secrets) + "\n"
    (folder / "reports").mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "reports" / f"{stamp}.md", md)
    atomic_write_text(folder / "reports" / f"{stamp}.json", js)
    atomic_write_text(folder / "report.md", md)
    atomic_write_text(folder / "report.json", js)
    return folder / "report.md", folder / "report.json"
