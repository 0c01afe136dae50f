"""The non-finite guard: the trainer's policy for steps whose values are not finite.

``train_step`` skips a step whose raw losses are not all finite (before the weighting records them, so ALWA's
window stays clean) or whose gradients are not (fp16 leaves that to its GradScaler); a finite raw loss above
``max_loss`` counts as diverged and is skipped the same way. The guard counts those steps (``bad_steps`` goes
into every checkpoint) and, after ``max_bad_steps`` consecutive ones, stops training with
``FloatingPointError``; the trainer raises it after the ``after_step`` hooks of that step ran (the checkpoint
hook keeps the last periodic checkpoint and writes the stopping state to a file of its own). The checks cost
one host read of a few flags per step (two without fp16), all-reduced so that every rank takes the same
decision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional


@dataclass
class NonFiniteGuard:
    enabled: bool = True  # train.check_finite: off, no step is skipped (nor counted)
    max_loss: Optional[float] = None  # train.max_loss (None: no limit)
    max_bad_steps: int = 5
    bad_steps: int = 0  # skipped steps in total
    consecutive: int = 0  # the current run of skipped steps
    first_bad: int = 0  # the iteration of the first step of that run

    def count(self, skipped: Optional[List[str]], iteration: int) -> None:
        """Record the outcome of the step that made ``iteration``: ``skipped`` names the offending keys."""
        if not skipped:
            self.consecutive = 0
            return
        self.bad_steps += 1
        self.consecutive += 1
        if self.consecutive == 1:  # it ran on the weights of the iteration before
            self.first_bad = iteration

    def check(self, skipped: Optional[List[str]], iteration: int) -> None:
        """Stop training when the run of skipped steps has reached ``max_bad_steps``."""
        if skipped and self.consecutive >= self.max_bad_steps:
            raise FloatingPointError(
                f"{self.consecutive} consecutive steps with non-finite values (iterations {self.first_bad}-"
                f"{iteration}; at the last: {', '.join(skipped)}: not finite, or above train.max_loss). "
                f"Lower the learning rate, check the data, or raise train.max_bad_steps")
