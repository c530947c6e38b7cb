"""What every command shares: one-line errors with the right exit code, and argument parsers."""

from __future__ import annotations

import contextlib
import os
import sys

import typer

from promptdet.data.pairs import DataFormatError
from promptdet.errors import PromptdetError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def fail(message: str, code: int = EXIT_FAILURE) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors():
    """Turn expected failures into one line on stderr and a non-zero exit.

    Set PROMPTDET_DEBUG=1 to see the traceback of an unexpected error.
    """
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except PromptdetError as exc:
        raise fail(str(exc), exc.exit_code) from None
    except (DataFormatError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
            PermissionError, ValueError) as exc:
        raise fail(str(exc)) from None
    except Exception as exc:
        if os.environ.get("PROMPTDET_DEBUG"):
            raise
        raise fail(f"{type(exc).__name__}: {exc} (set PROMPTDET_DEBUG=1 for the traceback)") from None


def parse_size(value: str) -> tuple[int, int]:
    """'640x480' -> (640, 480)."""
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected WIDTHxHEIGHT such as 640x480, got {value!r}") from None
    if w < 160 or h < 120 or w > 8192 or h > 8192:
        raise typer.BadParameter(f"size must be between 160x120 and 8192x8192, got {value!r}")
    return w, h


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()
