"""A recipe's configuration as flat values, for trackers (TensorBoard hparams) and JSON.

The configuration itself is a dataclass (``hsrl.training.TrainConfig`` and its subclasses); the command line
that fills it is :func:`hsrl.cli.config.parse_config`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["config_to_dict"]


def config_to_dict(config: Any) -> dict[str, Any]:
    """Flat ``{field: value}`` of scalars, for trackers (TensorBoard hparams) and JSON."""
    flat: dict[str, Any] = {}
    for key, value in dataclasses.asdict(config).items():
        if isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        flat[key] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat
