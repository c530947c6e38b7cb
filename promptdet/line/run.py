"""``promptdet inspect``: build the model, source, sinks and endpoint a recipe names, and run the loop.

SIGINT and SIGTERM stop taking new parts; every part already judged is written to every sink
(queues drained, files flushed) before the process exits.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from pathlib import Path

from promptdet.errors import UsageError
from promptdet.line.health import check_no_loss, lost_records, sink_health
from promptdet.line.pipeline import Inspector, LineStats, rebase_file_sinks, run_line, stderr_line
from promptdet.line.recipe import LineRecipe
from promptdet.line.sinks import build_sinks
from promptdet.line.sources import Backoff, FolderSource, OpenCvSource, SoftwareTrigger, trigger_frames


def build_predictor(recipe: LineRecipe):
    """The recipe's model as a predictor over its checks' prompts (torch or ONNX backend)."""
    from promptdet.runtime.onnx import OnnxModel, is_export_dir

    m = recipe.model
    exported = m.weights is not None and is_export_dir(m.weights)
    backend = ("onnx" if exported else "torch") if m.backend == "auto" else m.backend
    if backend == "onnx":
        if not exported:
            found = "is not an export folder" if m.weights and Path(m.weights).exists() else "does not exist"
            raise UsageError(f"{recipe.file}: model.weights {m.weights} {found}, and model.backend onnx needs "
                             f"one (make it with: promptdet export --out {m.weights or 'DIR'} --dynamic)")
        if m.detector is not None and not (Path(m.weights) / m.detector).is_file():
            raise UsageError(f"{recipe.file}: model.detector {m.detector} is not in {m.weights} (an int8 graph comes "
                             f"from: promptdet export --out {m.weights} --dynamic --int8 --calib FRAMES)")
        return recipe_predictor(OnnxModel(m.weights, providers=m.provider, detector_file=m.detector).predictor, recipe)
    if m.detector is not None:
        raise UsageError(f"{recipe.file}: model.detector {m.detector} needs model.weights to be an ONNX export folder")
    if exported:
        raise UsageError(f"{recipe.file}: model.weights {m.weights} is an ONNX export folder; set model.backend onnx")
    import promptdet
    from promptdet.predict import Predictor

    return recipe_predictor(functools.partial(Predictor, promptdet.load(m.weights)), recipe)


def recipe_predictor(make, recipe: LineRecipe):
    """``make(prompts, conf=, imgsz=)`` (``OnnxModel.predictor``, or ``Predictor`` bound to a model)
    over the recipe's prompts at its size, or at each of its sizes with the boxes merged
    (``MultiScalePredictor``). The conf is the lowest any check uses: each check applies its own after."""
    from promptdet.runtime.multiscale import MultiScalePredictor

    conf = min([recipe.model.conf, *[c.conf for c in recipe.checks if c.conf is not None]])
    predictors = [make(recipe.prompts, conf=conf, imgsz=size) for size in recipe.model.sizes]
    return predictors[0] if len(predictors) == 1 else MultiScalePredictor(predictors)


def open_source(recipe: LineRecipe, stop: threading.Event, software: SoftwareTrigger | None):
    """(frames iterator with the trigger mode applied, the source object)."""
    spec = recipe.source
    backoff = Backoff(spec.reconnect.initial_s, spec.reconnect.max_s)
    kind = spec.kind
    if str(spec.uri).startswith("genicam://"):  # also when --source overrides the uri of another kind
        kind = "genicam"
    elif kind == "auto":
        kind = "folder" if Path(str(spec.uri)).is_dir() else "opencv"
    on_event = lambda event: stderr_line(f"source: {event['event']} {event.get('reason', '')}".rstrip())
    if kind == "folder":
        source = FolderSource(spec.uri, watch=spec.trigger != "every-frame", on_event=on_event)
    elif kind == "genicam":
        from promptdet.line.genicam import GenICamSource  # harvesters only when a recipe names a GenICam camera

        source = GenICamSource(spec.uri, backoff, on_event=on_event)
    else:
        source = OpenCvSource(spec.uri, backoff, on_event=on_event)
    frames = trigger_frames(source.frames(), spec.trigger, source.stats, stop, software)
    return frames, source


def inspect_line(recipe: LineRecipe, source: str | None = None, out_dir: str | Path | None = None,
                 quiet: bool = False, max_parts: int | None = None, on_record=None) -> LineStats:
    """Run the line until the source ends, a signal arrives, or ``max_parts`` parts were judged."""
    import dataclasses

    if source is not None:
        recipe = dataclasses.replace(recipe, source=dataclasses.replace(recipe.source, uri=source))
    if out_dir is not None:
        recipe = rebase_file_sinks(recipe, out_dir)
    say = (lambda line: None) if quiet else stderr_line
    predictor = build_predictor(recipe)
    inspector = Inspector(recipe, predictor)
    warm_ms = inspector.warm_up()  # before the source opens, so no frame waits on it
    sized = getattr(predictor, "predictors", [predictor])  # a MultiScalePredictor's sizes share one model
    say(f"model: {getattr(sized[0], 'backend', '?')} backend"
        + (f" on {sized[0].model.provider}" if hasattr(sized[0], "model") else "")
        + f" at imgsz {' + '.join(str(p.imgsz) for p in sized)}; {len(recipe.checks)} checks; "
        f"deadline {recipe.deadline_ms:g} ms; warmed up in {warm_ms:.0f} ms")
    stop = threading.Event()
    software = SoftwareTrigger(frame_timeout_s=recipe.deadline_ms / 1e3) if recipe.source.trigger == "software" else None
    frames, src = open_source(recipe, stop, software)
    sinks = build_sinks(recipe.sinks)
    for sink in sinks:
        sink.start()
    stats = LineStats(source=src.stats, sinks=sinks)

    def request_stop(signum=None, _frame=None) -> None:
        if not stop.is_set():
            say(f"stopping ({signal.Signals(signum).name if signum else 'requested'}): draining the sinks")
        stop.set()
        src.stop()
        if software is not None:
            software.close()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, request_stop)
    server = None
    if recipe.stats.port:
        from promptdet.line.server import serve

        server = serve(recipe.stats.port, lambda: {"ok": not stop.is_set() and not lost_records(sinks),
                                                   "parts": stats.parts, "fps": round(stats.fps(), 3),
                                                   **sink_health(sinks)},
                       lambda: stats.prometheus(sinks), software.trigger if software else None,
                       token=recipe.stats.token)
        say(f"http: /health and /metrics on 127.0.0.1:{recipe.stats.port}")
    if software is not None and not isinstance(src, FolderSource):  # the kind found, not the recipe's 'auto'
        software.listen_stdin(sys.stdin, close_on_eof=server is None)  # EOF never ends an HTTP-triggered line

    counted = [0]

    def record_hook(record: dict) -> None:
        counted[0] += 1
        if on_record is not None:
            on_record(record)
        if max_parts is not None and counted[0] >= max_parts:
            request_stop()

    try:
        run_line(frames, inspector, sinks, stop, stats, say, recipe.stats.interval_s, record_hook)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.shutdown()
    say(stats.line())
    for sink in sinks:
        c = sink.counts
        if c["spooled"] or c["errors"] or c["dropped"]:
            say(f"sink {sink.name}: {c['written']} written, {c['spooled']} spooled for replay, {c['dropped']} dropped, "
                f"{c['errors']} errors" + (f" (last: {sink.last_error})" if sink.last_error else ""))
    check_no_loss(sinks)
    return stats
