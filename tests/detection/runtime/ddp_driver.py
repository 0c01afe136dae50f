"""Run under torchrun by test_ddp.py: trains a config for a few steps and saves each rank's final state.

    torchrun --standalone --nproc_per_node=2 tests/detection/runtime/ddp_driver.py CFG WORK_DIR [KEY=VALUE ...]

DDP_RESUME=1 resumes from WORK_DIR/checkpoints/last.pth; DDP_NAN_AT=N makes rank 1 alone produce a NaN at step N.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

import torch  # noqa: E402

from detection import engine  # noqa: E402


class NaNOnRank1(torch.nn.Module):
    def __init__(self, model, at, rank):
        super().__init__()
        self.module, self.at, self.rank, self.n = model, at, rank, 0

    def forward(self, images, targets):
        losses = self.module(images, targets)
        self.n += 1
        if self.n == self.at and self.rank == 1:
            losses["loss_bbox"] = losses["loss_bbox"] * float("nan")
        return losses


def main():
    cfg_path, work_dir, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    cfg = engine.load(cfg_path, overrides)
    device, rank, world = engine.setup(cfg)
    engine.prepare_work_dir(cfg, work_dir, rank)
    trainer = engine.build_trainer(cfg, work_dir, device, rank, world, resume=os.environ.get("DDP_RESUME") == "1")
    nan_at = int(os.environ.get("DDP_NAN_AT", "0"))
    if nan_at:  # rank 1 alone produces a NaN loss at that step: every rank must skip it together
        trainer.model = NaNOnRank1(trainer.model, nan_at, rank)
    trainer.train()
    model = trainer.model
    while hasattr(model, "module"):
        model = model.module
    torch.save({"world": world, "iter": trainer.iter, "bad_steps": trainer.guard.bad_steps, "weights": trainer.weighting.weights,
                "weighting": trainer.weighting.state_dict(), "rng": torch.get_rng_state(),
                "params": {k: v.detach().cpu() for k, v in model.named_parameters()}},
               os.path.join(work_dir, f"rank{rank}.pth"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
