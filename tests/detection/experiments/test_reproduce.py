"""scripts/reproduce.py: the runs of each table, their status, the command lines (built, never launched),
the --scale arithmetic, and --collect on hand-written eval.json files."""
import csv
import importlib.util
import json
import os
from types import SimpleNamespace

import pytest

from detection.experiments import reproduce
from detection.experiments.tables import CONFIG_DIR, REPO

COUNTS = {1: 33, 2: 18, 3: 9, 4: 9, 5: 10, 6: 9, 7: 12, 8: 12}


def _script_main(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(REPO, "scripts"))  # for scripts/_path.py
    spec = importlib.util.spec_from_file_location("reproduce_script", os.path.join(REPO, "scripts", "reproduce.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _finish(root, name, **metrics):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    with open(os.path.join(root, name, "eval.json"), "w") as f:
        json.dump(metrics, f)


def _partial(root, name):
    os.makedirs(os.path.join(root, name, "checkpoints"), exist_ok=True)
    open(os.path.join(root, name, "checkpoints", "last.pth"), "wb").close()


def test_plan_counts_per_table(tmp_path):
    runs = reproduce.plan(range(1, 9), str(tmp_path))
    assert {n: sum(r.table == n for r in runs) for n in COUNTS} == COUNTS
    assert all(os.path.isfile(r.cfg) for r in runs)
    t3 = [r for r in runs if r.table == 3]
    assert (t3[5].row, t3[5].col, t3[5].name, t3[5].paper) == ("SmoothL1", "ALWA_2", "frcnn_r50_voc_smoothl1_alwa2",
                                                               {"mAP": 0.7559})


def test_dry_run_lists_every_run_with_its_status(tmp_path, capsys, monkeypatch):
    root = str(tmp_path / "runs")
    _finish(root, "frcnn_r50_voc_l1", mAP=0.75)
    _partial(root, "frcnn_r50_voc_l1_alwa1")
    with pytest.raises(SystemExit) as exit_:
        _script_main(monkeypatch)(["--table", "all", "--dry-run", "--work-root", root])
    assert exit_.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    headers = [line for line in lines if line.startswith("Table ")]
    assert [int(h.split(":")[1].split()[0]) for h in headers] == list(COUNTS.values())
    assert "9 runs (1 finished, 1 partial, 7 missing)" in headers[2]
    status = [line.split()[0] for line in lines if line.startswith("  ") and "->" in line]
    assert len(status) == sum(COUNTS.values())
    row = next(line for line in lines if "frcnn_r50_voc_l1_alwa1.yaml" in line)
    assert row.split()[0] == "partial" and row.rstrip().endswith(os.path.join(root, "frcnn_r50_voc_l1_alwa1"))
    assert not any("$" in line and "frcnn_r50_voc_l1.yaml" in line for line in lines)  # finished: no command
    # the budget: VOC12 trainval (11,540 images, the standard size: no data here) x 3 per epoch, on
    # one process of 2 images (no GPU here) -> 17,310 iterations per epoch, 207,720 in 12 epochs
    i = lines.index(row)
    assert lines[i + 1].strip().startswith("≈ 207,720 iterations, 415,440 images seen (11,540 training images, "
                                           "standard split size x 3 per epoch x 12); 1 x 2 images per step "
                                           "(the paper: 4 x 2;")
    assert "ALWA's per-process statistics see a different number of images" in lines[i + 1]
    assert sum("images seen (" in line for line in lines) == sum(COUNTS.values())  # one per run, then a total


def test_dry_run_on_the_papers_layout_counts_the_papers_iterations(tmp_path, capsys):
    """4 GPUs x 2 images: 11,540 x 3 / 8 = 4,327 iterations per epoch, 51,924 in all (the paper's ~52k);
    Mask R-CNN on 2 x 4: 118,287 / 8 = 14,785 per epoch; no note when the layout is the paper's."""
    lines = []
    assert reproduce.reproduce([2, 6], str(tmp_path), dry_run=True, available_gpus=8, out=lines.append) == 0
    budget = [line.strip() for line in lines if "images seen" in line and not line.startswith("  Table")]
    assert budget[0] == ("≈ 51,924 iterations, 415,392 images seen (11,540 training images, standard split size "
                         "x 3 per epoch x 12); 4 x 2 images per step")
    assert budget[18] == ("≈ 177,420 iterations, 1,419,360 images seen (118,287 training images, standard split "
                          "size x 1 per epoch x 12); 2 x 4 images per step")
    cmds = [line for line in lines if "$ " in line]
    assert cmds[0].split("$ ")[1].startswith("torchrun --nproc_per_node=4 ")
    assert cmds[18].split("$ ")[1].startswith("torchrun --nproc_per_node=2 ")
    assert any(line.startswith("  Table 2 in all: ≈ 7,477,056 training images seen over 18 runs") for line in lines)


def test_train_command():
    script = os.path.join("scripts", "train.py")
    assert reproduce.train_command("c.yaml", "w/x", 4, ["a=1", "b=[2,3]"], python="py", script=script) == [
        "torchrun", "--nproc_per_node=4", script, "--cfg", "c.yaml", "--work-dir", "w/x", "--resume",
        "--set", "a=1", "b=[2,3]"]
    for gpus in (0, 1):
        assert reproduce.train_command("c.yaml", "w/x", gpus, python="py", script=script) == [
            "py", script, "--cfg", "c.yaml", "--work-dir", "w/x", "--resume"]


@pytest.mark.parametrize("requested,available,paper,expected", [
    (None, 0, 4, 0), (4, 0, 4, 0), (None, 2, None, 2), (1, 8, 4, 1), (8, 8, 4, 8), (None, 8, 4, 4), (None, 2, 4, 2),
    (None, 8, 2, 2)])
def test_resolve_gpus(requested, available, paper, expected):
    """No GPU: plain python; --gpus wins; else the paper's count, capped at the visible GPUs."""
    assert reproduce.resolve_gpus(requested, available, paper) == expected


@pytest.mark.parametrize("train,scale,expected", [
    (dict(epochs=12, max_iters=None, lr_steps=[8, 11], warmup_iters=500), 0.5,
     ["train.epochs=6", "train.lr_steps=[4.0,5.5]", "train.warmup_iters=250"]),
    # 12 x 0.1 rounds to 1 epoch: the steps and warmup follow the effective ratio 1/12
    (dict(epochs=12, max_iters=None, lr_steps=[8, 11], warmup_iters=500), 0.1,
     ["train.epochs=1", "train.lr_steps=[0.6667,0.9167]", "train.warmup_iters=42"]),
    (dict(epochs=12, max_iters=1000, lr_steps=[800, 950], warmup_iters=500), 0.1,
     ["train.max_iters=100", "train.lr_steps=[80,95]", "train.warmup_iters=50"]),
    (dict(epochs=12, max_iters=None, lr_steps=[8, 11], warmup_iters=500), 1.0, []),
])
def test_scale_overrides(train, scale, expected):
    assert reproduce.scale_overrides(SimpleNamespace(**train), scale) == expected


def test_scaled_runs_get_their_own_default_work_root():
    assert reproduce.default_work_root(1.0) == os.path.join("work_dirs", "reproduce")
    assert reproduce.default_work_root(0.1) == os.path.join("work_dirs", "reproduce") + "_scale0.1"


@pytest.mark.parametrize("scale", [0.0, -0.5, 1.5])
def test_scale_outside_0_1_is_an_error(scale):
    with pytest.raises(ValueError, match="--scale"):
        reproduce.scale_overrides(SimpleNamespace(epochs=12, max_iters=None, lr_steps=[8], warmup_iters=1), scale)


def test_run_overrides_scale_the_schedule_after_the_users_overrides(tmp_path):
    run = reproduce.plan([3], str(tmp_path))[0]
    assert reproduce.run_overrides(run, "/data/my voc", 0.1, ["train.max_iters=1000", "train.lr_steps=[800,950]"]) == [
        "data.root=/data/my voc", "train.max_iters=1000", "train.lr_steps=[800,950]",
        "train.max_iters=100", "train.lr_steps=[80,95]", "train.warmup_iters=50", "data.train_fraction=0.1"]
    assert reproduce.run_overrides(run, "123", 1.0, []) == ['data.root="123"']  # stays a string for YAML
    # the data part alone, or the schedule alone
    assert reproduce.run_overrides(run, None, 1.0, [], data_fraction=0.25) == ["data.train_fraction=0.25"]
    assert "data.train_fraction" not in " ".join(reproduce.run_overrides(run, None, 0.5, [], data_fraction=1.0))
    with pytest.raises(ValueError, match="--data-fraction"):
        reproduce.run_overrides(run, None, 1.0, [], data_fraction=0.0)
    assert reproduce.default_work_root(0.5, 1.0).endswith("reproduce_scale0.5_data1")
    assert reproduce.default_work_root(0.5, 0.5).endswith("reproduce_scale0.5")


def test_reproduce_skips_finished_resumes_partial_and_trains_shared_cells_once(tmp_path):
    root = str(tmp_path)
    _finish(root, "frcnn_r50_voc_l1", mAP=0.75)
    _partial(root, "frcnn_r50_voc_smoothl1_alwa2")
    calls = []

    def runner(cmd):  # a training that finishes: writes eval.json into its work dir
        calls.append(cmd)
        _finish(root, os.path.basename(cmd[cmd.index("--work-dir") + 1]), mAP=0.7)
        return 0

    assert reproduce.reproduce([1, 2, 3], root, gpus=2, available_gpus=2, runner=runner, out=lambda s: None) == 0
    trained = [os.path.basename(c[c.index("--work-dir") + 1]) for c in calls]
    assert len(trained) == 33 - 3 + 18 + 9 - 1  # Table 1 without Table 2's baselines, Table 3 without its finished run
    assert "frcnn_r50_voc_l1" not in trained and trained.count("retinanet_r50_voc_l1") == 1
    assert "frcnn_r50_voc_smoothl1_alwa2" in trained
    assert all(c[:2] == ["torchrun", "--nproc_per_node=2"] and "--resume" in c for c in calls)
    calls.clear()
    assert reproduce.reproduce([1, 2, 3], root, available_gpus=0, runner=runner, out=lambda s: None) == 0
    assert calls == []  # everything finished: nothing to do


def test_reproduce_stops_at_a_failing_run(tmp_path):
    calls = []
    code = reproduce.reproduce([2], str(tmp_path), available_gpus=0, runner=lambda c: calls.append(c) or 3,
                               out=lambda s: None)
    assert code == 3 and len(calls) == 1


def _diverge(root, name, iteration):
    from detection.training.workdir import write_diverged

    os.makedirs(os.path.join(root, name), exist_ok=True)
    write_diverged(os.path.join(root, name), iteration, ["loss_cls"], "5 consecutive steps with non-finite values")


def test_a_diverged_run_is_reported_and_the_reproduction_goes_on(tmp_path):
    """A run that diverged stopped the whole reproduction, was retrained (and diverged again) on every rerun,
    and its cell read "-" like a run never started."""
    root, calls, lines = str(tmp_path), [], []
    _diverge(root, "retinanet_r50_voc_l1", 271)

    def runner(cmd):  # the first run trained diverges, the others finish
        calls.append(cmd)
        name = os.path.basename(cmd[cmd.index("--work-dir") + 1])
        if len(calls) == 1:
            _diverge(root, name, 30)
            return 1
        _finish(root, name, mAP=0.7)
        return 0

    assert reproduce.reproduce([2], root, available_gpus=0, runner=runner, out=lines.append) == 0
    trained = [os.path.basename(c[c.index("--work-dir") + 1]) for c in calls]
    assert len(trained) == 18 - 1 and "retinanet_r50_voc_l1" not in trained
    assert f"[reproduce] {trained[0]} diverged at iteration 30 (diverged.json); going on" in lines
    listing = []
    assert reproduce.reproduce([2], root, available_gpus=0, out=listing.append, dry_run=True) == 0
    assert any("18 runs (16 finished, 2 diverged, 0 partial, 0 missing)" in line for line in listing)
    assert any(line.startswith("  diverged  ") for line in listing)
    text = reproduce.collect([2], root, str(tmp_path / "out"))
    assert "| L1, R50 | diverged (it. 271) | 0.7517 | - |" in text


def _finish_run(root, name, world, batch, sync=False, weighting="alwa", **metrics):
    """A finished run as train.py leaves it: eval.json with the layout, config.yaml with the weighting."""
    _finish(root, name, world_size=world, images_per_process=batch, **metrics)
    with open(os.path.join(root, name, "config.yaml"), "w") as f:
        f.write(f"data: {{batch_size: {batch}}}\nweighting: {{type: {weighting}, sync: {str(sync).lower()}}}\n")


def test_collect_prints_ours_paper_and_delta(tmp_path):
    root, out = str(tmp_path / "runs"), str(tmp_path / "out")
    _finish(root, "retinanet_r50_voc_l1", mAP=0.7600)
    _finish_run(root, "retinanet_r101_voc_ciou_alwa2", 4, 2, mAP=0.7750)
    _finish(root, "frcnn_r50_coco_l1", AP=0.3702, AP50=0.58, AP75=0.40)
    _finish_run(root, "frcnn_r50_coco_l1_alwa1", 1, 8, AP=0.371)
    _partial(root, "frcnn_r50_coco_l1_alwa2")
    text = reproduce.collect([1, 2, 4], root, out)
    lines = text.splitlines()
    assert ("| loss, backbone | baseline (ours) | paper | Δ | ALWA_1 (ours) | paper | Δ | ALWA_2 (ours) | paper | Δ |"
            in lines)
    # 0.7600 - 0.7517 = +0.0083; 0.7750 - 0.7804 = -0.0054
    assert "| L1, R50 | 0.7600 | 0.7517 | +0.0083 | - | 0.7599 | - | - | 0.7613 | - |" in lines
    assert "| CIoU, R101 | - | 0.7697 | - | - | 0.7773 | - | 0.7750 | 0.7804 | -0.0054 |" in lines
    # COCO: one line per cell with AP, AP50, AP75, 3 decimals; 0.3702 - 0.366 = +0.004, 0.58 - 0.568 = +0.012
    assert ("| loss in the RoI head (RPN: L1) | setting | AP (ours) | paper | Δ | AP50 (ours) | paper | Δ | "
            "AP75 (ours) | paper | Δ |") in lines
    assert "| L1 | baseline | 0.370 | 0.366 | +0.004 | 0.580 | 0.568 | +0.012 | 0.400 | 0.397 | +0.003 |" in lines
    assert "| L1 | ALWA_1 | 0.371 | 0.368 | +0.003 | - | 0.569 | - | - | 0.396 | - |" in lines
    assert "| CIoU | ALWA_2 | - | 0.368 | - | - | 0.570 | - | - | 0.399 | - |" in lines
    # Table 1's 1 : 1 row is Table 2's baseline run, with Table 1's own paper number for CIoU (0.7535)
    assert "| 1.00 : 1.00 | 0.7600 | 0.7517 | +0.0083 | - | 0.7531 | - | - | 0.7535 | - |" in lines
    # how each finished ALWA run took its statistics
    assert ("ALWA statistics of the finished runs: per process, 2 images per step (4 processes) (1 run(s)). "
            "The released code took them per process (each GPU its own λ, over its 2 images per step).") in lines
    assert "per process, 8 images per step (1 process) (1 run(s))" in text
    with open(os.path.join(out, "table4.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 * 3
    assert rows[0] == {"table": "4", "row": "L1", "column": "baseline", "config": "frcnn_r50_coco_l1", "metric": "AP",
                       "ours": "0.3702", "paper": "0.366", "delta": "0.0042", "status": "finished", "alwa_stats": "?"}
    assert [r["metric"] for r in rows[:3]] == ["AP", "AP50", "AP75"]
    assert (rows[3]["ours"], rows[3]["paper"], rows[3]["delta"]) == ("0.371", "0.368", "0.003")
    assert rows[4]["ours"] == "" and rows[4]["alwa_stats"] == "per process, 8 images per step (1 process)"
    assert (rows[6]["ours"], rows[6]["status"]) == ("", "partial")
    assert open(os.path.join(out, "table2.md")).read() in text


def test_alwa_statistics_pooled_or_per_process(tmp_path):
    root = str(tmp_path)
    _finish_run(root, "a", 4, 2, sync=True, mAP=0.7)
    _finish_run(root, "b", 1, 8, sync=True, mAP=0.7)
    _finish_run(root, "c", 2, 4, sync=False, mAP=0.7)
    _finish_run(root, "d", 4, 2, weighting="fixed", mAP=0.7)
    assert reproduce.alwa_statistics(os.path.join(root, "a")) == "pooled, 8 images per step (4 processes)"
    assert reproduce.alwa_statistics(os.path.join(root, "b")) == "per process, 8 images per step (1 process)"
    assert reproduce.alwa_statistics(os.path.join(root, "c")) == "per process, 4 images per step (2 processes)"
    assert reproduce.alwa_statistics(os.path.join(root, "d")) == "-"
    assert reproduce.alwa_statistics(os.path.join(root, "missing")) == "?"


def test_collect_with_no_finished_run_prints_every_paper_number(tmp_path):
    """Every number of the paper's eight tables appears in --collect's output before anything was trained."""
    from detection.experiments.tables import load_spec

    spec = load_spec()
    text = reproduce.collect(range(1, 9), str(tmp_path))
    body = [line for line in text.splitlines() if line.startswith("| ") and "(ours)" not in line]
    assert len(body) == sum(len(t.rows) if len(t.metrics) == 1 else len(t.cells) for t in spec.tables.values())
    for n, t in spec.tables.items():
        for c in t.cells:
            for m, v in c.paper.items():
                assert f" {v:.{t.digits}f} " in text, (n, c.name, m)
    assert "| 2.00 : 2.00 | - | 0.7233 | - | - | 0.7315 | - | - | 0.7286 | - |" in text
    assert "| 0.25 : 0.25 | L1 | - | 0.367 | - | - | 0.566 | - | - | 0.402 | - |" in text


def test_cli_collect_and_table_errors(tmp_path, capsys, monkeypatch):
    main = _script_main(monkeypatch)
    main(["--table", "3", "--collect", "--work-root", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| CIoU | - | 0.7480 | - | - | 0.7581 | - | - | 0.7588 | - |" in out
    assert os.path.isfile(tmp_path / "table3.csv")
    with pytest.raises(SystemExit, match="--table takes numbers"):
        main(["--table", "9", "--dry-run", "--work-root", str(tmp_path)])


def test_configs_are_read_from_the_config_dir():
    assert reproduce.plan([6], "w")[0].cfg.endswith(os.path.join("configs", "maskrcnn_r50_coco_l1.yaml"))
    assert os.path.samefile(os.path.dirname(reproduce.plan([6], "w")[0].cfg), CONFIG_DIR)


def test_cli_scale_cuts_schedule_and_data_in_the_printed_commands(tmp_path, capsys, monkeypatch):
    main = _script_main(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        main(["--table", "3", "--dry-run", "--scale", "0.5", "--work-root", str(tmp_path)])
    assert exit_.value.code == 0
    out = capsys.readouterr().out.splitlines()
    cmds = [line for line in out if "$" in line]
    assert len(cmds) == 9 and all("train.epochs=6" in c and "data.train_fraction=0.5" in c for c in cmds)
    # half the images (5,770) x 3, 6 epochs, one process of 2 images: 8,655 per epoch
    assert sum("≈ 51,930 iterations" in line for line in out) == 9
    with pytest.raises(SystemExit) as exit_:
        main(["--table", "3", "--dry-run", "--scale", "0.5", "--data-fraction", "1", "--work-root", str(tmp_path)])
    assert exit_.value.code == 0
    cmds = [line for line in capsys.readouterr().out.splitlines() if "$" in line]
    assert len(cmds) == 9 and all("train.epochs=6" in c and "train_fraction" not in c for c in cmds)


def test_reproduce_waits_for_its_run_through_ctrl_c(monkeypatch):
    """subprocess.call killed the child 0.25 s after Ctrl-C, before it could write its checkpoint."""
    from detection.experiments import reproduce

    class Child:
        waits = 0

        def wait(self):
            Child.waits += 1
            if Child.waits == 1:
                raise KeyboardInterrupt  # the Ctrl-C reaches the parent while the child saves
            return 130

    monkeypatch.setattr(reproduce.subprocess, "Popen", lambda cmd: Child())
    assert reproduce.run_child(["train"]) == 130 and Child.waits == 2
