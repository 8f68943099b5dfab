"""Mask R-CNN (He et al. 2017) in plain torch: ResNet-FPN backbone, RPN, box and mask heads.

torchvision's detection models and C++ ops do not load with the CPU torch the project runs on, so
RoIAlign, NMS and box coding are written here (:mod:`.ops`, with torchvision's semantics).

Interface (for model packages, ``segflow train`` and tile inference to plug into):

* ``MaskRCNN(MaskRCNNConfig(num_classes=K + 1, in_channels=bands, depth="resnet18", fpn_width=64,
  rpn=RPNSettings(...), roi=RoISettings(...)))``; class 0 is the background.
* ``model.train(); losses = model(images, targets)``: ``images`` float ``(N, bands, H, W)``, any H, W
  (zero-padded to a multiple of 32 internally); ``targets`` one dict per image with ``boxes``
  ``(G, 4)`` float ``(x1, y1, x2, y2)`` in pixels (pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``),
  ``labels`` ``(G,)`` int64 in ``1..K`` and ``masks`` ``(G, H, W)`` (0/1). ``losses`` is a dict of
  scalar tensors (``loss_objectness``, ``loss_rpn_box``, ``loss_classifier``, ``loss_box_reg``,
  ``loss_mask``); the training loss is their sum.
* ``model.eval(); detections = model(images)``: one dict per image: ``boxes`` ``(D, 4)`` float
  (same coordinates, clipped to the image), ``scores`` ``(D,)`` in (0, 1], ``labels`` ``(D,)`` int64
  in ``1..K``, ``masks`` ``(D, H, W)`` bool at full resolution (mask probability >= 0.5), sorted by
  decreasing score, at most ``roi.detections_per_image``. D varies per image, so the inference path
  does not trace to a fixed-shape graph (see below); tile inference should run windows through it
  and merge detections in scene coordinates (offset boxes, NMS / mask IoU across window overlaps).

Export: the backbone and heads are ordinary convolutions and linear layers, but proposal selection
and detection use data-dependent shapes (top-k over a variable count, NMS iterated to a fixed point,
boolean filtering, per-level routing of RoIs, a sparse CSR matmul in RoIAlign), so the full inference
path is not exportable to ONNX or ``torch.jit.trace`` as it stands; this has not been attempted.
"""

from segflow.models.maskrcnn.model import MaskRCNN, MaskRCNNConfig, build_maskrcnn, config_args, paste_masks
from segflow.models.maskrcnn.roi_heads import RoISettings
from segflow.models.maskrcnn.rpn import RPNSettings

__all__ = ["MaskRCNN", "MaskRCNNConfig", "RPNSettings", "RoISettings", "build_maskrcnn", "config_args", "paste_masks"]
