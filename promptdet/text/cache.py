"""An LRU of prompt embeddings, so a line that asks the same question every frame encodes it once."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

# (encoder id, prompt text). Both parts are plain strings, so the same key could name a file on disk
# later; the encoder id changes whenever the weights, config, tokenizer or max_tokens do.
CacheKey = tuple[str, str]


class EmbeddingCache:
    """In-memory LRU keyed by ``(encoder_id, text)``; values are whatever the encoder stores.

    The text encoder stores ``(token_feats [T, Dt], token_mask [T] bool, pooled [D])``: detached
    CPU tensors, unpadded. Safe to share between threads and between encoders.
    """

    def __init__(self, max_entries: int = 4096):
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0 (0 turns caching off), got {max_entries}")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[CacheKey, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: CacheKey) -> Any | None:
        """The stored value (now most recently used), or None; counts a hit or a miss."""
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: CacheKey, value: Any) -> None:
        """Store ``value``, evicting the least recently used entries beyond ``max_entries``."""
        if value is None:
            raise ValueError("None cannot be cached: get() uses it to mean a miss")
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0

    def __getstate__(self) -> dict:
        # Locks cannot be copied; without this, copy.deepcopy(model) (EMA, checkpoints) would fail.
        with self._lock:
            state = self.__dict__.copy()
            state["_items"] = OrderedDict(self._items)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __repr__(self) -> str:
        return (f"EmbeddingCache(entries={len(self)}/{self.max_entries}, "
                f"hits={self.hits}, misses={self.misses})")
