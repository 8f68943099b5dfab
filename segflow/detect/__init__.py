"""Instance segmentation over large scenes: an instance model (Mask R-CNN) run window by window.

:mod:`.windows` turns each window's detections into scene coordinates, :mod:`.merge` makes the views
of one object from overlapping windows one instance, :mod:`.paint` writes the instances into the run's
``mask.zarr`` and :mod:`.run` drives it for :func:`segflow.tile_infer.tile_infer`, whose sinks then write
``labels.tif``, ``instances.csv`` and the polygons as for a semantic model.
"""

from .merge import Instance, Merger
from .run import Found, check_run, detect_store, detector_for
from .windows import Detection, Detector

__all__ = ["Detection", "Detector", "Found", "Instance", "Merger", "check_run", "detect_store", "detector_for"]
