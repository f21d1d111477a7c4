"""Per-process loss work with 2 processes: the whole loss on every process (before) against each process's share.

With ``W`` processes, ``hsrl.training.fit`` gathers the global batch (``N`` rows) on every process. Before, every
process then computed the whole objective on it, the same ``N²`` pairs ``W`` times over; now each computes only
its own rows against the gathered batch (``HypersphereLoss.share_terms``: ``N/W · N`` pairs) and the shares add up
to the same value and gradients. This benchmark starts ``W = 2`` CPU processes (gloo, one thread each), gives
them the same gathered batch (``N`` unit rows, ``d = 128``) and times, on each process, one forward and backward
of the paper's objective both ways, interleaved round-robin. It also checks that the shares' values, summed over
the processes, equal the whole loss (relative difference) and that the summed gradients equal the whole loss's
(max absolute difference).

    flock /work/notes/quiet.lock python benchmarks/loss_share.py            # writes benchmarks/results/loss_share.md
    python benchmarks/loss_share.py --sizes 1024 --repeats 3                 # a smoke run
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from _report import publish

OBJECTIVE = "align:1,alpha=2 + uniform:1,t=2 + contrastive:1,tau=0.5"
PROCESSES = 2
RESULTS = Path(__file__).resolve().parent / "results" / "loss_share.md"


def _inputs(n: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(n, dim, generator=g), dim=1)
    return x, F.normalize(x + 0.5 * torch.randn(n, dim, generator=g), dim=1)


def _step(loss: object, x0: torch.Tensor, y0: torch.Tensor, rows: slice | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward and backward: the whole loss (``rows=None``) or this process's share; (value, grad of x)."""
    from hsrl.distributed import all_reduce_detached

    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    if rows is None:
        value = loss(x, y)
    else:
        value = loss.share_terms(x, y, rows=rows, reduce=all_reduce_detached, processes=PROCESSES)["loss"]
    value.backward()
    return value.detach(), x.grad


def _worker(rank: int, port: int, sizes: list[int], dim: int, repeats: int, queue: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=PROCESSES)
    from hsrl.distributed import all_reduce_detached
    from hsrl.losses import HypersphereLoss

    loss = HypersphereLoss(OBJECTIVE)
    for n in sizes:
        x0, y0 = _inputs(n, dim)
        per = n // PROCESSES
        rows = slice(rank * per, n if rank == PROCESSES - 1 else (rank + 1) * per)

        def whole(x0: torch.Tensor = x0, y0: torch.Tensor = y0) -> tuple[torch.Tensor, torch.Tensor]:
            return _step(loss, x0, y0, None)

        def share(x0: torch.Tensor = x0, y0: torch.Tensor = y0, rows: slice = rows) -> tuple[torch.Tensor, ...]:
            return _step(loss, x0, y0, rows)

        times: dict[str, list[float]] = {"whole": [], "share": []}
        whole_value, whole_grad = whole()
        share_value, share_grad = share()
        summed_value = all_reduce_detached(share_value)
        summed_grad = all_reduce_detached(share_grad)
        for _ in range(repeats):
            for name, fn in (("whole", whole), ("share", share)):
                dist.barrier()
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        if rank == 0:
            queue.put({
                "n": n, "whole_ms": 1000 * statistics.median(times["whole"]),
                "share_ms": 1000 * statistics.median(times["share"]),
                "value_rel": float((summed_value - whole_value).abs() / whole_value.abs()),
                "grad_max": float((summed_grad - whole_grad).abs().max()),
            })  # fmt: skip
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    context = mp.get_context("spawn")
    queue = context.Queue()
    mp.start_processes(_worker, args=(_free_port(), args.sizes, args.dim, args.repeats, queue), nprocs=PROCESSES,
                       start_method="spawn")  # fmt: skip
    rows = [queue.get() for _ in args.sizes]
    lines = [
        f"# Per-process loss work, {PROCESSES} processes",
        "",
        f"`{OBJECTIVE}` on a gathered batch of N unit rows (d = {args.dim}), one forward + backward per process,"
        f" median of {args.repeats}; {PROCESSES} CPU processes on gloo, 1 thread each;"
        f" {os.cpu_count()} cores, torch {torch.__version__}.",
        "",
        f"Command: `flock /work/notes/quiet.lock python benchmarks/loss_share.py {' '.join(argv)}`".rstrip(),
        "",
        "| N | whole loss on each process (ms) | own share (ms) | work ratio (whole / share) | "
        "summed value rel. diff | summed grad max diff |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['n']} | {r['whole_ms']:.1f} | {r['share_ms']:.1f} | {r['whole_ms'] / r['share_ms']:.2f}× | "
                     f"{r['value_rel']:.1e} | {r['grad_max']:.1e} |")  # fmt: skip
    publish(lines, None if args.no_write else RESULTS)


if __name__ == "__main__":
    main(sys.argv[1:])
