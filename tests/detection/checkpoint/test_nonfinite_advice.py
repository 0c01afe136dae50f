"""The non-finite guard's advice must be true and must work. It called the checkpoint of the iteration just
before the first bad step "the last good checkpoint", but the first bad step ran on exactly those weights:
resuming from it, at any learning rate, replays the same non-finite steps and stops with the same message."""
import json
import os
import shlex

import pytest

from detection.checkpoint.io import load_checkpoint

# SGD at lr 10 on the tiny RetinaNet (MobileNet body: checkpoints of 8 MB): finite losses for 4 steps, then
# non-finite from step 5 on; at lr 1 it trains
DIVERGING = ["model.backbone.name=mobilenet_v3_small", "optimizer.type=sgd", "optimizer.lr=10", "train.lr_steps=[100]",
             "train.max_iters=8", "train.max_bad_steps=2", "train.log_interval=1", "train.checkpoint_interval=1", "train.keep_checkpoints=3",
             "train.eval_after=false"]


@pytest.mark.slow
def test_the_advised_command_continues_past_the_divergence(tmp_path, write_tiny_retinanet, script, monkeypatch):
    cfg = write_tiny_retinanet(tmp_path)
    work = tmp_path / "w"
    with pytest.raises(SystemExit) as exc:
        script("train").main(["--cfg", cfg, "--work-dir", str(work), "--set", *DIVERGING])
    message = str(exc.value)
    assert message.startswith("error: 2 consecutive steps with non-finite values (iterations 5-6;"), message
    good = work / "checkpoints" / "iter_0000003.pth"
    assert f"The last good checkpoint is {good} (iteration 3; the first non-finite step, iteration 5, ran on the " \
           f"weights of iteration 4" in message
    assert load_checkpoint(str(work / "checkpoints" / "last.pth"))["iter"] == 4  # the one the old advice named
    command = shlex.split(message.split("with a lower learning rate: ")[1].split(" The state at the stop")[0])
    assert command[:2] == ["python", "scripts/train.py"] and command[-1] == "optimizer.lr=1"

    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
    script("train").main(command[2:])  # no SystemExit: it trains to the end
    assert load_checkpoint(str(work / "checkpoints" / "last.pth"))["iter"] == 8
    records = [json.loads(line) for line in open(work / "metrics.jsonl")]
    assert [r["iter"] for r in records] == list(range(1, 9)) and not any("skipped_steps" in r for r in records[3:])
    assert not (work / "diverged.json").exists()
