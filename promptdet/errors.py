"""Errors a user can cause and fix. The CLI prints their message as one line, never a traceback."""


class PromptdetError(Exception):
    """A failure with a message that says what went wrong and how to fix it (exit code 1)."""

    exit_code = 1


class UsageError(PromptdetError):
    """A wrong argument or option (exit code 2)."""

    exit_code = 2
