"""One-line error messages: what every user-facing error of hsrl is reduced to (CLI line, HTTP body)."""

from __future__ import annotations

__all__ = ["first_line"]


def first_line(error: BaseException) -> str:
    """The first non-blank line of ``error``'s message (FAISS, pyarrow and the Hub raise multi-line reports)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
