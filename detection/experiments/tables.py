"""The paper's tables as data (``configs/tables.yaml``) and the config files generated from them.

The spec is the one source of truth: every cell of Tables 1-8 names its config, the config's ``_base_``
and its overrides (dotted keys, as with ``--set``), and the paper's number(s) for the table's metrics. :func:`render_configs` turns the spec into the text of every ``configs/<name>.yaml``;
``scripts/gen_configs.py`` writes them, and a test checks that the committed files are exactly this output,
so no table config drifts from the spec. ``detection/experiments/reproduce.py`` runs and tabulates the same cells.

Generated files carry :data:`GENERATED_MARKER`; a file with the marker that the spec no longer produces is
reported as an orphan by :func:`check_configs`.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import yaml

from detection.config.loader import select_variant

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO, "configs")
SPEC_PATH = os.path.join(CONFIG_DIR, "tables.yaml")
GENERATED_MARKER = "# Generated from configs/tables.yaml by scripts/gen_configs.py: edit the spec, not this file."
METRICS = ("mAP", "AP", "AP50", "AP75")  # eval.json keys: VOC mAP, COCO box AP (AP@[.5:.95], @.5, @.75)


@dataclass(frozen=True)
class Cell:
    table: int
    row: str
    col: str
    name: str  # config name: configs/<name>.yaml, work dir <work root>/<name>
    base: Optional[str]  # _base_ path relative to configs/ (None for a reused cell)
    overrides: Dict[str, Any]  # dotted key -> value, as in --set
    paper: Dict[str, Optional[float]]  # metric -> the paper's number (None: not reported)
    reuse: bool = False  # the config is defined by another table's cell


@dataclass(frozen=True)
class Table:
    number: int
    title: str
    metrics: List[str]
    digits: int
    row_header: str
    rows: List[str]
    cols: List[str]
    source: str
    cells: List[Cell]  # row-major
    gpus: int = 4  # the paper's layout: processes x images per process = images per step
    images_per_gpu: int = 2

    def cell(self, row: int, col: int) -> Cell:
        return self.cells[row * len(self.cols) + col]


@dataclass(frozen=True)
class Spec:
    tables: Dict[int, Table]
    aliases: Dict[str, Dict[str, str]] = field(default_factory=dict)  # name -> {of, note}

    def owners(self) -> Dict[str, Cell]:
        """Config name -> the cell that defines it (reused cells point at these)."""
        return {c.name: c for t in self.tables.values() for c in t.cells if not c.reuse}


class SpecError(ValueError):
    pass


def load_spec(path: str = SPEC_PATH) -> Spec:
    """Read and check the table spec; errors name the table and cell."""
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise SpecError(f"{path} is not valid YAML: {exc}") from exc
    tables = {int(n): _parse_table(int(n), t) for n, t in sorted(data.get("tables", {}).items())}
    spec = Spec(tables, dict(data.get("aliases") or {}))
    _check(spec)
    return spec


def parse_tables(items: List[str], spec: Optional[Spec] = None) -> List[int]:
    """``["2", "3"]`` or ``["all"]`` -> table numbers (in the order given)."""
    known = sorted((spec or load_spec()).tables)
    if list(items) == ["all"]:
        return known
    numbers = []
    for item in items:
        if not item.isdigit() or int(item) not in known:
            raise ValueError(f"--table takes numbers from {known} or 'all', got {item!r}")
        numbers.append(int(item))
    return numbers


TABLE_KEYS = {"title", "metrics", "digits", "gpus", "images_per_gpu", "row_header", "rows", "cols", "source", "cells"}


def _number(value) -> bool:
    return value is None or (not isinstance(value, bool) and isinstance(value, (int, float)))


def _paper(where: str, metrics: List[str], paper) -> Dict[str, Optional[float]]:
    """``0.75`` (the table's only metric) or ``{metric: number, ...}`` -> metric -> float or None."""
    if not isinstance(paper, dict):
        if len(metrics) != 1 or not _number(paper):
            raise SpecError(f"{where}: paper must be a number or null (one metric) or a mapping of "
                            f"{metrics} to numbers, got {paper!r}")
        paper = {metrics[0]: paper}
    if set(paper) - set(metrics) or not all(_number(v) for v in paper.values()):
        raise SpecError(f"{where}: paper must map the table's metrics {metrics} to numbers or null, got {paper!r}")
    return {m: None if paper.get(m) is None else float(paper[m]) for m in metrics}


def _parse_table(number: int, t: dict) -> Table:
    where = f"table {number}"
    unknown = set(t) - TABLE_KEYS
    if unknown:
        raise SpecError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(TABLE_KEYS)}")
    rows, cols, raw = list(t["rows"]), list(t["cols"]), list(t["cells"])
    metrics = list(t["metrics"])
    bad = [m for m in metrics if m not in METRICS]
    if not metrics or bad:
        raise SpecError(f"{where}: metrics must be a non-empty list of {METRICS}, got {metrics}")
    if len(raw) != len(rows) * len(cols):
        raise SpecError(f"{where}: {len(raw)} cells for {len(rows)} rows x {len(cols)} cols")
    cells = []
    for i, c in enumerate(raw):
        row, col = rows[i // len(cols)], cols[i % len(cols)]
        unknown = set(c) - {"name", "base", "set", "paper", "reuse"}
        reuse = bool(c.get("reuse", False))
        if unknown or "name" not in c or "paper" not in c or reuse == ("base" in c) or (reuse and "set" in c):
            raise SpecError(f"{where}, cell {i} ({row} / {col}): expected {{name, base, set, paper}} or "
                            f"{{name, reuse: true, paper}}, got {c}")
        cells.append(Cell(number, row, col, c["name"], c.get("base"), dict(c.get("set") or {}),
                          _paper(f"{where}, cell {c['name']}", metrics, c["paper"]), reuse))
    return Table(number, t["title"], metrics, int(t["digits"]), t["row_header"], rows, cols, t["source"], cells,
                 int(t.get("gpus", 4)), int(t.get("images_per_gpu", 2)))


def _check(spec: Spec) -> None:
    """One defining cell per config name; reused cells and aliases point at a defined one."""
    owners: Dict[str, Cell] = {}
    for c in (c for t in spec.tables.values() for c in t.cells if not c.reuse):
        if c.name in owners:
            raise SpecError(f"config {c.name} is defined twice (tables {owners[c.name].table} and {c.table}); "
                            f"mark one cell `reuse: true`")
        owners[c.name] = c
    for c in (c for t in spec.tables.values() for c in t.cells if c.reuse):
        if c.name not in owners:
            raise SpecError(f"table {c.table}: reused cell {c.name} is not defined by any table")
    for name, alias in spec.aliases.items():
        if name in owners or alias.get("of") not in owners:
            raise SpecError(f"alias {name}: must be a new name pointing at a cell's config, got {alias}")


# ----------------------------------------------------------------- rendering

def nest(dotted: Dict[str, Any]) -> dict:
    """``{"a.b": 1, "a.c": 2}`` -> ``{"a": {"b": 1, "c": 2}}`` (values that are mappings merge too)."""
    tree: dict = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf].update(value)
        else:
            node[leaf] = value
    return tree


def _schema_order(tree: dict, cls) -> dict:
    """Keys in the schema's field order (so files read like detection/config/schema/, whatever the spec's
    order); keys the schema does not know stay last and are reported when the config is loaded."""
    if not dataclasses.is_dataclass(cls):
        return tree
    cls = select_variant(cls, tree) or cls  # the section of the tree's type (model, weighting)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for name in [n for n in names if n in tree] + [k for k in tree if k not in names]:
        value, sub = tree[name], hints.get(name)
        if typing.get_origin(sub) is typing.Union:  # Optional[Section]
            sub = next((a for a in typing.get_args(sub) if a is not type(None)), None)
        out[name] = _schema_order(value, sub) if isinstance(value, dict) else value
    return out


class _Dumper(yaml.SafeDumper):
    """Block mappings, flow lists (``cls_keys: [loss_cls]``), as the hand-written configs had."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def _where(table: Table, cell: Cell) -> str:
    return f'row "{cell.row}" ({table.row_header}), column "{cell.col}"'


def render_cell(spec: Spec, cell: Cell, used_by: List[Cell] = ()) -> str:
    """The config file of one cell: a comment naming its table(s), ``_base_`` and its overrides."""
    from detection.config.schema import Config  # lazy: the schema imports torch-backed packages

    table = spec.tables[cell.table]
    lines = [f"# Table {cell.table}, {table.title}: {_where(table, cell)}."]
    lines += [f"# Also Table {c.table}: {_where(spec.tables[c.table], c)}." for c in used_by]
    lines += [GENERATED_MARKER, f"_base_: {cell.base}"]
    body = _schema_order(nest(cell.overrides), Config)
    text = "\n".join(lines) + "\n"
    if body:
        text += yaml.dump(body, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return text


def render_configs(spec: Spec) -> Dict[str, str]:
    """File name (``<name>.yaml``) -> text, for every defined cell and alias."""
    used_by: Dict[str, List[Cell]] = {}
    for t in spec.tables.values():
        for c in t.cells:
            if c.reuse:
                used_by.setdefault(c.name, []).append(c)
    files = {f"{c.name}.yaml": render_cell(spec, c, used_by.get(c.name, [])) for c in spec.owners().values()}
    for name, alias in spec.aliases.items():
        note = "".join(f"# {line}\n" for line in str(alias.get("note", "")).splitlines())
        files[f"{name}.yaml"] = f"{note}{GENERATED_MARKER}\n_base_: {alias['of']}.yaml\n"
    return files


def check_configs(config_dir: str = CONFIG_DIR, spec: Optional[Spec] = None) -> Tuple[List[str], List[str]]:
    """``(stale, orphans)``: files that differ from (or are missing against) the spec's output, and
    generated files in ``config_dir`` that the spec no longer produces."""
    files = render_configs(spec or load_spec())
    stale = [name for name, text in sorted(files.items()) if _read(os.path.join(config_dir, name)) != text]
    present = os.listdir(config_dir) if os.path.isdir(config_dir) else []
    orphans = sorted(n for n in present if n.endswith(".yaml") and n not in files
                     and GENERATED_MARKER in (_read(os.path.join(config_dir, n)) or ""))
    return stale, orphans


def _read(path: str) -> Optional[str]:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read()


def write_configs(config_dir: str = CONFIG_DIR, spec: Optional[Spec] = None) -> List[str]:
    """Write every generated config whose text changed; returns the names written."""
    spec = spec or load_spec()
    stale, _ = check_configs(config_dir, spec)
    files = render_configs(spec)
    os.makedirs(config_dir, exist_ok=True)
    for name in stale:
        with open(os.path.join(config_dir, name), "w", encoding="utf-8") as f:
            f.write(files[name])
    return stale
