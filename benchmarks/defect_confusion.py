"""Does the model tell one defect from another? A confusion table on the synthetic scenes.

For every part of every scene in a split, asks one prompt per defect kind ("scratched parts",
"cracked parts", ...) plus "defective parts", and takes each prompt's best box on that part (IoU
>= 0.5). Rows are the part's truth (its defect, or "clean-<kind>"), columns the prompts; a cell is
the share of those parts with a box at or above --conf, and the mean best score. A model that knows
the kinds has a strong diagonal and quiet clean rows; one that only knows "defective" fires the
whole defect block alike, which is what turns absent defect prompts ("dented parts" when the only
damaged part is stained) into false positives. Two more tables: the absent false-positive rate of
the split's queries by what is absent (a part kind, a colour, a defect in a scene with no damaged
part, a defect in a scene where another part has another defect), and the cosine similarity of the
model's prompt vectors for the defect prompts next to the text encoder's own sentence embeddings.

    python benchmarks/defect_confusion.py --weights promptdet/assets/promptdet-n.safetensors --split val
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = ["scratched parts", "cracked parts", "dented parts", "stained parts", "bottles with a missing cap",
           "defective parts"]


def absent_by_kind(model, args) -> None:
    """Absent false-positive rate by what the absent query names (the split's stored queries)."""
    from collections import Counter

    from promptdet.data.sources import load_eval_split
    from promptdet.train.validate import predict_pairs

    src = load_eval_split(args.data, args.split)
    with open(src.images_root / "scenes.jsonl", encoding="utf-8") as fh:
        damaged = {s["image"]: any(o["defects"] for o in s["objects"]) for s in map(json.loads, fh)}
    absent = [p for p in src.pairs if p.type == "absent"]
    results = predict_pairs(model.detector, model.encoder, absent, src.images_root, model.cfg.imgsz, conf=args.conf)
    total, fired = Counter(), Counter()
    for pair, res in zip(absent, results):
        kind = pair.extra["query"]["absent"]
        if kind == "defect":
            kind = "defect, another part damaged" if damaged[pair.image] else "defect, no part damaged"
        total[kind] += 1
        fired[kind] += bool(len(res.pred_scores))
    print(f"absent false positives at conf {args.conf} by what is absent:")
    for kind in sorted(total):
        print(f"  {kind:30} {fired[kind]:4d} of {total[kind]:4d} ({fired[kind] / total[kind]:.2f})")


def prompt_cosines(model) -> None:
    """Cosine similarity of the defect prompts: the model's prompt vectors and the encoder's embeddings."""
    import torch
    import torch.nn.functional as F

    from promptdet.train.validate import encode_prompt_grid

    prompts = PROMPTS[:4] + ["red parts", "blue parts"]
    det = model.detector.eval()
    with torch.no_grad():
        pooled, tokens, mask = encode_prompt_grid(model.encoder, [prompts], "cpu")
        vecs, _ = det.text_proj(pooled, tokens, mask)
    for name, x in (("prompt vectors", vecs[0]), ("text encoder", pooled[0])):
        x = F.normalize(x.float(), dim=-1)
        cos = (x @ x.T).numpy()
        print(f"cosine, {name}: " + ", ".join(f"{prompts[i].split()[0]}/{prompts[j].split()[0]} {cos[i, j]:.2f}"
                                            for i, j in ((0, 1), (2, 3), (0, 2), (0, 3), (4, 5))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="checkpoint or export folder (default: the bundled model)")
    ap.add_argument("--data", default="datasets/inspection.yaml", help="dataset YAML or a synth folder")
    ap.add_argument("--split", default="val")
    ap.add_argument("--num", type=int, default=0, help="only the first N scenes in the part table (0 = all)")
    ap.add_argument("--conf", type=float, default=0.25)
    args = ap.parse_args()

    import numpy as np
    from tqdm import tqdm

    import promptdet
    from promptdet.data.sources import resolve_dataset
    from promptdet.train.evaluate import box_iou

    model = promptdet.load(args.weights)
    cfg = resolve_dataset(args.data)  # a dataset YAML, or a folder of synthetic scenes
    folders = [cfg.source_path(s) for s in getattr(cfg, args.split) if s.format == "synth"]
    if not folders:
        raise SystemExit(f"error: {args.data} has no synthetic '{args.split}' folder (this table needs scenes.jsonl)")
    rows: dict[str, list[list[float]]] = defaultdict(list)
    for folder in folders:
        with open(folder / "scenes.jsonl", encoding="utf-8") as fh:
            scenes = [json.loads(line) for line in fh]
        for scene in tqdm(scenes[:args.num or None], desc=folder.name, leave=False):
            res = model.detect(str(folder / scene["image"]), prompts=PROMPTS, conf=0.01)
            parts = np.array([o["bbox"] for o in scene["objects"]], np.float32).reshape(-1, 4)
            on_part = box_iou(res.boxes_xyxy, parts) >= 0.5  # [detections, parts]
            for k, obj in enumerate(scene["objects"]):
                best = [float(res.scores[on_part[:, k] & (res.prompt_ids == j)].max(initial=0.0))
                        for j in range(len(PROMPTS))]
                rows[obj["defects"][0] if obj["defects"] else f"clean-{obj['category']}"].append(best)
    absent_by_kind(model, args)
    prompt_cosines(model)
    print(f"{args.weights or 'bundled model'} on {args.split}: share of parts with a box >= {args.conf} "
          f"(mean best score)")
    print(f"{'part':18}{'n':>5} " + " ".join(f"{p[:14]:>14}" for p in PROMPTS))
    for key in sorted(rows, key=lambda k: (k.startswith("clean"), k)):
        a = np.array(rows[key])
        cells = " ".join(f"{f:>6.2f} ({m:.2f})" for f, m in zip((a >= args.conf).mean(0), a.mean(0)))
        print(f"{key:18}{len(a):5d} {cells}")


if __name__ == "__main__":
    main()
