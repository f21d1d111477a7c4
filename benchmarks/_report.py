"""What every benchmark does with its Markdown table: print it, and write it to its results file.

The benchmarks run as scripts (``python benchmarks/NAME.py``), so this module is imported by its bare name.
"""

from __future__ import annotations

import os
from pathlib import Path


def publish(lines: list[str], output: str | os.PathLike[str] | None) -> str:
    """Print ``lines`` as one text and, when ``output`` is given, write it there; returns the text.

    Written to a temporary file beside ``output`` and renamed over it, so an interrupted benchmark never
    leaves half a table in ``benchmarks/results/``.
    """
    text = "\n".join(lines) + "\n"
    print(text)
    if output is not None:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        with open(temporary, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    return text
