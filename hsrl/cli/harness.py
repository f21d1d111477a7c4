"""The one-line-error harness every ``hsrl`` command runs in.

A mistake a user can make (a bad flag, a missing file, an unusable model) ends in ONE line on stderr,
``hsrl <command>: error: <what went wrong>``, and exit status 2 — never argparse's usage block or a traceback.
Commands build a :class:`OneLineArgumentParser`, raise :class:`UsageError` (or ``ValueError``/``OSError``) for
what the user got wrong, and hand both to :func:`run_cli`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from hsrl.errors import first_line

__all__ = ["OneLineArgumentParser", "UsageError", "first_line", "run_cli"]

#: What a command's handler may raise for a user's mistake (FileNotFoundError is an OSError).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError)


class UsageError(Exception):
    """A command-line mistake: printed as one line, exit status 2."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose errors raise :class:`UsageError` (one line) instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message}")


def run_cli(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    handler: Callable[[argparse.Namespace], int | None],
    errors: tuple[type[BaseException], ...] = USER_ERRORS,
) -> int:
    """Parse ``argv`` and call ``handler(args)``; user errors become one line on stderr and status 2."""
    try:
        args = parser.parse_args(list(argv))
        return int(handler(args) or 0)
    except SystemExit as done:  # --help
        return int(done.code or 0)
    except UsageError as error:
        message = str(error)  # a sub-command's parser already names itself ("hsrl index build: error: ...")
        print(message if ": error: " in message else f"{parser.prog}: error: {message}", file=sys.stderr)
    except errors as error:
        print(f"{parser.prog}: error: {first_line(error)}", file=sys.stderr)
    return 2
