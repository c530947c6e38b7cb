"""The Python API, shaped like ultralytics': ``model = promptdet.load(...)``, ``model.train(...)``, ``model.val(...)``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from promptdet.config import ConfigError, ModelConfig, load_model_config, model_config_from_dict
from promptdet.errors import PromptdetError, UsageError

BUNDLED = Path(__file__).parent / "assets" / "promptdet-n"


def resolve_model_config(model: str | Path | ModelConfig | None) -> ModelConfig:
    """A ModelConfig, a scale name ('n', 's', 'm') or a model YAML."""
    if isinstance(model, ModelConfig):
        return model.validate()
    if model is None:
        return ModelConfig()
    text = str(model)
    if text in ("n", "s", "m"):
        return ModelConfig(scale=text)
    path = Path(text)
    if path.suffix in (".yaml", ".yml"):
        return load_model_config(path)
    raise UsageError(f"--model {text}: expected a scale (n, s, m) or a model YAML such as configs/promptdet-n.yaml")


def load_ultralytics_backbone(path: str | Path) -> dict[str, Any]:
    """Backbone + neck tensors from an ultralytics YOLO26 detection state_dict, as promptdet keys.

    Reads a ``.safetensors`` file, or a ``torch.save(model.state_dict())`` file through
    ``weights_only=True`` (tensors only, no code). A full pickled ultralytics checkpoint is refused.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise PromptdetError(f"backbone weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - any refusal means the file holds more than tensors
            raise PromptdetError(
                f"{path}: not a plain state_dict. Full ultralytics checkpoints are pickles that run code when "
                "loaded; if you trust the file, save its tensors once with: python -c \"import torch; "
                "from ultralytics import YOLO; torch.save(YOLO('FILE.pt').model.state_dict(), 'FILE_state.pt')\"") from None
    if not isinstance(state, dict):
        raise PromptdetError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) < 3 or parts[0] != "model" or not parts[1].isdigit():
            continue
        i, rest = int(parts[1]), ".".join(parts[2:])
        if i <= 10:
            out[f"backbone.layers.{i}.{rest}"] = value
        elif i <= 22:
            out[f"neck.layers.{i - 11}.{rest}"] = value
    if not out:
        raise PromptdetError(f"{path}: no YOLO26 backbone tensors (keys 'model.0.' to 'model.22.') found")
    return out


class PromptDet:
    """A promptable detector with its text encoder; weights may be None (a fresh model)."""

    def __init__(self, cfg: ModelConfig, weights: dict | None = None, source: str = ""):
        self.cfg, self.weights, self.source = cfg, weights, source
        self._detector = None
        self._encoder = None

    def __repr__(self) -> str:
        return f"PromptDet(scale={self.cfg.scale!r}, source={self.source or 'new'!r})"

    # ---- building blocks, created on first use ----
    @property
    def encoder(self):
        if self._encoder is None:
            from promptdet.text.encoder import TextEncoder

            self._encoder = TextEncoder(self.cfg.text_encoder, self.cfg.max_tokens, self.cfg.text_trainable_layers)
        return self._encoder

    @property
    def detector(self):
        if self._detector is None:
            from promptdet.model.detector import PromptDetector

            self._detector = PromptDetector(self.cfg).eval()
            if self.weights:
                try:
                    self._detector.load_state_dict(self.weights)
                except RuntimeError as exc:  # torch lists every tensor (dozens of lines): say it in one
                    first = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), "")[:160]
                    raise PromptdetError(f"{self.source or 'checkpoint'}: the metadata does not match the tensors "
                                         f"({first})") from None
        return self._detector

    # ---- detection ----
    def detect(self, source, prompts: str | list[str], conf: float = 0.25, iou: float = 0.6, max_det: int = 300,
               imgsz: int | None = None, device: str = "cpu", abstain: bool = True):
        """Find what ``prompts`` describe in ``source``: a path, a numpy BGR array (HxW, HxWx3, HxWx4;
        uint8 or uint16) or a PIL image -> ``Detections``; a list of them -> a list of ``Detections``.

        ``prompts``: a list, or one string split on ';'. ``conf`` applies to every prompt; ``max_det``
        is per prompt; ``imgsz`` defaults to the training size. Boxes are in original-image pixels.
        Prompt embeddings are cached, so asking the same prompts again skips the text encoder.
        ``abstain`` (default) withholds the boxes of an image unlike the training images and of a
        prompt naming something never trained; ``abstain=False`` keeps them. Either way the result's
        ``familiarity``, ``unfamiliar`` and ``unknown_prompts`` say what the model thinks.
        """
        from promptdet.predict import Predictor

        predictor = Predictor(self, prompts, conf=conf, iou=iou, max_det=max_det, imgsz=imgsz, device=device,
                              abstain=abstain)
        if isinstance(source, (list, tuple)):
            return [predictor.predict(s) for s in source]
        return predictor.predict(source)

    # ---- training and evaluation ----
    def train(self, data: str, epochs: int = 50, imgsz: int = 640, batch: int = 16, out: str = "runs/train",
              resume: bool = False, backbone_weights: str | None = None, **kwargs) -> dict:
        """Train on ``data`` (dataset YAML, instruction JSONL or folder); returns the last validation metrics."""
        from promptdet.train.trainer import Trainer, TrainArgs

        names = {f.name for f in dataclasses.fields(TrainArgs)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise UsageError(f"unknown training option(s): {', '.join(unknown)} (valid: {', '.join(sorted(names))})")
        args = TrainArgs(data=str(data), epochs=epochs, imgsz=imgsz, batch=batch, out=str(out), **kwargs)
        # The size the model is meant to run at: with native crops, not the training window's.
        # ModelConfig checks the size; a bad --val-imgsz is the user's usage error and named so.
        cfg = dataclasses.replace(self.cfg, imgsz=args.val_imgsz or imgsz)
        if args.val_imgsz:
            try:
                cfg.validate()
            except ConfigError as exc:
                raise UsageError(f"val_imgsz (--val-imgsz): {exc}") from None
        init = dict(self.weights) if self.weights else None
        if backbone_weights:
            init = {**(init or {}), **load_ultralytics_backbone(backbone_weights)}
        trainer = Trainer(args, cfg, init_weights=init, resume=resume, encoder=self._encoder)
        metrics = trainer.train()
        self.cfg, self.weights = trainer.cfg, trainer.ema.ema.state_dict()  # the trainer may fit verify_top_k
        self._detector = None
        self.source = str(Path(out) / "best.safetensors")
        return metrics

    def val(self, data: str, split: str = "val", imgsz: int | None = None, conf: float = 0.25,
            plots: bool = False, out: str | None = None, device: str = "cpu", progress: bool | None = None) -> dict:
        """Evaluate on a split ('val' or 'test') of ``data``; returns the metrics dict (see evaluate.py)."""
        import sys

        from promptdet.data.sources import load_eval_split
        from promptdet.train.evaluate import plot_pr_curves, save_metrics
        from promptdet.train.validate import validate

        if split not in ("train", "val", "test"):
            raise UsageError(f"split must be train, val or test, got {split!r}")
        src = load_eval_split(data, split)
        detector = self.detector.to(device)
        show = sys.stderr.isatty() if progress is None else progress
        metrics = validate(detector, self.encoder, src.pairs, src.images_root, imgsz or self.cfg.imgsz, conf,
                           device=device, progress=show)
        if out:
            save_metrics(metrics, Path(out) / "metrics.json")
            if plots:
                plot_pr_curves(metrics, out)
        return metrics


def load(source: str | Path | None = None, **onnx_options):
    """A model from a checkpoint (``best.safetensors`` or its run folder), a model YAML or scale name
    (a fresh, untrained model), or with no argument the bundled default model.

    An export folder (from ``promptdet export``) gives an ``OnnxModel`` that runs on ONNX Runtime
    without torch; ``onnx_options`` (providers, threads, graph_optimization, cache_dir,
    detector_file) go to it. Both have the same ``detect``.
    """
    from promptdet.runtime.onnx import OnnxModel, is_export_dir

    if source is not None and is_export_dir(source):
        return OnnxModel(source, **onnx_options)
    if onnx_options:
        raise UsageError(f"{', '.join(onnx_options)}: options of an ONNX export folder, not of {source or 'the bundled model'}")
    from promptdet.train.checkpoint import load_checkpoint, split_prefix

    if source is None:
        if not (BUNDLED.with_suffix(".safetensors")).is_file():
            raise PromptdetError("no bundled default model in this install yet; pass a checkpoint, e.g. "
                                 "promptdet.load('runs/train/best.safetensors')")
        source = BUNDLED.with_suffix(".safetensors")
    text = str(source)
    if text in ("n", "s", "m") or Path(text).suffix in (".yaml", ".yml"):
        return PromptDet(resolve_model_config(text), None, "")
    tensors, meta = load_checkpoint(source)
    cfg = model_config_from_dict(meta.get("model", {}), f"{source} (model config)")
    return PromptDet(cfg, split_prefix(tensors, "model"), text)
