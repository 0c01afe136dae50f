"""Whose folder is it: the shapes generator (and the trees builder, ``datasets/trees.py``, with its own marker
``trees_meta.json`` through the ``marker`` and ``kind`` arguments) writes only where nothing but its own files can
be overwritten.

The generator's marker is ``shapes_meta.json`` (its parameters). It is written *before* the first image,
with ``"complete": false``, and rewritten with the summary at the end, so a folder the generator was killed
in is still recognised as its own. A folder is generated into when it is missing or empty, or when its marker
records the same parameters and is incomplete; it is reused as is when the marker is complete with the same
parameters. Anything else (a user's VOC tree, a stray file, shapes data of other parameters) is a
``DataError`` naming the folder: overwriting 000001.jpg and the split files of a user's data set and then
training on shapes instead, with exit status 0, is the failure this prevents.
"""
from __future__ import annotations

import json
import os
from typing import Optional

from .report import DataError

META_FILE = "shapes_meta.json"


def read_marker(root: str, marker: str = META_FILE, kind: str = "shapes") -> Optional[dict]:
    """The generator's marker in ``root`` (``None`` when there is none); an unreadable one is an error."""
    path = os.path.join(root, marker)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{kind} data folder {root}: its marker {marker} cannot be read ({exc}); "
                        f"delete the folder to generate the data again") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("params"), dict):
        raise DataError(f"{kind} data folder {root}: {marker} holds no generator parameters; delete the "
                        f"folder to generate the data again")
    return meta


def _differences(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    return "; ".join(f"{k} {old.get(k)} (in the folder) vs {new.get(k)} (asked)" for k in keys
                     if old.get(k) != new.get(k))


def claim(root: str, params: dict, remedy: str, marker: str = META_FILE, kind: str = "shapes") -> Optional[dict]:
    """The marker of a complete generation of ``params`` in ``root`` (reuse it), or ``None`` when ``root`` may
    be generated into; else ``DataError`` naming ``root``, what is in the way, and ``remedy`` (how the caller
    picks another folder, e.g. the config key). ``marker`` is the marker's file name, ``kind`` the data's name
    in the messages."""
    meta = read_marker(root, marker, kind)
    if meta is None:
        entries = sorted(os.listdir(root)) if os.path.isdir(root) else []
        if not entries:
            return None
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise DataError(f"{kind} data folder {root} holds files not written by the {kind} generator ({shown}; no "
                        f"{marker}): it would overwrite them; {remedy}")
    if meta["params"] != params:
        raise DataError(f"{kind} data folder {root} was generated with different parameters "
                        f"({_differences(meta['params'], params)}): delete that folder to generate it again "
                        f"with these, or {remedy}")
    # the marker's "complete" is absent in folders of earlier versions, written only at the end
    return meta if meta.get("complete", True) else None
