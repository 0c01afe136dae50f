"""The comparison grid: run layout and overrides, the mean ± sd / paired-difference tables, and a tiny
grid trained as two parallel subprocesses."""
import json
import os
import re

import pytest

from detection.experiments.compare import (GridRun, execution_order, grid_markdown, mean_sd, parse_scheme, pending_runs, plan_grid,
                               run_grid)


def test_plain_comparison_keeps_one_folder_per_scheme():
    runs = plan_grid(["fixed", "alwa1"], "root", overrides=["train.max_iters=5"])
    assert [r.work_dir for r in runs] == [os.path.join("root", "fixed"), os.path.join("root", "alwa1")]
    assert runs[1].overrides == ("train.max_iters=5", "weighting.type=alwa", "weighting.variant=1",
                                 "weighting.cls_keys=[loss_cls]", "weighting.reg_keys=[loss_bbox]")
    assert [r.label for r in runs] == ["fixed", "alwa1"]


def test_grid_layout_and_override_order():
    runs = plan_grid(["fixed", "x:weighting.type=alwa"], "root", variants=["l1", "ciou"], seeds=[0, 7],
                     overrides=["a=1"])
    assert len(runs) == 2 * 2 * 2
    assert [r.label for r in runs[:4]] == ["l1/fixed/seed0", "l1/fixed/seed7", "l1/x/seed0", "l1/x/seed7"]
    last = runs[-1]
    assert last.work_dir == os.path.join("root", "ciou", "x", "seed7")
    # common, then the variant, then the scheme, then the seed: later keys win in the config loader
    assert last.overrides == ("a=1", "model.loss.reg_loss=ciou", "weighting.type=alwa", "seed=7")
    # trained seed by seed: a grid stopped part way has every cell at the same number of seeds
    assert [r.label for r in execution_order(runs)][:4] == ["l1/fixed/seed0", "l1/x/seed0", "ciou/fixed/seed0", "ciou/x/seed0"]


def test_resumed_grid_finishes_the_first_seed_first(tmp_path):
    runs = plan_grid(["fixed", "x:weighting.type=alwa"], str(tmp_path), variants=["l1", "ciou"], seeds=[0, 7])
    for r in runs:
        if r.variant == "l1" and r.seed == 0:  # the first row's seed-0 runs finished before the stop
            os.makedirs(r.work_dir)
            open(os.path.join(r.work_dir, "eval.json"), "w").close()
    # the leftover list starts with a seed-7 run; seed 0's other row must still come first
    assert [r.label for r in pending_runs(runs, [0, 7])] == [
        "ciou/fixed/seed0", "ciou/x/seed0", "l1/fixed/seed7", "l1/x/seed7", "ciou/fixed/seed7", "ciou/x/seed7"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(schemes=["fixed", "fixed"]), "scheme names must be distinct"),
    (dict(schemes=["fixed"], seeds=[1, 1]), "seed names must be distinct"),
    (dict(schemes=["fixed"], variants=["l2"]), "unknown variant 'l2'"),
    (dict(schemes=["fixed"], variants=["v:model.loss.reg_loss"]), "variant 'v:model.loss.reg_loss': expected"),
])
def test_grid_input_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_grid(work_root="root", **kwargs)


def test_presets_follow_the_detector_or_refuse():
    """On Faster / Mask R-CNN the regression-loss rows change the RoI head (the RPN keeps L1, as released) and
    ALWA acts on the RPN pair; RetinaNet-only schemes are refused with what to do instead, never a no-op."""
    one = plan_grid(["alwa1"], "root", variants=["smoothl1", "ciou"], model_type="retinanet")
    assert one[0].overrides == ("model.loss.reg_loss=smooth_l1", "model.loss.smooth_l1_beta=1.0", "weighting.type=alwa",
                                "weighting.variant=1", "weighting.cls_keys=[loss_cls]", "weighting.reg_keys=[loss_bbox]")
    two = plan_grid(["alwa2", "uncertainty"], "root", variants=["smoothl1", "ciou"], model_type="faster_rcnn")
    assert two[0].overrides == ("model.roi_head.reg_loss=smooth_l1", "model.roi_head.smooth_l1_beta=1.0",
                                "model.roi_head.reg_loss_weight=1.1", "weighting.type=alwa", "weighting.variant=2",
                                "weighting.cls_keys=[loss_rpn_cls]", "weighting.reg_keys=[loss_rpn_bbox]")
    assert two[2].overrides[:2] == ("model.roi_head.reg_loss=ciou", "model.roi_head.reg_loss_weight=1.0")
    assert "weighting.keys=[loss_rpn_cls,loss_rpn_bbox,loss_cls,loss_bbox]" in two[1].overrides
    for scheme in ("avw", "rlo", "iou_balanced"):
        with pytest.raises(ValueError, match=f"'{scheme}' does not apply to mask_rcnn: .*NAME:"):
            plan_grid([scheme], "root", model_type="mask_rcnn")


def test_presets_build_on_a_two_stage_config(tmp_path):
    """Every two-stage preset's overrides load on the Faster R-CNN demo config and touch only keys the model
    uses (the RoI head's loss, the RPN's weighting keys)."""
    from detection import builders, engine

    cfg_path = os.path.join(os.path.dirname(__file__), "..", "..", "..", "configs", "demo", "frcnn_shapes_alwa1.yaml")
    runs = plan_grid(["fixed", "alwa1", "alwa2_raw", "dwa"], str(tmp_path), variants=["l1", "smoothl1", "giou"],
                     model_type="faster_rcnn")
    assert len(runs) == 4 * 3  # every scheme x variant is checked below
    for run in runs:
        cfg = engine.load(cfg_path, list(run.overrides))
        builders.build_weighting(cfg)
        assert cfg.model.rpn.reg_loss == "l1"
        assert cfg.model.roi_head.reg_loss == {"l1": "l1", "smoothl1": "smooth_l1", "giou": "giou"}[run.variant]
        if cfg.weighting.type == "alwa":
            assert (cfg.weighting.cls_keys, cfg.weighting.reg_keys) == (["loss_rpn_cls"], ["loss_rpn_bbox"])


def _fake(values):
    """values: {(variant, scheme, seed): mAP or None (unfinished)} -> runs, summary rows."""
    runs, rows = [], []
    for (v, s, k), m in values.items():
        runs.append(GridRun(v, s, k, "unused", ()))
        rows.append({"run": f"{v}/{s}/{k}"} if m is None else {"run": f"{v}/{s}/{k}", "mAP": m})
    return runs, rows


def test_mean_sd_by_hand():
    assert mean_sd([0.5]) == (0.5, None)
    m, sd = mean_sd([0.80, 0.82, 0.84])
    assert m == pytest.approx(0.82) and sd == pytest.approx(0.02)


def test_grid_table_mean_sd_and_paired_differences():
    runs, rows = _fake({("l1", "fixed", 0): 0.80, ("l1", "fixed", 1): 0.82,
                        ("l1", "alwa1", 0): 0.81, ("l1", "alwa1", 1): 0.85,
                        ("ciou", "fixed", 0): 0.70, ("ciou", "fixed", 1): None,
                        ("ciou", "alwa1", 0): 0.66, ("ciou", "alwa1", 1): 0.68})
    table = grid_markdown(runs, rows, "mAP").splitlines()
    assert table[0] == "| | fixed | alwa1 |"
    # sd of (0.80, 0.82) = 0.01414; of (0.81, 0.85) = 0.02828; an unfinished run leaves n = 1 and no sd
    assert table[2] == "| l1 | 0.8100 ± 0.0141 (2) | 0.8300 ± 0.0283 (2) |"
    assert table[3] == "| ciou | 0.7000 (1) | 0.6700 ± 0.0141 (2) |"
    paired = grid_markdown(runs, rows, "mAP", paired=True).splitlines()
    # differences per seed: +0.01, +0.03 -> +0.02 ± 0.0141; ciou pairs only seed 0: 0.66 - 0.70
    assert paired[2] == "| l1 | - | +0.0200 ± 0.0141 (2) |"
    assert paired[3] == "| ciou | - | -0.0400 (1) |"




def test_run_command_puts_a_multi_process_run_under_this_interpreters_torchrun():
    import sys

    from detection.experiments.compare import GridRun, run_command

    run = GridRun("l1", "alwa2", 1, "w/l1/alwa2/seed1", ("data.batch_size=2", "seed=1"))
    one = run_command("c.yaml", run)
    assert one[0] == sys.executable and one[1].endswith("train.py")
    assert one[2:] == ["--cfg", "c.yaml", "--work-dir", "w/l1/alwa2/seed1", "--resume", "--set", "data.batch_size=2",
                       "seed=1", "train.progress=false"]
    four = run_command("c.yaml", run, nproc=4)
    # --standalone: each run rendezvous on a free port, so two grid jobs never share 29500
    assert four == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"] + one[1:]


@pytest.mark.slow
def test_parallel_grid_trains_each_cell_once(tmp_path, capsys, write_tiny_retinanet):
    cfg = write_tiny_retinanet(tmp_path)
    root = str(tmp_path / "grid")
    short = ["train.max_iters=2", "data.shapes.seed=5"]  # "seed: 3" below is then the run's seed only
    text = run_grid(str(cfg), ["fixed"], root, variants=["l1", "giou"], seeds=[3], overrides=short, jobs=2, threads=1)
    for variant in ("l1", "giou"):
        work = os.path.join(root, variant, "fixed", "seed3")
        with open(os.path.join(work, "eval.json")) as f:
            assert json.load(f)["iter"] == 2
        saved = open(os.path.join(work, "config.yaml")).read()
        assert f"reg_loss: {variant}" in saved and "seed: 3" in saved
        assert os.path.isfile(os.path.join(root, f"losses_{variant}.png"))
    assert "| l1 |" in text and "| giou |" in text and "(1)" in text
    assert open(os.path.join(root, "compare.csv")).readline().strip() == "variant,scheme,seed,mAP,train_time_s,diverged_at_iter"
    capsys.readouterr()
    run_grid(str(cfg), ["fixed"], root, variants=["l1", "giou"], seeds=[3], overrides=short, jobs=2)  # all finished
    out = capsys.readouterr().out
    assert out.count("finished, skipped") == 2 and "started" not in out
    # a grid that is only part done: the report covers the finished runs, nothing is trained
    text = run_grid(str(cfg), ["fixed"], root, variants=["l1", "giou"], seeds=[3, 4], overrides=short, report_only=True)
    assert "report of 2 finished run(s) of 4" in capsys.readouterr().out
    assert "**Pending: 2 of 4 runs** not finished (l1/fixed/seed4, giou/fixed/seed4)" in text
    assert not os.path.exists(os.path.join(root, "l1", "fixed", "seed4"))
    assert "| l1 | " in text and " (1) |" in text
    with pytest.raises(FileNotFoundError, match="no finished run"):
        run_grid(str(cfg), ["fixed"], str(tmp_path / "empty"), seeds=[1], report_only=True)


def test_iou_balanced_preset_is_the_released_voc_r50_config():
    from detection import engine
    from detection.config.loader import config_to_dict

    configs = os.path.join(os.path.dirname(__file__), "..", "..", "..", "configs")
    released = engine.load(os.path.join(configs, "retinanet_r50_voc_iou_balanced.yaml"))
    loss = released.model.loss
    assert (loss.reg_loss, loss.smooth_l1_beta, loss.reg_loss_weight, loss.iou_balanced_eta, loss.iou_balanced_lambda,
            loss.iou_balanced_norm) == ("smooth_l1", 0.11, 2.34, 1.5, 1.5, "level")
    _, overrides = parse_scheme("iou_balanced")
    preset = engine.load(os.path.join(configs, "_base_", "retinanet_r50_voc.yaml"), overrides)
    assert config_to_dict(preset) == config_to_dict(released)


@pytest.mark.slow
def test_a_diverged_run_is_reported_not_retrained_and_not_a_failure(tmp_path, capsys, write_tiny_retinanet):
    """A run that diverged made the grid raise before writing any report, and rerunning trained it again (the
    same seed diverges the same way); the bootstrap table vanished because the run has no detections."""
    cfg = write_tiny_retinanet(tmp_path)
    root = str(tmp_path / "grid")
    short = ["train.max_iters=2", "data.shapes.seed=5"]
    schemes = ["fixed", "same:weighting.type=fixed", "blowup:weighting.type=fixed,train.max_loss=1e-9,train.max_bad_steps=1"]
    text = run_grid(str(cfg), schemes, root, seeds=[0], overrides=short, jobs=2, threads=1)
    out = capsys.readouterr().out
    assert "blowup/seed0: diverged at iteration 1" in out and "FAILED" not in out
    assert re.search(r"\| all \| [0-9.]+ \(1\) \| [0-9.]+ \(1\) \| - \(1 diverged\) \|", text)  # mean ± sd
    assert "| all | - | +0.0000 (1) | - (1 diverged) |" in text  # paired differences
    # the bootstrap table keeps the runs that finished; one seed pair has no interval over seeds
    assert "| all | same | 1 | +0.0000 | [+0.0000, +0.0000] | - | - |" in text
    assert "| all | blowup | 0 | - | - | - | - |" in text
    # the bootstrap table comes before the per-run table's heading, not between the heading and the table
    assert text.index("paired resamples of the test images") < text.index("Every run:\n\n| run |")
    assert "| blowup/seed0 | diverged at iteration 1 |" in text
    csv_lines = open(os.path.join(root, "compare.csv")).read().splitlines()
    assert csv_lines[0] == "variant,scheme,seed,mAP,train_time_s,diverged_at_iter" and csv_lines[-1].endswith(",1")
    run_grid(str(cfg), schemes, root, seeds=[0], overrides=short, jobs=2)
    out = capsys.readouterr().out
    assert "blowup/seed0: diverged at iteration 1, skipped" in out and "started" not in out
