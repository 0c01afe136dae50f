"""Loss and loss-weight curves from ``metrics.jsonl`` files (the paper's Figures 3 and 6).

Each log record holds, per loss key, the mean and standard deviation over its log interval (``loss_*``
and ``std``; ``weighted`` and ``weighted_std``) and the weight λ in force at its end (``weights``).
``windowed`` merges consecutive records into windows of a given number of iterations (e.g. ALWA's C = 100)
with the exact pooled mean and standard deviation, so curves can be drawn per window whatever the log
interval was.
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Sequence

from detection.training.workdir import read_diverged


def read_metrics(work_dir: str, evaluations: bool = False) -> List[dict]:
    """The training records of a run's metrics.jsonl (one per iteration, the last written), or with
    ``evaluations`` the validation records of ``train.eval_interval`` (``{"iter", "eval": {...}, "best"}``)."""
    path = work_dir if work_dir.endswith(".jsonl") else os.path.join(work_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no metrics file at {path} (is {work_dir} a training work dir?)")
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {n} is not JSON: {e}") from e
    # a resumed run appends: keep the last record of each iteration
    by_iter = {r["iter"]: r for r in records if ("eval" in r) == evaluations}
    return [by_iter[i] for i in sorted(by_iter)]


def save_figure(fig, out: str, dpi: int = 110) -> str:
    """Lay out, write (creating the folder) and close a matplotlib figure; returns ``out``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def contract(records: Sequence[dict]) -> dict:
    """The run's loss contract as the logger wrote it (``keys``, ``groups``, ``levels``: see
    ``models.contract.LossContract``). Logs written before records carried it get the keys logged both raw
    and weighted, and per-level splits recognised by name (``<key>_p<N>``)."""
    for r in records:
        if "contract" in r:
            return r["contract"]
    keys: List[str] = []
    for r in records:
        keys.extend(k for k in r.get("weighted", {}) if k not in keys and k in r)
    levels: Dict[str, List[str]] = {}
    for r in records:
        for k in list(r) + list(r.get("weighted", {})):
            base, _, level = k.rpartition("_p")
            if base and level.isdigit() and k not in levels.setdefault(base, []):
                levels[base].append(k)
    return {"keys": keys, "groups": {}, "levels": levels}


def series(records: Sequence[dict], key: str, kind: str = "raw"):
    """(iters, means, stds) of one loss key; ``kind`` is ``raw`` or ``weighted``.

    A key the run split per FPN level (``loss_cls`` logged as ``loss_cls_p3`` ..., the contract's
    ``levels``) is summed over its levels; its std is then approximate (levels treated as independent)."""
    iters, means, stds = [], [], []
    levels = contract(records)["levels"]
    for r in records:
        values = r if kind == "raw" else r.get("weighted", {})
        spread = (r.get("std") if kind == "raw" else r.get("weighted_std")) or {}
        if key in values:
            mean, std = values[key], spread.get(key, 0.0)
        else:
            parts = [k for k in levels.get(key, ()) if k in values]
            if not parts:
                continue
            mean = sum(values[k] for k in parts)
            std = math.sqrt(sum(spread.get(k, 0.0) ** 2 for k in parts))
        iters.append(r["iter"])
        means.append(mean)
        stds.append(std)
    return iters, means, stds


def windowed(iters: Sequence[int], means: Sequence[float], stds: Sequence[float], window: int, start: int = 0):
    """Pool interval statistics into windows of ``window`` iterations: (window end, mean, std) lists.

    Each record covers the iterations since the previous one; its mean m, std s (ddof 1) and count n give
    the window's sum and sum of squares exactly: sum = n m, squares = (n - 1) s^2 + n m^2."""
    out_it, out_m, out_s = [], [], []
    n_tot = s_tot = q_tot = 0.0
    prev = start
    for it, m, s in zip(iters, means, stds):
        n = it - prev
        prev = it
        n_tot += n
        s_tot += n * m
        q_tot += (n - 1) * s * s + n * m * m
        if it % window == 0:
            mean = s_tot / n_tot
            var = (q_tot - n_tot * mean * mean) / (n_tot - 1) if n_tot > 1 else 0.0
            out_it.append(it)
            out_m.append(mean)
            out_s.append(math.sqrt(max(var, 0.0)))
            n_tot = s_tot = q_tot = 0.0
    return out_it, out_m, out_s


def loss_keys(records: Sequence[dict]) -> List[str]:
    """The loss keys of a run, from its contract (not e.g. uncertainty weighting's ``log_var/...`` terms,
    which are weighted terms without a raw loss)."""
    return list(contract(records)["keys"])


def summary_keys(records: Sequence[dict]) -> List[str]:
    """The run's loss keys with each per-level split replaced by its unsplit name (``loss_cls`` for
    ``loss_cls_p3`` ... ``loss_cls_p7``, which :func:`series` sums): one curve per loss."""
    c = contract(records)
    part_of = {k: whole for whole, parts in c["levels"].items() for k in parts}
    return list(dict.fromkeys(part_of.get(k, k) for k in c["keys"]))


def plot_runs(work_dirs: Sequence[str], out: str, keys: Optional[Sequence[str]] = None, window: Optional[int] = None,
              labels: Optional[Sequence[str]] = None, title: Optional[str] = None) -> str:
    """Draw raw and weighted loss curves (mean line, ±1 std band) and λ per key for one or several runs
    into one PNG with three panels; returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_metrics(d) for d in work_dirs]
    evals = [read_metrics(d, evaluations=True) for d in work_dirs]
    labels = list(labels) if labels else [os.path.basename(os.path.normpath(d)) for d in work_dirs]
    fig, axes = plt.subplots(1, 4 if any(evals) else 3, figsize=(24 if any(evals) else 18, 4.8))
    styles = ["-", "--", ":", "-."]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r_idx, (records, label) in enumerate(zip(runs, labels)):
        colour = colours[r_idx % len(colours)]
        run_keys = list(keys) if keys else summary_keys(records)
        for k_idx, key in enumerate(run_keys):
            style = styles[k_idx % len(styles)]
            for ax, kind in ((axes[0], "raw"), (axes[1], "weighted")):
                it, m, s = series(records, key, kind)
                if window:
                    it, m, s = windowed(it, m, s, window)
                if not it:
                    continue
                ax.plot(it, m, style, color=colour, label=f"{label}: {key}")
                ax.fill_between(it, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], color=colour, alpha=0.15)
        # λ of every key whose weight left 1 at some point (per-level schemes: each level)
        adapted = [k for k in loss_keys(records) if any(r.get("weights", {}).get(k, 1.0) != 1.0 for r in records)]
        for k_idx, key in enumerate(adapted):
            it = [r["iter"] for r in records if key in r.get("weights", {})]
            w = [r["weights"][key] for r in records if key in r.get("weights", {})]
            axes[2].plot(it, w, styles[k_idx % len(styles)], color=colour, label=f"{label}: {key}")
        if evals[r_idx]:  # validation during training: the metric best.pth is chosen by
            metric = evals[r_idx][-1]["best"]["metric"]
            axes[3].plot([r["iter"] for r in evals[r_idx]], [r["eval"][metric] for r in evals[r_idx]], "o-",
                         color=colour, label=f"{label}: {metric}")
    if any(evals):
        axes[3].set_title("test metric during training", fontsize=9)
        axes[3].set_xlabel("iteration")
        axes[3].grid(alpha=0.3)
        axes[3].legend(fontsize=7)
    # runs by colour (left panel), keys by line style (named in the titles), λ lines labelled in full
    from matplotlib.lines import Line2D

    axes[0].legend([Line2D([], [], color=colours[i % len(colours)]) for i in range(len(runs))], labels, fontsize=7,
                   loc="upper right", title="run", title_fontsize=7)
    named = list(keys) if keys else (summary_keys(runs[0]) if runs else [])
    key_styles = ", ".join(f"{k} {'solid dashed dotted dash-dot'.split()[i % 4]}" for i, k in enumerate(named))
    per = f" (mean ± std per {window} iterations)" if window else " (mean ± std per log interval)"
    for ax, name in zip(axes, ("raw losses" + per, "weighted losses" + per, "loss weights λ (keys whose λ moved)")):
        ax.set_title(name + (f"\n{key_styles}" if key_styles and ax is not axes[2] else ""), fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    if axes[2].lines:
        axes[2].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 if len(axes[2].lines) < 16 else 2)
    else:
        axes[2].text(0.5, 0.5, "every λ stayed at its initial value", ha="center", va="center", fontsize=8,
                     transform=axes[2].transAxes)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out)


SUMMARY_METRICS = ("mAP", "AP", "AP50", "AP75", "segm_AP")  # eval.json keys tabulated when present


def metric_columns(rows: Sequence[Dict]) -> List[str]:
    return [k for k in SUMMARY_METRICS if any(k in r for r in rows)]


def summary_rows(work_dirs: Sequence[str], labels: Optional[Sequence[str]] = None) -> List[Dict]:
    """One row per run from its eval.json and last metrics record: the main metric, final λ, time; a run
    stopped by the non-finite guard (diverged.json) has ``diverged_at`` (its iteration) instead."""
    rows = []
    labels = list(labels) if labels else [os.path.basename(os.path.normpath(d)) for d in work_dirs]
    for d, label in zip(work_dirs, labels):
        path = os.path.join(d, "eval.json")
        diverged = read_diverged(d)
        if diverged is not None and not os.path.isfile(path):
            rows.append({"run": label, "diverged_at": diverged["iter"], "train_time_s": None, "weights": {}})
            continue
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing: the run in {d} has not finished")
        with open(path) as f:
            ev = json.load(f)
        row = {"run": label}
        for k in SUMMARY_METRICS:
            if isinstance(ev.get(k), (int, float)):
                row[k] = ev[k]
        row["train_time_s"] = ev.get("train_time_s")
        row["weights"] = {k: v for k, v in (ev.get("weights") or {}).items() if v != 1.0}
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[Dict]) -> str:
    metrics = metric_columns(rows) or ["mAP"]  # every run diverged: one column for the note
    head = "| run | " + " | ".join(metrics) + " | train time (s) | final weights ≠ 1 |"
    lines = [head, "|" + "---|" * (len(metrics) + 3)]
    for r in rows:
        cells = [f"{r[m]:.4f}" if m in r else "" for m in metrics]
        if "diverged_at" in r:
            cells = [f"diverged at iteration {r['diverged_at']}"] + [""] * (len(metrics) - 1)
        w = ", ".join(f"{k} {v:.3g}" for k, v in r["weights"].items()) or "-"
        t = f"{r['train_time_s']:.0f}" if r.get("train_time_s") is not None else ""
        lines.append(f"| {r['run']} | " + " | ".join(cells) + f" | {t} | {w} |")
    return "\n".join(lines)


def alwa_stationary_lambdas(stats: str, variant: int = 2, windows: int = 30, interval: int = 100, seed: int = 0,
                            cls=(1.0, 0.3), reg=(0.5, 0.1)) -> List[float]:
    """λcls after each window of ALWA on a stationary stream: classification loss ~ N(cls), regression
    ~ N(reg) (mean, std), independent per step. Shows the alternation under ``stats="weighted"`` (the
    released code's behaviour) against the settling near REG/CLS under ``stats="raw"``."""
    import torch

    from losses.weighting import ALWA

    g = torch.Generator().manual_seed(seed)
    alwa = ALWA(variant=variant, interval=interval, stats=stats, sync=False)
    out = []
    for _ in range(windows):
        for _ in range(interval):
            alwa({"loss_cls": cls[0] + cls[1] * torch.randn((), generator=g),
                  "loss_bbox": reg[0] + reg[1] * torch.randn((), generator=g)})
        out.append(alwa.lambda_cls)
    return out


def plot_alwa_stationary(out: str, variant: int = 2, windows: int = 30, interval: int = 100) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = [interval * (i + 1) for i in range(windows)]
    for stats, style in (("weighted", "o-"), ("raw", "s--")):
        ax.plot(x, alwa_stationary_lambdas(stats, variant, windows, interval), style, ms=3, label=f'stats="{stats}"')
    # REG / CLS of the raw stream (defaults of alwa_stationary_lambdas): std ratio, or (mean + std) ratio
    ref = 0.1 / 0.3 if variant == 2 else (0.5 + 0.1) / (1.0 + 0.3)
    ax.axhline(ref, color="grey", lw=0.8, ls=":", label="REG/CLS of the raw losses")
    ax.set_xlabel("iteration")
    ax.set_ylabel("λcls")
    ax.set_title(f"ALWA_{variant} on a stationary loss stream (C = {interval})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, out)
