"""Shared helpers of the benchmark scripts: common options, device handling, interleaved timing,
median / IQR statistics, plain-text tables, random detection inputs and an MFU estimate.

Not a test module and not part of the installed packages: each script puts the repository root on
``sys.path`` (so they run from a checkout without ``pip install``) and imports this file by name.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402


def add_common_args(parser: argparse.ArgumentParser, size=(512,), batch: int = 2, reps: int = 10,
                    warmup: int = 2) -> argparse.ArgumentParser:
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: cuda when available, else cpu")
    parser.add_argument("--amp", choices=["off", "bf16"], default="off", help="autocast dtype")
    parser.add_argument("--size", type=int, nargs="+", default=list(size), metavar="S",
                        help="image size: one value (square) or two (H W)")
    parser.add_argument("--batch", type=int, default=batch, help="images per step")
    parser.add_argument("--reps", type=int, default=reps, help="timed repetitions per variant")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed repetitions per variant first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON (gpu_suite.py)")
    return parser


READ_METHODS = ("item", "cpu", "tolist", "__float__", "numpy", "__bool__")


@contextlib.contextmanager
def host_read_spy(on_read: Optional[Callable[[str], None]] = None):
    """Record the name of every host-reading Tensor method (``READ_METHODS``) called inside the block, and
    call ``on_read(name)`` at each (while the caller's stack is live)."""
    calls, saved = [], {name: getattr(torch.Tensor, name) for name in READ_METHODS}

    def make(name, orig):
        def spy(self, *a, **k):
            calls.append(name)
            if on_read is not None:
                on_read(name)
            return orig(self, *a, **k)
        return spy

    for name, orig in saved.items():
        setattr(torch.Tensor, name, make(name, orig))
    try:
        yield calls
    finally:
        for name, orig in saved.items():
            setattr(torch.Tensor, name, orig)


def write_json(path: Optional[str], payload: dict) -> None:
    """Write ``payload`` to ``path`` as JSON (nothing when ``path`` is None)."""
    if path:
        import json

        with open(path, "w") as f:
            json.dump(payload, f, indent=1)


def comparison_result(model: str, impl: str, times: Dict[str, List[float]], batch: int,
                      memory: Dict[str, object]) -> Dict[str, object]:
    """The JSON record of one (model, implementation) of an ours-vs-torchvision timing: median seconds,
    images/s, peak memory, and for ours the ratio of medians to torchvision's."""
    med = summary(times[impl])["median"]
    ratio_ = summary(times["ours"])["median"] / summary(times["torchvision"])["median"] if impl == "ours" else None
    return {"model": model, "impl": impl, "median_s": med, "img_per_s": batch / med,
            "peak_memory_gib": memory["peak_gib"], "ratio": ratio_}


def peak_memory(fn: Callable[[], object], device: torch.device) -> Dict[str, object]:
    """``torch.cuda.max_memory_allocated`` over one more call of ``fn`` (everything resident counts: models,
    optimizer state, the other variant's weights), as GiB and as a table cell; "n/a" off CUDA."""
    if device.type != "cuda":
        return {"peak_gib": None, "text": "n/a"}
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    gib = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return {"peak_gib": gib, "text": f"{gib:.2f} GiB"}


def model_parser(doc: str, **common) -> argparse.ArgumentParser:
    """The parser of a model benchmark: its docstring's first line, the common options (``common``: their
    defaults, as :func:`add_common_args`) and the detector options."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    return add_model_args(add_common_args(parser, **common))


def add_model_args(parser: argparse.ArgumentParser, num_classes: int = 20) -> argparse.ArgumentParser:
    """The detector options the model benchmarks share."""
    parser.add_argument("--backbone", default="resnet50", choices=["resnet18", "resnet34", "resnet50", "resnet101"])
    parser.add_argument("--num-classes", type=int, default=num_classes)
    return parser


def add_channels_last_arg(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--channels-last`` of the scripts that time our model against torchvision's."""
    parser.add_argument("--channels-last", choices=["off", "ours", "both"], default="off",
                        help="NHWC memory format for our model and its input batch (train.channels_last), and with "
                             "'both' for torchvision's weights too (its internally batched input stays NCHW; "
                             "the first convolution switches the activations to NHWC)")
    return parser


def add_detector_comparison_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of the scripts that time our RetinaNet / Faster R-CNN against torchvision's."""
    add_model_args(add_common_args(parser, size=(512,), batch=2, reps=10, warmup=2))
    add_channels_last_arg(parser)
    parser.add_argument("--models", nargs="+", default=["retinanet", "frcnn"], choices=["retinanet", "frcnn"])
    parser.add_argument("--tv-transform", choices=["identity", "native"], default="identity")
    return parser


def to_channels_last(args, ours, tv):
    """``(ours, tv)`` in the memory format ``--channels-last`` asks for."""
    if args.channels_last != "off":
        ours = ours.to(memory_format=torch.channels_last)
    if args.channels_last == "both":
        tv = tv.to(memory_format=torch.channels_last)
    return ours, tv


def images_for_ours(args, images):
    return images.contiguous(memory_format=torch.channels_last) if args.channels_last != "off" else images


def random_batch(args, device, with_targets: bool = True):
    """``(hw, images, targets, generator)`` from the common options: the same inputs for every variant of a
    run; the generator continues the stream for any further random data."""
    hw = image_hw(args.size)
    gen = torch.Generator().manual_seed(args.seed)
    images = random_images(args.batch, hw, device, gen)
    targets = random_targets(args.batch, hw, args.num_classes, device, gen) if with_targets else None
    return hw, images, targets, gen


def image_hw(size: Sequence[int]) -> Tuple[int, int]:
    if len(size) not in (1, 2):
        raise SystemExit(f"--size takes one or two values, got {list(size)}")
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


def setup(args) -> torch.device:
    """Resolve ``--device`` (exit 0 with a message when CUDA is asked for but absent), threads, seed."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available on this machine: the cuda run is skipped.")
        sys.exit(0)
    name = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    device = torch.device(name)
    torch.set_flush_denormal(True)  # as the training engine does
    return device


def describe(device: torch.device, args=None) -> str:
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    extra = f", amp={args.amp}" if args is not None and hasattr(args, "amp") else ""
    return f"torch {torch.__version__}, device {device.type} ({what}){extra}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: Dict[str, Callable[[], object]], reps: int, warmup: int,
                device: torch.device) -> Dict[str, List[float]]:
    """Run the variants in turn (A, B, A, B, ...): ``warmup`` untimed rounds, then ``reps`` timed ones.
    The device is synchronised before every timer read. Returns seconds per call, per variant."""
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for r in range(warmup + reps):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def summary(times: Sequence[float]) -> Dict[str, float]:
    """median, quartiles (q1, q3; the IQR is q3 - q1), min and max of a list of seconds."""
    xs = sorted(times)
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {"median": statistics.median(xs), "q1": q1, "q3": q3, "min": xs[0], "max": xs[-1], "n": len(xs)}


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}" if seconds < 10 else f"{seconds * 1e3:.0f}"


def timing_cells(times: Sequence[float]) -> List[str]:
    """[median ms, IQR ms as 'q1-q3', min-max ms] for a table row."""
    s = summary(times)
    return [ms(s["median"]), f"{ms(s['q1'])}-{ms(s['q3'])}", f"{ms(s['min'])}-{ms(s['max'])}"]


TIMING_HEADERS = ["median ms", "IQR ms (q1-q3)", "min-max ms"]


def ratio(a: Sequence[float], b: Sequence[float]) -> str:
    return f"{summary(a)['median'] / summary(b)['median']:.3f}x"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: Optional[str] = None) -> None:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if title:
        print(title)
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        print(line(r))
    print()


def random_images(batch: int, hw: Tuple[int, int], device, gen: torch.Generator) -> torch.Tensor:
    """Already normalised images [B, 3, H, W] (what the data pipeline hands the models)."""
    return torch.randn(batch, 3, *hw, generator=gen).to(device)


def random_targets(batch: int, hw: Tuple[int, int], num_classes: int, device, gen: torch.Generator,
                   min_boxes: int = 3, max_boxes: int = 8) -> List[Dict[str, torch.Tensor]]:
    """Per image ``min_boxes..max_boxes`` boxes of 4% to 60% of the image side, 0-based labels."""
    h, w = hw
    out = []
    for _ in range(batch):
        n = int(torch.randint(min_boxes, max_boxes + 1, (), generator=gen))
        wh = torch.rand(n, 2, generator=gen) * 0.56 + 0.04
        wh = wh * torch.tensor([w, h])
        xy = torch.rand(n, 2, generator=gen) * (torch.tensor([w, h]) - wh)
        boxes = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(0, num_classes, (n,), generator=gen)
        out.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return out


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` as counted by ``torch.utils.flop_counter`` (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def bf16_matmul_peak(device: torch.device, n: int = 8192, reps: int = 20) -> float:
    """Measured bf16 matmul FLOP/s of the device (n x n @ n x n), the MFU denominator."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)
