"""What `promptdet inspect report results.db` prints: pass rate, failures per check, reasons, latency.

Reads the ``results`` table that ``SqliteSink`` writes, read-only, so it is safe while the line runs.
"""

from __future__ import annotations

import collections
import json
import sqlite3
from pathlib import Path

import numpy as np

from promptdet.errors import PromptdetError

PERCENTILES = (50, 95, 99)


def summarise(sqlite_path: str | Path, since_ts: float | None = None, run: str | None = None) -> dict:
    """Counts and latency over the parts in ``sqlite_path`` (from ``since_ts`` on, if given; of one
    run if ``run`` is a run id or 'latest'). Also "runs": how many runs the file holds.

    Returns {"parts", "pass", "fail", "error", "pass_rate" (0-1, None for no parts),
    "failures_per_check" {name: parts where that check failed}, "reasons" {reason: parts},
    "latency_ms" {"p50", "p95", "p99", "mean", "max"} (None when no latency was recorded),
    "first_ts", "last_ts"}. Percentiles are numpy's linear interpolation.
    """
    path = Path(sqlite_path)
    if not path.is_file():
        raise PromptdetError(f"results database not found: {path} (sinks.sqlite.path in the line recipe)")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            where, args = ("WHERE ts >= ?", (since_ts,)) if since_ts is not None else ("", ())
            columns = {row[1] for row in db.execute("PRAGMA table_info(results)")}
            runs = db.execute("SELECT COUNT(DISTINCT run_id) FROM results").fetchone()[0] if "run_id" in columns else 0
            if run is not None:
                if run == "latest" and "run_id" in columns:
                    run = (db.execute("SELECT run_id FROM results ORDER BY ts DESC LIMIT 1").fetchone() or [None])[0]
                where = (where + " AND " if where else "WHERE ") + "run_id IS ?"
                args = (*args, run)
            rows = db.execute(f"SELECT ts, verdict, reasons, checks, latency_ms FROM results {where} ORDER BY ts",
                              args).fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise PromptdetError(f"{path}: not a promptdet results database ({exc})") from None

    verdicts = collections.Counter(r[1] for r in rows)
    failures: collections.Counter = collections.Counter()
    reasons: collections.Counter = collections.Counter()
    for _, _, reasons_json, checks_json, _ in rows:
        reasons.update(set(json.loads(reasons_json)))
        for name, check in json.loads(checks_json).items():
            if not check.get("passed", True):
                failures[name] += 1
    latencies = np.asarray([r[4] for r in rows if r[4] is not None], np.float64)
    latency = None
    if len(latencies):
        latency = {f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(latencies, PERCENTILES))}
        latency.update(mean=float(latencies.mean()), max=float(latencies.max()))
    n = len(rows)
    return {"parts": n, "pass": verdicts.get("PASS", 0), "fail": verdicts.get("FAIL", 0),
            "error": verdicts.get("ERROR", 0), "pass_rate": verdicts.get("PASS", 0) / n if n else None,
            "failures_per_check": dict(failures.most_common()), "reasons": dict(reasons.most_common()),
            "latency_ms": latency, **({"runs": runs} if runs else {}), "first_ts": rows[0][0] if rows else None, "last_ts": rows[-1][0] if rows else None}


def format_summary(summary: dict) -> str:
    """A plain-text table of ``summarise``'s result, for a terminal."""
    n = summary["parts"]
    lines = [f"{'parts':<24}{n:>10}"]
    if summary.get("runs", 0) > 1:
        lines.append(f"{'runs in the file':<24}{summary['runs']:>10}  (--run latest for the last one)")
    if not n:
        return lines[0] + "\n(no results yet)"
    lines.append(f"{'pass rate':<24}{summary['pass_rate'] * 100:>9.2f}%")
    for key in ("pass", "fail", "error"):
        lines.append(f"{key.upper():<24}{summary[key]:>10}")
    if summary["failures_per_check"]:
        lines += ["", "failures per check"]
        lines += [f"  {name:<22}{count:>10}" for name, count in summary["failures_per_check"].items()]
    if summary["reasons"]:
        lines += ["", "reasons"]
        lines += [f"  {reason[:60]:<22}{count:>10}" if len(reason) <= 22 else f"  {reason[:60]}  {count}"
                  for reason, count in summary["reasons"].items()]
    if summary["latency_ms"]:
        lines += ["", "latency (ms)"]
        lines += [f"  {key:<22}{value:>10.1f}" for key, value in summary["latency_ms"].items()]
    return "\n".join(lines)
