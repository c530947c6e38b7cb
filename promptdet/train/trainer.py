"""The training loop: AdamW, warmup + cosine LR, EMA, gradient clipping, AMP on GPU, resume,
per-epoch validation, best/last checkpoints, results.csv and plots. DDP-ready (torchrun).
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, WeightedRandomSampler

from promptdet.config import ModelConfig
from promptdet.data.dataset import PromptDataset, collate
from promptdet.data.sources import load_source, resolve_dataset
from promptdet.errors import UsageError
from promptdet.model.detector import PromptDetector
from promptdet.model.device import resolve_device
from promptdet.train import checkpoint as ckpt
from promptdet.train.loss import PromptDetLoss
from promptdet.train.validate import encode_prompt_grid, fitness, validate


@dataclass
class TrainArgs:
    data: str
    out: str = "runs/train"
    epochs: int = 50
    imgsz: int = 640
    batch: int = 16
    prompts_per_image: int = 6
    absent_rate: float = 0.2  # share of a step's instructions whose answer is empty
    absent_mix: str = "default"  # "hard", "defect" or "confusable": see instruct.ABSENT_KINDS (synthetic only)
    type_weights: dict = field(default_factory=dict)  # e.g. {"defect": 2}: asked twice as often (synthetic)
    native_crop: float = 0.0  # share of synthetic images seen as an imgsz window at their own resolution
    foreign_absent: float = 0.0  # share of the empty-answer instructions naming a thing from outside the line
    distractors: float = 0.0  # share of images swapped for a procedural texture, every answer empty
    empty_weight: float = 0.0  # weight of the loss on the best box of each empty answer (see train.loss)
    defect_probe: float = 0.0  # weight of the DefectProbe loss (synthetic scenes; 0 = off), see train.loss
    train_only: list = field(default_factory=list)  # top-level modules to train (e.g. ["verifier"]); the rest is frozen
    freeze_bn: bool = False  # keep every BatchNorm's statistics as they were (a fine-tune on data unlike the base set)
    val_imgsz: int = 0  # validation (and deployment) size; 0 = imgsz. With native_crop: the scenes' own size
    lr: float = 2e-3
    prompt_lr_mult: float = 1.0  # LR multiplier for the prompt side (text projection, similarity, reasoner)
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    final_lr_ratio: float = 0.05
    grad_clip: float = 10.0
    ema_decay: float = 0.9995
    workers: int = 1
    seed: int = 0
    device: str = "auto"
    val_every: int = 1
    val_max_pairs: int = 1500
    augment: bool = True
    cache_images: bool = True
    replay: str | None = None  # base data mixed in while fine-tuning, so earlier skills are kept
    replay_ratio: float = 0.3
    distill: float = 0.0  # weight of keeping the starting model's scores on the replay images (see train.loss)
    max_steps: int = 0  # stop after this many optimizer steps (0 = run every epoch); the LR schedule ends there
    time: float = 0.0  # hours; when set, the cosine follows the time spent and the run stops when it is spent
    verify_top_k: int = 0  # candidates per prompt the crop verifier rescores; 0 = the model's, raised to fit the data
    progress: bool | None = None
    log_every: int = 50  # steps between plain progress lines when stderr is not a terminal
    extra: dict = field(default_factory=dict)


# Parameter names of the prompt side of PromptDetector (see prompt_lr_mult).
PROMPT_SIDE = ("text_proj.", "similarity.", "reasoner.")


def _single_threaded_worker(_worker_id: int) -> None:
    # Each loader process would otherwise start one OpenCV thread per core: with many workers they
    # crowd out the training process, whose kernel launches are what a GPU step waits on.
    import cv2

    cv2.setNumThreads(1)


def _distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


VERIFY_MARGIN = 4  # candidates beyond the most objects of an image: an object can hold two peaks


def most_objects_per_image(sources) -> int:
    """The most objects one training image holds: a scene's objects, or the distinct boxes that an
    image's instructions answer with (every labelled box is some instruction's answer)."""
    most = 0
    for src in sources:
        if src.scenes is not None:
            most = max([most] + [len(scene["objects"]) for scene in src.scenes])
            continue
        boxes: dict[str, set] = {}
        for pair in src.pairs:
            boxes.setdefault(pair.image, set()).update(tuple(round(v, 1) for v in b) for b in pair.boxes_xyxy)
        most = max([most] + [len(b) for b in boxes.values()])
    return most


def fit_verifier_to_data(cfg: ModelConfig, sources, requested: int = 0, say=None) -> ModelConfig:
    """The model config with the crop verifier's ``verify_top_k`` set for the training data.

    ``requested`` > 0 sets it. 0 keeps the model's own unless an image holds more objects than it
    rescores: the verifier looks only at each prompt's top ``verify_top_k`` candidates, so with 12
    cells in a module and 8 looks, a third of the cells keep stage 1's score, right or wrong (the
    README's ELPV example measures it). The count changes no weight, only the work per prompt.
    """
    if requested:
        if not cfg.verify_top_k:
            raise UsageError("--verify-top-k: this model has no crop verifier (give --model a YAML with verify_top_k "
                             "to add one)")
        if requested > cfg.max_candidates:
            raise UsageError(f"--verify-top-k {requested}: at most max_candidates ({cfg.max_candidates})")
        top_k = requested
    else:
        if not cfg.verify_top_k:
            return cfg
        most = most_objects_per_image(sources)
        top_k = max(cfg.verify_top_k, min(cfg.max_candidates, most + VERIFY_MARGIN))
        if top_k != cfg.verify_top_k and say:
            say(f"verifier: rescoring {top_k} candidates per prompt (was {cfg.verify_top_k}): a training image holds "
                f"up to {most} objects; --verify-top-k sets it")
    return replace(cfg, verify_top_k=top_k)


class Trainer:
    def __init__(self, args: TrainArgs, model_cfg: ModelConfig, init_weights: dict | None = None,
                 resume: bool = False, encoder=None):
        from promptdet.model._ultralytics import ModelEMA
        from promptdet.text.encoder import TextEncoder

        self.args, self.cfg = args, model_cfg
        self.rank, self.local_rank, self.world = _distributed()
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo"
            torch.distributed.init_process_group(backend)
        self.device = resolve_device(args.device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", self.local_rank)
        torch.manual_seed(args.seed + self.rank)
        self.main = self.rank == 0
        self.out = Path(args.out)
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.progress = sys.stderr.isatty() if args.progress is None else args.progress

        self.encoder = encoder or TextEncoder(model_cfg.text_encoder, model_cfg.max_tokens,
                                              model_cfg.text_trainable_layers, cache_size=60000)
        if self.encoder.token_dim != model_cfg.text_dim or self.encoder.dim != model_cfg.text_dim:
            raise UsageError(f"model text_dim {model_cfg.text_dim} does not match the text encoder "
                             f"({self.encoder.dim}-d pooled, {self.encoder.token_dim}-d tokens); set text_dim")
        self.dataset_cfg = resolve_dataset(args.data)
        if not self.dataset_cfg.train:
            raise UsageError(f"{args.data}: the dataset lists no train sources")
        sources = [load_source(self.dataset_cfg, s, seed=args.seed) for s in self.dataset_cfg.train]
        weights = [s.weight for s in self.dataset_cfg.train]
        self.replay_from = len(sources)  # sources from here on are the replay data
        if args.distill and not (args.replay and init_weights):
            raise UsageError("--distill keeps the starting model's answers on the replay data: give --weights "
                             "(the starting model) and --replay (its base data)")
        if args.replay:
            base = resolve_dataset(args.replay)
            replay = [load_source(base, s, seed=args.seed) for s in base.train]
            sources += replay
            weights += [None] * len(replay)
        # The verifier must see every object of an image, or the ones it skips keep stage 1's score.
        self.cfg = model_cfg = fit_verifier_to_data(model_cfg, sources, args.verify_top_k,
                                                    say=self._say if self.main else None)
        self.model = PromptDetector(model_cfg).to(self.device)
        if init_weights:
            missing, unexpected = self.model.load_state_dict(init_weights, strict=False)
            if self.main and (missing or unexpected):
                print(f"initial weights: {len(missing)} missing and {len(unexpected)} unexpected tensors",
                      file=sys.stderr)
        self.teacher = None
        if args.distill:
            # The starting model, frozen: its scores on the replay images are what the fine-tune keeps.
            self.teacher = PromptDetector(model_cfg).to(self.device).eval().requires_grad_(False)
            self.teacher.load_state_dict(init_weights, strict=False)
        self._freeze_all_but(args.train_only)
        self.ema = ModelEMA(self.model, decay=args.ema_decay)
        self.loss = PromptDetLoss(model_cfg.reg_max, empty=args.empty_weight, distill=args.distill)
        self.probe, self.probe_on_crops = None, False
        if args.defect_probe > 0:
            from promptdet.data.dataset import DEFECT_KINDS
            from promptdet.train.loss import CropDefectProbe, DefectProbe

            # A verifier trained alone learns the kinds from its crops; otherwise the region embeddings do.
            self.probe_on_crops = args.train_only == ["verifier"]
            probe_cls = CropDefectProbe if self.probe_on_crops else DefectProbe
            self.probe = probe_cls(model_cfg.embed_dim, len(DEFECT_KINDS)).to(self.device)
        self.optimizer = self._optimizer()
        self.start_epoch, self.best_fitness = 0, -1.0

        self.train_set = PromptDataset(sources, args.imgsz, args.prompts_per_image,
                                       augment=self._augment() if args.augment else None, seed=args.seed,
                                       cache=args.cache_images, absent_rate=args.absent_rate,
                                       absent_mix=args.absent_mix, type_weights=args.type_weights,
                                       native_crop=args.native_crop, foreign_absent=args.foreign_absent,
                                       distractors=args.distractors)
        self.loader = self._loader(sources, weights)
        self.val = self._val_source()
        if resume:
            self._resume()

    # ---- setup ----
    @staticmethod
    def _say(message: str) -> None:
        print(message, file=sys.stderr)

    def _freeze_all_but(self, names: list[str]) -> None:
        """Train only the named top-level modules (a stage added to a trained model); freeze the rest."""
        if not names:
            return
        children = dict(self.model.named_children())
        for name in names:
            if children.get(name) is None:
                present = ", ".join(n for n, c in children.items() if c is not None)
                raise UsageError(f"--train-only: the model has no module '{name}' (it has: {present})")
        for name, p in self.model.named_parameters():
            p.requires_grad_(name.split(".")[0] in names)

    def _set_train_mode(self, model) -> None:
        """model.train(), but frozen modules stay in eval mode (their BatchNorm statistics stay as they were)."""
        model.train()
        if self.args.train_only:
            for name, child in self._raw_model().named_children():
                if name not in self.args.train_only:
                    child.eval()
        if self.args.freeze_bn:
            # A fine-tune's images (grey EL modules, say) would otherwise pull the running statistics away from
            # the base set the rest of the weights were trained with; the affine weights still train.
            for module in self._raw_model().modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def _augment(self):
        from promptdet.data.transforms import InstructionAugment

        return InstructionAugment()

    def _optimizer(self) -> torch.optim.Optimizer:
        # Four groups: weight decay or not, times image side or prompt side, so that a fine-tune can
        # move the prompt side faster (prompt_lr_mult) when the text projection has merged words the
        # images can tell apart. (The bundled model maps "dented" and "stained" to prompt vectors at
        # cosine 0.95; one epoch at 10x left that at 0.95, so there the image side is the limit.)
        groups: dict[tuple[bool, bool], list] = {(d, t): [] for d in (True, False) for t in (False, True)}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            decay = not (p.ndim <= 1 or name.endswith(".bias"))
            groups[decay, name.startswith(PROMPT_SIDE)].append(p)
        param_groups = [{"params": ps, "weight_decay": self.args.weight_decay if decay else 0.0,
                         "lr_mult": self.args.prompt_lr_mult if prompt else 1.0}
                        for (decay, prompt), ps in groups.items() if ps]
        if self.probe is not None:  # last, so the model's groups keep their places in a resumed state
            param_groups.append({"params": list(self.probe.parameters()), "weight_decay": 0.0, "lr_mult": 1.0})
        return torch.optim.AdamW(param_groups, lr=self.args.lr, betas=(0.9, 0.999))

    def _loader(self, sources, weights) -> DataLoader:
        n = len(self.train_set)
        if self.world > 1:
            sampler = DistributedSampler(self.train_set, self.world, self.rank, shuffle=True, seed=self.args.seed)
        elif len(sources) > 1:
            sizes = np.bincount([e.source for e in self.train_set.entries], minlength=len(sources))
            given = [w for w in weights if w is not None]
            share = np.array([w if w is not None else 0.0 for w in weights], float)
            if any(w is None for w in weights):  # replay sources take replay_ratio of the samples
                share = share / max(share.sum(), 1e-9) * (1 - self.args.replay_ratio) if given else share
                share[[i for i, w in enumerate(weights) if w is None]] = self.args.replay_ratio / weights.count(None)
            per_item = share[[e.source for e in self.train_set.entries]] / sizes[[e.source for e in self.train_set.entries]]
            sampler = WeightedRandomSampler(torch.as_tensor(per_item, dtype=torch.double), n, replacement=True)
        else:
            sampler = RandomSampler(self.train_set, generator=torch.Generator().manual_seed(self.args.seed))
        return DataLoader(self.train_set, batch_size=self.args.batch, sampler=sampler, num_workers=self.args.workers,
                          collate_fn=collate, drop_last=n >= self.args.batch * 2, persistent_workers=False,
                          worker_init_fn=_single_threaded_worker, pin_memory=self.device.type == "cuda")

    def _val_source(self):
        splits = self.dataset_cfg.val or []
        if not splits:
            return None
        src = load_source(self.dataset_cfg, splits[0], seed=self.args.seed + 1)
        pairs = src.pairs
        if len(pairs) > self.args.val_max_pairs:  # a fixed, spread-out subset keeps epochs short
            step = len(pairs) / self.args.val_max_pairs
            pairs = [pairs[int(i * step)] for i in range(self.args.val_max_pairs)]
        return pairs, src.images_root

    def _epochs_for_budget(self, epochs_done: int, elapsed_s: float) -> int:
        """The total epoch count that fills ``args.time`` hours, from the mean epoch so far (validation included).

        Every rank computes it from its own clock; rank 0's is broadcast so that DDP ranks stop together.
        The count only ends the loop and labels progress; under a budget the LR follows the clock (``_lr_at``).
        """
        per_epoch = elapsed_s / max(1, epochs_done - self.start_epoch)
        # Rounded up: the LR follows the clock and the last epoch stops when the budget is spent, so
        # a part-epoch left is trained, not dropped (rounding down ended a run of 1.7 epochs after
        # one, at 60% of its budget, its LR not yet annealed). Less than a quarter epoch, near the LR's
        # floor, is not worth another validation pass.
        left = math.ceil((self.args.time * 3600 - elapsed_s) / per_epoch - 0.25)
        total = torch.tensor([epochs_done + max(0, left)], dtype=torch.long, device=self.device)
        if self.world > 1:
            torch.distributed.broadcast(total, src=0)
        return int(total.item())

    def _time_spent(self, run_t0: float) -> float | None:
        """The share of ``--time`` used so far (None without a budget); rank 0's clock under DDP, so
        that every rank stops at the same step."""
        if not self.args.time or self.args.max_steps:
            return None
        spent = torch.tensor([(time.perf_counter() - run_t0) / (self.args.time * 3600)], dtype=torch.float64,
                             device=self.device)
        if self.world > 1:
            torch.distributed.broadcast(spent, src=0)
        return float(spent.item())

    def _lr_at(self, step: int, steps_per_epoch: int, time_spent: float | None = None) -> float:
        """Linear warm-up over ``warmup_epochs``, then a cosine to ``final_lr_ratio``: over the steps, or,
        with a time budget, over ``time_spent`` (the share of ``--time`` used so far). By time because one
        epoch of a small data set with replay can outlast the whole budget: a cosine fitted after each
        epoch would then end the run at the peak LR."""
        total = max(1, self.args.epochs * steps_per_epoch)
        if self.args.max_steps:  # a run cut short by steps still ends its cosine at the last step
            total = min(total, self.args.max_steps)
        warm = max(1, int(self.args.warmup_epochs * steps_per_epoch))
        if step < warm:
            return self.args.lr * (step + 1) / warm
        t = (step - warm) / max(1, total - warm) if time_spent is None else time_spent
        lo = self.args.final_lr_ratio
        return self.args.lr * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))

    # ---- checkpoints ----
    def _meta(self, epoch: int, fit: float) -> dict:
        return {"model": asdict(self.cfg), "epoch": epoch, "fitness": fit, "best_fitness": self.best_fitness,
                "text_encoder_identity": self.encoder.identity, "train_args": asdict(self.args)}

    def _save(self, name: str, epoch: int, fit: float, with_optimizer: bool) -> None:
        tensors = {f"model.{k}": v for k, v in self.ema.ema.state_dict().items()}
        meta = self._meta(epoch, fit)
        if with_optimizer:
            tensors.update({f"train.{k}": v for k, v in self._raw_model().state_dict().items()})
            if self.probe is not None:
                tensors.update({f"probe.{k}": v for k, v in self.probe.state_dict().items()})
            opt_tensors, opt_plain = ckpt.optimizer_to_tensors(self.optimizer.state_dict())
            tensors.update(opt_tensors)
            meta["optimizer"] = opt_plain
            meta["ema_updates"] = self.ema.updates
        ckpt.save_checkpoint(self.out / name, tensors, meta)

    def _resume(self) -> None:
        tensors, meta = ckpt.load_checkpoint(self.out / "last.safetensors")
        if "optimizer" not in meta:
            raise UsageError(f"{self.out / 'last.safetensors'} holds no optimizer state; cannot resume from it")
        self._raw_model().load_state_dict(ckpt.split_prefix(tensors, "train"))
        self.ema.ema.load_state_dict(ckpt.split_prefix(tensors, "model"))
        self.ema.updates = meta["ema_updates"]
        probe = ckpt.split_prefix(tensors, "probe")
        if self.probe is not None and probe:
            self.probe.load_state_dict(probe)
        try:
            self.optimizer.load_state_dict(ckpt.optimizer_from_tensors(tensors, meta["optimizer"]))
        except ValueError as exc:  # parameter groups of another layout (a run from an older promptdet)
            raise UsageError(f"{self.out / 'last.safetensors'}: its optimizer state does not fit this version "
                             f"({exc}); start a new run from it with --weights instead of --resume") from None
        self.start_epoch, self.best_fitness = meta["epoch"] + 1, meta.get("best_fitness", -1.0)
        if self.main:
            print(f"resumed from {self.out / 'last.safetensors'}: continuing with epoch {self.start_epoch + 1}",
                  file=sys.stderr)

    def _teacher_answers(self, images, pooled, tokens, mask, targets, use_amp, amp_dtype):
        """The starting model's output for the batch's replay images, and their [B] mask (None, None without
        --distill or when the batch holds no replay image)."""
        if self.teacher is None or targets.source is None:
            return None, None
        rows = targets.source >= self.replay_from
        if not rows.any():
            return None, None
        b = images.shape[0]

        def pick(x):  # prompt tensors are [B|1, K, ...]: one row per image, or one shared by all
            return x[rows] if x.shape[0] == b else x

        with torch.no_grad(), torch.autocast(self.device.type, dtype=amp_dtype, enabled=use_amp):
            return self.teacher(images[rows], pick(pooled), pick(tokens), pick(mask)), rows

    def _raw_model(self) -> PromptDetector:
        return self.model.module if hasattr(self.model, "module") else self.model

    # ---- the loop ----
    def train(self) -> dict:
        from tqdm import tqdm

        model = self.model
        if self.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.local_rank] if self.device.type == "cuda" else None)
            self.model = model
        use_amp = self.device.type == "cuda"
        # bfloat16 keeps float32's range (no overflow in masked logits, no loss scaling) where the GPU has it.
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        steps_per_epoch = len(self.loader)
        step = self.start_epoch * steps_per_epoch
        metrics: dict = {}
        history = self._read_history()
        run_t0 = time.perf_counter()
        epoch = self.start_epoch
        while epoch < self.args.epochs:
            self.train_set.set_epoch(epoch)
            if isinstance(self.loader.sampler, DistributedSampler):
                self.loader.sampler.set_epoch(epoch)
            self._set_train_mode(model)
            sums: dict[str, float] = {}
            t0, seen, out_of_time = time.perf_counter(), 0, False
            bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{self.args.epochs}", disable=not (self.progress and self.main),
                       file=sys.stderr, leave=False)
            n_batches = 0
            for images, prompts, targets, _ in bar:
                time_spent = self._time_spent(run_t0)
                if time_spent is not None and time_spent >= 1.0 and n_batches:
                    out_of_time = True  # the budget is spent mid-epoch: validate and save now
                    break
                for group in self.optimizer.param_groups:
                    group["lr"] = self._lr_at(step, steps_per_epoch, time_spent) * group.get("lr_mult", 1.0)
                images = images.to(self.device, non_blocking=True).float().div_(255)
                pooled, tokens, mask = encode_prompt_grid(self.encoder, prompts, self.device)
                with torch.autocast(self.device.type, dtype=amp_dtype, enabled=use_amp):
                    out = model(images, pooled, tokens, mask)
                targets = targets.to(self.device)
                teacher_out, replay_rows = self._teacher_answers(images, pooled, tokens, mask, targets, use_amp, amp_dtype)
                loss, items = self.loss(out, targets, images.shape[2:], teacher_out, replay_rows)  # float32 (see the loss)
                if self.probe is not None and targets.part_boxes is not None:
                    if self.probe_on_crops:
                        probe_loss = self.probe(self._raw_model().verifier, images, targets.part_boxes, targets.part_kinds)
                    else:
                        probe_loss = self.probe(out.region_embeds, out.anchor_points * out.stride_tensor,
                                                targets.part_boxes, targets.part_kinds)
                    loss = loss + probe_loss * self.args.defect_probe * images.shape[0]  # scaled as the loss is
                    items["probe"] = float(probe_loss.detach())
                self.optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(self.optimizer)
                if self.probe is not None and self.world > 1:  # outside DDP's module: average its gradients here
                    for p in self.probe.parameters():
                        if p.grad is not None:
                            torch.distributed.all_reduce(p.grad)
                            p.grad /= self.world
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.args.grad_clip)
                scaler.step(self.optimizer)
                scaler.update()
                self.ema.update(self._raw_model())
                step += 1
                n_batches += 1  # counted here: a disabled tqdm bar does not count
                seen += images.shape[0]
                for k, v in items.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix({k: f"{v / n_batches:.3f}" for k, v in sums.items()})
                if self.main and not self.progress and n_batches % self.args.log_every == 0:
                    # No bar in a log file: a plain line now and then instead.
                    rate = seen * self.world / (time.perf_counter() - t0)
                    losses = " ".join(f"{k}={v / n_batches:.3f}" for k, v in sums.items())
                    print(f"epoch {epoch + 1} step {n_batches}/{steps_per_epoch} {rate:.1f} img/s {losses}",
                          file=sys.stderr, flush=True)
                if self.args.max_steps and step >= self.args.max_steps:
                    break
            wall = time.perf_counter() - t0
            n_batches = max(1, n_batches)
            row = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"], "img_per_s": seen * self.world / wall,
                   "epoch_s": wall, **{f"train/{k}": v / n_batches for k, v in sums.items()}}
            last_epoch = (epoch + 1 == self.args.epochs or out_of_time
                          or bool(self.args.max_steps and step >= self.args.max_steps))
            fit = -1.0
            if self.main and self.val and ((epoch + 1) % self.args.val_every == 0 or last_epoch):
                metrics = validate(self.ema.ema, self.encoder, self.val[0], self.val[1], self.args.val_imgsz or self.args.imgsz,
                                   device=self.device, progress=self.progress)
                fit = fitness(metrics)
                row.update(_flatten(metrics))
                row["fitness"] = fit
            if self.main:
                if fit > self.best_fitness:
                    self.best_fitness = fit
                    self._save("best", epoch, fit, with_optimizer=False)
                self._save("last", epoch, fit, with_optimizer=True)
                history.append(row)
                self._write_history(history)
                summary = " ".join(f"{k}={v:.3f}" for k, v in row.items() if k.startswith("train/") or k in ("fitness",))
                print(f"epoch {epoch + 1}/{self.args.epochs} {row['img_per_s']:.1f} img/s {summary}", file=sys.stderr)
            if out_of_time:
                self.args.epochs = epoch + 1  # what was run, as the checkpoint's train_args say
                break
            if self.args.max_steps and step >= self.args.max_steps:
                break
            epoch += 1
            if self.args.time:
                self.args.epochs = self._epochs_for_budget(epoch, time.perf_counter() - run_t0)
        if self.main:
            self._plots(history, metrics)
        if self.world > 1:
            torch.distributed.barrier()
        return metrics

    # ---- outputs ----
    def _read_history(self) -> list[dict]:
        path = self.out / "results.csv"
        if not (self.main and path.is_file() and self.start_epoch > 0):
            return []
        with path.open() as fh:
            return [{k: float(v) if v not in ("", None) else None for k, v in row.items()} for row in csv.DictReader(fh)]

    def _write_history(self, rows: list[dict]) -> None:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with (self.out / "results.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, keys)
            writer.writeheader()
            writer.writerows(rows)

    def _plots(self, history: list[dict], metrics: dict) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from promptdet.train.evaluate import plot_pr_curves

        keys = [k for k in (history[0] if history else {}) if k.startswith("train/")]
        if keys:
            fig = Figure(figsize=(8, 4))
            FigureCanvasAgg(fig)
            ax = fig.add_subplot(1, 1, 1)
            for k in keys:
                ax.plot([r["epoch"] for r in history], [r.get(k) for r in history], label=k.split("/")[1], marker="o")
            ax.set_xlabel("epoch")
            ax.set_ylabel("loss")
            ax.legend()
            fig.savefig(self.out / "loss_curves.png", dpi=100)
        if metrics:
            plot_pr_curves(metrics, self.out)
            from promptdet.train.evaluate import save_metrics

            save_metrics(metrics, self.out / "val_metrics.json")


def _flatten(metrics: dict) -> dict:
    row = {}
    for name, m in metrics.get("types", {}).items():
        for key in ("AP50", "AP50_95", "acc50"):
            if m.get(key) is not None:
                row[f"val/{name}/{key}"] = m[key]
    if metrics.get("absent_fp_rate") is not None:
        row["val/absent_fp_rate"] = metrics["absent_fp_rate"]
    if metrics.get("order_invariance_max_abs_score_change") is not None:
        row["val/order_invariance"] = metrics["order_invariance_max_abs_score_change"]
    return row
