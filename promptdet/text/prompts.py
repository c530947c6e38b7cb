"""Turning what a user typed into a clean list of prompts. No torch here: the edge runtime uses it too."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from promptdet.errors import UsageError
from promptdet.limits import MAX_PROMPT_CHARS, MAX_PROMPTS


class PromptError(UsageError):
    """A prompt list that cannot be used (empty, blank entry, not text)."""


def _clean(text: str, where: str, hint: str) -> str:
    if "\0" in text:  # a C string ends there: tokenizers, databases and PLC strings would disagree on the text
        raise PromptError(f"{where} contains a NUL character; remove it")
    # str.split() with no argument splits on any run of Unicode whitespace, so this also strips.
    cleaned = " ".join(text.split())
    if not cleaned:
        raise PromptError(f"{where} is empty; {hint}")
    if len(cleaned) > MAX_PROMPT_CHARS:
        warnings.warn(f"{where} has {len(cleaned)} characters; cut to the first {MAX_PROMPT_CHARS}",
                      stacklevel=3)
        cleaned = cleaned[:MAX_PROMPT_CHARS].rstrip()
    return cleaned


def normalize_prompts(prompts: str | Sequence[str]) -> list[str]:
    """A list of clean prompts, in the caller's order, duplicates kept (indices stay stable).

    One string is split on ``;`` ("bottles; caps" -> ["bottles", "caps"]); the entries of a list are
    never split. Whitespace is stripped and inner runs collapse to one space.
    """
    if isinstance(prompts, str):
        pieces = prompts.split(";")
        names = [f"prompt {i + 1} of {len(pieces)} in {shorten(prompts)!r}" for i in range(len(pieces))]
        if len(pieces) == 1:
            names = ["the prompt"]
        hint = ("remove the stray ';' (doubled, leading or trailing)" if len(pieces) > 1
                else "give the prompt some words")
    elif isinstance(prompts, Sequence) and not isinstance(prompts, (bytes, bytearray)):
        pieces = list(prompts)
        if not pieces:
            raise PromptError("no prompts given; pass at least one, e.g. prompts=['bottles']")
        names = [f"prompt at index {i}" for i in range(len(pieces))]
        hint = "give each prompt some words"
    else:
        raise PromptError(f"prompts must be a string or a list of strings, not {type(prompts).__name__}")
    if len(pieces) > MAX_PROMPTS:
        raise PromptError(f"{len(pieces)} prompts; at most {MAX_PROMPTS} at once (promptdet.limits.MAX_PROMPTS)")
    out = []
    for piece, name in zip(pieces, names):
        if not isinstance(piece, str):
            raise PromptError(f"{name} is of type {type(piece).__name__}, not a string")
        out.append(_clean(piece, name, hint))
    return out


def shorten(text: str, limit: int = 40) -> str:
    """``text`` shortened for an error message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
