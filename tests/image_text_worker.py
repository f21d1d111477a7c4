"""Run by tests/test_image_text_distributed.py under two CPU processes (gloo); not a test itself.

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 tests/image_text_worker.py OUT_DIR

Writes, from process 0, ``OUT_DIR/result.pt``: the trained weights and logged losses of a few ``fit`` steps of
a two-tower model with every cross-modal term, each process holding half of the global batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from hsrl.distributed import world_size
from hsrl.training import training_session

sys.path.insert(0, str(Path(__file__).parent))
from image_text_cases import fit_config, fit_two_towers, trained_state


def main(out: Path) -> None:
    config = fit_config(out / "run", per_process_batch=4)
    with training_session(config) as accelerator:
        assert world_size() == 2, f"expected 2 processes, got {world_size()}"
        result = fit_two_towers(config, accelerator)
        if accelerator.is_main_process:
            torch.save({"weights": trained_state(result), "steps": result.steps,
                        "losses": [h["train/loss"] for h in result.history if "train/loss" in h],
                        "distributed_type": str(accelerator.distributed_type)}, out / "result.pt")  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]))
