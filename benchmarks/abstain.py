"""Does the model know what it doesn't know, and does it understand boolean instructions?

One run prints, for the torch backend and (with --export) the ONNX one:

1. real photographs (--photos: a folder or glob of images that hold none of the synthetic parts):
   the share of images that get any box, for in-vocabulary prompts and for out-of-vocabulary ones;
2. the synthetic test split (held-out wordings): images flagged unfamiliar, the stored known
   prompts called unknown, and out-of-vocabulary prompts (held-out general names) answered;
3. the conveyor camera's frames (a rendered video, at the line recipe's sizes): frames flagged
   unfamiliar, since an unfamiliar frame stops being judged on the line;
4. the boolean forms on the test split with held-out wordings: AP50 per form (negation,
   exclusion, disjunction, conjunction, jargon) and the absent rate (boxes on empty answers),
   overall and for named-but-absent defects, with the same figures for the existing types.

    python benchmarks/abstain.py --photos "/usr/share/backgrounds/**/*.jpg" --export export/promptdet-n

The photo set used for the README: the JPEG wallpapers of Debian's gnome-backgrounds,
mate-backgrounds, ukui-wallpapers and lomiri-wallpapers packages (apt-get install them first).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

IN_VOCAB = ["find the defective parts", "find all bottles", "the gears", "scratched cans", "every part except the gears"]
OOV_PROMPTS = ["a dog", "find the cars", "people walking", "the laptop on the desk", "where is the bicycle?"]


def _images(pattern: str, limit: int) -> list[str]:
    path = Path(pattern)
    files = sorted(str(p) for p in path.iterdir()) if path.is_dir() else sorted(glob.glob(pattern, recursive=True))
    files = [f for f in files if Path(f).suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".bmp")]
    return files[:limit]


def _answered(model, images, prompts, imgsz=None) -> tuple[float, float]:
    """(share of images with any box, share of images flagged unfamiliar) with abstention on."""
    any_box, flagged = 0, 0
    for path in images:
        det = model.detect(path, prompts, imgsz=imgsz)
        any_box += len(det) > 0
        flagged += det.unfamiliar
    n = max(1, len(images))
    return any_box / n, flagged / n


def photos(model, files: list[str]) -> dict:
    inv, flag = _answered(model, files, IN_VOCAB)
    oov, _ = _answered(model, files, OOV_PROMPTS)
    return {"images": len(files), "in_vocab_answered": inv, "oov_answered": oov, "unfamiliar": flag}


def synthetic(model, root: Path, scenes: int, heldout_nouns: tuple[str, ...], seed: int) -> dict:
    from promptdet.data.synth import templates as T

    with open(root / "scenes.jsonl", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh][:scenes]
    with open(root / "instructions.jsonl", encoding="utf-8") as fh:
        stored = [json.loads(line) for line in fh]
    by_image: dict[str, list[str]] = {}
    for p in stored:
        by_image.setdefault(p["image"], []).append(p["instruction"])
    rng = np.random.default_rng(seed)
    unfamiliar, known_unknown, known_total, oov_answered, oov_total = 0, 0, 0, 0, 0
    for rec in records:
        known = by_image.get(rec["image"], [])[:6]
        oov = [T.set_instruction(rng, "test", None, noun=heldout_nouns[int(rng.integers(len(heldout_nouns)))])
               for _ in range(2)]
        det = model.detect(str(root / rec["image"]), known + oov)
        unfamiliar += det.unfamiliar
        known_unknown += sum(i < len(known) for i in det.unknown_prompts)
        known_total += len(known)
        oov_total += len(oov)
        oov_answered += sum(bool((det.prompt_ids == len(known) + j).any()) for j in range(len(oov)))
    return {"images": len(records), "unfamiliar": unfamiliar / max(1, len(records)),
            "known_called_unknown": known_unknown / max(1, known_total),
            "oov_answered": oov_answered / max(1, oov_total)}


def line_frames(model, video_seed: int, seconds: float, sizes: list[int]) -> dict:
    import tempfile

    from promptdet.data.synth.video import render_conveyor
    from promptdet.predict import Source, iter_frames

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "line.mp4"
        render_conveyor(path, seconds=seconds, seed=video_seed)
        frames = [image for _, _, image, _, error in iter_frames([Source("video", str(path))]) if error is None]
    frames = frames[::3]  # every third frame: neighbours are nearly the same picture
    flagged = {}
    for size in sizes:
        flagged[size] = sum(model.detect(f, ["find the defective parts"], imgsz=size).unfamiliar for f in frames)
    return {"frames": len(frames), **{f"unfamiliar@{s}": n / max(1, len(frames)) for s, n in flagged.items()}}


def forms(model, root: Path, data: str, scenes: int, seed: int) -> dict:
    """AP50 per boolean form and per existing type, and absent rates, on held-out wordings (torch only)."""
    from promptdet.data.sources import load_eval_split
    from promptdet.data.synth.instruct import generate_instructions
    from promptdet.data.synth.logic import LOGIC_TYPES
    from promptdet.train.evaluate import evaluate_queries
    from promptdet.train.validate import predict_pairs

    with open(root / "scenes.jsonl", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh][:scenes]
    rng = np.random.default_rng(seed)
    pairs = [p for rec in records for p in generate_instructions(rec, rng, "test", per_image=6, absent_rate=0.15,
                                                                 types=LOGIC_TYPES)]
    names = {r["image"] for r in records}
    stored = [p for p in load_eval_split(data, "test").pairs if p.image in names]
    results = predict_pairs(model.detector, model.encoder, pairs + stored, root, model.cfg.imgsz, conf=0.001)
    metrics = evaluate_queries(results, conf=0.25)
    out = {t: row.get("AP50") for t, row in metrics["types"].items() if t != "absent"}
    absent = [(p, r) for p, r in zip(pairs + stored, results) if p.type == "absent"]
    fired = [bool((r.pred_scores >= 0.25).any()) for _, r in absent]
    named_defect = [f for (p, _), f in zip(absent, fired) if p.extra.get("query", {}).get("absent") == "defect"
                    and p.extra["query"]["select"].get("defect") not in (None, "any")]
    logic_absent = [f for (p, _), f in zip(absent, fired) if p.extra.get("query", {}).get("absent") in LOGIC_TYPES]
    out.update(absent_rate=float(np.mean(fired)) if fired else None,
               absent_rate_named_defect=float(np.mean(named_defect)) if named_defect else None,
               absent_rate_boolean_forms=float(np.mean(logic_absent)) if logic_absent else None,
               queries=len(results))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--export", default=None, help="an export folder: run the abstention figures on ONNX too")
    ap.add_argument("--photos", default="/usr/share/backgrounds/**/*.jpg", help="folder or glob of real photographs")
    ap.add_argument("--max-photos", type=int, default=200)
    ap.add_argument("--test", default="data/inspection/test", help="synthetic test split (held-out wordings)")
    ap.add_argument("--data", default="datasets/inspection.yaml", help="dataset YAML whose test split is --test")
    ap.add_argument("--scenes", type=int, default=100)
    ap.add_argument("--video-seed", type=int, default=0)
    ap.add_argument("--video-seconds", type=float, default=5.0)
    ap.add_argument("--line-sizes", default="640,768")
    ap.add_argument("--no-forms", action="store_true", help="skip the boolean-forms AP (the slow part)")
    args = ap.parse_args()

    import promptdet
    from promptdet.text.general_vocab import HELD_OUT

    files = _images(args.photos, args.max_photos)
    if not files:
        sys.exit(f"error: no images match --photos {args.photos}")
    sizes = [int(s) for s in args.line_sizes.split(",")]
    backends = [("torch", promptdet.load(args.weights))]
    if args.export:
        backends.append(("onnx", promptdet.load(args.export)))
    report = {}
    for name, model in backends:
        t0 = time.perf_counter()
        row = {"photos": photos(model, files), "synthetic": synthetic(model, Path(args.test), args.scenes, HELD_OUT, 0),
               "line": line_frames(model, args.video_seed, args.video_seconds, sizes)}
        if name == "torch" and not args.no_forms:
            row["forms"] = forms(model, Path(args.test), args.data, args.scenes, 12345)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        report[name] = row
        print(f"== {name} ({row['seconds']} s)")
        for section, values in row.items():
            if isinstance(values, dict):
                print(f"  {section:10} " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                    for k, v in values.items()))
    print(json.dumps(report, indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
