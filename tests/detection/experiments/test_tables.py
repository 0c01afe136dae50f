"""configs/tables.yaml: the committed table configs are exactly the generator's output, every one loads,
sample cells carry the paper's settings, and the paper numbers are the ones we read (or null)."""
import os
import shutil

import pytest

from detection import builders, engine
from detection.experiments import tables
from detection.config.loader import config_to_dict

SPEC = tables.load_spec()
FILES = tables.render_configs(SPEC)


def _load(name, overrides=()):
    return engine.load(os.path.join(tables.CONFIG_DIR, f"{name}.yaml"), overrides)


def test_committed_configs_are_the_generators_output():
    stale, orphans = tables.check_configs()
    assert (stale, orphans) == ([], []), "run: python scripts/gen_configs.py"


def test_cell_counts_and_file_count():
    counts = {n: len(t.cells) for n, t in SPEC.tables.items()}
    assert counts == {1: 33, 2: 18, 3: 9, 4: 9, 5: 10, 6: 9, 7: 12, 8: 12}
    # 112 cells, of which 3 (Table 1, 1:1) + 1 (Table 5, 1:1) reuse other tables' configs; plus one alias
    assert len(FILES) == 112 - 4 + 1
    assert "frcnn_r50_voc_alwa1.yaml" in FILES


def test_every_table_config_loads_and_one_model_per_detector_and_backbone_builds():
    kinds = {}
    for name in sorted(FILES):
        cfg = _load(name[:-5], ["model.backbone.pretrained=null"])
        builders.build_weighting(cfg)  # cheap: checks variant, interval, keys, weights
        kinds.setdefault((cfg.model.type, cfg.model.backbone.name), cfg)
    assert set(kinds) == {("retinanet", "resnet50"), ("retinanet", "resnet101"), ("faster_rcnn", "resnet50"),
                          ("mask_rcnn", "resnet50"), ("mask_rcnn", "resnet101")}
    for cfg in kinds.values():
        n = len(builders.class_names(cfg))
        model = builders.build_model(cfg, n)
        if cfg.model.type == "retinanet":
            assert model.head.cls_out.out_channels == 9 * n
        else:
            assert model.roi_heads.box_head.cls.out_features == n + 1


@pytest.mark.parametrize("name,typ,backbone,reg,fmt,weighting", [
    ("retinanet_r101_voc_smoothl1_alwa1", "retinanet", "resnet101", "smooth_l1", "voc",
     ("alwa", 1, 100, 1.0, ["loss_cls"], ["loss_bbox"], {})),
    ("retinanet_r50_voc_ciou_w0p5_0p75", "retinanet", "resnet50", "ciou_mmdet", "voc",
     ("fixed", 2, 100, 1.0, ["loss_cls"], ["loss_bbox"], {"loss_cls": 0.5, "loss_bbox": 0.75})),
    ("frcnn_r50_coco_l1_w0p1_0p75", "faster_rcnn", "resnet50", "l1", "coco",
     ("fixed", 2, 100, 1.0, ["loss_cls"], ["loss_bbox"], {"loss_rpn_cls": 0.1, "loss_rpn_bbox": 0.75})),
    ("frcnn_r50_voc_smoothl1_alwa2_c500", "faster_rcnn", "resnet50", "smooth_l1", "voc",
     ("alwa", 2, 500, 1.0, ["loss_rpn_cls"], ["loss_rpn_bbox"], {})),
    ("frcnn_r50_voc_ciou_alwa2_init0p75", "faster_rcnn", "resnet50", "ciou_mmdet", "voc",
     ("alwa", 2, 100, 0.75, ["loss_rpn_cls"], ["loss_rpn_bbox"], {})),
    ("maskrcnn_r101_coco_smoothl1_alwa2", "mask_rcnn", "resnet101", "smooth_l1", "coco",
     ("alwa", 2, 100, 1.0, ["loss_rpn_cls"], ["loss_rpn_bbox"], {})),
])
def test_sample_cells_have_the_tables_settings(name, typ, backbone, reg, fmt, weighting):
    cfg = _load(name)
    assert (cfg.model.type, cfg.model.backbone.name, cfg.data.format) == (typ, backbone, fmt)
    # RetinaNet's box loss, or the RoI head's (the RPN keeps L1 in every row, as released)
    assert (cfg.model.loss.reg_loss if typ == "retinanet" else cfg.model.roi_head.reg_loss) == reg
    if typ == "retinanet":
        assert not hasattr(cfg.model, "rpn")  # a one-stage model has no RPN section to set
    else:
        assert cfg.model.rpn.reg_loss == "l1"
    w = cfg.weighting
    # each weighting type has its own section: the keys of the other types read as their defaults
    got = (w.type, getattr(w, "variant", 2), getattr(w, "interval", 100), getattr(w, "init_weight", 1.0),
           getattr(w, "cls_keys", ["loss_cls"]), getattr(w, "reg_keys", ["loss_bbox"]), getattr(w, "weights", {}))
    assert got == weighting
    # the paper's schedule is untouched by the table overrides
    lr = 0.01 if typ == "retinanet" else 0.02
    assert (cfg.train.epochs, cfg.train.lr_steps, cfg.optimizer.lr) == (12, [8, 11], lr)


def test_alias_is_the_same_run_as_its_cell():
    assert config_to_dict(_load("frcnn_r50_voc_alwa1")) == config_to_dict(_load("frcnn_r50_voc_l1_alwa1"))


def test_paper_numbers():
    """Every table has a paper number for every cell and metric; spot checks of the conversions of the
    relative rows (differences in points) to absolute values."""
    t = SPEC.tables
    for n, table in t.items():
        assert all(v is not None for c in table.cells for v in c.paper.values()), n
        assert all(set(c.paper) == set(table.metrics) for c in table.cells), n
    assert [t[n].metrics for n in range(1, 9)] == [["mAP"]] * 3 + [["AP", "AP50", "AP75"]] * 3 + [["mAP"]] * 2
    mAP = lambda table, r, c: t[table].cell(r, c).paper["mAP"]  # noqa: E731
    assert [mAP(2, 0, c) for c in range(3)] == [0.7517, 0.7599, 0.7613]  # L1, R50
    assert [mAP(2, 5, c) for c in range(3)] == [0.7697, 0.7773, 0.7804]  # CIoU, R101
    assert mAP(3, 2, 2) == 0.7588 and mAP(3, 1, 0) == 0.7450
    # Table 1: 1 : 1 absolute, then differences: L1 0.25 : 0.25 = 0.7517 + 0.0146; CIoU 0.10 : 0.10 = 0.7535 - 0.0059
    assert t[1].rows[0] == "1.00 : 1.00" and [mAP(1, 0, c) for c in range(3)] == [0.7517, 0.7531, 0.7535]
    assert mAP(1, 2, 0) == 0.7663 and mAP(1, 1, 2) == 0.7476 and mAP(1, 10, 0) == 0.7233
    # Table 4: SmoothL1 + ALWA_2 is +0.3 / +0.3 / +0.9 points over 0.361 / 0.565 / 0.387
    assert t[4].cell(1, 2).paper == {"AP": 0.364, "AP50": 0.568, "AP75": 0.396}
    assert t[4].cell(0, 1).paper == {"AP": 0.368, "AP50": 0.569, "AP75": 0.396}
    # Table 5: 0.25 : 0.25 is +0.1 / -0.2 / +0.5 over Table 4's L1 baseline (the same run)
    assert t[5].cell(3, 0).paper == {"AP": 0.367, "AP50": 0.566, "AP75": 0.402}
    assert t[5].cells[0].reuse and t[5].cells[0].name == "frcnn_r50_coco_l1"
    # Table 6: SmoothL1 R101 + ALWA_1 is +0.0 / -0.1 / -0.3
    assert t[6].cell(2, 1).paper == {"AP": 0.391, "AP50": 0.592, "AP75": 0.426}
    assert [mAP(7, 2, c) for c in range(3)] == [0.7536, 0.7612, 0.7553]  # C = 200
    assert [mAP(8, 3, c) for c in range(3)] == [0.7495, 0.7572, 0.7542]  # initial weight 1.5
    # the paper's layouts: 4 GPUs x 2 images, Mask R-CNN and the ablations 2 x 4
    assert {n: (t[n].gpus, t[n].images_per_gpu) for n in t} == {n: (2, 4) if n in (6, 7, 8) else (4, 2) for n in t}


def test_table1_and_5_weights_and_table7_8_layout():
    t1, t5 = SPEC.tables[1], SPEC.tables[5]
    assert t1.rows == ["1.00 : 1.00", "0.10 : 0.10", "0.25 : 0.25", "0.25 : 0.50", "0.50 : 0.25", "0.50 : 0.50",
                       "0.50 : 0.75", "0.75 : 0.50", "0.75 : 0.75", "1.50 : 1.50", "2.00 : 2.00"]
    for i, row in enumerate(t1.rows[1:], start=1):
        cls, reg = (float(x) for x in row.split(":"))
        for j in range(3):
            assert _load(t1.cell(i, j).name).weighting.weights == {"loss_cls": cls, "loss_bbox": reg}
    for i, row in enumerate(t5.rows[1:], start=1):
        cls, reg = (float(x) for x in row.split(":"))
        assert _load(t5.cell(i, 0).name).weighting.weights == {"loss_rpn_cls": cls, "loss_rpn_bbox": reg}
    for n in (6, 7, 8):
        for c in SPEC.tables[n].cells:
            assert _load(c.name).data.batch_size == 4, c.name  # 2 GPUs x 4 images, as the paper states
    assert _load("frcnn_r50_voc_l1_alwa2").data.batch_size == 2  # Table 3: 4 x 2


def test_shared_cells_point_at_the_other_tables_configs():
    t1 = SPEC.tables[1]
    assert [c.name for c in t1.cells[:3]] == ["retinanet_r50_voc_l1", "retinanet_r50_voc_smoothl1",
                                              "retinanet_r50_voc_ciou"]
    assert all(c.reuse for c in t1.cells[:3]) and t1.rows[0] == "1.00 : 1.00"
    assert "Also Table 1" in FILES["retinanet_r50_voc_ciou.yaml"] and "Also Table 5" in FILES["frcnn_r50_coco_l1.yaml"]
    # Table 7's C = 100 row is its own run (2 x 4 images), not Table 3's ALWA_2 column (4 x 2)
    assert not SPEC.tables[7].cell(1, 0).reuse and SPEC.tables[7].cell(1, 0).name == "frcnn_r50_voc_l1_alwa2_c100"


def test_render_orders_keys_like_the_schema():
    cell = tables.Cell(9, "r", "c", "x", "_base_/retinanet_r50_voc.yaml",
                       {"weighting.stats": "raw", "weighting.cls_keys": ["loss_cls"], "weighting.type": "alwa",
                        "model.loss.reg_loss": "giou", "model.backbone.name": "resnet101"}, {"mAP": None})
    spec = tables.Spec({9: tables.Table(9, "T", ["mAP"], 4, "h", ["r"], ["c"], "s", [cell])})
    assert tables.render_cell(spec, cell) == (
        '# Table 9, T: row "r" (h), column "c".\n' + tables.GENERATED_MARKER + "\n"
        "_base_: _base_/retinanet_r50_voc.yaml\n"
        "model:\n  backbone:\n    name: resnet101\n  loss:\n    reg_loss: giou\n"
        "weighting:\n  type: alwa\n  cls_keys: [loss_cls]\n  stats: raw\n")


SPEC_TEXT = """
tables:
  1:
    {{title: T, metrics: [mAP], digits: 4, row_header: h, rows: [a, b], cols: [x], source: s,
     cells: [{first}, {second}]}}
"""
GOOD = "{name: one, base: _base_/schedule_1x.yaml, set: {weighting.interval: 5}, paper: 0.5}"


@pytest.mark.parametrize("second,message", [
    (GOOD, "defined twice"),
    ("{name: two, reuse: true, paper: null}", "not defined by any table"),
    ("{name: two, base: b.yaml, paper: yes}", "must be a number or null"),
    ("{name: two, base: b.yaml, paper: {AP: 0.3}}", "must map the table's metrics"),
    ("{name: two, base: b.yaml}", "expected"),
])
def test_spec_errors(tmp_path, second, message):
    path = tmp_path / "tables.yaml"
    path.write_text(SPEC_TEXT.format(first=GOOD, second=second))
    with pytest.raises(tables.SpecError, match=message):
        tables.load_spec(str(path))
    path.write_text(SPEC_TEXT.format(first=GOOD, second="{name: two, reuse: true, paper: null}")
                    .replace("cells: [", "cells: [" + GOOD.replace("one", "three") + ", "))
    with pytest.raises(tables.SpecError, match="3 cells for 2 rows x 1 cols"):
        tables.load_spec(str(path))


def test_check_finds_drift_and_orphans_and_write_repairs(tmp_path):
    for name in FILES:
        shutil.copy(os.path.join(tables.CONFIG_DIR, name), tmp_path / name)
    edited = tmp_path / "retinanet_r50_voc_l1_alwa2.yaml"
    edited.write_text(edited.read_text().replace("interval: 100", "interval: 50"))
    os.remove(tmp_path / "frcnn_r50_voc_ciou_alwa2_c20.yaml")
    (tmp_path / "old_cell.yaml").write_text(tables.GENERATED_MARKER + "\n_base_: x.yaml\n")
    (tmp_path / "hand_written.yaml").write_text("_base_: x.yaml\n")
    stale, orphans = tables.check_configs(str(tmp_path), SPEC)
    assert stale == ["frcnn_r50_voc_ciou_alwa2_c20.yaml", "retinanet_r50_voc_l1_alwa2.yaml"]
    assert orphans == ["old_cell.yaml"]
    assert tables.write_configs(str(tmp_path), SPEC) == stale
    assert tables.check_configs(str(tmp_path), SPEC) == ([], ["old_cell.yaml"])
    assert "interval: 100" in edited.read_text()


def test_spec_file_errors_name_the_problem(tmp_path):
    path = tmp_path / "tables.yaml"
    path.write_text("tables:\n  1: {title: T: x}\n")
    with pytest.raises(tables.SpecError, match="tables.yaml is not valid YAML"):
        tables.load_spec(str(path))
    path.write_text(SPEC_TEXT.format(first=GOOD, second=GOOD.replace("one", "two")).replace("source: s,", "source: s, gpu: 4,"))
    with pytest.raises(tables.SpecError, match=r"table 1: unknown keys \['gpu'\]"):
        tables.load_spec(str(path))
    path.write_text(SPEC_TEXT.format(first=GOOD, second=GOOD.replace("one", "two")).replace("[mAP]", "[mAP, APx]"))
    with pytest.raises(tables.SpecError, match="metrics must be"):
        tables.load_spec(str(path))
