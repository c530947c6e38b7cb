"""The inspection loop: frame -> model -> checks -> verdict -> sinks, with one record per part.

The loop itself never blocks on a sink (each has its own queue, retries and spool) and never dies
on one part: a failed inference gives that part an ERROR record and the line goes on. A stop
request (SIGINT/SIGTERM, or ``stop()``) ends the loop after the current part; ``run`` then
stops the source and drains and flushes every sink before it returns.
"""

from __future__ import annotations

import dataclasses
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from promptdet.errors import UsageError
from promptdet.line.health import sink_summary
from promptdet.line.recipe import LineRecipe
from promptdet.line.rules import decide, evaluate_check
from promptdet.line.sinks import ImageSink, Sink
from promptdet.line.sources import Frame, SourceStats
from promptdet.runtime.preprocess import PAD_VALUE
from promptdet.text.prompts import shorten

STAGES = ("decode", "preprocess", "infer", "post", "sinks")


@dataclass
class LineStats:
    """Counters and recent per-stage latencies (ms), for the stderr line and /metrics."""

    started: float = field(default_factory=time.monotonic)
    parts: int = 0
    verdicts: dict = field(default_factory=lambda: {"PASS": 0, "FAIL": 0, "ERROR": 0})
    timeouts: int = 0
    latency: dict = field(default_factory=lambda: {s: deque(maxlen=2000) for s in (*STAGES, "total")})
    source: SourceStats | None = None
    sinks: list = field(default_factory=list)  # for their trouble (lost, spooled) in the stats line

    def add(self, verdict: str, timeout: bool, stage_ms: dict[str, float]) -> None:
        self.parts += 1
        self.verdicts[verdict] = self.verdicts.get(verdict, 0) + 1
        self.timeouts += int(timeout)
        for name, ms in stage_ms.items():
            if name in self.latency:
                self.latency[name].append(ms)

    def percentiles(self, stage: str) -> tuple[float, float, float]:
        values = np.asarray(self.latency[stage], dtype=np.float64)
        if values.size == 0:
            return (float("nan"),) * 3
        return tuple(float(v) for v in np.percentile(values, [50, 95, 99]))

    def fps(self) -> float:
        return self.parts / max(time.monotonic() - self.started, 1e-9)

    def line(self) -> str:
        src = self.source or SourceStats()
        p = {s: self.percentiles(s) for s in (*STAGES, "total")}
        stages = " ".join(f"{s} " + "/".join(f"{v:.1f}" if np.isfinite(v) else "-" for v in p[s])
                          for s in (*STAGES, "total"))  # "-" until a part has been judged
        v = self.verdicts
        return (f"{self.parts} parts {self.fps():.1f} fps | PASS {v['PASS']} FAIL {v['FAIL']} ERROR {v['ERROR']} "
                f"(timeouts {self.timeouts}) | dropped {src.dropped} reconnects {src.reconnects} "
                f"downtime {src.downtime_s:.1f}s | ms p50/p95/p99: {stages}{sink_summary(self.sinks)}")

    def prometheus(self, sinks: list[Sink]) -> str:
        src = self.source or SourceStats()
        lines = ["# TYPE promptdet_parts_total counter", f"promptdet_parts_total {self.parts}",
                 "# TYPE promptdet_verdicts_total counter"]
        lines += [f'promptdet_verdicts_total{{verdict="{k}"}} {n}' for k, n in self.verdicts.items()]
        lines += ["# TYPE promptdet_timeouts_total counter", f"promptdet_timeouts_total {self.timeouts}",
                  "# TYPE promptdet_frames_dropped_total counter", f"promptdet_frames_dropped_total {src.dropped}",
                  "# TYPE promptdet_reconnects_total counter", f"promptdet_reconnects_total {src.reconnects}",
                  "# TYPE promptdet_downtime_seconds_total counter", f"promptdet_downtime_seconds_total {src.downtime_s:.3f}",
                  "# TYPE promptdet_fps gauge", f"promptdet_fps {self.fps():.3f}",
                  "# TYPE promptdet_latency_ms summary"]
        for stage in (*STAGES, "total"):
            for q, v in zip((0.5, 0.95, 0.99), self.percentiles(stage)):
                if np.isfinite(v):
                    lines.append(f'promptdet_latency_ms{{stage="{stage}",quantile="{q}"}} {v:.3f}')
        lines.append("# TYPE promptdet_sink_records_total counter")
        for sink in sinks:
            for what, n in sink.counts.items():
                lines.append(f'promptdet_sink_records_total{{sink="{sink.name}",what="{what}"}} {n}')
        return "\n".join(lines) + "\n"


def rebase_file_sinks(recipe: LineRecipe, out_dir: str | Path) -> LineRecipe:
    """``--out DIR``: the file sinks (JSONL, SQLite, images, spool) write under DIR, keeping their names."""
    out = Path(out_dir)
    s = recipe.sinks
    sinks = dataclasses.replace(
        s,
        jsonl=dataclasses.replace(s.jsonl, path=str(out / Path(s.jsonl.path).name)) if s.jsonl else None,
        sqlite=dataclasses.replace(s.sqlite, path=str(out / Path(s.sqlite.path).name)) if s.sqlite else None,
        images=dataclasses.replace(s.images, dir=str(out / Path(s.images.dir).name)) if s.images else None,
        spool_dir=str(out / Path(s.spool_dir).name))
    return dataclasses.replace(recipe, sinks=sinks)


class Inspector:
    """Judges one frame: the predictor runs every check's prompt at once, then each rule is applied.

    ``predictor`` is a ``BasePredictor`` built on ``recipe.prompts`` (prompt i = check i) with a
    conf no higher than any check's, so each check can apply its own threshold afterwards.
    """

    def __init__(self, recipe: LineRecipe, predictor, run_id: str | None = None):
        self.recipe, self.predictor = recipe, predictor
        # In every record, and in generated part ids: a restarted video counts frames from 0 again,
        # and its parts must not be mistaken for the earlier run's.
        self.run_id = run_id or f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"
        if list(predictor.prompts) != recipe.prompts:
            raise ValueError("the predictor's prompts must be the recipe's checks' prompts, in order")

    def __call__(self, frame: Frame) -> tuple[dict, dict[str, float]]:
        """-> (record, stage ms). The clock starts at capture, so queueing counts against the deadline."""
        r = self.recipe
        try:
            if frame.error is not None:
                raise TimeoutError(frame.error)
            det = self.predictor(frame.image, frame.name, frame.index, read_ms=frame.read_ms, keep_image=False)
            results = []
            for i, check in enumerate(r.checks):
                mine = det.prompt_ids == i
                conf = check.conf if check.conf is not None else r.model.conf
                results.append(evaluate_check(check.name, check.rule, det.boxes_xyxy[mine], det.scores[mine],
                                              check.roi, conf, check.roi_mode))
            elapsed = (time.time() - frame.t_capture) * 1e3
            verdict = decide(results, r.deadline_ms, elapsed, part_id=self.part_id(frame), unfamiliar=det.unfamiliar)
            familiarity = det.familiarity
            stage = {"decode": det.timing_ms.get("read", 0.0), "preprocess": det.timing_ms.get("preprocess", 0.0),
                     "infer": det.timing_ms.get("infer", 0.0) + det.timing_ms.get("text", 0.0),
                     "post": det.timing_ms.get("post", 0.0)}
        except Exception as exc:  # noqa: BLE001 - one bad part must not stop the line
            elapsed = (time.time() - frame.t_capture) * 1e3
            verdict = decide([], r.deadline_ms, elapsed, part_id=self.part_id(frame),
                             error=f"{type(exc).__name__}: {exc}")
            stage, familiarity = {}, None
        record = verdict.to_record()
        record.update(frame=frame.index, source=frame.name, run_id=self.run_id,
                      familiarity=None if familiarity is None else round(familiarity, 5))
        return record, stage

    def warm_up(self, runs: int = 2, size_wh: tuple[int, int] = (640, 480)) -> float:
        """Run the model on a blank frame ``runs`` times before the first part; returns the ms taken.

        A session's first calls allocate buffers and pick kernels (several hundred ms on a CPU, more
        on a GPU), which would put the first real part past its deadline: a fail-safe FAIL for a part
        that was fine. The input is letterboxed to a square, so any frame size warms the real shapes.
        A model that cannot judge a blank frame cannot judge a part: that stops the line at start-up.
        """
        blank = np.full((size_wh[1], size_wh[0], 3), PAD_VALUE, np.uint8)
        t0 = time.perf_counter()
        for _ in range(runs):
            try:
                det = self.predictor(blank, "warm-up", None, keep_image=False)
            except Exception as exc:
                raise UsageError(f"the model failed its warm-up run: {type(exc).__name__}: {exc}") from exc
        if det.unknown_prompts:
            # A check the model cannot understand would PASS every part: refuse it before the first one.
            i = det.unknown_prompts[0]
            raise UsageError(f"check {self.recipe.checks[i].name!r}: the model does not know what "
                             f"{shorten(self.recipe.prompts[i], 60)!r} means (prompt familiarity "
                             f"{float(det.prompt_familiarity[i]):.2f} < 0.5); reword it in the words of the "
                             "model's training, or fine-tune the model on your own labelled images")
        return (time.perf_counter() - t0) * 1e3

    def part_id(self, frame: Frame) -> str:
        return frame.part_id if frame.part_id is not None else f"frame-{frame.index:07d}-{self.run_id}"


def run_line(frames: Iterator[Frame], inspector: Inspector, sinks: list[Sink], stop: threading.Event,
             stats: LineStats, on_stats: Callable[[str], None] | None = None, stats_interval_s: float = 10.0,
             on_record: Callable[[dict], None] | None = None, sink_timeout_s: float = 30.0) -> LineStats:
    """Judge every frame until the source ends or ``stop`` is set, then drain the sinks.

    Each judged frame is put to every sink exactly once, before the next frame is taken, so a stop
    at any moment leaves no judged part without its record.
    """
    image_sinks = [s for s in sinks if isinstance(s, ImageSink)]
    record_sinks = [s for s in sinks if not isinstance(s, ImageSink)]
    last_stats = time.monotonic()
    try:
        for frame in frames:
            record, stage = inspector(frame)
            t0 = time.perf_counter()
            for sink in record_sinks:
                sink.put(record)
            for sink in image_sinks:
                sink.put(record, frame.image)
            stage["sinks"] = (time.perf_counter() - t0) * 1e3
            stage["total"] = (time.time() - frame.t_capture) * 1e3
            stats.add(record["verdict"], "timeout" in record["reasons"], stage)
            if on_record is not None:
                on_record(record)
            if on_stats is not None and time.monotonic() - last_stats >= stats_interval_s:
                on_stats(stats.line())
                last_stats = time.monotonic()
            if stop.is_set():
                break
    finally:
        for sink in sinks:
            sink.close(sink_timeout_s)
    return stats


def stderr_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
