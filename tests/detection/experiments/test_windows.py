"""ALWA's per-window entries in metrics.jsonl, read back, summarised and plotted without recomputation."""
import json
import os

import pytest

from detection.checkpoint.io import load_checkpoint
from detection.experiments.windows import (describe, plot_windows, ranks_logged, read_windows, summary,
                                          windows_markdown)


@pytest.mark.slow
def test_every_window_is_logged_with_what_the_rule_compared(trained):
    """The tiny run: ALWA_2 with C = 2 over 6 steps, log interval 2: one entry per window, in the record of the
    interval it completed in; its λcls is the checkpoint's at the end."""
    records = [json.loads(line) for line in open(os.path.join(trained, "metrics.jsonl"))]
    assert [[w["window"] for w in r["alwa_windows"]] for r in records] == [[1], [2], [3]]
    windows = read_windows(trained)
    assert [(w["iter"], w["step"]) for w in windows] == [(2, 2), (4, 4), (6, 6)]
    for w in windows:
        assert w["fired"] == (w["cls_stat"] > w["reg_stat"]) and not w["skipped"]
        assert w["lambda_reg"] == 1.0 and 0 < w["lambda_cls"] <= 1
    state = load_checkpoint(os.path.join(trained, "checkpoints", "last.pth"))
    assert windows[-1]["lambda_cls"] == state["weighting"]["lambda_cls"]
    # a window that fired and changed λ gives λ = REG / CLS of that window
    for w in windows:
        if w["changed"]:
            assert abs(w["lambda_cls"] - w["reg_stat"] / w["cls_stat"]) < 1e-9


def test_summary_and_plot(tmp_path):
    windows = [{"iter": 100, "window": 1, "fired": True, "cls_stat": 2.0, "reg_stat": 1.0, "lambda_cls": 0.5},
               {"iter": 200, "window": 2, "fired": False, "cls_stat": 0.5, "reg_stat": 1.0, "lambda_cls": 0.5},
               {"iter": 300, "window": 3, "fired": True, "cls_stat": 1.5, "reg_stat": 1.0, "lambda_cls": 0.6667}]
    s = summary(windows)
    assert (s["windows"], s["first_fired"], s["later_fired"], s["later_windows"], s["later_fired_at"]) == (3, True, 1, 2, [300])
    assert describe("run", windows) == ("run: 3 windows; the first window (to iteration 100) fired, λcls 0.500; it fired "
                                        "in 1 of the 2 later windows (iterations 300); λcls at the end 0.667, 0.667 on average "
                                        "over the windows")
    work = tmp_path / "w"
    work.mkdir()
    with open(work / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"iter": 300, "alwa_windows": windows}) + "\n")
    out = plot_windows([str(work)], str(tmp_path / "w.png"))
    assert os.path.getsize(out) > 1000


def test_where_lambda_spent_the_run_and_the_table_of_runs(tmp_path):
    """λcls in effect per window: 1 (the start), then 0.5, 0.5 -> mean 2/3; a log that carries lambda_before
    uses it (here 0.8 for window 1: init_weight 0.8)."""
    windows = [{"iter": 100, "window": 1, "fired": True, "cls_stat": 2.0, "reg_stat": 1.0, "lambda_cls": 0.5},
               {"iter": 200, "window": 2, "fired": False, "cls_stat": 0.5, "reg_stat": 1.0, "lambda_cls": 0.5},
               {"iter": 300, "window": 3, "fired": True, "cls_stat": 1.5, "reg_stat": 1.0, "lambda_cls": 0.6667}]
    assert summary(windows)["lambda_mean"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert summary([dict(windows[0], lambda_before=0.8)] + windows[1:])["lambda_mean"] == pytest.approx(1.8 / 3)
    alwa, fixed = tmp_path / "alwa", tmp_path / "fixed"
    for work, records in ((alwa, [{"iter": 300, "alwa_windows": windows}]), (fixed, [{"iter": 300, "loss": 1.0}])):
        work.mkdir()
        with open(work / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    text = windows_markdown([str(fixed), str(alwa)], ["fixed/seed0", "alwa2/seed0"])
    rows = [line for line in text.splitlines() if line.startswith("| alwa2") or line.startswith("| fixed")]
    assert rows == ["| alwa2/seed0 | 3 | fired, λcls 0.500 | 1 of 2 | 0.667 | 0.667 | - |"]
    assert windows_markdown([str(fixed)], ["fixed/seed0"]) == ""


def test_every_process_windows_of_a_multi_process_run(tmp_path, monkeypatch):
    """alwa_windows_by_rank, split over two log records: each rank's windows in order, its own summary in the
    table's last column (rank 1 fired in both later windows, rank 0 in none), and rank 0's in the first ones."""
    def w(i, fired, lam):
        return {"iter": 100 * i, "window": i, "fired": fired, "cls_stat": 1.0, "reg_stat": 0.5, "lambda_cls": lam}

    rank0 = [w(1, True, 0.5), w(2, False, 0.5), w(3, False, 0.5)]
    rank1 = [w(1, True, 0.4), w(2, True, 0.8), w(3, True, 0.6)]
    records = [{"iter": 200, "alwa_windows": rank0[:2], "alwa_windows_by_rank": [rank0[:2], rank1[:2]]},
               {"iter": 300, "alwa_windows": rank0[2:], "alwa_windows_by_rank": [rank0[2:], rank1[2:]]}]
    work = tmp_path / "alwa"
    work.mkdir()
    with open(work / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    assert read_windows(str(work), 1) == rank1 and read_windows(str(work)) == read_windows(str(work), 0) == rank0
    assert read_windows(str(work), 2) == [] and ranks_logged(str(work)) == 2
    text = windows_markdown([str(work)], ["alwa2/seed0"])
    # rank 1: λ in effect 1, 0.4, 0.8 -> mean 0.733
    assert "| alwa2/seed0 | 3 | fired, λcls 0.500 | 0 of 2 | 0.667 | 0.500 | 0 / 0.667 / 0.500; 2 / 0.733 / 0.600 |" in text
    # the figure draws rank 1's λcls beside rank 0's: one more line in the λ panel than a one-process run's
    import matplotlib.pyplot as plt

    captured = []
    monkeypatch.setattr("detection.experiments.windows.save_figure", lambda fig, out, dpi: captured.append(fig) or out)
    plot_windows([str(work)], str(tmp_path / "w.png"))
    ys = [list(line.get_ydata()) for line in captured[0].axes[1].get_lines()]
    assert ys == [[1.0, 0.5, 0.5, 0.5], [1.0, 0.4, 0.8, 0.6]]
    plt.close(captured[0])
