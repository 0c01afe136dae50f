"""Optional TensorBoard logging (``train.tensorboard: true``; ``pip install -e ".[tensorboard]"``).

Scalars: ``loss``, raw losses under ``raw/``, weighted ones under ``weighted/``, λ under ``weight/`` and ``lr``
at every log interval; evaluation metrics under ``eval/`` at every evaluation, with a few test images'
detections under ``predictions/``. Only rank 0 writes. Without the ``tensorboard`` package the option is a
ConfigError that says what to install; nothing else needs it.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch

from detection.config.loader import ConfigError

NUM_PICTURES = 4  # test images drawn at each evaluation
SCORE_THR = 0.3


def open_tensorboard(log_dir: str) -> "TensorBoard":
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch's wrapper needs the tensorboard package
        raise ConfigError([f"train.tensorboard: true needs the tensorboard package ({exc}); install it with "
                           f"pip install -e \".[tensorboard]\" or set train.tensorboard: false"]) from None
    return TensorBoard(SummaryWriter(log_dir))


class TensorBoard:
    def __init__(self, writer):
        self.writer = writer

    def training_record(self, record: Dict) -> None:
        """The scalars of one metrics.jsonl training record."""
        it = record["iter"]
        w = self.writer
        w.add_scalar("loss", record["loss"], it)
        w.add_scalar("lr", record["lr"], it)
        for k in record.get("std", {}):  # the raw loss keys (each has its spread in "std")
            w.add_scalar(f"raw/{k}", record[k], it)
        for group in ("weighted", "weights"):
            for k, v in record.get(group, {}).items():
                w.add_scalar(f"{'weight' if group == 'weights' else group}/{k}", v, it)

    def evaluation(self, it: int, values: Dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(f"eval/{k}", v, it)

    @torch.no_grad()
    def pictures(self, it: int, model, dataset, cfg, device) -> None:
        """The first ``NUM_PICTURES`` test images with the model's detections above ``SCORE_THR``."""
        from detection.tools.inference import predict
        from detection.tools.visualize import draw_detections

        images = [dataset._read(dataset.records[i]) for i in range(min(NUM_PICTURES, len(dataset)))]
        was = model.training
        model.eval()
        dets = predict(model, images, cfg)
        model.train(was)
        for i, (img, d) in enumerate(zip(images, dets)):
            drawn = draw_detections(img, d["boxes"].numpy(), d["labels"].numpy(), d["scores"].numpy(),
                                    list(dataset.classes), d["masks"].numpy() if "masks" in d else None, SCORE_THR)
            self.writer.add_image(f"predictions/{i}", np.ascontiguousarray(drawn.transpose(2, 0, 1)), it)

    def close(self) -> None:
        self.writer.close()
