"""Every bound promptdet puts on an input, in one place.

A production line faces inputs it did not choose: image files, HTTP requests, recipes, checkpoints
and export folders from elsewhere. Each limit below is far above any real use and far below what
would exhaust the machine; crossing one is a one-line error (or, for the line's HTTP endpoint, a
4xx/5xx answer), never a crash. The README's "Limits" section lists them too.
"""

from __future__ import annotations

# ---- images (runtime/imageio.py: `detect`, the API, the line's folder source) -------------------
MAX_SIDE = 20000  # px, either side
MAX_PIXELS = 2 * 89_478_485  # Pillow's own decompression-bomb limit; a file is refused before decoding

# ---- prompts (text/prompts.py) -------------------------------------------------------------------
MAX_PROMPT_CHARS = 2000  # longer prompts are cut (with a warning); the tokenizer never sees megabytes
MAX_PROMPTS = 256  # prompts in one call or one recipe; each costs a row of the detector's work

# ---- the line's HTTP endpoint (line/server.py) ---------------------------------------------------
HTTP_MAX_BODY = 64 * 1024  # bytes of a POST /trigger body; larger ones get 413
HTTP_READ_TIMEOUT_S = 5.0  # a client that stalls mid-request is dropped after this
HTTP_MAX_CONNECTIONS = 32  # requests served at once; more get 503 at once instead of a thread each
TRIGGER_QUEUE = 32  # software triggers waiting for a frame; past it POST /trigger answers 503

# ---- the line's sinks (line/sinks.py) ------------------------------------------------------------
IMAGES_MIN_FREE_MB = 64.0  # FAIL images are skipped below this much free space: audit records come first
SPOOL_RETRY_S = 5.0  # a sink that spooled retries its spool this often while the line runs

# ---- config files (config.py) --------------------------------------------------------------------
MAX_YAML_BYTES = 1024 * 1024  # a recipe or dataset YAML file
MAX_YAML_NODES = 100_000  # values in one YAML document with its aliases expanded (a 'billion laughs' bound)
MESSAGE_VALUE_CHARS = 80  # a value quoted in an error message is cut to this

# ---- checkpoint and export metadata (config.py, runtime/onnx.py): inclusive (low, high) ----------
MODEL_BOUNDS = {
    "embed_dim": (8, 1024),
    "reg_max": (1, 32),
    "reason_layers": (0, 12),
    "reason_heads": (1, 32),
    "max_candidates": (1, 1024),
    "text_dim": (8, 4096),
    "max_tokens": (1, 512),
    "text_trainable_layers": (0, 48),
    "word_pool_heads": (0, 32),
    "verify_top_k": (0, 1024),
    "verify_crop": (16, 512),
    "imgsz": (64, 4096),
}

# ---- data import (data/formats/) -----------------------------------------------------------------
MAX_LABEL_LINES = 100_000  # lines of one YOLO label file (one box each)
