"""Batches: every scene and volume of an inbox through tile-infer and delivery, idempotently, with a report.

:func:`discover` lists an inbox's items; :func:`infer_item` and :func:`deliver_item` are an item's
two steps; :func:`is_transient` decides which failures are retried; :func:`write_report` writes the
night's report. The nightly Prefect flow (``pipelines/batch_flow.py``) and ``segflow batch`` wire them.
"""

from .inbox import PATTERNS, Item, discover
from .item import ItemRun, deliver_item, infer_item, item_params, summarize
from .report import BatchReport, ItemReport, scrub, write_report
from .retry import backoff, is_transient
from .settings import BatchSettings, batch_settings, one_line

__all__ = ["PATTERNS", "BatchReport", "BatchSettings", "Item", "ItemReport", "ItemRun", "backoff", "batch_settings",
           "deliver_item", "discover", "infer_item", "is_transient", "item_params", "one_line", "scrub", "summarize",
           "write_report"]
