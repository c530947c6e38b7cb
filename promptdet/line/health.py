"""The sinks' side of the line's health: records that could not be written or spooled anywhere.

A record the audit sinks (everything but the FAIL images, which are evidence and may give way)
could neither deliver nor spool is lost. The line counts it, names it in the stats line and in
``/health`` (which then answers 503), and ends the run with a non-zero exit.
"""

from __future__ import annotations

from promptdet.errors import PromptdetError


def _audit(sinks) -> list:
    return [s for s in sinks if s.kind != "images"]


def lost_records(sinks) -> int:
    """Records an audit sink dropped: not delivered and not spooled."""
    return sum(s.counts.get("dropped", 0) for s in _audit(sinks))


def sink_health(sinks) -> dict:
    """For /health: lost and spooled record counts, and each troubled sink's last error."""
    audit = _audit(sinks)
    return {"lost": lost_records(sinks), "spooled": sum(s.counts.get("spooled", 0) for s in audit),
            "sink_errors": {s.name: s.last_error for s in audit if s.last_error}}


def sink_summary(sinks) -> str:
    """'' while every sink is fine; else ' | sinks: lost N, spooled M, errors E (jsonl: ...)' for the stats line."""
    audit = _audit(sinks)
    lost, spooled = lost_records(sinks), sum(s.counts.get("spooled", 0) for s in audit)
    errors = sum(s.counts.get("errors", 0) for s in audit)
    skipped = sum(s.counts.get("skipped", 0) for s in sinks if s.kind == "images")
    if not (lost or spooled or errors or skipped):
        return ""
    last = next((f"{s.name}: {s.last_error}" for s in audit if s.last_error), "")
    return (f" | sinks: lost {lost}, spooled {spooled}, errors {errors}" + (f", images skipped {skipped}" if skipped
                                                                            else "")
            + (f" (last {last[:120]})" if last else ""))


def check_no_loss(sinks) -> None:
    """Raise when any record was lost, so the run exits non-zero."""
    lost = lost_records(sinks)
    if lost:
        names = ", ".join(f"{s.name} {s.counts['dropped']}" for s in _audit(sinks) if s.counts.get("dropped"))
        raise PromptdetError(f"{lost} record(s) could not be written or spooled ({names}); the audit log is "
                             "incomplete. Free space on the output and spool disks, or put sinks.spool_dir on another disk")
