"""Fine-tune the bundled model on real solar modules (ELPV), as a user would, and measure it.

    pip install elpv-dataset          # or pip install -e ".[elpv]"; CC BY-NC-SA 4.0, never vendored
    python benchmarks/finetune_elpv.py --out runs/elpv [--no-anchor] [--time 0.2] [--skip-synthetic]

Phases (progress and timings on stderr, everything under --out, a summary in OUT/summary.json):

1. ELPV cells of one type tiled into 3 x 4 module images (benchmarks/elpv_modules.py): train, val
   and test modules from disjoint cells, a box of class ``cell`` per cell with attributes
   (mono/poly, defective); clean modules in every split; cells at probability 1/3 and the cells
   reserved for acceptance (number divisible by 4) in no module.
2. ``promptdet data convert --from coco ... --vocab benchmarks/elpv_vocab.yaml`` per split (test
   with the held-out wordings), ``promptdet data instruct`` for more training instructions, and a
   dataset YAML OUT/elpv.yaml.
3. The starting model (the bundled one by default) scored before: AP50 per instruction type on the test modules, the defect
   question ("defective cells"), "all cells", the share of clean modules that get a box for the
   defect question, and the synthetic test split.
4. ``promptdet train --weights <bundled> --data OUT/elpv.yaml --replay <synthetic>`` (and, for
   the forgetting figure, once more without replay), then the same figures after.
5. ``promptdet calibrate`` on the fine-tuned (replay) checkpoint, as the walkthrough does, and its
   abstention on the test modules: the share called unfamiliar, the ELPV questions called
   unknown, and foreign questions ("cracked dogs") called known.
6. Unless --no-anchor: ultralytics YOLO26n from scratch on the same modules for the same wall time
   as promptdet's fine-tune (benchmarks/elpv_anchor.py), scored on the same two questions.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import elpv_modules as E

BUNDLED = REPO / "promptdet" / "assets" / "promptdet-n.safetensors"
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def promptdet(*args: str) -> float:
    """Run one ``promptdet`` command as a user would type it; returns its wall seconds."""
    cmd = [sys.executable, "-m", "promptdet.cli.main", *map(str, args)]
    log("$ promptdet " + shlex.join(map(str, args)))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False)  # a failure is reported below, in one line
    if proc.returncode:
        raise SystemExit(f"error: promptdet {args[0]} failed (exit {proc.returncode})")
    return time.perf_counter() - t0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="Everything goes here.")
    p.add_argument("--no-anchor", action="store_true", help="Do not train the YOLO26n anchor.")
    p.add_argument("--seed", type=int, default=0, help="Cell split, module layouts, instructions and training.")
    p.add_argument("--acceptance", type=Path, default=None, metavar="WEIGHTS",
                   help="Acceptance only: tile the reserved cells (never used otherwise) into modules, ask them the "
                        "held-out wordings and the two questions, and score WEIGHTS (a checkpoint or run folder); "
                        "no training. For whoever accepts a model, not for tuning.")
    g = p.add_argument_group("modules")
    g.add_argument("--cell-px", type=int, default=300, help="Cell size in the module image (300 = the data's own pixels).")
    g.add_argument("--gap", type=int, default=8, help="Dark pixels between cells.")
    g.add_argument("--clean-share", type=float, default=0.3, help="Share of each split's modules with no defective cell.")
    g.add_argument("--val-share", type=float, default=0.1, help="Share of the usable cells for val modules.")
    g.add_argument("--test-share", type=float, default=0.2, help="Share of the usable cells for test modules.")
    g.add_argument("--train-repeats", type=int, default=2, help="Layouts of the training cells (each pass uses each cell once).")
    g.add_argument("--per-image", type=int, default=24, help="Training instructions per module (data instruct).")
    g.add_argument("--vocab", type=Path, default=HERE / "elpv_vocab.yaml", help="The dataset vocabulary.")
    g.add_argument("--max-modules", type=int, default=0, help="Keep at most this many modules per split (0 = all; smoke runs).")
    t = p.add_argument_group("fine-tune (promptdet train)")
    t.add_argument("--weights", type=Path, default=BUNDLED, help="The model to start from.")
    t.add_argument("--time", type=float, default=0.2, help="Hours of fine-tuning (promptdet train --time).")
    t.add_argument("--max-steps", type=int, default=0, help="Stop after this many steps instead (smoke runs; 0 = off).")
    t.add_argument("--imgsz", type=int, default=640, help="Training and evaluation size.")
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=0.0005, help="Peak LR (a fine-tune: a quarter of the from-scratch 0.002).")
    t.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="Keep the starting model's BatchNorm statistics (promptdet train --freeze-bn).")
    t.add_argument("--empty-weight", type=float, default=2.0,
                   help="Loss on the best box of empty answers, e.g. the defect question on a clean module "
                        "(promptdet train --empty-weight).")
    t.add_argument("--warmup-epochs", type=float, default=0.5)
    t.add_argument("--prompts-per-image", type=int, default=6)
    t.add_argument("--train-only", default="", help="Train only these top-level modules (promptdet train --train-only).")
    t.add_argument("--device", default="cpu")
    t.add_argument("--replay", default="auto",
                   help="Base data replayed while fine-tuning, whose test split is also scored: a dataset YAML "
                        "(e.g. datasets/inspection.yaml once data/inspection is rendered), or 'auto': render "
                        "--replay-scenes training and --synthetic-test test scenes into OUT/synthetic.")
    t.add_argument("--replay-ratio", type=float, default=0.5, help="Share of the samples drawn from --replay.")
    t.add_argument("--distill", type=float, default=0.0,
                   help="Keep the starting model's scores on the replay images (promptdet train --distill; 0 = off).")
    t.add_argument("--replay-scenes", type=int, default=1000, help="Synthetic training scenes rendered for --replay auto.")
    t.add_argument("--no-replay", action="store_true", help="Fine-tune without replay only.")
    t.add_argument("--skip-no-replay", action="store_true", help="Do not also fine-tune without replay (the forgetting figure).")
    t.add_argument("--skip-synthetic", action="store_true",
                   help="Do not score the synthetic test split (and skip the run without replay, whose point it is).")
    e = p.add_argument_group("evaluation")
    e.add_argument("--conf", type=float, default=0.25, help="Threshold for the clean-module share and recall.")
    e.add_argument("--defect-prompt", default="defective cells", help="The defect question.")
    e.add_argument("--all-prompt", default="all cells", help="The all-cells question.")
    e.add_argument("--synthetic-test", type=int, default=100,
                   help="Synthetic test scenes for --replay auto (seed 2, held-out wordings; few, as every model is "
                        "scored on them on a CPU).")
    args = p.parse_args(argv)
    if args.skip_synthetic:
        args.skip_no_replay = True
    return args


def prepare_modules(args, out: Path) -> dict:
    """Phase 1: the module images and COCO files, OUT/elpv/<split>/."""
    cells, images = E.load_elpv()
    usable = E.usable_cells(cells)
    splits = E.split_cells(usable, seed=args.seed, val=args.val_share, test=args.test_share)
    stats = {"cells": len(cells), "undecided_left_out": sum(c.undecided for c in cells),
             "reserved_left_out": sum(E.is_reserved(c.number) for c in cells), "usable": len(usable)}
    for split, of_split in splits.items():
        modules = E.plan_modules(of_split, split, seed=args.seed * 3 + ("train", "val", "test").index(split),
                                 clean_share=args.clean_share, repeats=args.train_repeats if split == "train" else 1)
        if args.max_modules:
            clean = [m for m in modules if m.clean][: max(1, args.max_modules // 3)]
            modules = clean + [m for m in modules if not m.clean][: args.max_modules - len(clean)]
        assert not any(E.is_reserved(c.number) for m in modules for c in m.cells), "a cell reserved for acceptance"
        stats[split] = E.write_coco(out / "elpv" / split, modules, images, args.cell_px, args.gap)
        stats[split]["split_cells"] = len(of_split)
    if not stats["test"]["clean_modules"]:
        raise SystemExit("error: no test module is clean, so the defect question's empty answers go unmeasured; "
                         "raise --clean-share or --test-share")
    return stats


def convert(args, out: Path) -> Path:
    """Phase 2: instructions per split, the probe questions, and OUT/elpv.yaml."""
    for split in ("train", "val", "test"):
        promptdet("data", "convert", "--from", "coco", out / "elpv" / split / "instances.json",
                  "--out", out / "pairs" / split, "--vocab", args.vocab, "--seed", args.seed,
                  "--split", "test" if split == "test" else "train", "--overwrite")
    promptdet("data", "instruct", out / "pairs" / "train", "--vocab", args.vocab, "--seed", args.seed,
              "--per-image", args.per_image)
    probes = E.probe_records(out / "pairs" / "test" / "labels.jsonl", args.defect_prompt, args.all_prompt)
    (out / "pairs" / "test" / "probes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in probes))
    data = out / "elpv.yaml"
    data.write_text("# ELPV modules from benchmarks/finetune_elpv.py (CC BY-NC-SA 4.0 data).\n"
                    "name: elpv\nroot: pairs\n"
                    "train:\n  - {path: train, format: jsonl}\nval:\n  - {path: val, format: jsonl}\n"
                    "test:\n  - {path: test, format: jsonl}\n")
    return data


def synthetic(args, out: Path) -> Path | None:
    """The synthetic base data: rendered into OUT/synthetic for --replay auto (and for its test split)."""
    need_train = not args.no_replay and args.replay == "auto"
    if args.replay != "auto":
        from promptdet.config import ConfigError
        from promptdet.data.sources import resolve_dataset

        try:
            cfg = resolve_dataset(args.replay)
        except ConfigError as e:
            raise SystemExit(f"error: --replay: {e}") from None
        for split in ("train", "test"):
            for src in getattr(cfg, split):
                if not cfg.source_path(src).exists():
                    raise SystemExit(f"error: --replay {args.replay}: its {split} data {cfg.source_path(src)} is missing; "
                                     f"make it with its regenerate commands, or use --replay auto")
        return Path(args.replay)
    if not need_train and args.skip_synthetic:
        return None
    root = out / "synthetic"
    if need_train and not (root / "train" / "scenes.jsonl").is_file():
        promptdet("data", "synth", "--out", root / "train", "--num", args.replay_scenes, "--seed", 0,
                  "--split", "train", "--workers", 1)
    if not args.skip_synthetic and not (root / "test" / "scenes.jsonl").is_file():
        promptdet("data", "synth", "--out", root / "test", "--num", args.synthetic_test, "--seed", 2,
                  "--split", "test", "--workers", 1)
    yaml = out / "synthetic.yaml"
    yaml.write_text("# Synthetic inspection-line scenes rendered by benchmarks/finetune_elpv.py.\n"
                    "name: inspection\nroot: synthetic\n"
                    + ("train:\n  - {path: train, format: synth}\n" if need_train else "")
                    + ("test:\n  - {path: test, format: synth}\nval:\n  - {path: test, format: synth}\n"
                       if not args.skip_synthetic else ""))
    return yaml


def score(model, name: str, data: Path, split: str, out: Path, args) -> dict:
    """What ``promptdet val --data DATA --split SPLIT`` prints, in this process (the model is loaded
    once for every split; the order-invariance check of ``val`` is left out); saved as
    OUT/eval/NAME/metrics.json."""
    from promptdet.data.sources import load_eval_split
    from promptdet.train.evaluate import evaluate_queries, format_table, save_metrics
    from promptdet.train.validate import predict_pairs

    src = load_eval_split(data, split)
    results = predict_pairs(model.detector.to(args.device), model.encoder, src.pairs, src.images_root,
                            model.cfg.imgsz, device=args.device)
    metrics = evaluate_queries(results, conf=args.conf)
    save_metrics(metrics, out / "eval" / name / "metrics.json")
    log(f"{name} ({len(src.pairs)} instructions; as promptdet val --data {data} --split {split}):\n"
        + format_table(metrics))
    return metrics


def figures(metrics: dict) -> dict:
    """AP50 per type (Acc@0.5 for single-target types), and the all row."""
    rows = {}
    for t, row in metrics["types"].items():
        if t == "absent":  # no box to find: the share of absent questions answered with a box
            rows["absent (FP rate)"] = row.get("empty_fp_rate")
        else:
            rows[t] = row["acc50"] if row.get("acc50") is not None else row.get("AP50")
    rows["all"] = metrics["all"].get("AP50")
    return rows


def probe_figures(metrics: dict) -> dict:
    d, a = metrics["types"].get("defect_question", {}), metrics["types"].get("all_cells", {})
    return {"defect_AP50": d.get("AP50"), "all_cells_AP50": a.get("AP50"),
            "clean_modules_with_a_box": d.get("empty_fp_rate")}


def evaluate_model(tag: str, weights: Path | None, args, out: Path, data: Path, synth: Path | None) -> dict:
    import promptdet as pd

    model = pd.load(weights)  # a run folder: the checkpoint a user gets must open with promptdet.load
    res = {"types": figures(score(model, f"{tag}_elpv_test", data, "test", out, args)),
           "probes": probe_figures(score(model, f"{tag}_probes", out / "pairs" / "test" / "probes.jsonl", "val", out, args))}
    if synth is not None and not args.skip_synthetic:
        res["synthetic_test"] = figures(score(model, f"{tag}_synthetic_test", synth, "test", out, args))
    return res


def finetune(tag: str, args, out: Path, data: Path, replay: Path | None) -> tuple[Path, float]:
    run = out / "runs" / tag
    cmd = ["train", "--weights", args.weights, "--data", data, "--out", run, "--imgsz", args.imgsz,
           "--batch", args.batch, "--lr", args.lr, "--warmup-epochs", args.warmup_epochs,
           "--prompts-per-image", args.prompts_per_image, "--seed", args.seed, "--device", args.device]
    cmd += ["--max-steps", args.max_steps, "--epochs", 1000] if args.max_steps else ["--time", args.time]
    if args.train_only:
        cmd += ["--train-only", args.train_only]
    if args.freeze_bn:
        cmd += ["--freeze-bn"]
    if args.empty_weight:
        cmd += ["--empty-weight", args.empty_weight]
    if replay is not None:
        cmd += ["--replay", replay, "--replay-ratio", args.replay_ratio]
        if args.distill:
            cmd += ["--distill", args.distill]
    wall = promptdet(*cmd)
    log(f"fine-tune {tag}: {wall:.1f}s")
    return run, wall


FOREIGN_PROMPTS = ("cracked dogs", "find the bicycles", "the red cars", "all the apples", "broken umbrellas",
                   "people on the street")


def calibrate_and_abstain(run: Path, args, out: Path, data: Path) -> dict:
    """Fit image and prompt familiarity for the fine-tuned checkpoint on the ELPV data, then ask
    the test modules: how many are called unfamiliar, how many ELPV questions unknown, how many
    foreign ones known. The calibrated checkpoint is RUN/calibrated.safetensors."""
    import promptdet as pd
    from promptdet.data.sources import load_eval_split

    calibrated = run / "calibrated"
    promptdet("calibrate", "--data", data, "--weights", run, "--vocab", args.vocab, "--imgsz", args.imgsz,
              "--images", 300, "--device", args.device, "--out", calibrated)
    model = pd.load(calibrated.with_suffix(".safetensors"))
    test = load_eval_split(data, "test")
    by_image: dict[str, list[str]] = {}
    for p in test.pairs:
        by_image.setdefault(p.image, []).append(p.instruction)
    unfamiliar = known_unknown = asked = foreign_known = 0
    for image, texts in sorted(by_image.items()):
        texts = list(dict.fromkeys(texts))[:40]
        res = model.detect(str(Path(test.images_root) / image), texts + list(FOREIGN_PROMPTS), imgsz=args.imgsz,
                           device=args.device)
        unfamiliar += bool(res.unfamiliar)
        unknown = set(res.unknown_prompts)
        known_unknown += sum(i in unknown for i in range(len(texts)))
        asked += len(texts)
        foreign_known += sum(len(texts) + j not in unknown for j in range(len(FOREIGN_PROMPTS)))
    n = max(1, len(by_image))
    figures = {"checkpoint": str(calibrated.with_suffix(".safetensors")), "test_modules": len(by_image),
               "modules_called_unfamiliar": unfamiliar / n, "elpv_questions_called_unknown": known_unknown / max(1, asked),
               "foreign_questions_called_known": foreign_known / (n * len(FOREIGN_PROMPTS))}
    log("abstention after calibrate: " + json.dumps(figures))
    return figures


def anchor(args, out: Path, hours: float) -> dict:
    import elpv_anchor as A

    from promptdet.train.evaluate import evaluate_queries

    data = A.write_yolo_dataset({s: out / "elpv" / s for s in ("train", "val")}, out / "yolo")
    log(f"YOLO26n from scratch for {hours * 3600:.0f}s (promptdet's fine-tune wall time)")
    weights, wall = A.train_yolo26n(data, out / "yolo", hours, args.imgsz, args.batch, args.seed, args.device)
    probes = [json.loads(x) for x in (out / "pairs" / "test" / "probes.jsonl").read_text().splitlines() if x.strip()]
    results = A.probe_results(weights, probes, out / "pairs" / "test", args.imgsz, args.device)
    log(f"YOLO26n trained in {wall:.1f}s and scored")
    return {"wall_s": wall, "weights": str(weights),
            "probes": probe_figures(evaluate_queries(results, conf=args.conf))}


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def report(summary: dict) -> str:
    cols = [k for k in ("before", "after_replay", "after_no_replay") if k in summary["models"]]
    lines = ["ELPV test modules: AP50 per instruction type (Acc@0.5 for single-target types; absent: FP rate)",
             "type".ljust(22) + "".join(c.rjust(17) for c in cols)]
    types = list(dict.fromkeys(t for c in cols for t in summary["models"][c]["types"]))
    lines += [t.ljust(22) + "".join(_f(summary["models"][c]["types"].get(t)).rjust(17) for c in cols) for t in types]
    lines += ["", "questions".ljust(22) + "".join(c.rjust(17) for c in cols + (["yolo26n"] if "anchor" in summary else []))]
    for key in ("defect_AP50", "all_cells_AP50", "clean_modules_with_a_box"):
        vals = [summary["models"][c]["probes"][key] for c in cols]
        if "anchor" in summary:
            vals.append(summary["anchor"]["probes"][key])
        lines.append(key.ljust(22) + "".join(_f(v).rjust(17) for v in vals))
    if "abstention" in summary:
        a = summary["abstention"]
        lines += ["", f"after promptdet calibrate: test modules called unfamiliar {a['modules_called_unfamiliar']:.1%}, "
                      f"ELPV questions called unknown {a['elpv_questions_called_unknown']:.1%}, "
                      f"foreign questions called known {a['foreign_questions_called_known']:.1%}"]
    if any("synthetic_test" in summary["models"][c] for c in cols):
        lines += ["", "synthetic test (all)".ljust(22) + "".join(
            _f(summary["models"][c].get("synthetic_test", {}).get("all")).rjust(17) for c in cols)]
    return "\n".join(lines)


def acceptance(args, out: Path) -> int:
    """--acceptance WEIGHTS: the same figures on modules made only of the reserved cells, in
    OUT/acceptance.json. The modules, their instructions (test wordings) and the two questions go
    under OUT/elpv/acceptance and OUT/pairs/acceptance."""
    if not args.acceptance.exists():
        raise SystemExit(f"error: --acceptance {args.acceptance}: no such checkpoint or run folder")
    cells, images = E.load_elpv()
    modules = E.plan_modules(E.acceptance_cells(cells), "acceptance", seed=args.seed, clean_share=args.clean_share,
                             reserved=True)
    if args.max_modules:
        modules = modules[: args.max_modules]
    stats = E.write_coco(out / "elpv" / "acceptance", modules, images, args.cell_px, args.gap, reserved=True)
    log(f"acceptance modules: {json.dumps(stats)}")
    pairs = out / "pairs" / "acceptance"
    promptdet("data", "convert", "--from", "coco", out / "elpv" / "acceptance" / "instances.json", "--out", pairs,
              "--vocab", args.vocab, "--seed", args.seed, "--split", "test", "--overwrite")
    probes = E.probe_records(pairs / "labels.jsonl", args.defect_prompt, args.all_prompt)
    (pairs / "probes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in probes))
    import promptdet as pd

    model = pd.load(args.acceptance)
    res = {"weights": str(args.acceptance), "modules": stats,
           "types": figures(score(model, "acceptance_types", pairs / "instructions.jsonl", "val", out, args)),
           "probes": probe_figures(score(model, "acceptance_probes", pairs / "probes.jsonl", "val", out, args))}
    (out / "acceptance.json").write_text(json.dumps(res, indent=2) + "\n")
    print("\n".join(f"{k.ljust(26)}{_f(v)}" for k, v in {**res["probes"], **res["types"]}.items()))
    log(f"acceptance figures: {out / 'acceptance.json'}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.acceptance is not None:
        return acceptance(args, out)
    summary: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "models": {}, "phases_s": {}}

    def phase(name, fn, *a):
        log(f"--- {name}")
        t0 = time.perf_counter()
        r = fn(*a)
        summary["phases_s"][name] = round(time.perf_counter() - t0, 1)
        log(f"--- {name} done in {summary['phases_s'][name]:.1f}s")
        return r

    summary["data"] = phase("modules", prepare_modules, args, out)
    log(f"modules: {json.dumps(summary['data'])}")
    synth = phase("synthetic", synthetic, args, out)
    data = phase("convert", convert, args, out)
    summary["models"]["before"] = phase("score the starting model", evaluate_model, "before", args.weights, args, out,
                                        data, synth)
    runs = [("no_replay", None)] if args.no_replay else [("replay", synth)]
    if not args.no_replay and not args.skip_no_replay:
        runs.append(("no_replay", None))
    walls = {}
    for tag, replay in runs:
        run, walls[tag] = phase(f"fine-tune {tag}", finetune, tag, args, out, data, replay)
        summary["models"][f"after_{tag}"] = phase(f"score {tag}", evaluate_model, tag, run, args, out, data, synth)
        summary["models"][f"after_{tag}"].update(run=str(run), train_wall_s=round(walls[tag], 1))
    first_run = Path(summary["models"][f"after_{runs[0][0]}"]["run"])
    summary["abstention"] = phase("calibrate", calibrate_and_abstain, first_run, args, out, data)
    if not args.no_anchor:
        summary["anchor"] = phase("anchor", anchor, args, out, walls[runs[0][0]] / 3600)
    text = report(summary)
    print(text)
    summary["total_s"] = round(time.perf_counter() - T0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"summary: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
