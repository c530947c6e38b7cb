"""How many candidates per prompt should the crop verifier rescore? The same weights, scored at each count.

    python benchmarks/verify_top_k.py --weights W --data D [--split test] [--top-k 8,16,24] [--crop 48]

The count (``verify_top_k``) changes no weight, only which of each prompt's candidates get a second
look, so one checkpoint can be scored at several counts: AP50 over all instructions and per type
and, where some answers are empty, the share of those given a box at ``--conf`` (``*_empty_fp``):
the figures ``promptdet val --data D --split S`` prints.
``--crop`` scores the verifier's crops at another size too (it was trained at the checkpoint's own).
"""

from __future__ import annotations

import argparse
import json
import sys


def _round(v):
    return None if v is None else round(v, 4)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, help="Checkpoint or run folder (with a crop verifier).")
    p.add_argument("--data", required=True, help="Dataset YAML, instruction JSONL or folder, as for promptdet val.")
    p.add_argument("--split", default="test", help="val or test (a JSONL: val).")
    p.add_argument("--top-k", default="8,16", help="Counts to score, comma-separated.")
    p.add_argument("--crop", type=int, default=0, help="Crop side in pixels (0 = the checkpoint's).")
    p.add_argument("--conf", type=float, default=0.25, help="Threshold of the absent (empty-answer) share.")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        counts = [int(k) for k in args.top_k.split(",") if k.strip()]
    except ValueError:
        raise SystemExit(f"error: --top-k {args.top_k!r}: expected whole numbers, e.g. 8,16") from None

    import promptdet
    from promptdet.data.sources import load_eval_split
    from promptdet.errors import PromptdetError
    from promptdet.train.evaluate import evaluate_queries
    from promptdet.train.validate import predict_pairs

    try:
        model = promptdet.load(args.weights)
        src = load_eval_split(args.data, args.split)
    except (PromptdetError, OSError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    detector = model.detector.to(args.device).eval()
    if detector.verifier is None:
        raise SystemExit(f"error: {args.weights} has no crop verifier (verify_top_k 0)")
    bad = [k for k in counts if not 1 <= k <= model.cfg.max_candidates]
    if bad:
        raise SystemExit(f"error: --top-k {bad[0]}: from 1 to max_candidates ({model.cfg.max_candidates})")
    if args.crop:
        detector.verifier.crop = args.crop
    print(f"{args.weights}: trained with verify_top_k {model.cfg.verify_top_k}, crop {detector.verifier.crop}; "
          f"{len(src.pairs)} instructions", file=sys.stderr)
    for k in counts:
        detector.verifier.top_k = k
        results = predict_pairs(detector, model.encoder, src.pairs, src.images_root, model.cfg.imgsz, device=args.device)
        m = evaluate_queries(results, conf=args.conf)
        row = {"top_k": k, "all_AP50": _round(m["all"].get("AP50"))}
        for t, r in m["types"].items():
            row[f"{t}_AP50"] = _round(r.get("AP50"))
            if r.get("empty_fp_rate") is not None:  # the share of empty answers given a box (at --conf)
                row[f"{t}_empty_fp"] = _round(r["empty_fp_rate"])
        print(json.dumps({key: v for key, v in row.items() if v is not None}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
