"""Gradient caching: the exact gradient of a loss on a large batch, in the memory of a small one.

Uniformity compares every embedding of the (global) batch with every other, so its value
and gradient depend on the whole batch at once; gradient *accumulation* over small batches
optimises a different objective (the mean of small-batch uniformities). Gradient caching
(Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup",
2021) keeps the objective whole:

1. embed the batch chunk by chunk with no graph (:func:`embed_chunks`), saving each
   chunk's random state;
2. compute the loss on all the embeddings (gathered across processes as usual) and its
   gradient with respect to them, :math:`g = \\partial L / \\partial z`;
3. for each chunk, restore its random state, embed it again *with* a graph and
   back-propagate the cached gradient, ``z_chunk.backward(g_chunk)``
   (:func:`backward_chunks`). Parameter gradients add up over chunks to
   :math:`\\sum_c (\\partial z_c / \\partial \\theta)^\\top g_c = \\partial L / \\partial \\theta`.

Restoring the random state makes dropout draw the same masks in both passes, so the result
is the gradient of the loss *as computed in step 2*. Peak activation memory is that of one
chunk; compute is one extra no-graph forward (about 1.3x a plain step). Batch
normalisation is the exception: its statistics would be per chunk, so models with it are
refused (:func:`check_cacheable`).

Example:
    >>> import torch, torch.nn.functional as F
    >>> from hsrl.losses import HypersphereLoss
    >>> model = torch.nn.Linear(8, 4)
    >>> def encode(m, batch):
    ...     return F.normalize(m(batch[0]), dim=1), F.normalize(m(batch[1]), dim=1)
    >>> batch = (torch.randn(16, 8), torch.randn(16, 8))
    >>> chunks = split_batch(batch, 4)
    >>> x, y, states = embed_chunks(model, encode, chunks)
    >>> x.requires_grad_(); y.requires_grad_()  # doctest: +ELLIPSIS
    tensor(...)
    >>> loss = HypersphereLoss("align:1 + uniform:1")(x, y)
    >>> gx, gy = torch.autograd.grad(loss, [x, y])
    >>> backward_chunks(model, encode, chunks, states, gx, gy)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "RandomState",
    "backward_chunks",
    "capture_random_state",
    "check_cacheable",
    "embed_chunks",
    "restore_random_state",
    "split_batch",
]

#: ``encode(model, batch)`` -> the views' embeddings: ``(x, y)``, or ``(x, y, negatives)``.
Encode = Callable[[nn.Module, Any], tuple[Tensor, ...]]


@dataclass(frozen=True)
class RandomState:
    """The generator states a forward pass may draw from (CPU, and every CUDA device)."""

    cpu: Tensor
    cuda: tuple[Tensor, ...]


def capture_random_state() -> RandomState:
    cuda = tuple(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else ()
    return RandomState(torch.get_rng_state(), cuda)


def restore_random_state(state: RandomState) -> None:
    torch.set_rng_state(state.cpu)
    if state.cuda:
        torch.cuda.set_rng_state_all(list(state.cuda))


def _split_rows(value: Any, chunk_size: int, rows: int | None) -> tuple[list[Any], int]:
    if not isinstance(value, Tensor):
        raise ValueError(
            f"--cache-chunk-size: this batch holds a {type(value).__name__}, which cannot be split into chunks "
            "(give the batch a chunks(size) method)"
        )
    if rows is not None and value.shape[0] != rows:
        raise ValueError("--cache-chunk-size: the batch's tensors do not all have the same number of rows")
    return list(value.split(chunk_size)), value.shape[0]


def split_batch(batch: Any, chunk_size: int) -> list[Any]:
    """Split a batch into chunks of ``chunk_size`` examples (the last may be smaller).

    A batch with a ``chunks(size)`` method (e.g. :class:`hsrl.models.text.TokenizedPairs`)
    splits itself; a tensor, or a tuple/list/mapping of tensors with one row per example,
    is split along its first dimension.

    Raises:
        ValueError: the batch cannot be split (it holds something other than tensors).
    """
    if chunk_size < 1:
        raise ValueError(f"--cache-chunk-size must be >= 1, got {chunk_size}")
    if hasattr(batch, "chunks"):
        return list(batch.chunks(chunk_size))
    if isinstance(batch, Tensor):
        return list(batch.split(chunk_size))
    if isinstance(batch, Mapping):
        rows: int | None = None
        columns = {}
        for key, value in batch.items():
            columns[key], rows = _split_rows(value, chunk_size, rows)
        return [dict(zip(columns, parts, strict=True)) for parts in zip(*columns.values(), strict=True)]
    if isinstance(batch, tuple | list):
        rows = None
        items = []
        for value in batch:
            parts, rows = _split_rows(value, chunk_size, rows)
            items.append(parts)
        return [type(batch)(parts) for parts in zip(*items, strict=True)]
    return _split_rows(batch, chunk_size, None)[0]  # raises: not a tensor


def check_cacheable(model: nn.Module) -> None:
    """Refuse models whose training forward depends on the chunking (batch normalisation).

    Raises:
        ValueError: one line naming the first batch-norm layer found.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise ValueError(
                f"--cache-chunk-size: the model has batch normalisation ({name or 'the model'}), whose statistics "
                "would be per chunk, not per batch; drop --cache-chunk-size or use an encoder without it"
            )


def loss_precision(embeddings: Tensor) -> Tensor:
    """Embeddings as the loss sees them: half precision (mixed-precision forwards) is raised to float32, whose
    exponent range the uniformity term's exp(-t‖x-y‖²) needs; float32 and float64 are kept as they are."""
    return embeddings if embeddings.dtype == torch.float64 else embeddings.float()


@torch.no_grad()
def embed_chunks(model: nn.Module, encode: Encode, chunks: Sequence[Any]) -> tuple[Any, ...]:
    """Step 1: every view of every chunk with no graph, and the random state before each chunk.

    ``encode`` returns two views ``(x, y)``, or more (e.g. ``(x, y, negatives)``); every chunk must give the same
    number.

    Returns:
        ``(x, y, [more views,] states)``: each view's embeddings of the whole batch in the loss's precision
        (chunks in order, detached; see :func:`loss_precision`) and one :class:`RandomState` per chunk for
        :func:`backward_chunks`.
    """
    columns: list[list[Tensor]] = []
    states = []
    for chunk in chunks:
        states.append(capture_random_state())
        views = encode(model, chunk)
        if not columns:
            columns = [[] for _ in views]
        if len(views) != len(columns):
            raise ValueError(f"encode gave {len(views)} views for one chunk and {len(columns)} for another")
        for column, view in zip(columns, views, strict=True):
            column.append(loss_precision(view))
    return (*(torch.cat(column) for column in columns), states)


def backward_chunks(
    model: nn.Module,
    encode: Encode,
    chunks: Sequence[Any],
    states: Sequence[RandomState],
    *grads: Tensor,
    no_sync: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> None:
    """Step 3: re-embed each chunk with a graph and back-propagate its slice of the cached gradient.

    Args:
        grads: the loss's gradient with respect to this process's embeddings of each view, in the order
            ``encode`` returns them (``grad_x, grad_y[, grad_negatives]``; each ``(n, d)``, rows in chunk order),
            as returned by ``torch.autograd.grad``.
        no_sync: a context that suspends the data-parallel gradient all-reduce (e.g.
            ``lambda: accelerator.no_sync(model)``); every chunk but the last runs under it,
            so gradients are reduced once per step, not once per chunk.
    """
    if len(chunks) != len(states):
        raise ValueError("one random state per chunk is needed")
    start = 0
    after = capture_random_state()  # where the first pass left the generators
    for index, (chunk, state) in enumerate(zip(chunks, states, strict=True)):
        restore_random_state(state)
        last = index == len(chunks) - 1
        context = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
        with context:
            views = encode(model, chunk)
            if len(views) != len(grads):
                raise ValueError(f"encode gave {len(views)} views but {len(grads)} cached gradients were passed")
            rows = slice(start, start + views[0].shape[0])
            torch.autograd.backward([loss_precision(v) for v in views], [g[rows] for g in grads])
        start += views[0].shape[0]
    if start != grads[0].shape[0]:
        raise ValueError(f"the chunks re-embedded {start} rows but the cached gradient has {grads[0].shape[0]}")
    restore_random_state(after)  # leave the generators where the first pass left them
