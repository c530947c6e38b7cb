"""Typed configuration. YAML is only the file form of these dataclasses; an unknown key is an error."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml

from promptdet.errors import PromptdetError
from promptdet.limits import (
    MAX_YAML_BYTES,
    MAX_YAML_NODES,
    MESSAGE_VALUE_CHARS,
    MODEL_BOUNDS,
)

T = TypeVar("T")

SOURCE_FORMATS = ("synth", "jsonl", "coco", "yolo", "refcoco", "odvg")


class ConfigError(PromptdetError):
    """A config file that cannot be used; the message names the file and the key."""


@dataclass
class SourceConfig:
    """One data source of a dataset split.

    path: relative to the dataset's ``root``. format: one of SOURCE_FORMATS ('synth' is a folder
    with scenes.jsonl whose instructions can be drawn anew each epoch). weight: relative sampling
    weight when sources are mixed.
    """

    path: str
    format: str = "jsonl"
    weight: float = 1.0


@dataclass
class DatasetConfig:
    """What ``--data`` takes: train/val/test sources, where they live, and how to make them again."""

    name: str = "dataset"
    root: str = "."
    regenerate: str = ""
    train: list[SourceConfig] = field(default_factory=list)
    val: list[SourceConfig] = field(default_factory=list)
    test: list[SourceConfig] = field(default_factory=list)
    file: str = ""  # where it was read from; set by the loader, not in YAML

    def root_dir(self) -> Path:
        base = Path(self.file).parent if self.file else Path.cwd()
        return (base / self.root).resolve()

    def source_path(self, source: SourceConfig) -> Path:
        return self.root_dir() / source.path


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types name the key and ``where``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "file"}
    hints = get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(fields)})"
            raise ConfigError(f"{where}: unknown key {short(key)}{hint}")
    missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and n not in data]
    if missing:
        raise ConfigError(f"{where}: missing key '{missing[0]}'")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if hint in (str,) and not isinstance(value, str):
            raise ConfigError(f"{where}.{key}: expected a string, got {short(value)}")
        if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{where}: {key}: expected an integer, got {short(value)}")
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}.{key}: expected a number, got {short(value)}")
            value = float(value)
        if hint == list[SourceConfig]:
            if value is None:
                value = []
            if not isinstance(value, list):
                raise ConfigError(f"{where}.{key}: expected a list of sources, got {short(value)}")
            value = [from_dict(SourceConfig, v, f"{where}.{key}[{i}]") for i, v in enumerate(value)]
        kwargs[key] = value
    return cls(**kwargs)


def short(value: Any) -> str:
    """``repr(value)`` cut to MESSAGE_VALUE_CHARS, for an error message that stays one readable line."""
    text = repr(value)
    return text if len(text) <= MESSAGE_VALUE_CHARS else text[: MESSAGE_VALUE_CHARS - 3] + "..."


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose documents may not expand past MAX_YAML_NODES. Aliases (``*name``) are fine
    (``yaml.dump`` writes them for shared objects), but a 1 KB file of nested aliases expands to
    billions of values (a 'billion laughs'), and every later walk over it would hang or run out of memory."""

    def compose_document(self):
        node = super().compose_document()
        try:
            size = _expanded_size(node, {})
        except RecursionError:
            size = MAX_YAML_NODES + 1
        if size > MAX_YAML_NODES:
            raise ConfigError(f"the YAML expands to over {MAX_YAML_NODES} values (nested aliases?); the limit is "
                              "promptdet.limits.MAX_YAML_NODES")
        return node


def _expanded_size(node, memo: dict) -> int:
    """Values in ``node`` with every alias expanded; shared nodes are counted once per use, computed once."""
    key = id(node)
    if key not in memo:
        if isinstance(node, yaml.SequenceNode):
            memo[key] = 1 + sum(_expanded_size(child, memo) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            memo[key] = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        else:
            memo[key] = 1
    return memo[key]


def safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` with the expansion of aliases bounded (ConfigError past MAX_YAML_NODES)."""
    return yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader subclass: no Python tags


def read_yaml(path: str | Path, what: str) -> Any:
    """The parsed YAML file (an empty file gives {}); a missing file, bad YAML, a file over
    MAX_YAML_BYTES or one expanding past MAX_YAML_NODES values is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size} bytes; a {what} is at most {MAX_YAML_BYTES} bytes")
    try:
        data = safe_yaml(path.read_text(encoding="utf-8"))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc)[:300]})") from None
    return {} if data is None else data


def load_dataset_config(path: str | Path) -> DatasetConfig:
    """Read a dataset YAML; every source's format is checked."""
    path = Path(path)
    cfg = from_dict(DatasetConfig, read_yaml(path, "dataset config"), str(path))
    cfg.file = str(path)
    for split in ("train", "val", "test"):
        for i, src in enumerate(getattr(cfg, split)):
            if src.format not in SOURCE_FORMATS:
                raise ConfigError(f"{path}: {split}[{i}].format: unknown format '{src.format}' "
                                  f"(valid: {', '.join(SOURCE_FORMATS)})")
            if src.weight <= 0:
                raise ConfigError(f"{path}: {split}[{i}].weight: must be positive, got {src.weight}")
    return cfg


@dataclass
class ModelConfig:
    """The detector's architecture. ``text_encoder`` None is the offline all-MiniLM-L6-v2.

    scale: backbone/neck size (n, s, m). embed_dim: width of region and prompt embeddings.
    max_candidates: peaks per (image, prompt) that the reasoning stage rescores.
    word_pool_heads: learned queries that pool the prompt's word features into its vector (0 = off).
    verify_top_k: candidates per prompt that the crop verifier rescores from the input image (0 = off).
    verify_crop: side of the verifier's square crops, in pixels.
    """

    scale: str = "n"
    embed_dim: int = 128
    reg_max: int = 1
    reason_layers: int = 2
    reason_heads: int = 4
    max_candidates: int = 48
    text_encoder: str | None = None
    text_dim: int = 384
    max_tokens: int = 48
    text_trainable_layers: int = 0
    word_pool_heads: int = 0
    verify_top_k: int = 0
    verify_crop: int = 48
    imgsz: int = 640

    def validate(self, where: str = "model config") -> "ModelConfig":
        if self.scale not in ("n", "s", "m"):
            raise ConfigError(f"{where}: scale: unknown scale {short(self.scale)} (valid: n, s, m)")
        if self.text_encoder is not None and not isinstance(self.text_encoder, str):
            raise ConfigError(f"{where}: text_encoder must be a model name or null, got {short(self.text_encoder)}")
        if isinstance(self.reason_heads, int) and self.reason_heads > 0 and self.embed_dim % self.reason_heads:
            raise ConfigError(f"{where}: embed_dim ({self.embed_dim}) must be divisible by reason_heads ({self.reason_heads})")
        if self.word_pool_heads < 0:
            raise ConfigError(f"{where}: word_pool_heads must be 0 or more, got {self.word_pool_heads}")
        if self.verify_top_k < 0 or self.verify_top_k > self.max_candidates:
            raise ConfigError(f"{where}: verify_top_k must be from 0 to max_candidates ({self.max_candidates}), "
                              f"got {self.verify_top_k}")
        if self.verify_crop % 8 or self.verify_crop < 16:
            raise ConfigError(f"{where}: verify_crop must be a multiple of 8 and at least 16, got {self.verify_crop}")
        if self.imgsz % 32 or self.imgsz < 64:
            raise ConfigError(f"{where}: imgsz must be a multiple of 32 and at least 64, got {self.imgsz}")
        for key, (low, high) in MODEL_BOUNDS.items():  # a checkpoint's JSON is input too: 1e12 candidates is not a model
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{where}: {key} must be an integer from {low} to {high}, got {short(value)}")
        return self


def load_model_config(path: str | Path) -> ModelConfig:
    """Read a model YAML (``configs/promptdet-n.yaml``); unknown keys are errors."""
    return model_config_from_dict(read_yaml(path, "model config"), str(path))


def model_config_from_dict(data: dict, where: str) -> ModelConfig:
    return from_dict(ModelConfig, data, where).validate(where)
