"""Run loss-balancing schemes on one config (same data) and tabulate them, optionally as a grid.

A scheme is a name and a list of ``--set`` overrides applied on top of the config; ``PRESETS`` holds the
schemes of the seed papers for RetinaNet (loss keys ``loss_cls`` / ``loss_bbox``; per-level schemes switch on
``model.head.loss_per_level``) and for Faster / Mask R-CNN (ALWA on the RPN pair, as in the paper); a preset
that has no meaning for the config's detector is an error. Custom schemes are ``name:key=value,key=value``.

A grid adds *variants* (rows, e.g. the regression loss: ``VARIANT_PRESETS``, RetinaNet's box loss or the RoI
head's, or ``name:key=value,...``) and
*seeds* (``seed=S`` per run; the data stay the same, the initialisation, batch order and augmentation
change). Work dirs are ``<root>[/<variant>]/<scheme>[/seed<S>]``: the variant and seed levels exist only when
variants / seeds are given, so a plain comparison keeps ``<root>/<scheme>``. Finished runs (``eval.json``
present) are skipped, interrupted ones resume from their checkpoint. A run stopped by the non-finite guard
(``diverged.json``) is a result, not a failure: it is reported as diverged and not retrained. With
``jobs > 1`` several runs train at once as ``scripts/train.py`` subprocesses (each with ``threads`` CPU
threads, output in ``<work dir>/train.log``): on a small CPU, two one-thread runs get more done than one
two-thread run.
"""
from __future__ import annotations

import csv
import os
import shlex
import statistics
import subprocess
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from detection.experiments.plots import markdown_table, metric_columns, plot_runs, summary_rows
from detection.experiments.windows import windows_markdown
from detection.training.workdir import read_diverged

ONE_STAGE, TWO_STAGE = "one_stage", "two_stage"  # RetinaNet; Faster / Mask R-CNN


def _alwa(variant: int, *extra: str) -> Dict[str, List[str]]:
    """ALWA where the paper puts it: RetinaNet's head losses, the RPN pair of a two-stage detector."""
    base = ["weighting.type=alwa", f"weighting.variant={variant}", *extra]
    return {ONE_STAGE: base + ["weighting.cls_keys=[loss_cls]", "weighting.reg_keys=[loss_bbox]"],
            TWO_STAGE: base + ["weighting.cls_keys=[loss_rpn_cls]", "weighting.reg_keys=[loss_rpn_bbox]"]}


_TWO_STAGE_KEYS = "[loss_rpn_cls,loss_rpn_bbox,loss_cls,loss_bbox]"
# scheme name -> detector kind -> overrides; a kind that is missing has no such scheme (an error, never a no-op)
PRESETS: Dict[str, Dict[str, List[str]]] = {
    "fixed": {ONE_STAGE: ["weighting.type=fixed"], TWO_STAGE: ["weighting.type=fixed"]},
    "alwa1": _alwa(1),
    "alwa2": _alwa(2),
    "alwa2_raw": _alwa(2, "weighting.stats=raw"),
    "avw": {ONE_STAGE: ["weighting.type=avw", "model.head.loss_per_level=true"]},
    "rlo": {ONE_STAGE: ["weighting.type=rlo", "model.head.loss_per_level=true"]},
    # Wu et al. as released for RetinaNet R50 on VOC: eta = lambda = 1.5, smooth L1 (beta 0.11) x 2.34, the
    # classification normaliser per FPN level; it sets the regression loss itself (not for a loss grid)
    "iou_balanced": {ONE_STAGE: ["weighting.type=fixed", "model.loss.reg_loss=smooth_l1", "model.loss.smooth_l1_beta=0.11",
                                 "model.loss.reg_loss_weight=2.34", "model.loss.iou_balanced_eta=1.5",
                                 "model.loss.iou_balanced_lambda=1.5", "model.loss.iou_balanced_norm=level"]},
    "uncertainty": {ONE_STAGE: ["weighting.type=uncertainty"],
                    TWO_STAGE: ["weighting.type=uncertainty", f"weighting.keys={_TWO_STAGE_KEYS}"]},
    "dwa": {ONE_STAGE: ["weighting.type=dwa"], TWO_STAGE: ["weighting.type=dwa", f"weighting.keys={_TWO_STAGE_KEYS}"]},
}
NOT_TWO_STAGE = {
    "avw": "AVW weighs RetinaNet's per-level losses (model.head.loss_per_level); give the keys yourself, e.g. "
           "NAME:weighting.type=avw,weighting.groups=...",
    "rlo": "RLO weighs RetinaNet's per-level losses (model.head.loss_per_level); give the keys yourself, e.g. "
           "NAME:weighting.type=rlo,weighting.groups=...",
    "iou_balanced": "the released IoU-balanced settings are RetinaNet's; for a two-stage detector set the heads' "
                    "keys, e.g. NAME:model.roi_head.iou_balanced_eta=1.25,model.roi_head.iou_balanced_lambda=1.5,"
                    "model.rpn.iou_balanced_eta=1.5",
}


def _rows(one_stage_key: str, two_stage_key: str, two_stage_weight: str = "1.0") -> Dict[str, List[str]]:
    return {ONE_STAGE: [f"model.loss.reg_loss={one_stage_key}"],
            TWO_STAGE: [f"model.roi_head.reg_loss={two_stage_key}", f"model.roi_head.reg_loss_weight={two_stage_weight}"]}


# The regression loss (Table 2 / 3's rows), as released: RetinaNet's box loss; for Faster / Mask R-CNN the RoI
# head's (the RPN keeps its L1 in every row), SmoothL1 with beta 1.0 (x 1.1 in the RoI head)
VARIANT_PRESETS: Dict[str, Dict[str, List[str]]] = {
    "l1": _rows("l1", "l1"),
    "smoothl1": {ONE_STAGE: ["model.loss.reg_loss=smooth_l1", "model.loss.smooth_l1_beta=1.0"],
                 TWO_STAGE: ["model.roi_head.reg_loss=smooth_l1", "model.roi_head.smooth_l1_beta=1.0",
                             "model.roi_head.reg_loss_weight=1.1"]},
    **{name: _rows(name, name) for name in ("iou", "giou", "diou", "ciou", "ciou_mmdet")},
}


def detector_kind(model_type: str) -> str:
    return ONE_STAGE if model_type == "retinanet" else TWO_STAGE


def parse_scheme(spec: str, presets: Dict[str, Dict[str, List[str]]] = PRESETS, what: str = "scheme",
                 model_type: str = "retinanet") -> Tuple[str, List[str]]:
    """``alwa1`` (a preset, resolved for ``model_type``) or ``name:key=value,key=value`` (custom overrides).
    A preset that does not exist for the detector is an error that says what to do instead."""
    if ":" in spec:
        name, _, rest = spec.partition(":")
        overrides = [s for s in rest.split(",") if s]
        bad = [s for s in overrides if "=" not in s]
        if not name or bad:
            raise ValueError(f"{what} '{spec}': expected NAME:key=value,key=value")
        return name, overrides
    if spec not in presets:
        raise ValueError(f"unknown {what} '{spec}'; presets are {sorted(presets)}, or give NAME:key=value,...")
    kind = detector_kind(model_type)
    if kind not in presets[spec]:
        raise ValueError(f"the {what} preset '{spec}' does not apply to {model_type}: {NOT_TWO_STAGE.get(spec, '')}")
    return spec, list(presets[spec][kind])


@dataclass(frozen=True)
class GridRun:
    variant: Optional[str]
    scheme: str
    seed: Optional[int]
    work_dir: str
    overrides: Tuple[str, ...]  # common, then variant, then scheme, then seed

    @property
    def label(self) -> str:
        parts = [self.variant, self.scheme, None if self.seed is None else f"seed{self.seed}"]
        return "/".join(p for p in parts if p is not None)


def plan_grid(schemes: Sequence[str], work_root: str, variants: Sequence[str] = (), seeds: Sequence[int] = (),
              overrides: Sequence[str] = (), model_type: str = "retinanet") -> List[GridRun]:
    """Every (variant, scheme, seed) run in row-major order, with its work dir and overrides; presets are
    resolved for ``model_type`` (the config's ``model.type``)."""
    parsed = [parse_scheme(s, model_type=model_type) for s in schemes]
    rows = [parse_scheme(v, VARIANT_PRESETS, "variant", model_type) for v in variants] or [(None, [])]
    for what, names in (("scheme", [n for n, _ in parsed]), ("variant", [n for n, _ in rows]), ("seed", list(seeds))):
        if len(set(names)) != len(names):
            raise ValueError(f"{what} names must be distinct, got {names}")
    runs = []
    for variant, v_over in rows:
        for scheme, s_over in parsed:
            for seed in list(seeds) or [None]:
                parts = [work_root] + ([variant] if variant else []) + [scheme]
                parts += [f"seed{seed}"] if seed is not None else []
                extra = [f"seed={seed}"] if seed is not None else []
                runs.append(GridRun(variant, scheme, seed, os.path.join(*parts),
                                    tuple(list(overrides) + v_over + s_over + extra)))
    return runs


def is_finished(run: GridRun) -> bool:
    """Evaluated (``eval.json``), or stopped by the non-finite guard (``diverged.json``): a diverged run is a
    result, reported as such; retraining the same seed would diverge again (delete its folder to retry)."""
    return os.path.isfile(os.path.join(run.work_dir, "eval.json")) or read_diverged(run.work_dir) is not None


def _diverged_note(run: GridRun) -> Optional[str]:
    record = read_diverged(run.work_dir)
    return None if record is None else f"diverged at iteration {record['iter']}"


def pending_runs(runs: Sequence[GridRun], seeds: Sequence[Optional[int]] = ()) -> List[GridRun]:
    """The unfinished runs of a grid planned with ``seeds``, in :func:`execution_order`."""
    return execution_order([r for r in runs if not is_finished(r)], seeds)


def execution_order(runs: Sequence[GridRun], seeds: Sequence[Optional[int]] = ()) -> List[GridRun]:
    """Seed by seed in the order of ``seeds`` (default: order of first appearance), row-major within a seed, so
    that a grid stopped part way has every cell at the same number of seeds. Pass the grid's seeds when ``runs``
    is what is left of a resumed grid: the seed of its first leftover run need not be the first seed."""
    rank = {s: i for i, s in enumerate(list(seeds) or list(dict.fromkeys(r.seed for r in runs)))}
    return sorted(runs, key=lambda r: rank[r.seed])


def _prepare_data(cfg_path: str, runs: Sequence[GridRun]) -> None:
    """Generate the synthetic data (if any) once per data root before runs start in parallel: two processes
    generating into the same folder at once would race."""
    from detection import builders, engine

    seen = set()
    for r in runs:
        data = engine.load(cfg_path, list(r.overrides)).data
        if data.root not in seen:
            seen.add(data.root)
            builders.prepare_data(data)


def run_command(cfg_path: str, run: GridRun, nproc: int = 1) -> List[str]:
    """``python scripts/train.py ... --resume``, or with ``nproc`` > 1 the same under this interpreter's
    torchrun (``--standalone``: a free port per run, so several grid jobs can run at once; gloo on a CPU)."""
    from detection.experiments.reproduce import train_command

    cmd = train_command(cfg_path, run.work_dir, 0, list(run.overrides) + ["train.progress=false"])
    if nproc > 1:
        cmd = cmd[:1] + ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] + cmd[1:]
    return cmd


def _run_parallel(cfg_path: str, runs: Sequence[GridRun], jobs: int, threads: Optional[int],
                  nproc: int = 1) -> List[str]:
    """Train ``runs`` with at most ``jobs`` subprocesses at a time (each of ``nproc`` processes); returns the
    labels of failed runs."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    pending, active, failed = list(runs), [], []
    while pending or active:
        while pending and len(active) < jobs:
            r = pending.pop(0)
            os.makedirs(r.work_dir, exist_ok=True)
            cmd = run_command(cfg_path, r, nproc)
            log = open(os.path.join(r.work_dir, "train.log"), "a")
            print(f"[compare] {r.label}: started ({shlex.join(cmd)}; log in {log.name})", flush=True)
            active.append((r, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        time.sleep(2)
        for item in list(active):
            r, proc, log = item
            if proc.poll() is not None:
                log.close()
                active.remove(item)
                ok, diverged = proc.returncode == 0, _diverged_note(r)
                status = "finished" if ok else (f"{diverged}, see {log.name}" if diverged
                                                else f"FAILED (exit {proc.returncode}), see {log.name}")
                print(f"[compare] {r.label}: {status}", flush=True)
                if not ok and not diverged:
                    failed.append(r.label)
    return failed


def run_grid(cfg_path: str, schemes: Sequence[str], work_root: str, variants: Sequence[str] = (),
             seeds: Sequence[int] = (), overrides: Sequence[str] = (), window: int = 100,
             plot_keys: Optional[Sequence[str]] = None, jobs: int = 1,
             threads: Optional[int] = None, report_only: bool = False, nproc: int = 1) -> str:
    """Train every unfinished run of the grid, then write ``compare.md`` (per-run table, and with variants or
    seeds the grid of mean ± sd and the paired differences to the first scheme), ``compare.csv`` and the loss
    plots (``losses.png``, or ``losses_<variant>.png``; the first seed's runs; ``plot_keys`` default: every loss
    of the runs' contracts, per-level splits summed). Returns the Markdown.
    ``report_only``: train nothing and report the runs finished so far (an error when there are none).
    ``nproc`` > 1: each run is ``nproc`` processes under torchrun (subprocesses, also with ``jobs`` 1)."""
    from detection import engine

    model_type = engine.load(cfg_path, list(overrides)).model.type
    runs = plan_grid(schemes, work_root, variants, seeds, overrides, model_type)
    todo = pending_runs(runs, list(seeds) or [None])
    done = [r for r in runs if r not in todo]
    if report_only:
        if not done:
            raise FileNotFoundError(f"no finished run (eval.json or diverged.json) under {work_root}")
        print(f"[compare] report of {len(done)} finished run(s) of {len(runs)}")
        return write_report(cfg_path, done, work_root, overrides, window, plot_keys, pending=todo)
    for r in done:
        print(f"[compare] {r.label}: {_diverged_note(r) or 'finished'}, skipped")
    if (jobs > 1 or nproc > 1) and todo:
        _prepare_data(cfg_path, todo)
        failed = _run_parallel(cfg_path, todo, jobs, threads, nproc)
        if failed:
            raise RuntimeError(f"{len(failed)} run(s) failed: {', '.join(failed)}; rerun the same command to resume")
    else:
        for r in todo:
            print(f"[compare] {r.label}: {' '.join(r.overrides) or '(config as is)'}")
            try:
                engine.train(cfg_path, r.work_dir, resume=True, overrides=list(r.overrides))
            except FloatingPointError as exc:
                if _diverged_note(r) is None:  # stopped without the engine's record: not a result
                    raise
                print(f"[compare] {r.label}: {_diverged_note(r)}: {exc}", flush=True)
    return write_report(cfg_path, runs, work_root, overrides, window, plot_keys)


def write_report(cfg_path: str, runs: Sequence[GridRun], work_root: str, overrides: Sequence[str] = (),
                 window: int = 100, plot_keys: Optional[Sequence[str]] = None,
                 pending: Sequence[GridRun] = ()) -> str:
    """``runs``: the finished runs; ``pending``: the grid's others, listed at the top of the report (a grid
    reported part way names what it still lacks instead of leaving it out)."""
    rows = summary_rows([r.work_dir for r in runs], [r.label for r in runs])
    text = f"config: `{cfg_path}`, overrides: `{' '.join(overrides) or '-'}`\n\n"
    if pending:
        text += (f"**Pending: {len(pending)} of {len(runs) + len(pending)} runs** not finished "
                 f"({', '.join(r.label for r in pending)}); the same command without `--report-only` trains "
                 f"them, resuming each from its last checkpoint.\n\n")
    if any(r.seed is not None or r.variant is not None for r in runs):
        metric = (metric_columns(rows) or ["mAP"])[0]  # every run diverged: no metric to name
        text += f"{metric}, mean ± sample standard deviation over seeds (n runs):\n\n{grid_markdown(runs, rows, metric)}\n\n"
        schemes = list(dict.fromkeys(r.scheme for r in runs))
        if len(schemes) > 1:
            text += (f"Difference to `{schemes[0]}` in {metric}, paired by seed (same seed = same initialisation "
                     f"and data order), mean ± sd (n pairs):\n\n{grid_markdown(runs, rows, metric, paired=True)}\n\n")
    text += bootstrap_markdown(runs)  # before the per-run table, not between its heading and it
    text += windows_markdown([r.work_dir for r in runs], [r.label for r in runs])
    if any(r.seed is not None or r.variant is not None for r in runs):
        text += "Every run:\n\n"
    text += markdown_table(rows) + "\n"
    with open(os.path.join(work_root, "compare.md"), "w") as f:
        f.write(text)
    with open(os.path.join(work_root, "compare.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        metrics = metric_columns(rows)
        writer.writerow(["variant", "scheme", "seed"] + metrics + ["train_time_s", "diverged_at_iter"])
        for run, r in zip(runs, rows):
            writer.writerow([run.variant or "", run.scheme, "" if run.seed is None else run.seed]
                            + [r.get(m, "") for m in metrics]
                            + [r.get("train_time_s") or "", r.get("diverged_at", "")])
    first_seed = runs[0].seed
    for variant in dict.fromkeys(r.variant for r in runs):
        chosen = [r for r in runs if r.variant == variant and r.seed == first_seed]
        if not chosen:
            continue
        out = os.path.join(work_root, "losses.png" if variant is None else f"losses_{variant}.png")
        title = f"{os.path.basename(cfg_path)}{f' [{variant}]' if variant else ''}: {', '.join(r.scheme for r in chosen)}"
        plot_runs([r.work_dir for r in chosen], out, keys=plot_keys, window=window,
                  labels=[r.scheme for r in chosen], title=title)
    return text


def bootstrap_markdown(runs: Sequence[GridRun], n: int = 1000) -> str:
    """VOC / COCO grids: per variant and scheme, the mean difference to the first scheme over the seeds both
    finished, with three 95% intervals: a paired bootstrap over the test images (test-set noise only), a
    bootstrap over seeds and images together, and the paired t-interval over seeds (the last two need two
    seeds or more). Empty when a run lacks its detections.pkl (older runs)."""
    from detection.evaluation.bootstrap import DETECTIONS_FILE, load_run, paired_bootstrap_mean

    schemes = list(dict.fromkeys(r.scheme for r in runs))
    paths = {(r.variant, r.scheme, r.seed): r.work_dir for r in runs if read_diverged(r.work_dir) is None}
    if len(schemes) < 2 or not all(os.path.isfile(os.path.join(p, DETECTIONS_FILE)) for p in paths.values()):
        return ""
    cache: Dict[str, Dict] = {}
    load = lambda path: cache.setdefault(path, load_run(path))  # noqa: E731
    variants, seeds = list(dict.fromkeys(r.variant for r in runs)), list(dict.fromkeys(r.seed for r in runs))
    interval = lambda lo, hi: f"[{lo:+.4f}, {hi:+.4f}]"  # noqa: E731
    lines = ["| variant | scheme | pairs | difference | test images | seeds and images | seeds (t) |",
             "|---|---|---|---|---|---|---|"]
    for v in variants:
        for sch in schemes[1:]:
            pairs = [(load(paths[(v, schemes[0], k)]), load(paths[(v, sch, k)])) for k in seeds
                     if (v, schemes[0], k) in paths and (v, sch, k) in paths]
            if not pairs:
                lines.append(f"| {v or 'all'} | {sch} | 0 | - | - | - | - |")
                continue
            b = paired_bootstrap_mean(pairs, n=n, metric=pairs[0][0]["metric"])
            many = b["pairs"] > 1
            lines.append(f"| {v or 'all'} | {sch} | {b['pairs']} | {b['diff']:+.4f} | {interval(b['low'], b['high'])} | "
                         + (f"{interval(b['seeds_low'], b['seeds_high'])} | {interval(b['t_low'], b['t_high'])} |"
                            if many else "- | - |"))
    return (f"\nDifference to `{schemes[0]}` (mean over the seeds both runs finished) with 95% intervals: over "
            f"{n} paired resamples of the test images (test-set noise only); over seeds and test images "
            f"resampled together; and the paired t-interval over seeds (n - 1 degrees of freedom). With few "
            f"seeds the t-interval is the widest; a claim should clear it. One pair: "
            f"scripts/significance.py.\n\n" + "\n".join(lines) + "\n\n")


def mean_sd(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def grid_markdown(runs: Sequence[GridRun], rows: Sequence[Dict], metric: str, paired: bool = False,
                  digits: int = 4) -> str:
    """Variants as rows, schemes as columns; each cell is mean ± sd (n) of ``metric`` over seeds, or with
    ``paired`` of (scheme - first scheme) over the seeds both finished. Seeds whose run diverged are counted
    in the cell, e.g. ``0.61 ± 0.02 (2; 1 diverged)``."""
    value = {(run.variant, run.scheme, run.seed): r[metric] for run, r in zip(runs, rows) if metric in r}
    diverged = {(run.variant, run.scheme, run.seed) for run, r in zip(runs, rows) if "diverged_at" in r}
    variants = list(dict.fromkeys(r.variant for r in runs))
    schemes = list(dict.fromkeys(r.scheme for r in runs))
    seeds = list(dict.fromkeys(r.seed for r in runs))
    lines = ["| | " + " | ".join(schemes) + " |", "|---|" + "---|" * len(schemes)]
    for v in variants:
        cells = []
        for s in schemes:
            if paired:
                vals = [value[(v, s, k)] - value[(v, schemes[0], k)] for k in seeds
                        if (v, s, k) in value and (v, schemes[0], k) in value]
            else:
                vals = [value[(v, s, k)] for k in seeds if (v, s, k) in value]
            if paired and s == schemes[0]:
                cells.append("-")
                continue
            # seeds without a value because a run diverged (in a paired cell: either run of the pair)
            lost = sum((v, s, k) in diverged or (paired and (v, schemes[0], k) in diverged) for k in seeds)
            note = f"{lost} diverged" if lost else ""
            if not vals:
                cells.append(f"- ({note})" if note else "-")
                continue
            m, sd = mean_sd(vals)
            sign = "+" if paired else ""
            cells.append(f"{m:{sign}.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")
                         + f" ({len(vals)}{'; ' + note if note else ''})")
        lines.append(f"| {v or 'all'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
