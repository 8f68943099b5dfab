"""The ``output`` section of ``model.yaml``: what the network's channels are and how labels come from them.

Part of :class:`segflow.models.package.ModelSpec`, which checks it against the classes (binary sigmoid:
exactly 2 classes; ``thresholds``: one per class).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["OutputSpec"]


class OutputSpec(BaseModel):
    """What the network's output channels are and how labels come from them.

    ``activation``: ``softmax`` (K channels, one class per pixel: the arg-max), ``sigmoid`` (binary:
    1 channel, the probability of class 1; or, with ``multilabel``, K channels), ``none``
    (already probabilities) or ``instances`` (an instance-segmentation network, ``architecture:
    maskrcnn``: scored objects, each a class and a mask; ``score_threshold`` is the lowest score of
    an object kept, default 0.5). ``multilabel``: the classes may overlap (e.g. cloud and cloud shadow
    over building): K channels, each an independent probability, and class k is present where
    its blended probability is ``>= thresholds[k]`` (one per class, each in (0, 1); default 0.5
    each), so a pixel holds any subset of the classes, none included.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    activation: Literal["softmax", "sigmoid", "none", "instances"] = "softmax"
    multilabel: bool = False
    thresholds: list[float] | None = Field(default=None, min_length=1)
    score_threshold: float | None = Field(default=None, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check(self) -> OutputSpec:
        if self.multilabel and self.activation == "softmax":
            raise ValueError("multilabel classes are independent, but softmax makes them compete for each pixel; "
                             "use activation: sigmoid (or none for channels that are already probabilities)")
        if self.activation == "instances" and self.multilabel:
            raise ValueError("an instance-segmentation output gives each object one class; remove multilabel")
        if self.score_threshold is not None and self.activation != "instances":
            raise ValueError("score_threshold is for instance outputs (activation: instances); remove it")
        if self.thresholds is not None:
            if not self.multilabel:
                raise ValueError("thresholds are for multi-label outputs (multilabel: true); single-label outputs "
                                 "take the most probable class: remove thresholds")
            bad = [t for t in self.thresholds if not 0.0 < t < 1.0]
            if bad:
                raise ValueError(f"thresholds must lie strictly between 0 and 1 (probabilities), got {bad}")
        return self

    @property
    def min_score(self) -> float:
        """The lowest score of an object kept by an instance output (0.5 unless given)."""
        return 0.5 if self.score_threshold is None else self.score_threshold
