"""The ``weighting`` section: one typed section per strategy, selected by ``weighting.type``.

Loss keys named here are checked against the model's loss contract when the run is built. A key of another
type (``weighting.cls_keys`` with ``type: fixed``) is an error naming the closest valid key. A later source that
changes the type (``--set weighting.type=fixed`` over an ALWA config) drops the old type's keys that earlier
files set, with a ``config:`` note; keys valid in both types (``interval``, ``sync``) keep their value, so
``--set 'weighting={_delete_: true, type: dwa}'`` is the way to start a section from its defaults.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Literal, Optional

WEIGHTING_TYPES = ("fixed", "alwa", "avw", "rlo", "uncertainty", "dwa")
_Type = Literal["fixed", "alwa", "avw", "rlo", "uncertainty", "dwa"]


@dataclass
class WeightingConfig:
    """How raw losses become the total; the section of ``type`` holds the strategy's settings."""

    variants: ClassVar[dict] = {}  # type -> section class

    type: _Type = "fixed"


@dataclass
class FixedConfig(WeightingConfig):
    """Constant weights: ``weights`` maps loss keys to weights, other keys weigh 1."""

    type: _Type = "fixed"
    weights: Dict[str, float] = field(default_factory=dict)


@dataclass
class WindowedConfig(WeightingConfig):
    min_interval: ClassVar[int] = 2  # a window's sample statistics need two steps (ALWA, AVW, RLO)

    interval: int = 100  # window length in steps (C in the ALWA paper)
    # windows pooled over DDP ranks (every rank the same weights); false: per process, each rank its own weights
    # from its own images (the released ALWA code; the paper configs)
    sync: bool = True

    def __post_init__(self):
        if self.interval < self.min_interval:
            raise ValueError(f"weighting.interval must be >= {self.min_interval}"
                             + (" (a window's sample statistics need two steps)" if self.min_interval > 1 else "")
                             + f", got {self.interval}")


@dataclass
class ALWAConfig(WindowedConfig):
    """ALWA (variant 1 or 2) on the group ``cls_keys`` against ``reg_keys``."""

    type: _Type = "alwa"
    variant: int = 2
    cls_keys: List[str] = field(default_factory=lambda: ["loss_cls"])
    reg_keys: List[str] = field(default_factory=lambda: ["loss_bbox"])
    init_weight: float = 1.0
    stats: Literal["weighted", "raw"] = "weighted"
    # study variants, off by default (the released rule): record no statistics in the first start_iter steps
    # (e.g. the warmup); "skip" the first window's update
    start_iter: int = 0
    first_window: Literal["use", "skip"] = "use"


@dataclass
class AVWConfig(WindowedConfig):
    """Per-level weighting by variance over ``groups`` (default: the model's per-level losses, RetinaNet's
    ``loss_cls_p*`` and ``loss_bbox_p*`` with ``model.head.loss_per_level``)."""

    type: _Type = "avw"
    groups: Optional[List[List[str]]] = None
    momentum: float = 0.0
    w_min: float = 0.0
    w_max: Optional[float] = None  # null: no cap


@dataclass
class RLOConfig(WindowedConfig):
    """Per-level weighting, a scheme drawn per window by a policy over ``schemes``; ``groups`` as AVW."""

    type: _Type = "rlo"
    groups: Optional[List[List[str]]] = None
    schemes: List[str] = field(default_factory=lambda: ["equal", "avw", "inverse_variance", "small_level"])
    policy_lr: float = 0.1
    temperature: float = 1.0


@dataclass
class UncertaintyConfig(WeightingConfig):
    """Learnt homoscedastic-uncertainty weights over ``keys`` (default: every loss of the model)."""

    type: _Type = "uncertainty"
    keys: Optional[List[str]] = None
    init_log_var: float = 0.0


@dataclass
class DWAConfig(WindowedConfig):
    """Dynamic Weight Average over ``keys`` (default: every loss of the model)."""

    min_interval: ClassVar[int] = 1  # compares window means: one step per window is enough

    type: _Type = "dwa"
    keys: Optional[List[str]] = None
    temperature: float = 2.0


WeightingConfig.variants = {"fixed": FixedConfig, "alwa": ALWAConfig, "avw": AVWConfig, "rlo": RLOConfig,
                            "uncertainty": UncertaintyConfig, "dwa": DWAConfig}
