"""Fit the familiarity statistics of a trained detector (``promptdet.model.familiarity``).

Image side: the trunk's pooled features of training images, at every size the model is meant to
run at, give a mean and principal directions; held-out images of the same kind set the threshold
so that nearly none of them is called unfamiliar. Prompt side: instructions of the training
vocabulary (``known``) and the same instructions naming things never trained (``foreign``) form the
two banks; held-out wordings and held-out foreign names set the threshold between them. Synthetic
sources give their instructions from the scene facts; imported ones (a user's converted labels)
give the instruction texts they hold, with their class names (and a vocabulary's synonyms)
swapped for foreign names.

Used by ``promptdet calibrate`` on a trained checkpoint; the result lives in the
checkpoint's tensors (``model.familiarity.*``) and so in ``detector.onnx``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from promptdet.data.synth import templates as T
from promptdet.limits import MAX_PROMPTS
from promptdet.model.familiarity import pooled_image_features
from promptdet.runtime.preprocess import to_input
from promptdet.text.general_vocab import BANK_NOUNS, HELD_OUT

IMAGE_RANK = 48  # principal directions kept; the rest of the variance is one residual term
IMAGE_QUANTILE = 0.998  # of held-out training-like images, the distance the threshold must clear
IMAGE_MARGIN = 1.15  # the threshold sits this far past that quantile (renders vary more than any sample)
BANK_SIZE = 1536  # instructions per bank (known, foreign); enough that a frame is always near
_CATEGORY_WORDS = sorted({w for ws in T.CATEGORY_WORDS.values() for w in ws} | set(T.GENERIC_WORDS), key=len,
                         reverse=True)


@dataclass
class FamiliarityReport:
    """What the calibration measured, for the log and the model card."""

    images_fit: int
    images_heldout: int
    image_threshold: float
    heldout_unfamiliar: float  # share of held-out training-like images called unfamiliar
    prompt_threshold: float
    heldout_known_unknown: float  # share of held-out wordings of known prompts called unknown
    heldout_foreign_known: float  # share of held-out foreign names called known

    def lines(self) -> list[str]:
        return [(f"image familiarity: fit on {self.images_fit} image views, threshold {self.image_threshold:.3f}; "
                 f"{self.heldout_unfamiliar:.1%} of {self.images_heldout} held-out views called unfamiliar"),
                (f"prompt familiarity: threshold {self.prompt_threshold:+.3f}; held-out known wordings called unknown "
                 f"{self.heldout_known_unknown:.1%}, held-out foreign names called known "
                 f"{self.heldout_foreign_known:.1%}")]


@torch.no_grad()
def image_features(detector, paths: list[Path], sizes: tuple[int, ...], device="cpu") -> np.ndarray:
    """[len(paths) * len(sizes), F] pooled trunk features of every image at every size."""
    detector.eval()
    rows = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"cannot read calibration image {path}")
        for size in sizes:
            x, _ = to_input(image, size)
            levels = detector.backbone(torch.from_numpy(x).to(device))
            rows.append(pooled_image_features(levels).cpu().numpy()[0])
    return np.stack(rows).astype(np.float64)


def fit_image_statistics(fit: np.ndarray, heldout: np.ndarray, rank: int = IMAGE_RANK) -> tuple[dict, float, float]:
    """-> (buffers, threshold, share of held-out rows past it). Distances as in ``Familiarity``."""
    mean = fit.mean(0)
    centred = fit - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s ** 2 / max(1, len(fit) - 1)
    r = int(min(rank, (var > var[0] * 1e-9).sum()))
    proj = vt[:r].T / np.sqrt(var[:r])
    total = (centred ** 2).sum(1)
    resid = total - ((centred @ vt[:r].T) ** 2).sum(1)
    resid_var = max(float(resid.mean()), 1e-12)

    def distance(rows: np.ndarray) -> np.ndarray:
        c = rows - mean
        z = c @ proj
        res = np.clip((c ** 2).sum(1) - ((c @ vt[:r].T) ** 2).sum(1), 0, None)
        return np.sqrt(((z ** 2).sum(1) + res / resid_var) / (r + 1))

    held = distance(heldout)
    threshold = float(np.quantile(held, IMAGE_QUANTILE) * IMAGE_MARGIN)
    scale = max((threshold - float(np.median(held))) / 8.0, 1e-3)  # typical images sit near 1.0
    buffers = {"image_mean": mean, "image_proj": proj, "image_resid_var": resid_var,
               "image_threshold": threshold, "image_scale": scale}
    return buffers, threshold, float((held > threshold).mean())


def foreign_version(text: str, noun: str, names: list[str] | None = None) -> str | None:
    """``text`` with every part name (``names``, longest first; default: the synthetic line's) swapped
    for ``noun`` (plural kept), or None if it names none."""
    out = text
    for word in _CATEGORY_WORDS if names is None else names:
        for form, repl in ((T.pluralize(word), T.pluralize(noun)), (word, noun)):
            out = re.sub(rf"\b{re.escape(form)}\b", repl, out, flags=re.IGNORECASE)
    return out if out != text else None


def instruction_texts(scenes: list[dict], split: str, per_scene: int, seed: int) -> list[str]:
    """Instructions of every type, boolean forms included, drawn on ``scenes`` in ``split``'s wordings."""
    from promptdet.data.synth.instruct import ALL_TYPES, generate_instructions

    rng = np.random.default_rng(seed)
    texts = []
    for scene in scenes:
        texts += [p.instruction for p in generate_instructions(scene, rng, split, per_image=per_scene,
                                                               absent_rate=0.3, types=ALL_TYPES)]
    return list(dict.fromkeys(texts))


def prompt_texts(scenes: list[dict], split: str, nouns: tuple[str, ...], n: int, seed: int) -> tuple[list[str], list[str]]:
    """(known, foreign) instructions, ``n`` of each at most: foreign ones swap a part name for ``nouns``,
    and bare names ("dog", "the dogs") stand beside them, since people type those too."""
    rng = np.random.default_rng(seed)
    known = instruction_texts(scenes, split, 6, seed)
    rng.shuffle(known)
    known = known[:n]
    foreign = []
    for text in known:
        swapped = foreign_version(text, nouns[int(rng.integers(len(nouns)))])
        if swapped:
            foreign.append(swapped)
    bare_known = [w for ws in T.CATEGORY_WORDS.values() for w in ws]
    known = list(dict.fromkeys(known + bare_known + [T.pluralize(w) for w in bare_known]))
    foreign = list(dict.fromkeys(foreign + list(nouns) + [T.pluralize(w) for w in nouns]))
    return known, foreign


def query_categories(query) -> set[str]:
    """Every ``category`` a query names, at any depth (see ``promptdet.data.query``)."""
    found: set[str] = set()
    if isinstance(query, dict):
        for key, value in query.items():
            if key == "category" and isinstance(value, str):
                found.add(value)
            else:
                found |= query_categories(value)
    elif isinstance(query, list):
        for item in query:
            found |= query_categories(item)
    return found


def class_names(pairs, vocab=None) -> list[str]:
    """The class names imported pairs ask for (from their queries; a vocabulary adds its synonyms),
    longest first so that "solar cell" is swapped before "cell"."""
    names: set[str] = set()
    for p in pairs:
        names |= query_categories(p.extra.get("query"))
    if vocab is not None:
        for name, synonyms in vocab.classes.items():
            names |= {name, *synonyms}
    return sorted({n.replace("_", " ") for n in names if n}, key=len, reverse=True)


def pair_prompt_texts(pairs, names: list[str], nouns: tuple[str, ...], n: int,
                      seed: int) -> tuple[list[str], list[str]]:
    """(known, foreign) instructions from imported pairs, ``n`` of each at most, as ``prompt_texts``
    makes them from scenes: foreign ones swap the class names for ``nouns``."""
    rng = np.random.default_rng(seed)
    known = list(dict.fromkeys(p.instruction for p in pairs))
    rng.shuffle(known)
    known = known[:n]
    foreign = []
    for text in known:
        swapped = foreign_version(text, nouns[int(rng.integers(len(nouns)))], names) if names else None
        if swapped:
            foreign.append(swapped)
    known = list(dict.fromkeys(known + names + [T.pluralize(w) for w in names]))
    foreign = list(dict.fromkeys(foreign + list(nouns) + [T.pluralize(w) for w in nouns]))
    return known, foreign


def _pooled(encoder, texts: list[str]) -> torch.Tensor:
    """Pooled embeddings [N, D] of any number of texts; the encoder takes MAX_PROMPTS at once."""
    return torch.cat([encoder.encode(texts[i:i + MAX_PROMPTS]).pooled.float() for i in range(0, len(texts), MAX_PROMPTS)])


def _margins(encoder, texts: list[str], known: torch.Tensor, foreign: torch.Tensor) -> np.ndarray:
    from promptdet.model.familiarity import TOP_K

    out = []
    for i in range(0, len(texts), MAX_PROMPTS):
        p = encoder.encode(texts[i:i + MAX_PROMPTS]).pooled.float()
        k = (p @ known.t()).topk(min(TOP_K, len(known)), dim=-1).values.mean(-1)
        f = (p @ foreign.t()).topk(min(TOP_K, len(foreign)), dim=-1).values.mean(-1)
        out.append((k - f).numpy())
    return np.concatenate(out)


@torch.no_grad()
def fit_prompt_banks(encoder, train_scenes: list[dict], heldout_scenes: list[dict], seed: int = 0,
                     train_pairs: list | None = None, heldout_pairs: list | None = None,
                     names: list[str] | None = None) -> tuple[dict, dict]:
    """-> (buffers, figures). Banks from synthetic scenes and/or imported pairs (``names``: their
    class names, see ``class_names``), sharing ``BANK_SIZE`` when both are given. The threshold sits
    midway between the held-out known wordings' 2nd percentile and the held-out foreign names' 98th,
    or at the known side's 1st percentile when the two overlap (calling a known prompt unknown
    costs the user more than the reverse)."""
    names = names or []
    share = BANK_SIZE // 2 if train_scenes and train_pairs else BANK_SIZE
    known_txt, foreign_txt = prompt_texts(train_scenes, "train", BANK_NOUNS, share, seed) \
        if train_scenes or not train_pairs else ([], [])
    if train_pairs:
        k, f = pair_prompt_texts(train_pairs, names, BANK_NOUNS, share, seed)
        known_txt, foreign_txt = list(dict.fromkeys(known_txt + k)), list(dict.fromkeys(foreign_txt + f))
    known, foreign = _pooled(encoder, known_txt), _pooled(encoder, foreign_txt)
    held_known_txt, held_foreign_txt = prompt_texts(heldout_scenes, "test", HELD_OUT, 600, seed + 1) \
        if heldout_scenes or not heldout_pairs else ([], [])
    if heldout_pairs:
        k, f = pair_prompt_texts(heldout_pairs, names, HELD_OUT, 600, seed + 1)
        held_known_txt, held_foreign_txt = held_known_txt + k, held_foreign_txt + f
    held_known = _margins(encoder, held_known_txt, known, foreign)
    held_foreign = _margins(encoder, held_foreign_txt, known, foreign)
    lo, hi = float(np.quantile(held_known, 0.02)), float(np.quantile(held_foreign, 0.98))
    threshold = (lo + hi) / 2 if lo > hi else float(np.quantile(held_known, 0.01))
    scale = 0.02  # margins are cosine differences: 0.1 past the threshold is already near-certain
    buffers = {"prompt_known": known.numpy(), "prompt_foreign": foreign.numpy(), "prompt_threshold": threshold,
               "prompt_scale": scale}
    figures = {"threshold": threshold, "known_unknown": float((held_known < threshold).mean()),
               "foreign_known": float((held_foreign >= threshold).mean())}
    return buffers, figures


def read_scenes(folder: Path, limit: int | None = None) -> list[dict]:
    with open(folder / "scenes.jsonl", encoding="utf-8") as fh:
        scenes = [json.loads(line) for line in fh if line.strip()]
    return scenes[:limit] if limit else scenes


def install(detector, buffers: dict) -> None:
    """Write fitted statistics into ``detector.familiarity`` and mark it calibrated."""
    fam = detector.familiarity
    device = fam.calibrated.device
    for key, value in buffers.items():
        setattr(fam, key, torch.as_tensor(np.asarray(value), dtype=torch.float32, device=device).clone())
    fam.calibrated = torch.ones((), device=device)


def calibrate(model, data: str, sizes: tuple[int, ...], images: int = 600, device: str = "cpu",
              seed: int = 0, log=print, vocab=None) -> FamiliarityReport:
    """Fit both sides for ``model`` (a ``PromptDet``) on the dataset YAML ``data``: images of its train
    sources (spread over them) for the fit, its val split for the thresholds. ``vocab`` (a
    ``UserVocab``) adds class synonyms to the names swapped out of imported instructions. Installs
    the result."""
    from promptdet.data.sources import load_eval_split, load_source, resolve_dataset

    cfg = resolve_dataset(data)
    train_paths, train_scenes = [], []
    sources = [load_source(cfg, s, seed=seed) for s in cfg.train]
    for src in sources:
        train_scenes += list(src.scenes or [])
    per_source = max(1, images // max(1, len(sources)))
    rng = np.random.default_rng(seed)
    for src in sources:
        names = sorted({p.image for p in src.pairs})
        picked = rng.choice(len(names), size=min(per_source, len(names)), replace=False) if names else []
        train_paths += [Path(src.images_root) / names[int(i)] for i in picked]
    val = load_eval_split(data, "val")
    val_names = sorted({p.image for p in val.pairs})[: max(50, images // 3)]
    val_paths = [Path(val.images_root) / n for n in val_names]
    detector = model.detector.to(device)
    log(f"calibrating: image features of {len(train_paths)} + {len(val_paths)} images at sizes {list(sizes)}")
    fit = image_features(detector, train_paths, sizes, device)
    held = image_features(detector, val_paths, sizes, device)
    image_buf, threshold, held_unfamiliar = fit_image_statistics(fit, held)
    log("calibrating: prompt banks")
    train_pairs = [p for src in sources if not src.scenes for p in src.pairs]
    held_pairs = [] if val.scenes else val.pairs
    held_scenes = list(val.scenes or []) or (train_scenes[-200:] if not held_pairs else [])
    rng.shuffle(train_scenes)
    names = class_names(train_pairs + held_pairs, vocab)
    if train_pairs:
        log(f"calibrating: {len(train_pairs)} imported instructions; class names swapped for foreign ones: "
            + (", ".join(names[:8]) + (" ..." if len(names) > 8 else "") if names else "none found"))
    prompt_buf, figures = fit_prompt_banks(model.encoder, train_scenes[:400], held_scenes[:150], seed,
                                           train_pairs=train_pairs, heldout_pairs=held_pairs, names=names)
    install(detector, {**image_buf, **prompt_buf})
    return FamiliarityReport(len(fit), len(held), threshold, held_unfamiliar, figures["threshold"],
                             figures["known_unknown"], figures["foreign_known"])
