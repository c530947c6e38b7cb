"""`promptdet inspect`: run an inspection line from a recipe, and `inspect report` on its results."""

from __future__ import annotations

from pathlib import Path

import typer

from promptdet.cli._common import user_errors

app = typer.Typer(help="Run an inspection line: camera -> model -> verdict -> PLC, MQTT or a log.",
                  invoke_without_command=True)


@app.callback()
def inspect(
    ctx: typer.Context,
    config: Path = typer.Option(None, "--config", help="Line recipe YAML (see configs/line.example.yaml)."),
    source: str = typer.Option(None, "--source", help="Override the recipe's source (video, camera index, URL, folder)."),
    out: Path = typer.Option(None, "--out", help="Where the file sinks (JSONL, SQLite, images, spool) write."),
    max_parts: int = typer.Option(None, "--max-parts", min=1, help="Stop after this many parts."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No status and stats lines on stderr."),
) -> None:
    """Judge every part a source delivers with the recipe's checks; write one record per part.

    Verdicts: PASS, FAIL (a rule fired, or the deadline was missed: reason timeout) or ERROR.
    SIGINT/SIGTERM stop after the current part and flush every sink. Exit 0 when the run ends.
    """
    if ctx.invoked_subcommand is not None:
        return
    with user_errors():
        from promptdet.errors import UsageError

        if config is None:
            raise UsageError("--config is required (a line recipe YAML, e.g. configs/line.example.yaml)")
        from promptdet.line.recipe import load_recipe
        from promptdet.line.run import inspect_line

        inspect_line(load_recipe(config), source=source, out_dir=out, quiet=quiet, max_parts=max_parts)


@app.command()
def report(db: Path = typer.Argument(..., help="The SQLite results file of a line run."),
           run: str = typer.Option(None, "--run", help="Only this run id (records' run_id), or 'latest'.")) -> None:
    """Summarise a line's results: pass rate, failures per check, reasons, latency percentiles."""
    with user_errors():
        from promptdet.line.report import format_summary, summarise

        typer.echo(format_summary(summarise(db, run=run)))
