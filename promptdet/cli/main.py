"""The `promptdet` command. Commands are thin: they parse options and call the packages."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from promptdet import __version__
from promptdet.cli import data
from promptdet.cli import inspect as inspect_cli
from promptdet.cli._common import user_errors

app = typer.Typer(
    name="promptdet",
    help="Instruction-tuned promptable object detection: say what to find, get boxes or a clear empty answer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data")
app.add_typer(inspect_cli.app, name="inspect")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"promptdet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


@app.command()
def checks() -> None:
    """Print versions, onnxruntime providers, the text encoder found, and torch threads."""
    from promptdet.checks import collect_checks

    for name, value in collect_checks():
        typer.echo(f"{name:<22} {value}")


@app.command()
def detect(
    sources: list[str] = typer.Argument(None, help="Images, folders, globs, videos or camera indices (0, 1, ...)."),
    prompt: list[str] = typer.Option(None, "--prompt", "-p", help="What to find; repeat it, or split with ';'."),
    prompts_file: Path = typer.Option(None, "--prompts-file", help="A text file with one prompt a line."),
    weights: str = typer.Option(None, "--weights", help="Checkpoint, run folder or ONNX export folder "
                                                        "(default: the bundled model)."),
    conf: float = typer.Option(0.25, "--conf", min=0.0, max=1.0, help="Score threshold, the same for every prompt."),
    iou: float = typer.Option(0.6, "--iou", min=0.0, max=1.0, help="NMS IoU threshold within a prompt."),
    max_det: int = typer.Option(300, "--max-det", min=1, help="Most boxes per prompt per image."),
    imgsz: int = typer.Option(None, "--imgsz", help="Inference size, a multiple of 32 (default: the training size)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    backend: str = typer.Option("auto", "--backend", help="torch, onnx, or auto (onnx when --weights is an "
                                                          "export folder)."),
    out: Path = typer.Option(None, "--out", help="Folder for results (default: results go to stdout)."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl, json, csv, coco or yolo (yolo needs --out)."),
    save: bool = typer.Option(False, "--save", help="Write annotated images into --out."),
    save_crops: bool = typer.Option(False, "--save-crops", help="Write each box's pixels into --out/crops/."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary and no progress bar on stderr."),
    fail_on_detect: bool = typer.Option(False, "--fail-on-detect", help="Exit with code 3 when anything is found."),
    abstain: bool = typer.Option(True, "--abstain/--no-abstain",
                                 help="Withhold the boxes of images unlike the training images and of prompts naming "
                                      "something never trained (default). --no-abstain keeps them, still flagged."),
) -> None:
    """Find what the prompts describe in images, videos or a camera.

    Results (promptdet.detections/2, see the README) go to stdout, or into --out.

    Progress, errors and the summary go to stderr.

    Exit codes: 0 done, 1 nothing could be read, 2 usage error, 3 found something with --fail-on-detect.
    """
    import contextlib
    import warnings

    def say(line: str) -> None:
        typer.echo(line, err=True)

    with user_errors(), warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda message, *args, **kwargs: say(f"warning: {message}")
        from promptdet.errors import UsageError
        from promptdet.predict import ResultWriter, check_output, collect_prompts, expand_sources
        from promptdet.runtime.onnx import is_export_dir
        from promptdet.text.prompts import shorten

        prompts = collect_prompts(prompt, prompts_file)
        if backend not in ("auto", "torch", "onnx"):
            raise UsageError(f"--backend {backend!r}: expected auto, torch or onnx")
        exported = weights is not None and is_export_dir(weights)
        if backend == "auto":
            backend = "onnx" if exported else "torch"
        if backend == "onnx" and not exported:
            raise UsageError(f"--backend onnx needs --weights EXPORT_DIR (a folder with promptdet.json), got "
                             f"{weights or 'none'}; make one with: promptdet export --out DIR")
        if backend == "torch" and exported:
            raise UsageError(f"--weights {weights} is an ONNX export folder; use --backend onnx (or auto)")
        if not sources:
            raise UsageError("no SOURCE given; name images, folders, globs, videos or a camera index")
        found, skipped, errors = expand_sources(sources)
        if save and out is not None and any(s.kind == "image" and Path(s.value).resolve().parent == out.resolve()
                                            for s in found):
            raise UsageError(f"--out {out} holds input images, which --save could overwrite; pick another folder")
        check_output(fmt, out, save, save_crops)
        for line in errors:
            say(f"error: {line}")
        if not found:
            raise typer.Exit(1)

        from promptdet.predict import run_sources

        if backend == "onnx":
            from promptdet.runtime.onnx import OnnxModel

            providers = None if device == "auto" else device.split(":")[0]
            onnx_model = OnnxModel(weights, providers=providers)
            if not quiet:
                say(f"onnxruntime provider: {onnx_model.provider}")
            predictor = onnx_model.predictor(prompts, conf=conf, iou=iou, max_det=max_det, imgsz=imgsz,
                                             abstain=abstain)
        else:
            import promptdet
            from promptdet.predict import Predictor

            predictor = Predictor(promptdet.load(weights), prompts, conf=conf, iou=iou, max_det=max_det,
                                  imgsz=imgsz, device=device, abstain=abstain)
        writer = ResultWriter(fmt, predictor.prompts, out, sys.stdout, save, save_crops)
        progress = not quiet and sys.stderr.isatty() and (len(found) > 1 or found[0].kind != "image")
        summary = run_sources(predictor, found, writer, lambda line: say(f"error: {line}"), skipped, progress)
    summary.failed += len(errors)
    if not quiet:
        per = ", ".join(f"{shorten(p, 24)!r} {n}" for p, n in zip(predictor.prompts, summary.per_prompt))
        extra = [f"{summary.failed} failed"] if summary.failed else []
        extra += [f"{summary.skipped} non-image files skipped"] if summary.skipped else []
        ms = summary.seconds * 1e3 / max(summary.processed, 1)
        say(f"{summary.processed} image{'' if summary.processed == 1 else 's'}"
            f"{' (' + ', '.join(extra) + ')' if extra else ''}: "
            f"{summary.detections} detections ({per}) in {summary.seconds:.1f} s, {ms:.0f} ms per image"
            + (f"; results in {out}" if out is not None else ""))
    if not quiet:
        for line in summary.abstain_lines(predictor.prompts, abstain):
            say(line)
    if summary.stdout_closed:  # keep Python's exit-time flush from complaining about the closed pipe
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if summary.interrupted:
        say("interrupted")
        raise typer.Exit(130)
    if summary.processed == 0:
        raise typer.Exit(1)
    if fail_on_detect and summary.detections:
        raise typer.Exit(3)


def parse_type_weights(text: str) -> dict[str, int]:
    """'defect=2,attribute=2' -> {"defect": 2, "attribute": 2}; a bad name or weight is a usage error."""
    from promptdet.data.synth.instruct import weighted_types

    weights: dict = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, value = (part.strip() for part in item.partition("="))
        weights[name] = int(value) if value.isdigit() else value  # a non-number is refused just below
    try:
        weighted_types(weights)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--type-weights") from None
    return weights


@app.command()
def train(
    data_path: str = typer.Option(..., "--data", help="Dataset YAML, instruction JSONL, or the folder holding it."),
    model: str = typer.Option(None, "--model", help="Model scale (n, s, m) or a model YAML such as configs/promptdet-n.yaml "
                              "(default: n, or the architecture of --weights)."),
    weights: str = typer.Option(None, "--weights", help="Start from this promptdet checkpoint (fine-tuning). With --model, "
                                "the tensors that fit the new architecture are taken and the rest start fresh."),
    backbone_weights: str = typer.Option(None, "--backbone-weights",
                                         help="Start the backbone and neck from a YOLO26 state_dict (.safetensors or .pt of tensors)."),
    epochs: int = typer.Option(50, "--epochs", min=1, help="Training epochs."),
    time_hours: float = typer.Option(0.0, "--time", min=0.0,
                                     help="Train for about this many hours: the cosine LR follows the share of the time "
                                          "spent, and the run stops (mid-epoch if need be) when it is spent. "
                                          "Overrides --epochs; 0 = off."),
    max_steps: int = typer.Option(0, "--max-steps", min=0,
                                  help="Stop after this many optimizer steps; the LR schedule ends there (0 = off)."),
    imgsz: int = typer.Option(640, "--imgsz", min=64, help="Training image size (a multiple of 32)."),
    batch: int = typer.Option(16, "--batch", min=1, help="Images per step (per process under torchrun)."),
    prompts_per_image: int = typer.Option(6, "--prompts-per-image", min=1, help="Instructions per image per step."),
    absent_rate: float = typer.Option(0.2, "--absent-rate", min=0.0, max=1.0,
                                      help="Share of instructions drawn with an empty answer (synthetic data)."),
    absent_mix: str = typer.Option("default", "--absent-mix",
                                   help="default; hard: more absent colours and defects of parts that are present; defect: mostly absent defects; confusable: mostly a defect that no part has, named on a part with another defect."),
    type_weights: str = typer.Option("", "--type-weights",
                                     help="Ask some instruction types more often (synthetic data), e.g. 'defect=2,attribute=2'."),
    native_crop: float = typer.Option(0.0, "--native-crop", min=0.0, max=1.0,
                                      help="Share of synthetic images seen as an imgsz x imgsz window at their own "
                                           "resolution (no object cut), so small details train at a fraction of the "
                                           "cost. Pair it with --val-imgsz, the size the model will run at."),
    foreign_absent: float = typer.Option(0.0, "--foreign-absent", min=0.0, max=1.0,
                                         help="Share of the empty-answer instructions that name a thing from outside "
                                              "the line ('find the dogs'), so unknown names get an empty answer "
                                              "(synthetic data)."),
    distractors: float = typer.Option(0.0, "--distractors", min=0.0, max=1.0,
                                      help="Share of training images swapped for a procedural texture with every "
                                           "answer empty, so the answer depends on the picture."),
    empty_weight: float = typer.Option(0.0, "--empty-weight", min=0.0,
                                       help="Weight of a loss on the best box of each instruction whose answer is "
                                            "empty, so absent things get no box. 0 = off."),
    defect_probe: float = typer.Option(0.0, "--defect-probe", min=0.0,
                                       help="Weight of a training-only loss that reads each part's defect kind from "
                                            "its region embedding (synthetic scenes), so defect kinds stay apart. 0 = off."),
    train_only: str = typer.Option("", "--train-only",
                                   help="Train only these top-level modules (comma-separated, e.g. 'verifier' after "
                                        "adding the crop verifier with --model); the rest stays frozen."),
    verify_top_k: int = typer.Option(0, "--verify-top-k", min=0,
                                     help="Candidates per prompt that the crop verifier rescores. 0 = the model's own, "
                                          "raised when a training image holds more objects than that."),
    freeze_bn: bool = typer.Option(False, "--freeze-bn",
                                   help="Keep the BatchNorm statistics of the starting model (fine-tuning on images "
                                        "unlike its base set, so that what it knew stays)."),
    val_imgsz: int = typer.Option(0, "--val-imgsz", min=0,
                                  help="Validation size, saved as the model's default size (0 = --imgsz)."),
    lr: float = typer.Option(2e-3, "--lr", min=0.0, help="Peak AdamW learning rate (warmup, then cosine)."),
    prompt_lr_mult: float = typer.Option(1.0, "--prompt-lr-mult", min=0.0,
                                         help="LR multiplier for the prompt side (text projection, similarity, reasoner)."),
    warmup_epochs: float = typer.Option(1.0, "--warmup-epochs", min=0.0,
                                        help="Epochs of linear LR warmup (a short fine-tune wants a fraction of one)."),
    out: Path = typer.Option(Path("runs/train"), "--out", help="Run folder: checkpoints, results.csv, plots."),
    resume: bool = typer.Option(False, "--resume", help="Resume from the run folder's last checkpoint."),
    replay: str = typer.Option(None, "--replay", help="Base data to mix in while fine-tuning, so earlier skills stay."),
    replay_ratio: float = typer.Option(0.3, "--replay-ratio", min=0.0, max=0.9, help="Share of samples drawn from --replay."),
    distill: float = typer.Option(0.0, "--distill", min=0.0,
                                  help="Weight of a loss that keeps the --weights model's scores on the --replay "
                                       "images (its answers, not only its labels). 0 = off."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    workers: int = typer.Option(0, "--workers", min=0, help="Data loader processes (0 = in the training process)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    cache: bool = typer.Option(True, "--cache/--no-cache",
                               help="Keep decoded images in RAM. Each loader process holds its own copy, so turn it off "
                                    "for many workers on a large set."),
) -> None:
    """Train a promptable detector on instruction pairs (DDP under torchrun)."""
    weights_by_type = parse_type_weights(type_weights)
    with user_errors():
        import promptdet
        from promptdet.api import PromptDet, resolve_model_config

        if weights:
            m = promptdet.load(weights)
            if model:  # a changed architecture: keep what fits (the trainer reports what did not)
                m = PromptDet(resolve_model_config(model), m.weights, m.source)
        else:
            m = PromptDet(resolve_model_config(model or "n"))
        metrics = m.train(data_path, epochs=epochs, imgsz=imgsz, batch=batch, out=str(out), resume=resume,
                          backbone_weights=backbone_weights, prompts_per_image=prompts_per_image, lr=lr,
                          prompt_lr_mult=prompt_lr_mult,
                          absent_rate=absent_rate, absent_mix=absent_mix, native_crop=native_crop,
                          foreign_absent=foreign_absent, distractors=distractors, max_steps=max_steps,
                          val_imgsz=val_imgsz, defect_probe=defect_probe, empty_weight=empty_weight, type_weights=weights_by_type, replay=replay, replay_ratio=replay_ratio, distill=distill, device=device, workers=workers, seed=seed,
                          time=time_hours, cache_images=cache, warmup_epochs=warmup_epochs,
                          train_only=[n.strip() for n in train_only.split(",") if n.strip()], freeze_bn=freeze_bn,
                          verify_top_k=verify_top_k)
    if metrics:
        from promptdet.train.evaluate import format_table

        typer.echo(format_table(metrics), err=True)
    typer.echo(f"run folder: {out}", err=True)


@app.command()
def val(
    data_path: str = typer.Option(..., "--data", help="Dataset YAML, instruction JSONL, or the folder holding it."),
    weights: str = typer.Option(None, "--weights", help="Checkpoint to evaluate, or its run folder (default: the bundled model)."),
    split: str = typer.Option("val", "--split", help="Which split of the dataset YAML: val or test."),
    imgsz: int = typer.Option(None, "--imgsz", help="Evaluation image size (default: the size it was trained at)."),
    conf: float = typer.Option(0.25, "--conf", min=0.0, max=1.0, help="Threshold for the absent false-positive rate and recall."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    out: Path = typer.Option(Path("runs/val"), "--out", help="Folder for metrics.json (and PR curves with --plots)."),
    plots: bool = typer.Option(False, "--plots", help="Also write PR curves."),
) -> None:
    """Evaluate per instruction type: AP, Acc@0.5 and the absent false-positive rate."""
    with user_errors():
        import promptdet
        from promptdet.train.evaluate import format_table

        metrics = promptdet.load(weights).val(data_path, split=split, imgsz=imgsz, conf=conf, plots=plots,
                                              out=str(out), device=device)
    typer.echo(format_table(metrics))
    typer.echo(f"metrics written to {out / 'metrics.json'}", err=True)


@app.command()
def calibrate(
    data_path: str = typer.Option(..., "--data", help="Dataset YAML the model was trained on (its train and val sources)."),
    weights: str = typer.Option(None, "--weights", help="Checkpoint or run folder (default: the bundled model)."),
    out: Path = typer.Option(..., "--out", help="Where to write the calibrated checkpoint (e.g. runs/mine/calibrated)."),
    imgsz: str = typer.Option("", "--imgsz", help="Sizes the model will run at, e.g. '640,768' (default: its own size)."),
    images: int = typer.Option(600, "--images", min=20, help="Training images to fit the image statistics on."),
    vocab: Path = typer.Option(None, "--vocab", help="Dataset vocabulary (YAML) of imported data: its class "
                                                     "synonyms are swapped for foreign names too."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
) -> None:
    """Fit what the model knows it learned (image and prompt familiarity) and save it with the weights.

    After this, detect withholds boxes for an image unlike the training images and for a prompt
    naming something never trained, and says so (see --no-abstain). promptdet train does not fit
    these statistics (a fine-tuned checkpoint carries those of its start), so run this on each new one.
    """
    with user_errors():
        import dataclasses

        import promptdet
        from promptdet.errors import UsageError
        from promptdet.train.checkpoint import save_checkpoint
        from promptdet.train.familiarity_fit import calibrate as fit

        try:
            sizes = tuple(int(v) for v in imgsz.replace(" ", "").split(",") if v) or None
        except ValueError:
            raise UsageError(f"--imgsz {imgsz!r}: expected sizes such as 640 or 640,768") from None
        user_vocab = None
        if vocab is not None:
            from promptdet.data.user_vocab import load_vocab

            user_vocab = load_vocab(vocab)
        model = promptdet.load(weights)
        sizes = sizes or (model.cfg.imgsz,)
        bad = [s for s in sizes if s < 32 or s % 32]
        if bad:
            raise UsageError(f"--imgsz {bad[0]}: sizes must be multiples of 32 (at least 32)")
        report = fit(model, data_path, sizes, images=images, device=device,
                     log=lambda line: typer.echo(line, err=True), vocab=user_vocab)
        for line in report.lines():
            typer.echo(line, err=True)
        tensors = {f"model.{k}": v for k, v in model.detector.state_dict().items()}
        meta = {"model": dataclasses.asdict(model.cfg), "calibration": {"data": data_path, "sizes": list(sizes),
                                                                         **dataclasses.asdict(report)}}
        typer.echo(str(save_checkpoint(out, tensors, meta)))


@app.command()
def export(
    weights: str = typer.Option(None, "--weights", help="Checkpoint or run folder (default: the bundled model)."),
    out: Path = typer.Option(Path("export"), "--out", help="Output folder."),
    fmt: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    imgsz: int = typer.Option(None, "--imgsz", help="Input size, a multiple of 32 (default: the training size)."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Dynamic batch and image size (prompts are always dynamic)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset, 14 to 21."),
    half: bool = typer.Option(False, "--half", help="fp16 weights (not supported yet: says why and exits 2)."),
    int8: bool = typer.Option(False, "--int8", help="Also write detector_int8.onnx (static int8, needs --calib)."),
    calib: str = typer.Option(None, "--calib", help="Calibration data for --int8: a dataset YAML, JSONL or image folder."),
    bake_prompts: str = typer.Option(None, "--bake-prompts", help="Also write detector_baked.onnx with these "
                                                                   "prompts fixed ('a;b'), for single-input targets."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check parity with torch after export."),
) -> None:
    """Export to ONNX: a text encoder and a detector whose prompts stay changeable.

    Writes text_encoder.onnx, detector.onnx, tokenizer.json and promptdet.json to --out, then
    runs a parity check of onnxruntime against torch. Run the folder with
    promptdet detect --backend onnx --weights DIR, or promptdet.load(DIR).
    """
    with user_errors():
        from promptdet.errors import UsageError

        if fmt != "onnx":
            raise UsageError(f"--format {fmt!r}: only onnx is supported")
        import promptdet
        from promptdet.export.onnx import export_model

        def say(line: str) -> None:
            typer.echo(line, err=True)

        export_model(promptdet.load(weights), out, imgsz=imgsz, dynamic=dynamic, opset=opset, half=half, int8=int8,
                     calib=calib, bake_prompts=bake_prompts, verify=verify, log=say)
        typer.echo(str(out))


def main() -> None:
    """Entry point: a usage error is one line on stderr and exit code 2, not a boxed panel."""
    try:
        code = app(standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            # A bug of ours, not the user's: still one line, the traceback only on request.
            if os.environ.get("PROMPTDET_DEBUG"):
                raise
            typer.echo(f"error: internal error: {type(exc).__name__}: {exc} "
                       "(set PROMPTDET_DEBUG=1 for the traceback, and please report it)", err=True)
            sys.exit(1)
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: show its help, as --help would
            typer.echo(exc.ctx.get_help() if getattr(exc, "ctx", None) else exc.format_message())
            sys.exit(0)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        typer.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
