"""Loss-curve statistics and plots from metrics.jsonl, and the scheme comparison helpers."""
import json
import statistics

import pytest

from detection.experiments.compare import PRESETS, parse_scheme
from detection.experiments.plots import markdown_table, plot_runs, read_metrics, series, summary_rows, windowed


def log_records(values, interval):
    """What MetricsLogger writes for a per-step sequence: mean and sample std per interval."""
    records = []
    for end in range(interval, len(values) + 1, interval):
        chunk = values[end - interval:end]
        records.append({"iter": end, "loss_cls": statistics.mean(chunk), "std": {"loss_cls": statistics.stdev(chunk)},
                        "weighted": {"loss_cls": statistics.mean(chunk)}, "weights": {"loss_cls": 1.0}})
    return records


def test_windowed_pools_intervals_exactly():
    values = [((i * 37) % 11) / 3.0 + 0.01 * i for i in range(200)]
    records = log_records(values, 20)
    it, m, s = windowed(*series(records, "loss_cls"), window=100)
    assert it == [100, 200]
    for k, (mean, std) in enumerate(zip(m, s)):
        chunk = values[100 * k:100 * (k + 1)]
        assert mean == pytest.approx(statistics.mean(chunk), rel=1e-12)
        assert std == pytest.approx(statistics.stdev(chunk), rel=1e-9)


def test_per_level_keys_are_summed():
    records = [{"iter": 10, "loss_cls_p3": 1.0, "loss_cls_p4": 2.0, "loss_bbox_p3": 5.0,
                "std": {"loss_cls_p3": 3.0, "loss_cls_p4": 4.0}, "weighted": {"loss_cls_p3": 0.5, "loss_cls_p4": 2.0}}]
    assert series(records, "loss_cls") == ([10], [3.0], [5.0])
    assert series(records, "loss_cls", "weighted")[1] == [2.5]
    assert series(records, "loss_mask") == ([], [], [])


def write_run(root, name, metric, records, weights=None):
    d = root / name
    d.mkdir()
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (d / "eval.json").write_text(json.dumps({"mAP": metric, "train_time_s": 12.0, "weights": weights or {}}))
    return str(d)


def test_plot_table_and_resumed_log(tmp_path):
    a = write_run(tmp_path, "fixed", 0.5, log_records([1.0, 2.0, 3.0, 4.0], 2))
    records = log_records([1.0, 2.0, 3.0, 4.0], 2)
    records[1]["weights"] = {"loss_cls": 0.25}
    # a resumed run repeats iteration 2: the later record wins
    b = write_run(tmp_path, "alwa", 0.625, records + [dict(records[0], loss_cls=9.0)], {"loss_cls": 0.25, "loss_bbox": 1.0})
    assert [r["iter"] for r in read_metrics(b)] == [2, 4] and read_metrics(b)[0]["loss_cls"] == 9.0
    out = plot_runs([a, b], str(tmp_path / "p" / "losses.png"), keys=["loss_cls"], window=None)
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    table = markdown_table(summary_rows([a, b]))
    lines = table.splitlines()
    assert lines[0].startswith("| run | mAP |") and "| fixed | 0.5000 |" in lines[2]
    assert "| alwa | 0.6250 | 12 | loss_cls 0.25 |" in lines[3]


def test_missing_runs_and_metrics_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        read_metrics(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="has not finished"):
        summary_rows([str(tmp_path)])


def test_scheme_parsing():
    assert parse_scheme("alwa1") == ("alwa1", PRESETS["alwa1"]["one_stage"])
    assert parse_scheme("alwa1", model_type="mask_rcnn") == ("alwa1", PRESETS["alwa1"]["two_stage"])
    assert parse_scheme("mine:weighting.type=alwa,weighting.interval=50") == ("mine", ["weighting.type=alwa", "weighting.interval=50"])
    with pytest.raises(ValueError, match="unknown scheme 'alwa3'"):
        parse_scheme("alwa3")
    with pytest.raises(ValueError, match="NAME:key=value"):
        parse_scheme("x:weighting.type")


def test_alwa_stationary_lambdas_alternate_only_with_weighted_stats(tmp_path):
    from detection.experiments.plots import alwa_stationary_lambdas, plot_alwa_stationary

    weighted, raw = alwa_stationary_lambdas("weighted", windows=12), alwa_stationary_lambdas("raw", windows=12)
    assert max(weighted) - min(weighted) > 0.5 > max(raw) - min(raw)
    assert all(abs(lam - 1 / 3) < 0.15 for lam in raw)  # REG/CLS = 0.1 / 0.3, up to window noise
    out = plot_alwa_stationary(str(tmp_path / "s.png"), windows=4)
    assert open(out, "rb").read(4) == b"\x89PNG"


def test_curves_follow_the_logged_contract():
    """A run's contract (written by the logger) names its keys and per-level splits; plots read it instead
    of parsing names: a split whose parts are not named ``_p<N>`` is still summed."""
    from detection.experiments.plots import loss_keys, series, summary_keys

    contract = {"keys": ["loss_a_low", "loss_a_high", "loss_b"], "groups": {},
                "levels": {"loss_a": ["loss_a_low", "loss_a_high"]}}
    records = [{"iter": 5, "contract": contract, "loss_a_low": 1.0, "loss_a_high": 2.0, "loss_b": 4.0,
                "std": {}, "weighted": {"loss_a_low": 1.0, "loss_a_high": 2.0, "loss_b": 4.0, "log_var/x": 0.1}},
               {"iter": 10, "loss_a_low": 3.0, "loss_a_high": 1.0, "loss_b": 2.0, "std": {}, "weighted": {}}]
    assert loss_keys(records) == ["loss_a_low", "loss_a_high", "loss_b"]
    assert summary_keys(records) == ["loss_a", "loss_b"]
    assert series(records, "loss_a") == ([5, 10], [3.0, 4.0], [0.0, 0.0])
