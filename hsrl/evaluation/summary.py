"""The one ``metrics.json`` writer and key scheme every recipe shares.

A run's ``metrics.json`` is written atomically by :func:`write_metrics` and carries a flat ``summary`` block, printed
at the end of the run by :func:`format_summary`. Its keys:

* ``<metric>``: the trained model: ``knn5`` (the paper's 5-NN), ``knn200_t0.1`` (lightly's k-NN), ``linear``,
  ``recall@10``, ``align``, ``uniform``; ``<set>_<metric>`` on another evaluation set (``factbook_recall@10``);
* ``<baseline>_<metric>``: the same metric of a baseline measured in the same run, one of :data:`BASELINES`
  (``baseline_``: the starting model of a fine-tune; ``random_encoder_`` and ``raw_pixels_``: an untrained
  encoder of the same architecture and the pixels themselves);
* ``steps`` and ``train_seconds``; a text value (``layer``) says which tap the headline numbers come from.

Alignment and uniformity are losses (lower is better); every other metric is a score.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from hsrl.checkpoints import atomic_write_json

__all__ = ["BASELINES", "format_change", "format_summary", "lower_is_better", "write_metrics"]

#: Baselines a summary may carry, as key prefixes, with their column titles.
BASELINES: dict[str, str] = {"baseline": "start", "random_encoder": "random encoder", "raw_pixels": "raw pixels"}
_RUN = ("steps", "train_seconds")


def write_metrics(path: str | os.PathLike[str], metrics: Mapping[str, Any]) -> None:
    """Write ``metrics.json`` atomically (write, fsync, rename): the file downstream tools read."""
    atomic_write_json(path, dict(metrics))


def lower_is_better(key: str) -> bool:
    """Alignment and uniformity are losses (lower is better); every other metric is a score."""
    return key.rsplit("_", 1)[-1] in {"align", "uniform"}


def format_change(start: float, value: float, key: str) -> str:
    """``value - start`` with its ratio (scores) and ✓ when it moved the better way."""
    delta = value - start
    better = delta < 0 if lower_is_better(key) else delta > 0
    mark = " ✓" if better and abs(delta) > 1e-9 else ""
    ratio = f" ({value / start:.2f}×)" if not lower_is_better(key) and start > 0 else ""
    return f"{delta:+.4f}{ratio}{mark}"


def _split(key: str) -> tuple[str | None, str]:
    for baseline in BASELINES:
        if key.startswith(f"{baseline}_"):
            return baseline, key[len(baseline) + 1 :]
    return None, key


def _row(cells: list[str]) -> str:
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as a Markdown table: one row per metric, a column per baseline present, the trained value, and
    its change against the first baseline (✓ = better)."""
    present = [b for b in BASELINES if any(_split(key)[0] == b for key in summary)]
    notes = [f"{key}: {value}" for key, value in summary.items() if isinstance(value, str)]
    head = ["summary", *(BASELINES[b] for b in present), "trained", *(["change"] if present else [])]
    lines = [_row(head), _row(["---"] * len(head))]
    for key, value in summary.items():
        if isinstance(value, str) or key in _RUN or _split(key)[0] is not None:
            continue
        cells = [f"{summary[f'{b}_{key}']:.4f}" if f"{b}_{key}" in summary else "" for b in present]
        first = next((summary[f"{b}_{key}"] for b in present if f"{b}_{key}" in summary), None)
        change = [format_change(first, value, key) if first is not None else ""] if present else []
        lines.append(_row([key, *cells, f"{value:.4f}", *change]))
    if all(key in summary for key in _RUN):
        run = f"{summary['steps']:.0f} / {summary['train_seconds']:.0f} s"
        lines.append(_row(["steps / train seconds", *([""] * len(present)), run, *([""] if present else [])]))
    return "\n".join([*lines, *notes])
