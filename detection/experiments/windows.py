"""ALWA per window, from a run's ``metrics.jsonl``: what the rule compared (CLS and REG), whether it fired,
and λcls after each window; a plot of it and a one-line summary (how often the rule fired after the first
window). The entries come from the logger (``alwa_windows`` in the interval records), so nothing is recomputed.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

from detection.experiments.plots import read_metrics, save_figure


def _in_window_order(entries) -> List[dict]:
    by_window = {w["window"]: w for w in entries}  # a resumed run logs some windows twice: the last one counts
    return [by_window[k] for k in sorted(by_window)]


def read_windows(work_dir: str, rank: Optional[int] = None) -> List[dict]:
    """ALWA's per-window entries of a run (``{"iter", "window", "step", "cls_stat", "reg_stat", "fired",
    "skipped", "changed", "lambda_cls", "lambda_reg"}``), in window order (a resumed run's last of each):
    rank 0's (or a single process's), or with ``rank`` that process's (empty for a run logged without
    ``alwa_windows_by_rank``)."""
    if rank is None:
        return _in_window_order(w for r in read_metrics(work_dir) for w in r.get("alwa_windows", []))
    every = windows_by_rank(work_dir)
    return every[rank] if rank < len(every) else []


def windows_by_rank(work_dir: str) -> List[List[dict]]:
    """Every process's windows of a multi-process run, one list per rank (from the ``alwa_windows_by_rank``
    entries, one read of the log); an empty list for a single-process run or a log written before them."""
    records = [r["alwa_windows_by_rank"] for r in read_metrics(work_dir) if "alwa_windows_by_rank" in r]
    ranks = max((len(per) for per in records), default=0)
    return [_in_window_order(w for per in records if rank < len(per) for w in per[rank]) for rank in range(ranks)]


def ranks_logged(work_dir: str) -> int:
    """How many processes' windows the run logged (``alwa_windows_by_rank``); 0 for a single-process run or a
    log written before the entries existed."""
    return len(windows_by_rank(work_dir))


def lambdas_in_effect(windows: Sequence[dict], init: float = 1.0) -> List[float]:
    """λcls in effect during each window: the value before its update (``init`` before the first window, for
    logs whose entries do not carry ``lambda_before``)."""
    out, prev = [], init
    for w in windows:
        out.append(w.get("lambda_before", prev))
        prev = w["lambda_cls"]
    return out


def summary(windows: Sequence[dict], init: float = 1.0) -> Dict:
    """Counts for the plain statement: windows, how often the rule fired in the first and in the later ones,
    λcls after the first window and at the end, and ``lambda_mean``, the mean over windows of the λcls in
    effect (windows are equal in length, so this is where λcls spent the run's steps)."""
    later = [w for w in windows[1:] if w["fired"]]
    effect = lambdas_in_effect(windows, init)
    return {"windows": len(windows), "first_fired": bool(windows and windows[0]["fired"]),
            "later_fired": len(later), "later_windows": max(len(windows) - 1, 0),
            "lambda_after_first": windows[0]["lambda_cls"] if windows else None,
            "lambda_end": windows[-1]["lambda_cls"] if windows else None,
            "lambda_mean": sum(effect) / len(effect) if effect else None,
            "later_fired_at": [w["iter"] for w in later]}


def windows_markdown(work_dirs: Sequence[str], labels: Sequence[str]) -> str:
    """One row per ALWA run that logged windows: how often the rule fired after the first window and where
    λcls spent the run; empty when no run has windows."""
    lines = ["| run | windows | first window | later windows that fired | mean λcls in effect | final λcls | "
             "per process: later fired / mean λcls / final λcls |", "|---|---|---|---|---|---|---|"]
    for d, label in zip(work_dirs, labels):
        windows = read_windows(d)
        if not windows:
            continue
        init = init_weight(d)
        s = summary(windows, init)
        first = f"fired, λcls {s['lambda_after_first']:.3f}" if s["first_fired"] else "did not fire"
        per = [summary(own, init) for own in windows_by_rank(d)]
        ranks = "; ".join(f"{p['later_fired']} / {p['lambda_mean']:.3f} / {p['lambda_end']:.3f}" for p in per
                          if p["windows"]) or "-"
        lines.append(f"| {label} | {s['windows']} | {first} | {s['later_fired']} of {s['later_windows']} | "
                     f"{s['lambda_mean']:.3f} | {s['lambda_end']:.3f} | {ranks} |")
    if len(lines) == 2:
        return ""
    return ("ALWA window by window (the first columns: rank 0's windows, or the one process's; the last: each "
            "process's, ranks 0, 1, ..., under DDP with `weighting.sync: false`):\n\n" + "\n".join(lines) + "\n\n")


def describe(name: str, windows: Sequence[dict], init: float = 1.0) -> str:
    s = summary(windows, init)
    if not s["windows"]:
        return f"{name}: no ALWA windows logged"
    first = (f"the first window (to iteration {windows[0]['iter']}) {'fired' if s['first_fired'] else 'did not fire'}, "
             f"λcls {s['lambda_after_first']:.3f}")
    later = (f"it fired in {s['later_fired']} of the {s['later_windows']} later windows"
             + (f" (iterations {', '.join(map(str, s['later_fired_at'][:8]))}"
                + (" ..." if len(s["later_fired_at"]) > 8 else "") + ")" if s["later_fired"] else ""))
    return (f"{name}: {s['windows']} windows; {first}; {later}; λcls at the end {s['lambda_end']:.3f}, "
            f"{s['lambda_mean']:.3f} on average over the windows")


def init_weight(work_dir: str) -> float:
    """λ before the first window, for logs written before the entries carried it: the run's init_weight."""
    import yaml

    path = os.path.join(work_dir, "config.yaml")
    if os.path.isfile(path):
        with open(path) as f:
            return float(((yaml.safe_load(f) or {}).get("weighting") or {}).get("init_weight", 1.0))
    return 1.0


def plot_windows(work_dirs: Sequence[str], out: str, labels: Optional[Sequence[str]] = None) -> str:
    """Two panels per run: CLS and REG of every window (log scale; filled markers where the rule fired), and
    λcls after each window (rank 0's, and thin lines for the other processes of a multi-process run with
    per-process windows). Returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(labels) if labels else [os.path.basename(os.path.normpath(d)) for d in work_dirs]
    fig, axes = plt.subplots(2, len(work_dirs), figsize=(5.5 * len(work_dirs), 6.5), squeeze=False)
    for col, (work, label) in enumerate(zip(work_dirs, labels)):
        windows = read_windows(work)
        it = [w["iter"] for w in windows]
        top, bottom = axes[0][col], axes[1][col]
        top.plot(it, [w["cls_stat"] for w in windows], "-", color="C0", label="CLS (cls group)")
        top.plot(it, [w["reg_stat"] for w in windows], "-", color="C1", label="REG (reg group)")
        fired = [w for w in windows if w["fired"]]
        top.plot([w["iter"] for w in fired], [w["cls_stat"] for w in fired], "o", color="C3", label="rule fired")
        top.set_yscale("log")
        top.set_title(f"{label}: the window statistics ALWA compared", fontsize=9)
        top.legend(fontsize=7)
        start = [(0, lambdas_in_effect(windows, init_weight(work))[0])] if windows else []
        bottom.step([x for x, _ in start] + it, [y for _, y in start] + [w["lambda_cls"] for w in windows],
                    where="post", color="C2", label="λcls (from each window's end on)")
        for rank, own in enumerate(windows_by_rank(work)[1:], 1):  # the other processes' own λcls, thin
            bottom.step([x for x, _ in start] + [w["iter"] for w in own],
                        [y for _, y in start] + [w["lambda_cls"] for w in own], where="post", color="C2",
                        alpha=0.35, linewidth=0.8, label="λcls of ranks 1, 2, ..." if rank == 1 else None)
        bottom.set_ylim(0, 1.05)
        bottom.set_xlabel("iteration (window end)")
        bottom.set_title(describe(label, windows).split(";")[2].strip(), fontsize=8)
        bottom.legend(fontsize=7)
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    return save_figure(fig, out, dpi=80)
