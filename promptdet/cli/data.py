"""`promptdet data ...`: make, convert and look at instruction-tuning data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from promptdet.cli._common import parse_size, user_errors

app = typer.Typer(help="Make, convert and preview instruction-tuning data.", no_args_is_help=True)

def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise typer.BadParameter(f"must be 'train' or 'test', got {split!r}")
    return split


# Options several data commands share, declared once so their names, defaults and help agree.
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same output.")]
SplitOpt = Annotated[str, typer.Option("--split", callback=_check_split,
                                       help="Template split: 'train' and 'test' use disjoint wordings.")]
PerImageOpt = Annotated[int, typer.Option("--per-image", min=1, help="Instructions per image.")]
AbsentRateOpt = Annotated[float, typer.Option("--absent-rate", min=0.0, max=0.95,
                                              help="Share of instructions whose target is absent (empty boxes).")]
SceneOutOpt = Annotated[Path, typer.Option("--out", help="Output folder for images/, scenes.jsonl, instructions.jsonl.")]
DefectWeightsOpt = Annotated[str, typer.Option("--defect-weights",
                                               help="Relative weights of defect kinds, e.g. 'missing_cap=4,crack=2' "
                                                    "(1 for a kind not named), to balance rare kinds.")]
VideoDefectRateOpt = Annotated[float, typer.Option("--defect-rate", help="Probability that a part is defective, 0 to 1.")]
InstructOpt = Annotated[bool, typer.Option("--instruct/--no-instruct", help="Also write instructions.jsonl.")]


def _echo_instructions(report, out: Path) -> None:
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(report.pairs_per_type.items()))
    typer.echo(f"wrote {report.num_pairs} instructions ({kinds}) to {out / 'instructions.jsonl'}", err=True)


@app.command()
def synth(
    out: SceneOutOpt,
    num: int = typer.Option(..., "--num", min=1, help="Number of scenes to render."),
    seed: SeedOpt = 0,
    size: str = typer.Option("640x480", "--size", callback=lambda v: parse_size(v), help="Image size WIDTHxHEIGHT."),
    workers: int = typer.Option(0, "--workers", min=0, help="Render processes; 0 = one per CPU core."),
    instruct: InstructOpt = True,
    split: SplitOpt = "train",
    per_image: PerImageOpt = 6,
    absent_rate: AbsentRateOpt = 0.2,
    defect_rate: float = typer.Option(None, "--defect-rate", min=0.0, max=1.0,
                                      help="Share of damaged parts (default 0.25; screws and bolts never are)."),
    defect_weights: DefectWeightsOpt = None,
) -> None:
    """Render synthetic conveyor-belt scenes with exact boxes, and instructions for them."""
    from promptdet.data.synth.generate import synthesize
    from promptdet.data.synth.render import DefectMix

    try:
        mix = DefectMix.parse(defect_rate, defect_weights)  # both None: the default draw
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--defect-rate/--defect-weights") from None
    with user_errors():
        t0 = time.perf_counter()
        report = synthesize(out, num, seed=seed, size_wh=size, workers=workers, instruct=instruct,
                            split=split, per_image=per_image, absent_rate=absent_rate, defect_mix=mix)
        dt = time.perf_counter() - t0
    typer.echo(f"wrote {report.num_images} images with {report.num_objects} parts to {out} in {dt:.1f} s", err=True)
    if instruct:
        _echo_instructions(report, out)


@app.command("synth-video")
def synth_video(
    out: Path = typer.Option(..., "--out", help="Output video, .mp4 (or .avi); the ground truth goes to "
                                                "<name>.gt.jsonl beside it."),
    seconds: float = typer.Option(20.0, "--seconds", help="Length of the video in seconds."),
    fps: float = typer.Option(10.0, "--fps", help="Frames per second."),
    size: str = typer.Option("640x480", "--size", help="Frame size WIDTHxHEIGHT (both even)."),
    seed: SeedOpt = 0,
    defect_rate: VideoDefectRateOpt = 0.25,
    speed: float = typer.Option(None, "--speed", help="Belt speed in pixels per second "
                                                      "(default: a quarter of the frame width)."),
    categories: str = typer.Option(None, "--categories", help="Comma-separated part kinds, e.g. bottle,can "
                                                              "(default: all)."),
    defect_weights: DefectWeightsOpt = None,
) -> None:
    """Render a conveyor-line video (parts enter, pass and leave; some defective) with per-frame ground truth."""
    from promptdet.data.synth.render import DefectMix
    from promptdet.data.synth.video import check_args, render_conveyor
    from promptdet.errors import UsageError

    with user_errors():
        # Checked here, not by typer callbacks, so a bad argument is one line with exit code 2.
        try:
            size_wh = parse_size(size)
        except typer.BadParameter as exc:
            raise UsageError(f"--size: {exc.message}") from None
        cats = [c.strip() for c in categories.split(",") if c.strip()] if categories is not None else None
        try:
            check_args(out, seconds, fps, size_wh, defect_rate, speed, cats)
            DefectMix.parse(None, defect_weights)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        t0 = time.perf_counter()
        report = render_conveyor(out, seconds=seconds, fps=fps, size_wh=size_wh, seed=seed,
                                 defect_rate=defect_rate, speed_px_per_s=speed, categories=cats,
                                 defect_weights=defect_weights)
        dt = time.perf_counter() - t0
    typer.echo(f"{report.summary()} in {dt:.1f} s", err=True)


@app.command("synth-frames")
def synth_frames(
    out: SceneOutOpt,
    videos: int = typer.Option(20, "--videos", min=1, help="Conveyor videos to render (seeds SEED, SEED+1, ...)."),
    seconds: float = typer.Option(40.0, "--seconds", min=0.1, help="Length of each video in seconds."),
    every: int = typer.Option(4, "--every", min=1, help="Keep every N-th frame (if every part in it is fully in view)."),
    seed: SeedOpt = 100,
    size: str = typer.Option("640x480", "--size", callback=lambda v: parse_size(v), help="Frame size WIDTHxHEIGHT (both even)."),
    instruct: InstructOpt = True,
    split: SplitOpt = "train",
    per_image: PerImageOpt = 6,
    absent_rate: AbsentRateOpt = 0.2,
    defect_rate: VideoDefectRateOpt = 0.25,
    defect_weights: DefectWeightsOpt = None,
) -> None:
    """Render conveyor videos and keep frames as training scenes, so the model learns the line camera's look."""
    from promptdet.data.synth.video import render_frame_scenes
    from promptdet.errors import UsageError

    with user_errors():
        t0 = time.perf_counter()
        try:  # its ValueErrors are bad arguments (checked before anything is written), not failures
            report = render_frame_scenes(out, videos=videos, seconds=seconds, seed=seed, every=every, size_wh=size,
                                         instruct=instruct, split=split, per_image=per_image, absent_rate=absent_rate,
                                         defect_rate=defect_rate, defect_weights=defect_weights)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        dt = time.perf_counter() - t0
    typer.echo(f"wrote {report.num_images} frames with {report.num_objects} parts from {videos} videos "
               f"to {out} in {dt:.1f} s", err=True)
    if instruct:
        _echo_instructions(report, out)


VocabOpt = Annotated[Path, typer.Option("--vocab", help="Dataset vocabulary YAML: class synonyms, and each "
                                                        "attribute's kind (defect, color, type). See README.")]


def _is_synthetic(path: Path) -> bool:
    return (path / "scenes.jsonl").is_file() if path.is_dir() else path.name == "scenes.jsonl"


def _is_imported(path: Path, asked: bool) -> bool:
    """Imported labels (labels.jsonl, from data convert) rather than synthetic scenes; ``asked``: the
    user gave --vocab or --types, so a path that holds neither is reported as missing labels."""
    if _is_synthetic(path):
        return False
    if path.is_dir():
        return asked or (path / "labels.jsonl").is_file()
    return asked or path.name == "labels.jsonl"


@app.command()
def instruct(
    scenes: Path = typer.Argument(..., help="A scenes.jsonl or labels.jsonl, or the folder that holds it "
                                            "(a synthetic folder, or one written by data convert)."),
    out: Path = typer.Option(None, "--out", help="Output JSONL (default: instructions.jsonl beside the scenes)."),
    seed: SeedOpt = 0,
    split: SplitOpt = "train",
    per_image: PerImageOpt = 6,
    absent_rate: AbsentRateOpt = 0.2,
    vocab: VocabOpt = None,
    types: str = typer.Option(None, "--types", help="Imported data: instruction types with optional weights, "
                                                    "e.g. 'category,defect=2,negation' (default: every type "
                                                    "the labels support)."),
) -> None:
    """Write instruction pairs for existing scenes, or for imported labels with a vocabulary."""
    from promptdet.data.synth.generate import read_scenes, write_instructions
    from promptdet.errors import UsageError

    with user_errors():
        root = scenes if scenes.is_dir() else scenes.parent
        target = out or root / "instructions.jsonl"
        if _is_imported(scenes, vocab is not None or types is not None):
            from promptdet.data.user_instruct import (
                parse_types,
                read_labels,
                write_user_instructions,
            )
            from promptdet.data.user_vocab import EMPTY, load_vocab

            weights = parse_types(types)
            labels = read_labels(scenes)
            counts = write_user_instructions(labels, load_vocab(vocab) if vocab else EMPTY, target, seed=seed,
                                             split=split, per_image=per_image, absent_rate=absent_rate,
                                             types=weights, path=str(root / "labels.jsonl"))
        else:
            for flag, value in (("--vocab", vocab), ("--types", types)):
                if value is not None:
                    raise UsageError(f"{flag} is for imported data (a folder with labels.jsonl from data convert); "
                                     f"{scenes} holds synthetic scenes")
            records = read_scenes(scenes)
            counts = write_instructions(records, target, seed=seed, split=split, per_image=per_image,
                                        absent_rate=absent_rate)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    typer.echo(f"wrote {sum(counts.values())} instructions ({kinds}) to {target}", err=True)


@app.command()
def convert(
    src: Path = typer.Argument(..., help="The source: a COCO JSON, a YOLO folder, a RefCOCO folder or an ODVG JSONL."),
    fmt: str = typer.Option(..., "--from", help="Source format: coco, yolo, refcoco or odvg."),
    out: Path = typer.Option(..., "--out", help="Output folder for instructions.jsonl."),
    images_root: Path = typer.Option(None, "--images", help="Folder the source's image paths are relative to "
                                     "(default: found from the source's layout)."),
    subset: str = typer.Option(None, "--subset", help="The source's own split to read: refcoco train/val/testA/testB, "
                               "or a key of a YOLO data.yaml (default: all)."),
    label_map: Path = typer.Option(None, "--label-map", help="ODVG only: a JSON file mapping label ids to names."),
    seed: SeedOpt = 0,
    split: SplitOpt = "train",
    absent_rate: AbsentRateOpt = 0.2,
    copy_images: bool = typer.Option(False, "--copy-images", help="Copy images into OUT/images/ instead of referring to them."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT/instructions.jsonl."),
    vocab: VocabOpt = None,
) -> None:
    """Convert COCO, YOLO, RefCOCO or ODVG annotations into instruction pairs.

    COCO and YOLO also write OUT/labels.jsonl (boxes, classes, attributes). With --vocab the
    instructions are of every type the labels support, not only category and absent.
    """
    from promptdet.data.formats import IMPORTERS

    if fmt not in IMPORTERS:
        raise typer.BadParameter(f"unknown format {fmt!r}; choose one of: {', '.join(sorted(IMPORTERS))}",
                                 param_hint="--from")
    options = {"label_map": label_map} if label_map is not None else {}
    if options and fmt != "odvg":
        raise typer.BadParameter("only the odvg format takes a label map", param_hint="--label-map")
    from promptdet.data.convert import convert as run_convert

    with user_errors():
        if vocab is not None:
            from promptdet.data.user_vocab import load_vocab

            options["vocab"] = load_vocab(vocab)  # read before anything is imported or written
        report = run_convert(fmt, src, out, seed=seed, split=subset, templates=split, absent_rate=absent_rate,
                             copy_images=copy_images, images_root=images_root, overwrite=overwrite, **options)
    typer.echo(report.summary(), err=True)


@app.command()
def preview(
    data: Path = typer.Argument(..., help="A synthetic data folder (with scenes.jsonl)."),
    out: Path = typer.Option(Path("preview.png"), "--out", help="Output PNG."),
    num: int = typer.Option(16, "--num", min=1, max=64, help="Scenes on the sheet."),
    columns: int = typer.Option(4, "--columns", min=1, help="Scenes per row."),
    tile_width: int = typer.Option(480, "--tile-width", min=64, help="Width of each scene on the sheet, in pixels."),
) -> None:
    """Draw a contact sheet of scenes with their boxes and labels."""
    from promptdet.data.preview import contact_sheet

    with user_errors():
        n = contact_sheet(data, out, num=num, columns=columns, tile_width=tile_width)
    typer.echo(f"wrote a contact sheet of {n} scenes to {out}", err=True)
