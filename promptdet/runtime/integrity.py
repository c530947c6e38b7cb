"""Checks of an export folder's promptdet.json before anything in the folder is used.

The metadata is input like any other: its sizes are bounded (``promptdet.limits.MODEL_BOUNDS``),
and its ``sha256`` table must cover every file the runtime reads (the graphs and tokenizer.json;
the text encoder's hash is ``text_encoder.onnx_sha256``). Without the table a swapped graph or a
tokenizer with two word ids exchanged would run silently, so an export without it is refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from promptdet.errors import PromptdetError
from promptdet.limits import MODEL_BOUNDS


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def check_export_meta(meta: dict, meta_path: Path) -> None:
    """Raise one line when promptdet.json is out of bounds, lacks a file's hash, or a hash differs
    (tokenizer.json here; the graphs are checked as they load)."""
    for key, value in (("imgsz", meta.get("imgsz")), ("max_tokens", meta["text_encoder"].get("max_tokens"))):
        low, high = MODEL_BOUNDS[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise PromptdetError(f"{meta_path}: {key} {str(value)[:40]} is out of bounds ({low}-{high}); "
                                 "the metadata does not match an export")
    table = meta.get("sha256")
    if not isinstance(table, dict) or not table:
        raise PromptdetError(f"{meta_path}: has no sha256 table, so its files cannot be checked; export again "
                             "(promptdet export --out DIR)")
    files = meta["files"]
    if not isinstance(files, dict):
        raise PromptdetError(f"{meta_path}: 'files' must be a mapping")
    for key, name in files.items():
        if key == "text_encoder":
            if not meta["text_encoder"].get("onnx_sha256"):
                raise PromptdetError(f"{meta_path}: text_encoder.onnx_sha256 is missing; export again")
            continue
        if not isinstance(name, str) or Path(name).name != name:
            raise PromptdetError(f"{meta_path}: files.{key} must be a file name inside the folder, got {str(name)[:60]!r}")
        if name not in table:
            raise PromptdetError(f"{meta_path}: no sha256 for {name}; export again (promptdet export --out DIR)")
    tokenizer = files.get("tokenizer", "tokenizer.json")
    path = meta_path.parent / tokenizer
    if path.is_file() and file_sha256(path) != table.get(tokenizer):
        raise PromptdetError(f"{path}: does not match {meta_path} (its sha256 differs); the file was replaced or "
                             "damaged. Export again")
