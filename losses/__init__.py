"""Element-wise loss functions for anchor-based detectors (torch only).

Box convention everywhere: absolute corners ``(x1, y1, x2, y2)``.

``REGRESSION_LOSSES`` maps a config name to a box-regression loss callable as
``fn(pred, target, reduction="none", weight=None, avg_factor=None)`` on
``[N, 4]`` inputs and returning a per-box ``[N]`` loss for ``"none"``:

* ``"l1"`` / ``"smooth_l1"`` work on encoded deltas; their entries are the
  ``*_per_box`` variants, which **sum the 4 coordinates** into one value per
  box (``weight`` is then per box). Use :func:`l1_loss` /
  :func:`smooth_l1_loss` for the element-wise ``[N, 4]`` form.
* ``"iou"``, ``"giou"``, ``"diou"``, ``"ciou"`` work on decoded boxes; ``"ciou_mmdet"`` is CIoU as
  mmdetection 2.x computes it (gradient through alpha; the ALWA authors' configs).

:func:`regression_loss_is_box_based` tells which input a name expects.
"""

from typing import Callable, Dict

import torch

from .focal import sigmoid_focal_loss
from .iou import (
    box_iou_aligned,
    ciou_loss,
    ciou_mmdet_loss,
    diou_loss,
    giou_loss,
    iou_loss,
    pairwise_box_iou,
)
from .reduction import reduce_loss
from .regression import (
    l1_loss,
    l1_loss_per_box,
    smooth_l1_loss,
    smooth_l1_loss_per_box,
)

REGRESSION_LOSSES: Dict[str, Callable[..., torch.Tensor]] = {
    "l1": l1_loss_per_box,
    "smooth_l1": smooth_l1_loss_per_box,
    "iou": iou_loss,
    "giou": giou_loss,
    "diou": diou_loss,
    "ciou": ciou_loss,
    "ciou_mmdet": ciou_mmdet_loss,
}

_BOX_BASED = frozenset({"iou", "giou", "diou", "ciou", "ciou_mmdet"})


def regression_loss_is_box_based(name: str) -> bool:
    """True if ``REGRESSION_LOSSES[name]`` expects decoded boxes ``(x1, y1, x2, y2)``,
    False if it expects encoded deltas (``l1``, ``smooth_l1``).

    Raises:
        ValueError: ``name`` is not in :data:`REGRESSION_LOSSES`.
    """
    if name not in REGRESSION_LOSSES:
        raise ValueError(
            f"unknown regression loss {name!r}; expected one of {sorted(REGRESSION_LOSSES)}"
        )
    return name in _BOX_BASED


__all__ = [
    "REGRESSION_LOSSES",
    "box_iou_aligned",
    "ciou_loss",
    "ciou_mmdet_loss",
    "diou_loss",
    "giou_loss",
    "iou_loss",
    "l1_loss",
    "l1_loss_per_box",
    "pairwise_box_iou",
    "reduce_loss",
    "regression_loss_is_box_based",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
    "smooth_l1_loss_per_box",
]
