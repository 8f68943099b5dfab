"""The report of :func:`segflow.evaluate.evaluate`: per-class pixel scores, coverage, object scores, outputs."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

from .errors import InputError
from .io.atomic import atomic_write_text
from .object_eval import ObjectClassScore

__all__ = ["ClassScore", "EvalReport"]


@dataclass(frozen=True)
class ClassScore:
    """Pixel scores of one class; ratios are NaN where undefined (class absent from truth and prediction) and
    for an ``ignored`` class (its truth pixels are left out; a prediction of it is an error of the true class).

    ``support``: counted truth pixels of the class; ``missed``: those with no prediction (nodata), counted
    as false negatives of the class (they lower its recall, IoU and Dice).
    """

    name: str
    iou: float
    dice: float
    precision: float
    recall: float
    support: int
    missed: int = 0
    ignored: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"class": self.name, "iou": self.iou, "dice": self.dice, "precision": self.precision,
                "recall": self.recall, "support": self.support, "missed": self.missed, "ignored": self.ignored}


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def percent(fraction: float) -> str:
    """``fraction`` as a percentage rounded down to 0.01 (99.999 % shows as 99.99, never as 100.00)."""
    return "-" if math.isnan(fraction) else f"{math.floor(fraction * 10000 + 1e-9) / 100:.2f}"


def write_text(path: Path, text: str) -> Path:
    return atomic_write_text(path, text, hint="choose a writable location")


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells[1:], widths[1:],
                                                                                  strict=True))])

    rule = "-" * len(line(header))
    return [line(header), rule, *(line(b) for b in body), rule]


@dataclass(frozen=True)
class EvalReport:
    """Per-class scores and summary of one evaluation.

    ``rows`` has one :class:`ClassScore` per class in label order; ``confusion`` is the ``(K, K)``
    matrix with rows = truth, columns = prediction (truth pixels with a prediction), or for
    ``label_kind`` ``multilabel`` (:mod:`segflow.multilabel_eval`) ``[[tn, fp], [fn, tp]]`` per class; ``pixels`` the
    counted truth pixels (not nodata, not ``ignored``), ``covered`` those with a prediction and
    ``coverage = covered / pixels``. ``mean_iou`` / ``mean_dice`` average the classes present in the
    truth or the prediction, ignored classes left out. ``objects``: object scores at
    ``IoU >= iou_threshold`` per thing class (empty when none are known, see ``notes``).
    """

    rows: list[ClassScore]
    mean_iou: float
    pixel_accuracy: float
    pixels: int
    confusion: list[Any]
    pred: str
    truth: str
    covered: int
    mean_dice: float
    ignored: tuple[int, ...] = ()
    objects: list[ObjectClassScore] = field(default_factory=list)
    iou_threshold: float = 0.5
    notes: list[str] = field(default_factory=list)
    label_kind: str = "single"

    @property
    def coverage(self) -> float:
        """Fraction of the counted truth pixels that have a prediction (NaN when there are none)."""
        return self.covered / self.pixels if self.pixels else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {
            "prediction": self.pred, "truth": self.truth, "label_kind": self.label_kind, "pixels": self.pixels,
            "covered_pixels": self.covered,
            "missed_pixels": self.pixels - self.covered, "coverage": _json_number(self.coverage),
            "mean_iou": _json_number(self.mean_iou), "mean_dice": _json_number(self.mean_dice),
            "pixel_accuracy": _json_number(self.pixel_accuracy), "ignored_values": list(self.ignored),
            "classes": [{k: _json_number(v) for k, v in r.as_dict().items()} for r in self.rows],
            "confusion_matrix": self.confusion,
            "objects": {"iou_threshold": self.iou_threshold,
                        "classes": [{k: _json_number(v) for k, v in o.as_dict().items() if k != "pixel_iou"}
                                    for o in self.objects]},
            "notes": self.notes,
        }

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON (NaN as null); returns the path."""
        return write_text(Path(path), json.dumps(self.as_dict(), indent=2) + "\n")

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """One row per class: ``class,iou,dice,precision,recall,support,missed,ignored,object_precision,
        object_recall,object_f1`` (NaN, and object scores of classes that are not scored things, empty)."""
        objects = {o.name: o for o in self.objects}
        lines: list[list[Any]] = [["class", "iou", "dice", "precision", "recall", "support", "missed", "ignored",
                                   "object_precision", "object_recall", "object_f1"]]
        for r in self.rows:
            o = objects.get(r.name)
            scores = (r.iou, r.dice, r.precision, r.recall)
            found = (o.precision, o.recall, o.f1) if o else (math.nan,) * 3
            lines.append([r.name, *("" if math.isnan(v) else repr(v) for v in scores), r.support, r.missed,
                          str(r.ignored).lower(), *("" if math.isnan(v) else repr(v) for v in found)])
        buffer = StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(lines)
        return write_text(Path(path), buffer.getvalue())

    def format_table(self) -> str:
        """Aligned text: the per-class pixel scores, the summary with coverage, the object scores, the notes."""
        body = [[r.name, "ignored", "-", "-", "-", str(r.support), str(r.missed)] if r.ignored else
                [r.name, _fmt(r.iou), _fmt(r.dice), _fmt(r.precision), _fmt(r.recall), str(r.support), str(r.missed)]
                for r in self.rows]
        out = _table(["class", "IoU", "Dice", "precision", "recall", "support", "missed"], body)
        out.append(f"mean IoU {_fmt(self.mean_iou)}   mean Dice {_fmt(self.mean_dice)}   pixel accuracy "
                   f"{_fmt(self.pixel_accuracy)}   truth pixels {self.pixels}   coverage {percent(self.coverage)} % "
                   f"({self.pixels - self.covered} with no prediction, counted as missed)")
        if self.ignored:
            out.append(f"ignored truth values (left out; a prediction of an ignored class is an error): "
                       f"{', '.join(str(v) for v in self.ignored)}")
        if self.objects:
            out.append(f"objects at IoU >= {self.iou_threshold:g} (connected regions of each thing class, whole "
                       "across blocks; one-to-one)")
            out += _table(["class", "truth", "pred", "TP", "FP", "FN", "precision", "recall", "F1", "match IoU"],
                          [[o.name, *(str(v) for v in (o.truth, o.pred, o.tp, o.fp, o.fn)),
                            *(_fmt(v) for v in (o.precision, o.recall, o.f1, o.match_iou))] for o in self.objects])[:-1]
        return "\n".join([*out, *(f"note: {n}" for n in self.notes)])

    def require_coverage(self, min_coverage: float = 100.0, written: Sequence[str | os.PathLike[str]] = ()) -> None:
        """Raise one :class:`InputError` line when the prediction covers less than ``min_coverage`` percent of
        the counted truth pixels, or there are none; ``written``: where the report was written, for the message."""
        where = f"above, and in {', '.join(str(w) for w in written)}" if written else "above"
        if self.pixels == 0:
            raise InputError(f"the truth {self.truth} has no pixels to score (all nodata"
                             f"{' or --ignore values' if self.ignored else ''}), so nothing was evaluated (report "
                             f"{where}); give a truth raster that labels the prediction's area")
        if self.coverage * 100 < min_coverage:
            raise InputError(
                f"prediction covers {percent(self.coverage)} % of the truth pixels ({self.covered} of {self.pixels}), "
                f"below --min-coverage {min_coverage:g} %; the report was still written ({where}) with the uncovered "
                "truth counted as missed (false negatives of its class); predict the whole area the truth labels (the "
                "prediction's nodata 255 marks pixels it left out), or lower --min-coverage to accept a partial "
                "prediction")
