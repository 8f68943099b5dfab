"""Multi-label models: what a run with classes that may overlap can and cannot produce.

A multi-label model (``output: {activation: sigmoid, multilabel: true, thresholds: [...]}`` in
``model.yaml``, see :class:`segflow.models.package.OutputSpec`) gives each class an independent
probability; the blended probabilities are thresholded per class (:func:`segflow.stitch.threshold_labels`)
into ``present`` planes (``(K, *spatial)`` uint8: 0 absent, 1 present, 255 nodata) in ``mask.zarr``
(:mod:`segflow.io.mask_store`). The outputs that can show overlapping classes take those planes:

- ``labels.tif``: one band per class (0/1/255; band descriptions = class names);
- polygons (``--vectorize``, ``--postgis``): each class's connected regions, overlapping across classes;
- ``labels.nii.gz`` (volumes): a 4D one-hot image ``(i, j, k, class)``;
- ``seg.dcm`` (DICOM series): a BINARY SEG with one segment per class (segments may overlap).

Everything that needs one class per pixel is refused before anything runs (:func:`check_run`), with
what to use instead; outputs that would only come along by default (``quicklook.png`` with the
polygons, ``instances.csv`` of a volume's thing classes) are not made. A store's ``labels`` array,
which a multi-label store does not have, is refused by :attr:`segflow.io.mask_store.MaskStore.labels`
too, so no step can read overlapping classes as one label per pixel by mistake.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .models.package import ModelSpec
    from .run_params import TileInferParams

__all__ = ["check_run"]


def check_run(spec: ModelSpec, params: TileInferParams) -> None:
    """Refuse, with one line each, the options that need one class per pixel when ``spec`` is multi-label."""
    if not spec.multilabel:
        return
    model = f"model {spec.name!r} is multi-label (its classes may overlap)"
    if params.panoptic:
        raise ConfigError(f"--panoptic gives each pixel one class and instance, but {model}; use --vectorize for "
                          "each class's objects as polygons (overlapping across classes)")
    if params.crf is not None:
        raise ConfigError(f"--crf refines one class per pixel among competing classes, but {model}; leave --crf "
                          "out (each class's output.thresholds in model.yaml decide)")
    if params.opening or params.closing:
        raise ConfigError(f"--opening/--closing smooth a map of one class per pixel, but {model}; leave them out "
                          "and use --min-area / --fill-holes on the polygons of --vectorize")
    if params.vector_options.separate != "none":
        raise ConfigError(f"--separate {params.vector_options.separate} splits objects of one label map, but "
                          f"{model}; use --separate none (each class's connected regions)")
    if params.meshes:
        raise ConfigError(f"--meshes meshes instances of a map of one class per pixel, but {model}; leave it out "
                          "(labels.nii.gz holds one volume per class)")
