"""What a stopped run can continue from, said as a command that works, and what a killed run left behind.

- After the non-finite guard: the first bad step ran on the weights of the iteration before it, so a
  checkpoint of that iteration (or later) holds weights that give the same non-finite losses on the same
  batches again, whatever the learning rate: resuming from it stops again with the same message. The advice
  names the newest checkpoint from before that, with the command (and a lower learning rate).
- A truncated or corrupt ``last.pth`` on ``--resume``: the newest intact ``iter_NNNNNNN.pth``
  (``train.keep_checkpoints``) with the ``--resume-from`` command.
- Temp files of a checkpoint write that was killed (tens of MB each) are removed at the next start.
"""
from __future__ import annotations

import os
import re
import shlex
from typing import Callable, List, Optional, Sequence, Tuple


from detection.checkpoint.io import checkpoint_iter, human

# the checkpoint folder's temp files: save_checkpoint's mkstemp names and CheckpointHook's hard link
DEBRIS = (re.compile(r"\.tmp_[a-z0-9_]{8}\.pth"), re.compile(r"\.last_\d+\.pth"))
NUMBERED = re.compile(r"iter_(\d{7,})\.pth")


def train_command(cfg_path: str, work_dir: str, overrides: Sequence[str], *flags: str) -> str:
    """The scripts/train.py command line of this run with ``flags`` (the ``--set`` overrides last)."""
    args = ["python", "scripts/train.py", "--cfg", cfg_path, "--work-dir", work_dir, *flags]
    return shlex.join(args + (["--set", *overrides] if overrides else []))


def numbered(folder: str) -> List[Tuple[int, str]]:
    """``(iteration in the name, path)`` of the folder's ``iter_NNNNNNN.pth`` files, newest first."""
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), os.path.join(folder, name)) for name in os.listdir(folder)
             if (m := NUMBERED.fullmatch(name))]
    return sorted(found, reverse=True)


def newest_intact(folder: str, upto: Optional[int] = None, with_last: bool = True) -> Optional[Tuple[str, int]]:
    """The readable checkpoint of the highest iteration <= ``upto`` among ``last.pth`` (``with_last``) and the
    numbered ones: ``(path, iteration)``, last.pth preferred at an equal iteration (plain ``--resume``)."""
    best = None
    last = os.path.join(folder, "last.pth")
    if with_last and os.path.isfile(last):
        it = checkpoint_iter(last)
        if it is not None and (upto is None or it <= upto):
            best = (last, it)
    for it, path in numbered(folder):
        if best is not None and it <= best[1]:
            break
        if (upto is None or it <= upto) and checkpoint_iter(path) == it:
            return path, it
    return best


def restart_advice(folder: str, first_bad: int, lr: float, command: Callable[..., str]) -> str:
    """After the guard stopped a run whose first skipped step was ``first_bad``: the checkpoint to continue
    from, with a command at a tenth of the config's learning rate ``lr`` that does not stop again there.
    ``command(*flags, overrides)`` gives the run's command line."""
    lower = [f"optimizer.lr={lr / 10:g}"]
    found = newest_intact(folder, upto=first_bad - 2)
    why = (f"the first non-finite step, iteration {first_bad}, ran on the weights of iteration {first_bad - 1}, "
           f"so a checkpoint of that iteration or later would stop again the same way")
    if found is None:
        return (f"No checkpoint from before iteration {first_bad - 1} is kept ({why}; train.keep_checkpoints keeps "
                f"older ones): train again with a lower learning rate: {command(extra=lower)}")
    path, it = found
    flags = ["--resume"] if os.path.basename(path) == "last.pth" else ["--resume-from", path]
    return (f"The last good checkpoint is {path} (iteration {it}; {why}): continue from it with a lower "
            f"learning rate: {command(*flags, '--allow-config-change', extra=lower)}")


def corrupt_resume_advice(folder: str, command: Callable[..., str]) -> str:
    """What to continue from when ``last.pth`` cannot be read: the newest intact numbered checkpoint."""
    found = newest_intact(folder, with_last=False)
    if found is None:
        return ("No intact checkpoints/iter_NNNNNNN.pth to continue from (train.keep_checkpoints keeps them): "
                f"delete {os.path.join(folder, 'last.pth')} and train again without --resume")
    path, it = found
    return f"The newest intact checkpoint is {path} (iteration {it}): continue from it with: " \
           f"{command('--resume-from', path)}"


def remove_debris(folder: str, log: Callable[[str], None] = print) -> List[str]:
    """Remove the temp files of checkpoint writes that were killed (only the project's own names; call it only
    while holding the work dir's lock, so that no running write loses its file). Returns the names removed."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not any(p.fullmatch(name) for p in DEBRIS) or not os.path.isfile(path):
            continue
        size = os.path.getsize(path)
        os.unlink(path)
        removed.append(name)
        log(f"{path}: removed the temp file of a checkpoint write that was cut short ({human(size)})")
    return removed
