"""Run by tests/test_distributed.py under two CPU processes (gloo); not a test itself.

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 \
        tests/distributed_worker.py OUT_DIR

Writes, from process 0, ``OUT_DIR/result.pt`` with: the loss and the DDP-averaged parameter gradients of one
step on a global batch split unevenly over the processes (the whole loss on every process, and each process's
share of every term), and the weights after a few ``fit`` steps, plain and with gradient caching
(``--cache-chunk-size 2``: each process embeds its 4 rows in two chunks).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from hsrl.distributed import all_reduce_detached, gather_with_grad, rank, world_size
from hsrl.losses import HypersphereLoss
from hsrl.training import TrainConfig, training_session

sys.path.insert(0, str(Path(__file__).parent))
from distributed_cases import EVERY_TERM, OBJECTIVE, TinyEncoder, fit_config, fit_tiny, global_batch


def _local_views(accelerator: Accelerator) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, slice]:
    """A freshly seeded TinyEncoder and this process's rows of the global batch, embedded: (model, zx, zy, rows).

    The split is uneven (10 + 6 rows) to exercise the padding inside the gather."""
    torch.manual_seed(0)
    model = accelerator.prepare(TinyEncoder())
    x, y = global_batch()
    rows = slice(0, 10) if rank() == 0 else slice(10, 16)
    return model, model(x[rows]), model(y[rows]), rows


def _grads(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in accelerator.unwrap_model(model).named_parameters()}


def one_step(accelerator: Accelerator) -> dict[str, object]:
    """The whole loss on every process, on the gathered batch."""
    model, zx, zy, _ = _local_views(accelerator)
    loss = HypersphereLoss(OBJECTIVE)(gather_with_grad(zx), gather_with_grad(zy))
    accelerator.backward(loss)
    return {"loss": loss.detach(), "grads": _grads(accelerator, model)}


def share_step(accelerator: Accelerator) -> dict[str, object]:
    """The same step with each process computing only its rows' share of every term (what ``fit`` does)."""
    model, zx, zy, rows = _local_views(accelerator)
    shares = HypersphereLoss(EVERY_TERM).share_terms(
        gather_with_grad(zx), gather_with_grad(zy), rows=rows, reduce=all_reduce_detached, processes=world_size()
    )
    accelerator.backward(shares["loss"] * world_size())
    terms = {name: all_reduce_detached(value.detach()) for name, value in shares.items()}
    return {"share_terms": terms, "share_grads": _grads(accelerator, model)}


def main(out: Path) -> None:
    config: TrainConfig = fit_config(out / "run", per_process_batch=4)
    with training_session(config) as accelerator:
        assert world_size() == 2, f"expected 2 processes, got {world_size()}"
        step = {**one_step(accelerator), **share_step(accelerator)}
        result = fit_tiny(config, accelerator)
        cached_config = fit_config(out / "cached", per_process_batch=4)
        cached_config.cache_chunk_size = 2
        cached = fit_tiny(cached_config, accelerator)
        if accelerator.is_main_process:
            weights = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
            cached_weights = {k: v.detach().clone() for k, v in cached.model.state_dict().items()}
            torch.save(
                {
                    **step,
                    "weights": weights,
                    "cached_weights": cached_weights,
                    "cached_losses": [h["train/loss"] for h in cached.history if "train/loss" in h],
                    "losses": [h["train/loss"] for h in result.history if "train/loss" in h],
                    "steps": result.steps,
                    "distributed_type": str(accelerator.distributed_type),
                },
                out / "result.pt",
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
