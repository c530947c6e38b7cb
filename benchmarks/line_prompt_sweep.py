"""Which defect prompt and threshold could drive a line verdict? A sweep on a tuning video.

Renders a conveyor video (default seed 1, not the seed 0 the line benchmark reports on), runs the
ONNX export once per frame with every candidate prompt at a low threshold, then for each prompt
(and for the union of the specific defect prompts) and each threshold prints the share of
defective frames that would FAIL and of the other frames that would FAIL. A box counts when it is
in the ROI [margin, 0, width - margin, height], by its centre (--roi-mode centre, the default,
with --margin 40) or as a whole (--roi-mode inside, e.g. with --margin 2): a part entering or
leaving is not fully in view. Targets of the line: >= 90% and <= 5%.

    python benchmarks/line_prompt_sweep.py --export export/promptdet-n --seed 1
    python benchmarks/line_prompt_sweep.py --export export/promptdet-n --seed 2 --roi-mode inside --margin 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

PROMPTS = ["scratched parts", "cracked parts", "dented parts", "stained parts", "bottles with a missing cap",
           "defective parts", "find the defective parts"]
SPECIFIC = [0, 1, 2, 3, 4]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", required=True, help="an export folder (promptdet export --out DIR)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--imgsz", type=int, default=None)
    ap.add_argument("--margin", type=float, default=40.0, help="ROI inset from the left and right edges, px")
    ap.add_argument("--roi-mode", choices=["centre", "inside"], default="centre")
    ap.add_argument("--prompts", default=None, help="';'-separated prompts instead of the built-in list")
    ap.add_argument("--confs", default="0.3,0.4,0.5,0.6,0.7")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from promptdet.data.synth.video import render_conveyor
    from promptdet.line.rules import roi_keep
    from promptdet.line.sources import OpenCvSource
    from promptdet.runtime.onnx import OnnxModel

    video = render_conveyor(Path(tempfile.mkdtemp(prefix="sweep_")) / "line.mp4", seconds=args.seconds, seed=args.seed)
    truth = [json.loads(line)["defective"] for line in open(video.gt, encoding="utf-8")]
    model = OnnxModel(args.export, providers="cpu")
    prompts = [p.strip() for p in args.prompts.split(";")] if args.prompts else PROMPTS
    specific = list(range(len(prompts))) if args.prompts else SPECIFIC
    predictor = model.predictor(prompts, conf=0.05, imgsz=args.imgsz)
    results = [predictor(f.image) for f in OpenCvSource(str(video.video)).frames()]
    width, height = video.size_wh
    roi = [args.margin, 0, width - args.margin, height]
    bad = [i for i, d in enumerate(truth) if d]
    good = [i for i, d in enumerate(truth) if not d]

    def rates(conf: float, prompt_ids: list[int]) -> tuple[float, float]:
        fails = []
        for det in results:
            sel = np.isin(det.prompt_ids, prompt_ids) & (det.scores >= conf)
            fails.append(bool(roi_keep(det.boxes_xyxy[sel], roi, args.roi_mode).any()))
        return float(np.mean([fails[i] for i in bad])), float(np.mean([fails[i] for i in good]))

    confs = [float(c) for c in args.confs.split(",")]
    print(f"seed {args.seed}: {len(truth)} frames, {len(bad)} defective; cells: FAIL|defective / FAIL|clean")
    print(f"{'prompt':34}" + "".join(f"{'conf ' + str(c):>16}" for c in confs))
    rows = [(p, [k]) for k, p in enumerate(prompts)] + [(f"union of the {len(specific)} specific prompts", specific)]
    for name, ids in rows:
        cells = "".join(f"{'%.0f%% / %.0f%%' % tuple(100 * x for x in rates(c, ids)):>16}" for c in confs)
        print(f"{name[:34]:34}{cells}")


if __name__ == "__main__":
    main()
