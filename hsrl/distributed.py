"""Small distributed helpers that all still work with no process group.

The one that matters is :func:`gather_with_grad`. ``Accelerator.gather`` (and a
plain ``torch.distributed.all_gather``) returns tensors detached from the graph, so a
loss on the gathered batch would send no gradient back to the other processes'
rows. Uniformity and in-batch contrastive negatives need the *global* batch with
gradients to match the paper's single-process training.

Gradient bookkeeping: each process computes its *share* of the loss on the gathered batch
(``HypersphereLoss.share_terms``: its own rows against every row, so the pairwise work is
divided by the number of processes ``W``); the shares add up to the loss, and so do their
gradients. The backward of the gather sums the incoming gradients over processes
(``all_reduce``) and keeps this process's slice, which gives each process the gradient of the
whole loss for its rows; the training loop back-propagates ``W`` times the share because
data-parallel training then *averages* parameter gradients over the ``W`` processes. The
factor and the average cancel, so the parameter gradients equal those of one process on the
whole batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_reduce_detached",
    "destroy_process_group",
    "gather_with_grad",
    "is_distributed",
    "rank",
    "row_offset",
    "world_size",
]


def is_distributed() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; all_reduce of the gradient and this rank's slice backward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        sizes = _gather_sizes(x)
        ctx.sizes = sizes
        ctx.rank = dist.get_rank()
        width = max(sizes)
        padded = x.contiguous()
        if x.shape[0] != width:  # all_gather needs equal shapes: pad, then trim.
            padded = torch.cat([padded, padded.new_zeros((width - x.shape[0], *x.shape[1:]))])
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]]


def _gather_sizes(x: Tensor) -> list[int]:
    local = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, local)
    return [int(s) for s in sizes]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` (``(n_r, ...)`` on process ``r``) from all processes, in rank order.

    Differentiable: the gradient reaching each slice is summed over processes. Rows per
    process may differ (the last batch of an epoch). With no process group, or a group
    of one, ``x`` is returned unchanged.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def row_offset(x: Tensor) -> int:
    """Where this process's rows ``x`` start in the batch :func:`gather_with_grad` gathers (rank order)."""
    if not is_distributed():
        return 0
    return sum(_gather_sizes(x)[: dist.get_rank()])


def all_reduce_detached(value: Tensor, op: str = "sum") -> Tensor:
    """``value`` (no gradient) summed (``op="sum"``) or maximised (``"max"``) over the processes; with no process
    group, ``value`` itself. The loss shares use it for their common shift and normaliser."""
    if not is_distributed():
        return value
    reduced = value.detach().clone()
    dist.all_reduce(reduced, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return reduced


def destroy_process_group() -> None:
    """Tear down the default process group if there is one (torch aborts at exit otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
