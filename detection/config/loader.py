"""Generic YAML config machinery: ``_base_`` inheritance, ``--set`` overrides and
validation of the merged tree into any dataclass tree, e.g.
``cfg = load_config(MySchema, "configs/demo/x.yaml", ["train.max_iters=100"])``.
All validation problems are reported at once in one :class:`ConfigError`, one per
line, each naming the dotted key and the file that set it.
"""

import copy
import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Dict, Sequence, Tuple

import yaml

from detection.config.validation import CHANGED, ORDER, ROOT, VARIANT_KEY, ConfigError, build_config, select_variant

__all__ = ["ConfigError", "load_yaml_tree", "apply_overrides", "build_config", "load_config",
           "config_from_tree", "config_to_dict", "save_config", "get_by_path", "select_variant"]

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"
OVERRIDE_SOURCE = "--set"


# PyYAML implements YAML 1.1, which reads ``1e-3`` (no dot) as the *string*
# "1e-3" -- a classic learning-rate bug. Both the loader and the dumper learn
# the YAML 1.2 float syntax so that loading and round-tripping agree.
_FLOAT_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float and refuses a key given twice in one mapping (YAML says
    keys are unique; PyYAML would silently keep the later value, e.g. the second of two ``lr:`` lines)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *base`` merges are overridden on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hashable = key in seen
            except TypeError:  # an unhashable key: PyYAML's own error says so
                break
            if hashable:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {seen[key] + 1} and "
                                f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes the string ``"1e-3"`` so it reloads as a string."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))

# YAML 1.1 also reads yes / no / on / off as booleans, so ``--set train.amp=off`` became False and failed
# the check of a setting whose value is the word "off". As in YAML 1.2, only true / false are booleans.
_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
                                   for first, resolvers in _Loader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


# ----------------------------------------------------------------- loading

def load_yaml_tree(path) -> Tuple[dict, Dict[str, str]]:
    """Load ``path`` with its ``_base_`` chain merged in.

    Returns ``(tree, provenance)``; provenance maps every dotted key (sections
    included) to the file that last set it, and ``""`` to ``path`` itself.
    """
    path = os.path.normpath(os.fspath(path))
    tree: dict = {}
    provenance: Dict[str, str] = {}
    _load_into(path, tree, provenance, chain=(), referrer=None)
    provenance[ROOT] = path
    return tree, provenance


def _load_into(path, tree, provenance, chain, referrer):
    """Merge ``path`` (bases first) into ``tree``; ``chain`` detects cycles."""
    real = os.path.realpath(path)
    seen = [r for r, _ in chain]
    if real in seen:
        cycle = [shown for _, shown in chain[seen.index(real):]] + [path]
        raise ConfigError(["cyclic _base_ chain: " + " -> ".join(cycle)])
    data = _read_mapping(path, referrer)
    bases = data.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError([f"{path}: {BASE_KEY} must be a string or a list of strings"])
    for base in bases:
        # Bases are relative to the file naming them, not to the working dir.
        base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
        _load_into(base_path, tree, provenance, chain + ((real, path),), path)
    _merge(tree, provenance, data, path, prefix="")
    provenance.setdefault(ORDER, []).append(path)


def _read_mapping(path, referrer) -> dict:
    """Parse one YAML file whose top level must be a mapping (empty -> {})."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        where = f" (referenced by {BASE_KEY} in {referrer})" if referrer else ""
        raise FileNotFoundError(f"config file not found: {path}{where}") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"invalid YAML in {path}{line}: {problem}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: top level must be a mapping, got {type(data).__name__}"])
    return data


def _merge(dst: dict, provenance, src: dict, source: str, prefix: str) -> None:
    """Deep-merge ``src`` into ``dst`` in place, recording provenance."""
    src = dict(src)
    if src.pop(DELETE_KEY, False) is True:
        dst.clear()
        _forget(provenance, prefix)
        if prefix:
            provenance[prefix[:-1]] = source
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            if not isinstance(dst.get(key), dict):
                _forget(provenance, dotted + ".")
                dst[key] = {}
                provenance[dotted] = source
            _merge(dst[key], provenance, value, source, dotted + ".")
        else:  # scalars and lists replace whatever was there
            if key == VARIANT_KEY and key in dst and dst[key] != value:
                provenance[dotted + CHANGED] = source  # a section's type changed: see validation._stale_keys
            _forget(provenance, dotted + ".")
            dst[key] = value
            provenance[dotted] = source


def _forget(provenance, prefix: str) -> None:
    """Drop provenance of keys under ``prefix`` whose values were replaced."""
    for key in [k for k in provenance if k.startswith(prefix)]:
        del provenance[key]


def apply_overrides(tree: dict, provenance, overrides: Sequence[str]):
    """Apply ``"a.b.c=value"`` overrides in place (values parsed as YAML).

    Intermediate mappings are created as needed; a mapping value is merged
    like a file would be. Returns ``(tree, provenance)`` for convenience.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or "" in key.split("."):
            raise ConfigError([f"malformed override '{item}': expected KEY=VALUE, e.g. --set train.max_iters=100"])
        try:
            value = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or "not valid YAML"
            raise ConfigError([f"malformed override '{item}': the value is not valid YAML ({problem})"]) from None
        for part in reversed(key.split(".")):
            value = {part: value}
        _merge(tree, provenance, value, OVERRIDE_SOURCE, prefix="")
    if overrides:
        provenance.setdefault(ORDER, []).append(OVERRIDE_SOURCE)
    return tree, provenance


# ----------------------------------------------------------- conveniences

def load_config(schema_cls, path, overrides: Sequence[str] = ()):
    """Load, override and validate a config file.

    The instance carries ``_config_path``, ``_config_tree`` (merged tree after
    overrides) and ``_config_provenance`` as plain attributes.
    """
    tree, provenance = load_yaml_tree(path)
    return config_from_tree(schema_cls, tree, provenance, overrides, os.fspath(path))


def config_from_tree(schema_cls, tree: dict, provenance, overrides: Sequence[str] = (), path: str = ""):
    """Override and validate an already loaded tree (e.g. the config saved in a checkpoint; ``provenance``
    may be ``{"": "<where it came from>"}``). Returns the instance, with the attributes of :func:`load_config`."""
    tree, provenance = copy.deepcopy(tree), copy.deepcopy(dict(provenance))
    apply_overrides(tree, provenance, overrides)
    cfg = build_config(schema_cls, tree, provenance)
    extras = {"_config_path": path, "_config_tree": copy.deepcopy(tree), "_config_provenance": dict(provenance)}
    for name, value in extras.items():
        try:  # object.__setattr__ also works on frozen dataclasses
            object.__setattr__(cfg, name, value)
        except AttributeError:  # slotted dataclass: nowhere to keep extras
            pass
    return cfg


def config_to_dict(cfg) -> dict:
    """Plain, YAML-dumpable dict of a config instance (tuples become lists)."""
    return _plain(dataclasses.asdict(cfg))


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def save_config(cfg, path) -> None:
    """Write the fully resolved config as readable YAML (schema key order)."""
    path = os.fspath(path)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.dump(config_to_dict(cfg), f, Dumper=_Dumper, sort_keys=False,
                  default_flow_style=False, allow_unicode=True)


def get_by_path(obj, path: str):
    """Look up ``"a.b.c"`` through dataclass attributes, mappings and list indices."""
    for part in path.split("."):
        if isinstance(obj, Mapping) and part in obj:
            obj = obj[part]
        elif isinstance(obj, (list, tuple)) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        elif not isinstance(obj, (Mapping, list, tuple)) and hasattr(obj, part):
            obj = getattr(obj, part)
        else:
            raise KeyError(f"no key '{part}' in path '{path}'")
    return obj
