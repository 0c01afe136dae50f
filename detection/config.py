"""Generic YAML config machinery: ``_base_`` inheritance, ``--set`` overrides and
validation of the merged tree into any dataclass tree, e.g.
``cfg = load_config(MySchema, "configs/demo/x.yaml", ["train.max_iters=100"])``.
All validation problems are reported at once in one :class:`ConfigError`, one per
line, each naming the dotted key and the file that set it.
"""

import copy
import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Dict, List, Literal, Sequence, Tuple, Union

import yaml

__all__ = ["ConfigError", "load_yaml_tree", "apply_overrides", "build_config",
           "load_config", "config_to_dict", "save_config", "get_by_path"]

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"
OVERRIDE_SOURCE = "--set"
# Provenance key of the top-level file; used when a key has no entry of its own
# (e.g. a missing required field).
ROOT = ""


class ConfigError(ValueError):
    """All validation problems of one config; ``errors`` holds one line each."""

    def __init__(self, errors: Sequence[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


# PyYAML implements YAML 1.1, which reads ``1e-3`` (no dot) as the *string*
# "1e-3" -- a classic learning-rate bug. Both the loader and the dumper learn
# the YAML 1.2 float syntax so that loading and round-tripping agree.
_FLOAT_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float."""


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes the string ``"1e-3"`` so it reloads as a string."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


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
        raise ValueError("cyclic _base_ chain: " + " -> ".join(cycle))
    data = _read_mapping(path, referrer)
    bases = data.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ValueError(f"{path}: {BASE_KEY} must be a string or a list of strings")
    for base in bases:
        # Bases are relative to the file naming them, not to the working dir.
        base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
        _load_into(base_path, tree, provenance, chain + ((real, path),), path)
    _merge(tree, provenance, data, path, prefix="")


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
        raise ValueError(f"invalid YAML in {path}{line}: {problem}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping, got {type(data).__name__}")
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
            raise ValueError(f"malformed override '{item}': expected KEY=VALUE, e.g. train.lr=0.01")
        try:
            value = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as e:
            raise ValueError(f"malformed override '{item}': value is not valid YAML") from e
        for part in reversed(key.split(".")):
            value = {part: value}
        _merge(tree, provenance, value, OVERRIDE_SOURCE, prefix="")
    return tree, provenance


# -------------------------------------------------------------- validation

_INVALID = object()  # returned by converters after they have recorded an error


class _Ctx:
    """Shared state of one build: provenance and the list of collected errors."""

    def __init__(self, provenance):
        self.provenance = provenance or {}
        self.errors: List[str] = []

    def source(self, key: str) -> str:
        """File that set ``key``, falling back to its nearest recorded parent."""
        while key:
            if key in self.provenance:
                return self.provenance[key]
            key = key[:max(key.rfind("."), key.rfind("["), 0)]
        return self.provenance.get(ROOT, "<unknown>")

    def fail(self, key: str, message: str):
        self.errors.append(f"key '{key or '<root>'}' (from {self.source(key)}) {message}")
        return _INVALID


def build_config(schema_cls, tree: dict, provenance=None):
    """Validate ``tree`` into an instance of the dataclass ``schema_cls``.

    Raises :class:`ConfigError` listing every problem found.
    """
    ctx = _Ctx(provenance)
    result = _convert(schema_cls, tree, "", ctx)
    if ctx.errors:
        raise ConfigError(ctx.errors)
    return result


def _describe(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _type_name(tp) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _convert(tp, value, key: str, ctx: _Ctx):
    """Check/convert ``value`` against annotation ``tp``; errors go to ``ctx``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, {} if value is None else value, key, ctx)
    if origin in (Union, types.UnionType):
        return _convert_union(args, value, key, ctx)
    if origin is Literal:
        # Compare types too, so that True does not pass for Literal[1].
        if any(value == a and type(value) is type(a) for a in args):
            return value
        allowed = ", ".join(repr(a) for a in args)
        return ctx.fail(key, f"expects one of {allowed}, got {_describe(value)}")
    if tp in (list, tuple) or origin in (list, tuple):
        return _convert_sequence(tp, origin or tp, args, value, key, ctx)
    if tp is dict or origin is dict:
        return _convert_dict(tp, args, value, key, ctx)
    if tp is float and type(value) is int:  # 1 is a fine learning rate
        return float(value)
    if tp in (int, float, bool):
        # Exact type check: bool is an int subclass, and "yes"/1 are not bools.
        ok = type(value) is tp
    elif tp is type(None):
        ok = value is None
    elif isinstance(tp, type):
        ok = isinstance(value, tp)
    else:
        raise TypeError(f"unsupported annotation {tp!r} for config key '{key}'")
    return value if ok else ctx.fail(key, f"expects {_type_name(tp)}, got {_describe(value)}")


def _convert_union(args, value, key, ctx):
    members = [a for a in args if a is not type(None)]
    if value is None and len(members) < len(args):
        return None
    if len(members) == 1:  # Optional[X]: X's own, more precise, errors
        return _convert(members[0], value, key, ctx)
    for member in members:
        trial = _Ctx(ctx.provenance)
        result = _convert(member, value, key, trial)
        if not trial.errors:
            return result
    names = " or ".join(_type_name(a) for a in args)
    return ctx.fail(key, f"expects {names}, got {_describe(value)}")


def _convert_sequence(tp, kind, args, value, key, ctx):
    if not isinstance(value, (list, tuple)):
        return ctx.fail(key, f"expects {_type_name(tp)}, got {_describe(value)}")
    if kind is tuple and args and args[-1] is not Ellipsis:  # fixed-length tuple
        if len(value) != len(args):
            return ctx.fail(key, f"expects {len(args)} items, got {len(value)}")
        item_types = list(args)
    else:
        item_types = [args[0] if args else Any] * len(value)
    items = [_convert(t, v, f"{key}[{i}]", ctx) for i, (t, v) in enumerate(zip(item_types, value))]
    if any(item is _INVALID for item in items):
        return _INVALID
    return kind(items)


def _convert_dict(tp, args, value, key, ctx):
    if not isinstance(value, dict):
        return ctx.fail(key, f"expects mapping ({_type_name(tp)}), got {_describe(value)}")
    key_type, value_type = args if args else (Any, Any)
    out = {}
    for k, v in value.items():
        sub = f"{key}.{k}" if key else str(k)
        out[_convert(key_type, k, sub, ctx)] = _convert(value_type, v, sub, ctx)
    return _INVALID if _INVALID in out or _INVALID in out.values() else out


def _convert_dataclass(cls, value, key, ctx):
    if not isinstance(value, dict):
        return ctx.fail(key, f"expects mapping (section {cls.__name__}), got {_describe(value)}")
    # get_type_hints resolves string annotations (from __future__ import annotations).
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{key}." if key else ""
    kwargs, failed = {}, False
    for name in value:
        if name not in fields:
            failed = True
            _unknown_key(ctx, prefix, name, list(fields))
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], prefix + name, ctx)
            failed |= kwargs[name] is _INVALID
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            failed = True
            ctx.errors.append(f"missing required key '{prefix + name}' (from {ctx.source(key)})")
    if failed:  # don't construct: __post_init__ would only add noise
        return _INVALID
    try:
        return cls(**kwargs)
    except ValueError as e:  # cross-field checks in __post_init__
        label = key or "<root>"
        ctx.errors.append(f"section '{label}' (from {ctx.source(key)}): {e}")
        return _INVALID


def _unknown_key(ctx, prefix, name, valid):
    full = prefix + str(name)
    message = f"unknown key '{full}' (from {ctx.source(full)})"
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
    if close:
        message += f"; did you mean '{prefix + close[0]}'?"
    else:
        message += "; valid keys are: " + ", ".join(valid)
    ctx.errors.append(message)


# ----------------------------------------------------------- conveniences

def load_config(schema_cls, path, overrides: Sequence[str] = ()):
    """Load, override and validate a config file.

    The instance carries ``_config_path``, ``_config_tree`` (merged tree after
    overrides) and ``_config_provenance`` as plain attributes.
    """
    tree, provenance = load_yaml_tree(path)
    apply_overrides(tree, provenance, overrides)
    cfg = build_config(schema_cls, tree, provenance)
    extras = {"_config_path": os.fspath(path), "_config_tree": copy.deepcopy(tree),
              "_config_provenance": dict(provenance)}
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
