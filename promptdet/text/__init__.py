"""Prompts in, embeddings out. ``prompts`` is torch-free; the encoder needs the ``train`` extra."""

from promptdet.text.cache import EmbeddingCache
from promptdet.text.prompts import MAX_PROMPT_CHARS, PromptError, normalize_prompts

__all__ = ["MAX_PROMPT_CHARS", "EmbeddingCache", "EncodedPrompts", "PromptError", "TextEncoder", "normalize_prompts"]


def __getattr__(name: str):
    # Lazy, so `from promptdet.text import normalize_prompts` never imports torch or transformers.
    if name in ("TextEncoder", "EncodedPrompts"):
        from promptdet.text import encoder

        return getattr(encoder, name)
    raise AttributeError(f"module 'promptdet.text' has no attribute {name!r}")
