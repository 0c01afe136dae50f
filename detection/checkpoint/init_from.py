"""``model.init_from``: start training from another checkpoint of ours (e.g. torchvision's COCO weights after
scripts/convert_weights.py), whatever its classes.

Every tensor whose name and shape match is loaded. The class-dependent tensors (the model's
``class_layout()``: classifier, class-specific box regression, mask logits) are loaded whole only when both
class lists are equal; otherwise they keep their fresh initialisation, except for the classes that
``model.init_class_map`` pairs with a class of the checkpoint, whose rows are copied (the R-CNN background
row always is). A summary says what was loaded, copied by class, re-initialised and ignored.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Union

import torch

from detection.checkpoint.state import read_weights
from detection.config.loader import ConfigError


def class_pairs(ours: Sequence[str], theirs: Sequence[str], class_map: Union[None, str, Dict[str, str]],
                path: str) -> Dict[int, int]:
    """Our class index -> the checkpoint's, by ``class_map``: None (no pairs), ``"by_name"``, or a dict
    ``{our class: checkpoint class}`` (classes it does not list are paired by name)."""
    if class_map is None:
        return {}
    explicit = {} if class_map == "by_name" else dict(class_map)
    bad = [k for k in explicit if k not in ours]
    if bad:
        raise ConfigError([f"model.init_class_map names {bad}, which are not classes of this run ({list(ours)})"])
    bad = [v for v in explicit.values() if v not in theirs]
    if bad:
        raise ConfigError([f"model.init_class_map maps to {bad}, which are not classes of {path} "
                           f"({list(theirs)[:10]}{' ...' if len(theirs) > 10 else ''})"])
    index = {name: i for i, name in enumerate(theirs)}
    return {j: index[explicit.get(name, name)] for j, name in enumerate(ours) if explicit.get(name, name) in index}


def class_row_index(layout, num_classes: int, classes: List[int]) -> torch.Tensor:
    """Rows of the given class indices (and the background row when the layout has one) of a tensor with
    ``layout`` = (outer, inner, background) for ``num_classes`` classes."""
    outer, inner, background = layout
    per_block = (num_classes + int(background)) * inner
    cls = list(classes) + ([num_classes] if background else [])
    return torch.tensor([o * per_block + c * inner + k for o in range(outer) for c in cls for k in range(inner)])


def init_from(model: torch.nn.Module, path: str, classes: Sequence[str], class_map=None,
              log: Callable[[str], None] = print) -> Dict[str, List[str]]:
    """Load ``path``'s matching tensors into ``model`` (trained on ``classes``), in place; returns the report
    ``{"loaded", "by_class", "reinitialised", "ignored"}`` (tensor names)."""
    src, theirs = read_weights(path)
    layout = model.class_layout()
    same_classes = theirs == list(classes)
    if not theirs and class_map is not None:
        raise ConfigError([f"model.init_class_map needs class names, and {path} holds none"])
    pairs = class_pairs(list(classes), theirs, class_map, path) if not same_classes else {}
    target = model.state_dict()
    report: Dict[str, List[str]] = {"loaded": [], "by_class": [], "reinitialised": [], "ignored": []}
    new: Dict[str, torch.Tensor] = {}
    for name, value in target.items():
        if name.endswith("num_batches_tracked"):
            continue
        have = src.get(name)
        if name in layout and not same_classes:
            if have is None or not pairs:
                report["reinitialised"].append(name)
                continue
            ours_rows = class_row_index(layout[name], len(classes), list(pairs))
            src_rows = class_row_index(layout[name], len(theirs), list(pairs.values()))
            if have.shape[1:] != value.shape[1:] or int(src_rows.max()) >= have.shape[0]:
                report["reinitialised"].append(name)
                continue
            filled = value.clone()
            filled[ours_rows] = have[src_rows].to(value.dtype)
            new[name] = filled
            report["by_class"].append(name)
        elif have is not None and have.shape == value.shape:
            new[name] = have.to(value.dtype)
            report["loaded"].append(name)
        else:
            report["reinitialised"].append(name)
    report["ignored"] = [k for k in src if k not in target and not k.endswith("num_batches_tracked")]
    model.load_state_dict(new, strict=False)
    paired = f"; rows of {len(pairs)} of {len(classes)} classes copied" if report["by_class"] else ""
    log(f"init_from {path}: {len(report['loaded'])} tensors loaded, {len(report['by_class'])} class-dependent "
        f"by class{paired}, {len(report['reinitialised'])} re-initialised "
        f"({_short(report['reinitialised'])}), {len(report['ignored'])} of the checkpoint ignored "
        f"({_short(report['ignored'])})")
    return report


def _short(names: List[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "") if names else "none"
