"""Loss weighting: the strategies that turn a model's raw losses into the total that is backpropagated.

``base`` holds the interface (``WeightingStrategy.apply`` -> ``WeightedLosses``) and ``Fixed``; ``alwa`` the
paper's ALWA; ``level`` the per-FPN-level AVW and RLO; ``multitask`` uncertainty weighting and DWA; ``window``
the device-side loss window the windowed strategies share.
"""
from .alwa import ALWA
from .base import Fixed, WeightedLosses, WeightingStrategy, WindowedWeighting
from .level import AVW, RLO
from .multitask import DWA, UncertaintyWeighting
from .window import LossWindow, normalise_groups

__all__ = ["ALWA", "AVW", "DWA", "Fixed", "LossWindow", "RLO", "UncertaintyWeighting", "WeightedLosses",
           "WeightingStrategy", "WindowedWeighting", "normalise_groups"]
