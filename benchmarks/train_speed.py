"""Training speed: promptdet-n against ultralytics YOLO26n, built in the same run.

Both models train on the same synthetic scenes at the same imgsz and batch: one optimizer step is
forward + loss + backward + AdamW step (+ EMA for promptdet). Data loading is left out for both,
so the figure compares the models and their losses; promptdet's text encoding is included (its
frozen encoder's cache warm, as in training after the first epoch).

    python benchmarks/train_speed.py --imgsz 320 --batch 16 --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")


def _timed(step, steps: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def yolo26n_step(batch_images: torch.Tensor, boxes_per_image: list[np.ndarray], imgsz: int):
    import os

    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolo26n.yaml", nc=8, verbose=False)
    model.args = type("A", (), {"box": 7.5, "cls": 0.5, "dfl": 1.5, "epochs": 100})()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    bidx, cls, bb = [], [], []
    for i, boxes in enumerate(boxes_per_image):
        for b in boxes:
            x1, y1, x2, y2 = b / imgsz
            bidx.append(i)
            cls.append(0)
            bb.append([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
    batch = {"img": batch_images, "batch_idx": torch.tensor(bidx, dtype=torch.float32),
             "cls": torch.tensor(cls, dtype=torch.float32)[:, None], "bboxes": torch.tensor(bb, dtype=torch.float32)}

    def step():
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()

    return step


def promptdet_step(batch_images, prompts, targets, imgsz: int):
    import dataclasses

    from promptdet.config import load_model_config
    from promptdet.model._ultralytics import ModelEMA
    from promptdet.model.detector import PromptDetector
    from promptdet.text.encoder import TextEncoder
    from promptdet.train.loss import PromptDetLoss
    from promptdet.train.validate import encode_prompt_grid

    # The bundled model's architecture (word pooling included), at the benchmark's size.
    cfg = dataclasses.replace(load_model_config(Path(__file__).resolve().parents[1] / "configs" / "promptdet-n.yaml"),
                              imgsz=imgsz)
    model = PromptDetector(cfg).train()
    encoder = TextEncoder(None, cfg.max_tokens)
    ema = ModelEMA(model)
    loss_fn = PromptDetLoss(cfg.reg_max)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def step():
        pooled, tokens, mask = encode_prompt_grid(encoder, prompts, "cpu")
        out = model(batch_images, pooled, tokens, mask)
        loss, _ = loss_fn(out, targets, batch_images.shape[2:])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        ema.update(model)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--prompts", type=int, default=6, help="prompts per image for promptdet")
    args = ap.parse_args()

    from promptdet.data.dataset import PromptDataset, collate
    from promptdet.data.sources import load_source, resolve_dataset
    from promptdet.data.synth.generate import synthesize

    with tempfile.TemporaryDirectory() as tmp:
        synthesize(tmp, args.batch, seed=0, workers=1, progress=False)
        cfg = resolve_dataset(tmp)
        ds = PromptDataset([load_source(cfg, cfg.train[0])], args.imgsz, args.prompts, augment=None)
        images, prompts, targets, _ = collate([ds[i] for i in range(args.batch)])
        scenes_boxes = [np.array([o["bbox"] for o in e.scene["objects"]], np.float32) * (args.imgsz / 640)
                        for e in ds.entries[:args.batch]]
    x = images.float() / 255
    # ultralytics letterboxes the same way; the pad offset only shifts boxes, not the cost
    yolo = _timed(yolo26n_step(x, scenes_boxes, args.imgsz), args.steps)
    ours = _timed(promptdet_step(x, prompts, targets, args.imgsz), args.steps)
    y_ips = args.batch / statistics.median(yolo)
    o_ips = args.batch / statistics.median(ours)
    print(f"imgsz {args.imgsz}, batch {args.batch}, {args.prompts} prompts/image, {torch.get_num_threads()} threads, "
          f"median of {args.steps} steps")
    print(f"YOLO26n (ultralytics) : {y_ips:6.1f} img/s  ({1000 * statistics.median(yolo):.0f} ms/step)")
    print(f"promptdet-n           : {o_ips:6.1f} img/s  ({1000 * statistics.median(ours):.0f} ms/step)")
    print(f"ratio promptdet / YOLO26n: {o_ips / y_ips:.2f}  (target >= 0.80)")


if __name__ == "__main__":
    main()
