"""The loss-key contract: which raw losses a detector returns in training mode and how they group.

Every detector exposes ``model.loss_contract`` (a :class:`LossContract`), built from its parts before any
forward pass. The engine validates the weighting against it when it builds the run (a key the model does
not produce is an error naming the model's keys), the logger writes its keys and groups into every
``metrics.jsonl`` record, and plots and comparisons read them from there instead of parsing key names.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Sequence, Tuple


@dataclass(frozen=True)
class LossContract:
    """The training-mode loss dict of one model.

    Attributes:
        keys: every key of the dict, in the order the model returns them.
        groups: named groups of keys, e.g. ``"cls"`` / ``"reg"`` (one head's classification and box losses),
            ``"rpn"`` / ``"roi"`` (the two stages of Faster R-CNN).
        levels: when a head splits its losses per FPN level, the unsplit name of each split loss and its
            per-level keys, smallest stride first (``{"loss_cls": ("loss_cls_p3", ..., "loss_cls_p7")}``); the
            groups per-level weighting schemes compete within.
    """

    keys: Tuple[str, ...]
    groups: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    levels: Dict[str, Tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self):
        if len(set(self.keys)) != len(self.keys):
            raise ValueError(f"loss keys must be unique, got {list(self.keys)}")
        for name, members in list(self.groups.items()) + list(self.levels.items()):
            stray = [k for k in members if k not in self.keys]
            if stray:
                raise ValueError(f"loss group {name!r} names keys {stray} that are not among {list(self.keys)}")

    @property
    def level_groups(self) -> List[List[str]]:
        """The per-level keys of each split loss (``[[loss_cls_p3, ...], [loss_bbox_p3, ...]]``); empty when
        no loss is split."""
        return [list(v) for v in self.levels.values()]

    def label(self, key: str) -> str:
        """A short display name: the key without its ``loss_`` prefix."""
        return key[len("loss_"):] if key.startswith("loss_") else key

    def check(self, keys: Iterable[str], where: str, model: str = "the model") -> None:
        """Raise ``ValueError`` if any of ``keys`` (named in ``where``, e.g. ``weighting.cls_keys``) is not
        one of this contract's keys; the message names the closest key and all of them."""
        missing = [k for k in keys if k not in self.keys]
        if not missing:
            return
        hints = []
        for k in missing:
            close = difflib.get_close_matches(k, self.keys, n=1, cutoff=0.6)
            hints.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise ValueError(f"{where} names loss key(s) {', '.join(hints)} that {model} does not produce; "
                         f"its losses are {list(self.keys)}")

    def to_record(self) -> dict:
        """JSON form written into the logs: ``{"keys": [...], "groups": {...}, "levels": {...}}``."""
        return {"keys": list(self.keys), "groups": {k: list(v) for k, v in self.groups.items()},
                "levels": {k: list(v) for k, v in self.levels.items()}}


def head_contract(cls_key: str, reg_key: str, level_names: Sequence[str] = ()) -> LossContract:
    """One head's classification and box losses, split per level (``<key>_<level>``) when ``level_names``
    are given."""
    if not level_names:
        return LossContract((cls_key, reg_key), {"cls": (cls_key,), "reg": (reg_key,)})
    cls = tuple(f"{cls_key}_{n}" for n in level_names)
    reg = tuple(f"{reg_key}_{n}" for n in level_names)
    keys = tuple(k for pair in zip(cls, reg) for k in pair)  # level by level, as the head computes them
    return LossContract(keys, {"cls": cls, "reg": reg}, {cls_key: cls, reg_key: reg})


def merge_contracts(stages: Dict[str, LossContract]) -> LossContract:
    """The contract of a model made of stages (``{"rpn": ..., "roi": ...}``): their keys in order, each
    stage's keys as a group named after it, and each stage's own groups as ``<stage>_<group>``."""
    keys: Tuple[str, ...] = ()
    groups: Dict[str, Tuple[str, ...]] = {}
    levels: Dict[str, Tuple[str, ...]] = {}
    for name, c in stages.items():
        keys += c.keys
        groups[name] = c.keys
        groups.update({f"{name}_{g}": v for g, v in c.groups.items()})
        levels.update(c.levels)
    return LossContract(keys, groups, levels)
