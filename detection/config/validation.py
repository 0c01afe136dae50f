"""Validation of a merged config tree into a dataclass schema: types, literals, unknown keys (with the closest
valid key), renamed keys, and sections selected by their ``type`` (a dataclass whose ``variants`` class
attribute maps type names to its subclasses). Every problem is collected into one :class:`ConfigError`, each
line naming the dotted key and the file that set it (from the loader's provenance)."""

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, List, Literal, Sequence, Union

# Provenance key of the top-level file; used when a key has no entry of its own
# (e.g. a missing required field).
ROOT = ""
# Provenance entry listing the sources in merge order (bases first, then the file, then --set): a later
# source that changes a section's ``type`` replaces the keys of the old type that earlier sources set.
ORDER = "\x00order"
VARIANT_KEY = "type"
# suffix of the provenance entry recording that a later source changed a section's ``type`` value
CHANGED = "\x00changed"


class ConfigError(ValueError):
    """All validation problems of one config; ``errors`` holds one line each."""

    def __init__(self, errors: Sequence[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


_INVALID = object()  # returned by converters after they have recorded an error


class _Ctx:
    """Shared state of one build: provenance and the list of collected errors."""

    def __init__(self, provenance):
        self.provenance = provenance or {}
        self.errors: List[str] = []
        self.notes: List[str] = []  # keys of a replaced section type, dropped (said at start-up)
        # (type key, its value) of the variant sections with a changed type being converted, innermost last
        self.type_changes: List[tuple] = []

    def order(self, source: str) -> int:
        """Position of ``source`` in the merge order (-1: unknown)."""
        order = self.provenance.get(ORDER, [])
        return order.index(source) if source in order else -1

    def latest(self, key: str) -> int:
        """Merge position of the last source that set ``key`` or anything under it."""
        found = [self.order(src) for k, src in self.provenance.items()
                 if isinstance(src, str) and (k == key or k.startswith(key + "."))]
        return max(found) if found else self.order(self.source(key))

    def replaced(self, key: str, type_key: str) -> bool:
        """True when a later source than every one that set ``key`` changed the section's type
        (``type_key``): ``key`` was written for the old type."""
        changed_by = self.provenance.get(type_key + CHANGED)
        return changed_by is not None and self.latest(key) < self.order(changed_by)

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
    try:
        object.__setattr__(result, "_config_notes", list(ctx.notes))
    except AttributeError:  # slotted dataclass
        pass
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
        value = {} if value is None else value
        chosen = select_variant(tp, value)
        if chosen is None:
            return ctx.fail(f"{key}.{VARIANT_KEY}" if key else VARIANT_KEY,
                            f"expects one of {', '.join(map(repr, tp.variants))}, got {_describe(value[VARIANT_KEY])}")
        return _convert_dataclass(chosen, value, key, ctx)
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
    if tp is float and type(value) is float and not math.isfinite(value):
        # YAML reads .inf and .nan as floats: no setting means them (null switches the optional limits off)
        return ctx.fail(key, f"expects a finite number, got {value!r}")
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


def select_variant(cls, value):
    """The section class for a mapping: a dataclass whose own ``variants`` class attribute maps
    ``type`` values to its subclasses (e.g. one model section per detector kind) is replaced by the subclass
    that ``value["type"]`` (or the field's default) names; None for an unknown type. Other classes (and
    the subclasses themselves) are returned as they are."""
    variants = cls.__dict__.get("variants")
    if not variants or not isinstance(value, Mapping):
        return cls
    default = next(f.default for f in dataclasses.fields(cls) if f.name == VARIANT_KEY)
    name = value.get(VARIANT_KEY, default)
    return variants.get(name) if isinstance(name, str) else None


def _variant_family(cls):
    """(base, variants) when ``cls`` is one of a base's variants, else None."""
    for base in cls.__mro__[1:]:
        variants = base.__dict__.get("variants")
        if variants and cls in variants.values():
            return base, variants
    return None


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
    prefix = f"{key}." if key else ""
    type_key = prefix + VARIANT_KEY
    pushed = _variant_family(cls) is not None and type_key + CHANGED in ctx.provenance
    if pushed:
        ctx.type_changes.append((type_key, value.get(VARIANT_KEY)))
    try:
        return _convert_fields(cls, value, key, prefix, ctx)
    finally:
        if pushed:
            ctx.type_changes.pop()


def _convert_fields(cls, value, key, prefix, ctx):
    # get_type_hints resolves string annotations (from __future__ import annotations).
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs, failed = {}, False
    stale = _stale_keys(cls, value, prefix, ctx)
    for name in value:
        if name not in fields and name not in stale:
            failed = True
            _unknown_key(ctx, prefix, name, list(fields), cls)
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


def _stale_keys(cls, value, prefix, ctx) -> List[str]:
    """Keys that do not apply to a section and were set before its type was changed by a later source (e.g.
    ``weighting.cls_keys`` of a base ALWA config under ``--set weighting.type=fixed``, or RetinaNet's
    ``model.test.pre_nms_rank`` under ``--set model.type=faster_rcnn``, at any depth): dropped, with a note.
    Keys given together with or after the new type stay errors; keys valid in both types keep their value."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = [n for n in value if n not in fields]
    if not unknown or not ctx.type_changes:
        return []
    t, new_type = ctx.type_changes[-1]  # the innermost changed type
    stale = [n for n in unknown if ctx.replaced(prefix + str(n), t)]
    if stale:
        dropped = ", ".join(f"{prefix}{n} (from {ctx.source(prefix + str(n))})" for n in stale)
        ctx.notes.append(f"{t} changed to '{new_type}' (by {ctx.provenance[t + CHANGED]}) replaces the keys of "
                         f"the previous type: dropped {dropped}")
    return stale


def _unknown_key(ctx, prefix, name, valid, cls=None):
    full = prefix + str(name)
    renamed = getattr(cls, "renamed", {}).get(name)
    if renamed is not None:
        ctx.errors.append(f"key '{full}' (from {ctx.source(full)}) was renamed: use '{prefix + renamed}'")
        return
    message = f"unknown key '{full}' (from {ctx.source(full)})"
    family = _variant_family(cls) if cls is not None else None
    if family is not None:  # a key of a sibling section: say which type it belongs to
        owners = [t for t, c in family[1].items() if c is not cls and name in {f.name for f in dataclasses.fields(c)}]
        own = next(t for t, c in family[1].items() if c is cls)
        if owners:
            message = (f"key '{full}' (from {ctx.source(full)}) does not apply to {prefix}{VARIANT_KEY} '{own}' "
                       f"(it is a key of {' / '.join(owners)})")
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
    if close:
        message += f"; did you mean '{prefix + close[0]}'?"
    else:
        message += "; valid keys are: " + ", ".join(valid)
    ctx.errors.append(message)
