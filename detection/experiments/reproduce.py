"""Run the paper's tables and print them beside the paper (behind ``scripts/reproduce.py``).

Every cell of ``configs/tables.yaml`` is one training run: ``configs/<name>.yaml`` trained into
``<work root>/<name>/``. A run is *finished* when its ``eval.json`` exists (it is then skipped), *partial*
when only ``checkpoints/last.pth`` exists (it is resumed: every command carries ``--resume``), *diverged*
when the non-finite guard stopped it (``diverged.json``: reported, not retrained), *missing* otherwise.
Cells shared by two tables (Table 1's 1 : 1 row is Table 2's baseline, Table 5's 1 : 1 row is Table 4's L1
baseline) share their work dir, so they are trained once.

Each table records the paper's layout (``gpus`` x ``images_per_gpu`` images per step); a run uses that many
processes unless ``--gpus`` says otherwise or fewer GPUs are visible (the learning rate then follows the
total batch linearly, and ALWA's per-process statistics see a different number of images: both are said).
Command lines are built by pure functions (:func:`train_command`, :func:`scale_overrides`)."""
from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import yaml

from detection.experiments.schedule import describe_schedule, schedule_estimate
from detection.experiments.tables import CONFIG_DIR, REPO, Spec, Table, load_spec
from detection.training.workdir import read_diverged

TRAIN_SCRIPT = os.path.join(REPO, "scripts", "train.py")
DEFAULT_WORK_ROOT = os.path.join("work_dirs", "reproduce")


@dataclass(frozen=True)
class Run:
    table: int
    row: str
    col: str
    name: str
    cfg: str  # config file
    work_dir: str
    paper: Dict[str, Optional[float]]


def default_work_root(scale: float = 1.0, data_fraction: Optional[float] = None) -> str:
    """Scaled (quick) runs get their own root: a finished quick run must never be taken for a full one."""
    root = DEFAULT_WORK_ROOT if scale == 1.0 else f"{DEFAULT_WORK_ROOT}_scale{scale:g}"
    if data_fraction is not None and data_fraction != scale:
        root += f"_data{data_fraction:g}"
    return root


def run_status(work_dir: str) -> str:
    if os.path.isfile(os.path.join(work_dir, "eval.json")):
        return "finished"
    if read_diverged(work_dir) is not None:
        return "diverged"
    if os.path.isfile(os.path.join(work_dir, "checkpoints", "last.pth")):
        return "partial"
    return "missing"


def plan(numbers: Iterable[int], work_root: str, config_dir: str = CONFIG_DIR,
         spec: Optional[Spec] = None) -> List[Run]:
    """The runs of the given tables, table by table, row-major (a cell shared by two tables appears in both)."""
    spec = spec or load_spec()
    runs = []
    for n in numbers:
        if n not in spec.tables:
            raise ValueError(f"no table {n} in the spec; tables are {sorted(spec.tables)}")
        for c in spec.tables[n].cells:
            runs.append(Run(n, c.row, c.col, c.name, _short(os.path.join(config_dir, c.name + ".yaml")),
                            _short(os.path.join(work_root, c.name)), c.paper))
    return runs


def _short(path: str) -> str:
    """Relative to the working dir when below it (readable commands), absolute otherwise."""
    rel = os.path.relpath(os.path.abspath(path))
    return os.path.abspath(path) if rel.startswith("..") else rel


# ------------------------------------------------------------ command lines

def _yaml_value(value) -> str:
    """A value as ``--set`` parses it (YAML): plain when it reads back as itself, else JSON-quoted."""
    if isinstance(value, str):
        return value if yaml.safe_load(value) == value else json.dumps(value)
    return json.dumps(value)


def scale_overrides(train, scale: float) -> List[str]:
    """``--set`` overrides that shorten the schedule of ``train`` (a TrainConfig) to the fraction ``scale``.

    The length is scaled (``max_iters``, else ``epochs``; at least 1) and the LR steps and the warmup by the
    same *effective* ratio, so the schedule keeps its shape: 12 epochs, steps at 8 and 11, scale 0.5 ->
    6 epochs, steps at 4 and 5.5. Epochs stay whole (the trainer counts whole epochs), so the shortest
    epoch-based pass is one epoch; give ``--set train.max_iters=N`` for shorter ones. The data are
    reduced separately (:func:`run_overrides`, ``data.train_fraction``)."""
    if not 0 < scale <= 1:
        raise ValueError(f"--scale must be in (0, 1], got {scale}")
    if scale == 1:
        return []
    if train.max_iters is not None:
        new = max(1, round(train.max_iters * scale))
        ratio = new / train.max_iters
        out = [f"train.max_iters={new}", f"train.lr_steps={_flow([round(s * ratio) for s in train.lr_steps])}"]
    else:
        new = max(1, round(train.epochs * scale))
        ratio = new / train.epochs
        steps = [round(s * ratio, 4) for s in train.lr_steps]
        out = [f"train.epochs={new}", f"train.lr_steps={_flow(steps)}"]
    return out + [f"train.warmup_iters={round(train.warmup_iters * ratio)}"]


def _flow(values) -> str:
    """A list as one shell word that YAML reads back: ``[4.0,5.5]``."""
    return json.dumps(values, separators=(",", ":"))


def resolve_gpus(requested: Optional[int], available: int, paper: Optional[int] = None) -> int:
    """Processes per run: none without a GPU (plain python), else ``--gpus``, else the paper's count
    (``paper``) capped at the visible GPUs (every visible GPU when the paper's count is not given)."""
    if available == 0:
        return 0
    if requested is not None:
        return requested
    return available if paper is None else min(paper, available)


def train_command(cfg: str, work_dir: str, gpus: int, overrides: Sequence[str] = (),
                  python: str = sys.executable, script: str = TRAIN_SCRIPT) -> List[str]:
    """``torchrun --nproc_per_node=K train.py ...`` for K > 1 GPUs, ``python train.py ...`` otherwise."""
    launcher = ["torchrun", f"--nproc_per_node={gpus}"] if gpus > 1 else [python]
    cmd = launcher + [_short(script), "--cfg", cfg, "--work-dir", work_dir, "--resume"]
    return cmd + (["--set", *overrides] if overrides else [])


def run_overrides(run: Run, data_root: Optional[str], scale: float, overrides: Sequence[str],
                  data_fraction: Optional[float] = None) -> List[str]:
    """data.root, then the user's overrides, then the schedule scaling computed on top of both, then the
    fraction of the training images (``data_fraction``, by default ``scale``) as ``data.train_fraction``."""
    out = ([f"data.root={_yaml_value(data_root)}"] if data_root else []) + list(overrides)
    if scale != 1:
        from detection import engine

        out += scale_overrides(engine.load(run.cfg, out).train, scale)
    fraction = scale if data_fraction is None else data_fraction
    if not 0 < fraction <= 1:
        raise ValueError(f"--data-fraction must be in (0, 1], got {fraction}")
    if fraction != 1:
        out.append(f"data.train_fraction={fraction:g}")
    return out


# ------------------------------------------------------------------ running

def reproduce(numbers: Sequence[int], work_root: str, gpus: Optional[int] = None, data_root: Optional[str] = None,
              scale: float = 1.0, overrides: Sequence[str] = (), dry_run: bool = False,
              config_dir: str = CONFIG_DIR, runner: Optional[Callable[[List[str]], int]] = None,
              out: Callable[[str], None] = print, available_gpus: Optional[int] = None,
              data_fraction: Optional[float] = None) -> int:
    """List (``dry_run``: status, iterations, images seen, command) or train, one after another, the runs
    of the given tables that are not finished. Stops at the first failing run and returns its exit code
    (0 when all ran; a run that diverged is reported and the others go on); rerunning resumes."""
    from detection import engine

    spec = load_spec()
    runs = plan(numbers, work_root, config_dir, spec)
    if available_gpus is None:
        import torch

        available_gpus = torch.cuda.device_count()

    def nproc(run: Run) -> int:
        return resolve_gpus(gpus, available_gpus, spec.tables[run.table].gpus)

    for n in numbers:
        mine = [r for r in runs if r.table == n]
        counts = {s: sum(run_status(r.work_dir) == s for r in mine)
                  for s in ("finished", "diverged", "partial", "missing")}
        said = ", ".join(f"{v} {k}" for k, v in counts.items() if v or k != "diverged")
        out(f"Table {n}, {spec.tables[n].title}: {len(mine)} runs ({said})")
        total_images = 0
        for r in mine:
            status = run_status(r.work_dir)
            out(f"  {status:<8s}  {r.cfg}  ->  {r.work_dir}")
            if dry_run:
                over = run_overrides(r, data_root, scale, overrides, data_fraction)
                cfg, procs = engine.load(r.cfg, over), nproc(r)
                est = schedule_estimate(cfg, procs)
                total_images += est["images_seen"] or 0
                out("            " + describe_schedule(cfg, procs, spec.tables[n], est))
                if status not in ("finished", "diverged"):
                    out("            $ " + shlex.join(train_command(r.cfg, r.work_dir, procs, over)))
        if dry_run:
            out(f"  Table {n} in all: ≈ {total_images:,} training images seen over {len(mine)} runs")
    if dry_run:
        return 0
    done = set()
    for r in runs:
        if r.name in done or run_status(r.work_dir) in ("finished", "diverged"):
            continue
        cmd = train_command(r.cfg, r.work_dir, nproc(r), run_overrides(r, data_root, scale, overrides, data_fraction))
        out(f"[reproduce] Table {r.table} {r.row} / {r.col}: {shlex.join(cmd)}")
        code = (runner or run_child)(cmd)
        if code != 0 and run_status(r.work_dir) == "diverged":  # a result (the same run diverges again)
            it = read_diverged(r.work_dir)["iter"]
            out(f"[reproduce] {r.name} diverged at iteration {it} (diverged.json); going on")
        elif code != 0:
            out(f"[reproduce] {r.name} failed (exit code {code}); rerun the same command to resume")
            return code
        done.add(r.name)
    return 0


def run_child(cmd: List[str]) -> int:
    """Run a command, waiting through Ctrl-C: the child gets the same SIGINT and checkpoints (subprocess.call
    would kill it 0.25 s later)."""
    proc = subprocess.Popen(cmd)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            pass


# --------------------------------------------------------------- collecting

def read_metric(work_dir: str, metric: str) -> Optional[float]:
    """Our number from ``eval.json`` (``mAP`` for VOC, ``AP`` / ``AP50`` / ``AP75`` = COCO box AP), None for
    an unfinished run."""
    path = os.path.join(work_dir, "eval.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        value = json.load(f).get(metric)
    return None if value is None else float(value)


def alwa_statistics(work_dir: str) -> str:
    """How a finished run's ALWA statistics were taken, from its ``config.yaml`` and ``eval.json``:
    ``"per process, 2 images (4 processes)"``, ``"pooled, 8 images (4 processes)"``, ``"-"`` without ALWA,
    ``"?"`` when the run has not written them."""
    cfg_path, ev_path = os.path.join(work_dir, "config.yaml"), os.path.join(work_dir, "eval.json")
    if not (os.path.isfile(cfg_path) and os.path.isfile(ev_path)):
        return "?"
    with open(cfg_path) as f:
        cfg = yaml.safe_load(f) or {}
    with open(ev_path) as f:
        ev = json.load(f)
    w = cfg.get("weighting") or {}
    if w.get("type") != "alwa":
        return "-"
    procs = ev.get("world_size")
    per = ev.get("images_per_process", (cfg.get("data") or {}).get("batch_size"))
    if procs is None or per is None:
        return "?"
    if w.get("sync", True) and procs > 1:
        return f"pooled, {procs * per} images per step ({procs} processes)"
    return f"per process, {per} images per step ({procs} process{'es' if procs > 1 else ''})"


def table_rows(table: Table, work_root: str) -> List[dict]:
    """One dict per cell (row-major): row, col, config, status, ALWA statistics, and per metric ours, paper,
    delta (ours - paper)."""
    rows = []
    for c in table.cells:
        work = os.path.join(work_root, c.name)
        row = {"row": c.row, "col": c.col, "config": c.name, "status": run_status(work),
               "alwa_stats": alwa_statistics(work), "metrics": {}}
        diverged = read_diverged(work) if row["status"] == "diverged" else None
        for m in table.metrics:
            ours, paper = read_metric(work, m), c.paper.get(m)
            row["metrics"][m] = {"ours": ours, "paper": paper, "diverged_at": diverged and diverged["iter"],
                                 "delta": None if ours is None or paper is None else ours - paper}
        rows.append(row)
    return rows


def markdown(table: Table, rows: List[dict]) -> str:
    """The paper's layout (rows x columns, each column as ours | paper | Δ) for one metric; with several
    metrics (COCO: AP, AP50, AP75) one line per cell, each metric as ours | paper | Δ. "-" for a run not
    finished, "n/a" where the paper has no number."""
    d = table.digits

    def num(v, missing):
        return missing if v is None else f"{v:.{d}f}"

    def triple(m):
        if m["ours"] is None:
            diff = "-"
        elif m["paper"] is None:
            diff = "n/a"
        else:
            diff = f"{round(m['delta'], d) + 0.0:+.{d}f}"  # + 0.0: no "-0.000"
        ours = num(m["ours"], "-" if m.get("diverged_at") is None else f"diverged (it. {m['diverged_at']})")
        return [ours, num(m["paper"], "n/a"), diff]

    metrics = table.metrics
    lines = [f"### Table {table.number}: {table.title}; {', '.join(metrics)}", "",
             f"Paper numbers: {table.source}. Δ = ours − paper; - = run not finished; n/a = no paper number; "
             "diverged (it. N) = stopped by non-finite losses at iteration N.", ""]
    if len(metrics) == 1:
        m = metrics[0]
        head = [table.row_header] + [h for col in table.cols for h in (f"{col} (ours)", "paper", "Δ")]
        body = [[label] + [x for r in rows[i * len(table.cols):(i + 1) * len(table.cols)] for x in triple(r["metrics"][m])]
                for i, label in enumerate(table.rows)]
    else:
        head = [table.row_header, "setting"] + [h for m in metrics for h in (f"{m} (ours)", "paper", "Δ")]
        body = [[r["row"], r["col"]] + [x for m in metrics for x in triple(r["metrics"][m])] for r in rows]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    stats = sorted({r["alwa_stats"] for r in rows if r["alwa_stats"] not in ("-", "?")})
    if stats:
        lines += ["", "ALWA statistics of the finished runs: " + "; ".join(
            f"{s} ({sum(r['alwa_stats'] == s for r in rows)} run(s))" for s in stats)
            + ". The released code took them per process (each GPU its own λ, over its "
              f"{table.images_per_gpu} images per step)."]
    return "\n".join(lines) + "\n"


def collect(numbers: Sequence[int], work_root: str, out_dir: Optional[str] = None,
            spec: Optional[Spec] = None) -> str:
    """Markdown of the given tables; also writes ``table<N>.md`` and ``table<N>.csv`` (one line per cell and
    metric) into ``out_dir``."""
    spec = spec or load_spec()
    out_dir = out_dir or work_root
    os.makedirs(out_dir, exist_ok=True)
    parts = []
    for n in numbers:
        table = spec.tables[n]
        rows = table_rows(table, work_root)
        text = markdown(table, rows)
        parts.append(text)
        with open(os.path.join(out_dir, f"table{n}.md"), "w", encoding="utf-8") as f:
            f.write(text)
        with open(os.path.join(out_dir, f"table{n}.csv"), "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["table", "row", "column", "config", "metric", "ours", "paper", "delta", "status",
                             "alwa_stats"])
            for r in rows:
                for m, v in r["metrics"].items():
                    writer.writerow([n, r["row"], r["col"], r["config"], m, _csv(v["ours"]), _csv(v["paper"]),
                                     _csv(None if v["delta"] is None else round(v["delta"], 6)), r["status"],
                                     r["alwa_stats"]])
    return "\n".join(parts)


def _csv(value) -> str:
    return "" if value is None else repr(value)
