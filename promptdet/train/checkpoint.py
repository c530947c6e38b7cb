"""Checkpoints are weights (safetensors) plus config and metadata (JSON), never pickled code.

A run writes ``<name>.safetensors`` and ``<name>.json`` side by side. Loading reads tensors and
JSON only, so a checkpoint from an unknown source cannot run code. A pickle (``.pt``) is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from promptdet import __version__
from promptdet.errors import PromptdetError

FORMAT = "promptdet-checkpoint/1"
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # a raw pickle, or torch.save's zip container


class CheckpointError(PromptdetError):
    """A checkpoint that cannot be read safely or does not fit."""


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``path.safetensors`` (contiguous CPU tensors) and ``path.json`` (meta + format + version)."""
    weights, info = _paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(weights))
    info.write_text(json.dumps({"format": FORMAT, "promptdet_version": __version__, **meta}, indent=1))
    return weights


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by ``save_checkpoint``; never unpickles anything."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "best.safetensors", path / "weights" / "best.safetensors", path / "last.safetensors"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise CheckpointError(f"{path}: no best.safetensors or last.safetensors in this folder")
        path = found
    if path.is_file() and path.suffix not in (".safetensors", ".json"):
        with path.open("rb") as fh:
            head = fh.read(4)
        if head[:1] == _PICKLE_MAGIC[0] or head == _PICKLE_MAGIC[1] or path.suffix in (".pt", ".pth", ".pkl"):
            raise CheckpointError(f"{path}: refusing to load a pickled checkpoint (loading pickles can run code); "
                                  "promptdet checkpoints are .safetensors + .json")
    weights, info = _paths(path)
    if not weights.is_file():
        raise CheckpointError(f"checkpoint not found: {weights}")
    if not info.is_file():
        raise CheckpointError(f"{weights}: its metadata file {info.name} is missing")
    try:
        meta = json.loads(info.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{info}: invalid JSON ({exc.msg})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{info}: the metadata must be a JSON object, got a {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{info}: not a promptdet checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})")
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise CheckpointError(f"{weights}: unreadable safetensors file ({exc})") from None
    return tensors, meta


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix.`` with the prefix removed (a checkpoint holds model, ema, optimizer)."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def optimizer_to_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimizer state_dict into tensors (safetensors) and plain JSON."""
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, entry in state["state"].items():
        plain["state"][str(pid)] = {}
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
                plain["state"][str(pid)][key] = "tensor"
            else:
                plain["state"][str(pid)][key] = value
    return tensors, plain


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state = {}
    for pid, entry in plain["state"].items():
        state[int(pid)] = {k: tensors[f"optim.{pid}.{k}"] if v == "tensor" else v for k, v in entry.items()}
    return {"param_groups": plain["param_groups"], "state": state}


def _model_meta(meta: dict) -> dict:
    """A checkpoint's meta without the training state and the stamps save_checkpoint writes anew."""
    return {k: v for k, v in meta.items() if k not in ("optimizer", "ema_updates", "format", "promptdet_version")}


def slim_checkpoint(src: str | Path, dst: str | Path, half: bool = True) -> Path:
    """Keep only the inference weights (``model.*``) of a checkpoint, optionally as float16.

    This is how the bundled model is made small; loading upcasts to float32 again.
    """
    tensors, meta = load_checkpoint(src)
    # The image statistics stay float32: distances are sums over hundreds of squared features.
    keep = {k: (v.half() if half and v.is_floating_point() and ".familiarity.image_" not in k else v)
            for k, v in tensors.items() if k.startswith("model.")}
    if not keep:
        raise CheckpointError(f"{src}: holds no model.* tensors")
    meta = _model_meta(meta)
    meta["storage"] = "float16" if half else "float32"
    return save_checkpoint(dst, keep, meta)


def average_checkpoints(srcs: list[str | Path], dst: str | Path) -> Path:
    """A uniform weight average ("model soup") of the ``model.*`` tensors of fine-tunes of one model.

    Fine-tunes from a shared start lie in one basin, so their mean is a model too, often better
    than each (the bundled model starts from one). Float tensors are averaged in float32 and
    stored in the first checkpoint's dtype; integer ones (counters) are the first's. The meta is
    the first's, with ``averaged_from`` listing the sources.
    """
    if len(srcs) < 2:
        raise CheckpointError("averaging needs at least two checkpoints")
    loaded = [load_checkpoint(s) for s in srcs]
    first, meta = loaded[0]
    keys = sorted(k for k in first if k.startswith("model."))
    if not keys:
        raise CheckpointError(f"{srcs[0]}: holds no model.* tensors")
    for src, (tensors, _) in zip(srcs[1:], loaded[1:]):
        theirs = sorted(k for k in tensors if k.startswith("model."))
        if theirs != keys or any(tensors[k].shape != first[k].shape for k in keys):
            raise CheckpointError(f"{src}: not the same architecture as {srcs[0]}; only fine-tunes of one model average")
    out = {}
    for k in keys:
        v = first[k]
        out[k] = (sum(t[k].float() for t, _ in loaded) / len(loaded)).to(v.dtype) if v.is_floating_point() else v
    meta = _model_meta(meta)
    meta["averaged_from"] = [str(s) for s in srcs]
    return save_checkpoint(dst, out, meta)
