"""Speed, memory and exactness of hsrl's losses against the paper's reference code.

What is measured, for each batch size ``N`` (``d = 128``, unit-norm float32 inputs
``F.normalize(torch.randn(N, d), dim=1).requires_grad_()`` from a fixed seed; the
positives ``y`` are ``normalize(x + 0.5 * noise)``):

* ``uniform``: :func:`hsrl.losses.uniform_loss` (``t = 2``) against the paper's
  ``torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()``;
* ``align+uniform``: the paper's Figure 6 objective,
  ``align_loss(x, y, alpha=2) + (uniform_loss(x) + uniform_loss(y)) / 2``, against the
  same formula written with the reference code (``(x - y).norm(p=2, dim=1).pow(2).mean()``
  and the ``pdist`` uniformity);
* ``contrastive``: :func:`hsrl.losses.contrastive_loss` (in-batch negatives, symmetric,
  ``tau = 0.5``) against a hand-written cross-entropy InfoNCE (``x @ y.T / tau``, both
  directions) and against pytorch-metric-learning's ``NTXentLoss(temperature=0.5)`` on
  ``cat([x, y])`` with labels ``cat([arange(N), arange(N)])`` (its SimCLR usage). NTXent
  also counts same-view negatives, so its value differs: only its time is compared;
* ``uniform`` at a few explicit ``block_size`` values (``--block-n``), which is what
  justifies the automatic choice of ``block_size=None``.

Each timed call is one forward *and* backward pass. All implementations of one
(case, N) run in the same fresh subprocess, interleaved round-robin after their warm-up
calls, so machine noise hits them alike; the table reports medians and their ratio
(speed-up = reference / hsrl). The first call of each implementation also gives the
value and the input gradients: hsrl must match the reference to ``1e-5`` relative in
value and ``1e-6`` absolute (max over all input elements) in gradient.

Peak memory is the extra memory one forward+backward needs beyond its inputs. On CUDA it
is ``torch.cuda.max_memory_allocated()`` (reset before the call) minus what was allocated
before. On CPU each (case, N, implementation) runs one call in its own fresh subprocess:
after a tiny warm-up and the setup, the high-water mark is reset
(``/proc/self/clear_refs``) and the result is ``VmHWM`` after the call minus ``VmRSS``
before it.

Slow or huge calls are skipped with their reason, never left to hang or swap: a call is
not started when its time, extrapolated from the previous ``N`` of the same run, exceeds
``--max-call-seconds`` (60 s), or when its estimated memory exceeds half of the available
memory (pytorch-metric-learning's ``NTXentLoss`` builds a (2N) x (2N)(2N-2) mask, so it
needs O(N^3) memory: about 2 GB at N = 256 and 17 GB at N = 512; ``--ntxent-sizes`` adds
small batch sizes where it still fits).

Run it from the repository root::

    python benchmarks/losses.py                      # full run, writes benchmarks/results/losses.md
    python benchmarks/losses.py --quick              # a smoke run in well under a minute
    python benchmarks/losses.py --device cuda --sizes 4096 16384 65536

``--device auto`` (the default) runs on CUDA when it is available and on the CPU too.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

T = 2.0  # uniformity temperature t
ALPHA = 2.0  # alignment exponent
TAU = 0.5  # contrastive temperature
VALUE_RTOL = 1e-5
GRAD_ATOL = 1e-6
SEED = 0
RESULT_MARK = "RESULT "

#: case -> (title, implementations). The first implementation is hsrl's, the second the
#: reference its value and gradient are checked against; later ones are timed only.
CASES = {
    "uniform": ("uniform_loss", ["hsrl", "pdist"]),
    "align+uniform": ("align + uniform (Fig. 6)", ["hsrl", "paper"]),
    "contrastive": ("contrastive_loss", ["hsrl", "CE", "NTXent"]),
}
REFERENCE_NAMES = {
    "pdist": "`pdist` formula",
    "paper": "paper's formulas",
    "CE": "hand-written CE",
    "NTXent": "pml NTXentLoss",
}


# --------------------------------------------------------------------------- the losses


def pdist_uniform(x: torch.Tensor, t: float = T) -> torch.Tensor:
    """The paper's reference uniformity."""
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


def paper_align(x: torch.Tensor, y: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """The paper's reference alignment."""
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def ce_infonce(x: torch.Tensor, y: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """Symmetric in-batch InfoNCE as plain cross-entropy, written independently of hsrl."""
    logits = x @ y.T / tau
    target = torch.arange(x.shape[0], device=x.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def make_loss(case: str, impl: str, block: int | None) -> Callable[..., torch.Tensor]:
    from hsrl.losses import align_loss, contrastive_loss, uniform_loss

    if case == "uniform":
        if impl == "hsrl":
            return lambda x: uniform_loss(x, t=T, block_size=block)
        return pdist_uniform
    if case == "align+uniform":
        if impl == "hsrl":
            return lambda x, y: align_loss(x, y, alpha=ALPHA) + (uniform_loss(x, t=T) + uniform_loss(y, t=T)) / 2
        return lambda x, y: paper_align(x, y) + (pdist_uniform(x) + pdist_uniform(y)) / 2
    if impl == "hsrl":
        return lambda x, y: contrastive_loss(x, y, tau=TAU)
    if impl == "CE":
        return ce_infonce
    from pytorch_metric_learning.losses import NTXentLoss

    ntxent = NTXentLoss(temperature=TAU)

    def ntxent_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        labels = torch.arange(x.shape[0], device=x.device)
        return ntxent(torch.cat([x, y]), torch.cat([labels, labels]))

    return ntxent_loss


def make_inputs(case: str, n: int, dim: int, device: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(SEED)
    x = F.normalize(torch.randn(n, dim, generator=gen), dim=1)
    if case == "uniform":
        return [x.to(device).requires_grad_()]
    y = F.normalize(x + 0.5 * torch.randn(n, dim, generator=gen), dim=1)
    return [x.to(device).requires_grad_(), y.to(device).requires_grad_()]


# --------------------------------------------------------------------------- estimates


def estimated_bytes(case: str, impl: str, n: int, dim: int) -> float:
    """A generous guess of one call's peak extra memory, to skip calls that cannot fit."""
    pairs = n * (n - 1) / 2
    if impl == "NTXent":  # the (2N) x (2N)(2N-2) n_per_p mask and its float copies
        return 17.0 * (2 * n) * (2 * n) * (2 * n - 2)
    if impl in ("pdist", "paper"):  # pdist, pow, mul, exp, their grads
        return 4 * 6 * pairs * (2 if case == "align+uniform" else 1)
    if impl == "CE" or case == "contrastive":  # logits, softmax, grads, both directions
        return 4 * 6 * n * n
    return 4 * 8 * n * (dim + 1) + 4 * 3 * (1 << 26)  # hsrl uniform: O(N d) + one block


def available_bytes(device: str) -> float:
    if device == "cuda":
        return float(torch.cuda.mem_get_info()[0])
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    return float("inf")


# --------------------------------------------------------------------------- worker side


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _call(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], device: str):
    """One forward+backward; returns (seconds, loss)."""
    for tensor in inputs:
        tensor.grad = None
    _sync(device)
    start = time.perf_counter()
    loss = fn(*inputs)
    loss.backward()
    _sync(device)
    return time.perf_counter() - start, loss.detach()


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"{type(err).__name__}: {text[:120]}"


def time_worker(job: dict) -> dict:
    """Time every implementation of one (case, N), interleaved; check values and gradients."""
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    case, n, device = job["case"], job["n"], job["device"]
    inputs = make_inputs(case, n, job["dim"], device)
    fns = {label: make_loss(case, impl, block) for label, impl, block in job["impls"]}
    out: dict[str, dict] = {label: {} for label in fns}
    first: dict[str, tuple[float, list[torch.Tensor]]] = {}
    repeats: dict[str, int] = {}
    times: dict[str, list[float]] = {}
    for label, fn in fns.items():
        try:
            seconds, loss = _call(fn, inputs, device)  # warm-up 1, also the checked call
            first[label] = (float(loss), [t.grad.detach().clone() for t in inputs])
            if seconds > job["max_call_s"]:
                out[label]["skipped"] = f"one call took {seconds:.0f} s > {job['max_call_s']:.0f} s"
                continue
            for _ in range(job["warmup"] if seconds < 1 else 0):
                _call(fn, inputs, device)
            if device == "cuda":  # peak of a warm call: cuBLAS workspaces already exist
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                seconds, _ = _call(fn, inputs, device)
                out[label]["peak_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
            repeats[label] = max(1, min(job["repeats"], int(job["budget_s"] / seconds)))
            times[label] = []
        except (RuntimeError, MemoryError) as err:  # out of memory, most likely
            out[label]["skipped"] = _short(err)
        gc.collect()
    for rep in range(max(repeats.values(), default=0)):
        for label, count in repeats.items():
            if rep < count:
                times[label].append(_call(fns[label], inputs, device)[0])
    for label, samples in times.items():
        out[label]["median_ms"] = 1e3 * statistics.median(samples)
        out[label]["min_ms"] = 1e3 * min(samples)
        out[label]["repeats"] = len(samples)
    reference = job["reference"]
    for label in fns:
        if label in first:
            out[label]["value"] = first[label][0]
        if label == reference or reference not in first or label not in first:
            continue
        if not label.startswith("hsrl"):
            continue
        (value, grads), (ref_value, ref_grads) = first[label], first[reference]
        out[label]["value_rel"] = abs(value - ref_value) / abs(ref_value)
        out[label]["grad_max"] = max(float((g - r).abs().max()) for g, r in zip(grads, ref_grads, strict=True))
    return out


def memory_worker(job: dict) -> dict:
    """Peak extra RSS of one forward+backward on CPU, in a process of its own."""
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    case, n, (label, impl, block) = job["case"], job["n"], job["impls"][0]
    fn = make_loss(case, impl, block)
    _call(fn, make_inputs(case, min(n, 64), job["dim"], "cpu"), "cpu")  # load kernels, pools
    inputs = make_inputs(case, n, job["dim"], "cpu")
    gc.collect()
    base = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    try:
        _call(fn, inputs, "cpu")
    except (RuntimeError, MemoryError) as err:
        return {label: {"skipped": _short(err)}}
    return {label: {"peak_mb": (_status_kib("VmHWM") - base) / 1024}}


# --------------------------------------------------------------------------- driver side


def run_worker(job: dict, timeout_s: float) -> dict:
    """Run one job in a fresh interpreter; a crash or a timeout skips its implementations."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    env = dict(os.environ)
    if job["mode"] == "memory":
        # A fixed glibc mmap threshold: every large buffer is mmap-ed and unmapped when
        # freed, so RSS follows the live tensors instead of heap fragmentation.
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        reason = f"worker timed out after {timeout_s:.0f} s"
        return {label: {"skipped": reason} for label, _, _ in job["impls"]}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    if proc.returncode < 0:
        reason = f"worker killed by signal {-proc.returncode} (out of memory?)"
    else:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        reason = f"worker failed: {tail[:120]}"
    return {label: {"skipped": reason} for label, _, _ in job["impls"]}


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        # (device, case, label) -> (N, median seconds) of the last measured size
        self.history: dict[tuple[str, str, str], tuple[int, float]] = {}

    def pre_skip(self, device: str, case: str, label: str, impl: str, n: int, limit_s: float) -> str | None:
        need = estimated_bytes(case, impl, n, self.args.dim)
        free = available_bytes(device)
        if need > 0.5 * free:
            return f"needs ~{need / 2**30:,.1f} GB > half of {free / 2**30:.1f} GB available"
        if (device, case, label) in self.history:
            n0, seconds = self.history[device, case, label]
            power = 3 if impl == "NTXent" else 2
            predicted = seconds * (n / n0) ** power
            if predicted > limit_s:
                return f"predicted {predicted:.3g} s a call > {limit_s:.3g} s"
        return None

    def measure(
        self,
        device: str,
        case: str,
        n: int,
        impls: list[tuple[str, str, int | None]],
        reference_limit_s: float | None = None,
    ) -> dict[str, dict]:
        """Time, check and measure the memory of ``impls`` of one (case, N).

        ``reference_limit_s`` lowers the time limit for the non-hsrl implementations.
        """
        results: dict[str, dict] = {}
        runnable = []
        for label, impl, block in impls:
            limit = self.args.max_call_seconds
            if reference_limit_s is not None and impl != "hsrl":
                limit = min(limit, reference_limit_s)
            reason = self.pre_skip(device, case, label, impl, n, limit)
            if reason:
                results[label] = {"skipped": reason}
            else:
                runnable.append((label, impl, block))
        reference = CASES[case][1][1]
        job = {
            "mode": "time",
            "device": device,
            "case": case,
            "n": n,
            "dim": self.args.dim,
            "impls": runnable,
            "reference": reference,
            "repeats": self.args.repeats,
            "warmup": self.args.warmup,
            "budget_s": self.args.budget,
            "max_call_s": self.args.max_call_seconds,
            "threads": self.args.threads,
        }
        timeout = 60 + 4 * (self.args.budget + 3 * self.args.max_call_seconds) * len(runnable)
        if runnable:
            results.update(run_worker(job, timeout))
        for label, impl, block in runnable:
            result = results[label]
            if "median_ms" in result:
                self.history[device, case, label] = (n, result["median_ms"] / 1e3)
            if device == "cpu" and "value" in result:
                single = {**job, "mode": "memory", "impls": [(label, impl, block)]}
                result.update(run_worker(single, timeout)[label])
        for label, result in results.items():
            print(f"  [{device}] {case:<14} N={n:<6} {label:<12} {brief(result)}", file=sys.stderr)
        return results


def brief(result: dict) -> str:
    if "skipped" in result:
        return f"skipped ({result['skipped']})"
    text = f"{result.get('median_ms', float('nan')):9.2f} ms (min {result.get('min_ms', 0):.2f})"
    if "peak_mb" in result:
        text += f"  {result['peak_mb']:8.1f} MB"
    return text


# --------------------------------------------------------------------------- the report


def fmt_ms(result: dict) -> str:
    if "skipped" in result and "median_ms" not in result:
        return f"skipped ({result['skipped']})"
    return f"{result['median_ms']:.2f}" if "median_ms" in result else "–"


def fmt_mb(result: dict) -> str:
    return f"{result['peak_mb']:.1f}" if "peak_mb" in result else "–"


def check_cells(hsrl: dict, compared: bool) -> list[str]:
    if not compared:
        return ["n/a (time only)", "n/a", "n/a"]
    if "value_rel" not in hsrl:
        return ["–", "–", "not checked"]
    ok = hsrl["value_rel"] <= VALUE_RTOL and hsrl["grad_max"] <= GRAD_ATOL
    return [f"{hsrl['value_rel']:.1e}", f"{hsrl['grad_max']:.1e}", "ok" if ok else "**FAIL**"]


HEADER = (
    "| case | N | hsrl ms | reference | ref ms | speed-up (ref/hsrl) | hsrl peak MB "
    "| ref peak MB | value rel-diff | grad max-diff | check |"
)
RULE = "|" + " --- |" * 11


def table_row(title: str, n: int, hsrl: dict, ref_name: str, ref: dict, compared: bool) -> str:
    ratio = "–"
    if "median_ms" in hsrl and "median_ms" in ref:
        ratio = f"{ref['median_ms'] / hsrl['median_ms']:.2f}×"
    cells = [title, str(n), fmt_ms(hsrl), ref_name, fmt_ms(ref), ratio, fmt_mb(hsrl), fmt_mb(ref)]
    return "| " + " | ".join(cells + check_cells(hsrl, compared)) + " |"


def case_rows(case: str, n: int, results: dict, title: str | None = None) -> list[str]:
    impls = CASES[case][1]
    rows = []
    for position, ref in enumerate(impls[1:]):
        rows.append(
            table_row(
                title or CASES[case][0],
                n,
                results["hsrl"],
                REFERENCE_NAMES[ref],
                results[ref],
                compared=position == 0,
            )
        )
    return rows


def machine_line(device: str, threads: int) -> str:
    if device == "cuda":
        return f"cuda: {torch.cuda.get_device_name()}"
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    threads = threads or torch.get_num_threads()
    return f"cpu: {model}, {os.cpu_count()} cores, torch threads {threads}"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def header_lines(args: argparse.Namespace, devices: list[str]) -> list[str]:
    import pytorch_metric_learning

    command = "python " + " ".join(shlex.quote(a) for a in [args.script, *args.argv])
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# hsrl losses: speed, memory and exactness against the paper's reference code",
        "",
        f"- command: `{command}`",
        f"- date: {now}; commit {git_commit()}; load average at start "
        f"{args.load_start:.2f} and end {os.getloadavg()[0]:.2f} (shared machine)",
        f"- torch {torch.__version__}, pytorch-metric-learning "
        f"{pytorch_metric_learning.__version__}, python {platform.python_version()}",
    ]
    lines += [f"- device {machine_line(device, args.threads)}" for device in devices]
    lines += [
        f"- inputs: float32, d = {args.dim}, unit rows, seed {SEED}; t = {T:g}, alpha = "
        f"{ALPHA:g}, tau = {TAU:g}; one timed call = forward + backward",
        "- times: medians over up to "
        f"{args.repeats} calls (fewer for slow calls, about {args.budget:g} s each), after "
        "warm-up, all implementations of a row interleaved in one process",
        "- speed-up = reference ms / hsrl ms; peak MB = extra memory of one call beyond "
        "its inputs (CPU: VmHWM − VmRSS in a fresh process; CUDA: max_memory_allocated)",
        f"- check: value rel-diff ≤ {VALUE_RTOL:g} and input-gradient max abs diff ≤ "
        f"{GRAD_ATOL:g} against the reference, same run",
        "- pml NTXentLoss also uses same-view negatives (2N − 2 per anchor), so its value "
        "differs from InfoNCE's: only its time is compared. Its memory is O(N³) "
        "(a (2N) × (2N)(2N − 2) mask), which is why it is skipped beyond small N.",
        "",
    ]
    return lines


def verdict(device: str, by_n: dict[int, dict[str, dict]]) -> str | None:
    results = by_n.get(4096, {}).get("uniform")
    if not results:
        return None
    hsrl, ref = results["hsrl"], results["pdist"]
    if "median_ms" not in hsrl or "median_ms" not in ref:
        return f"[{device}] target at N=4096: not measured"
    speedup = ref["median_ms"] / hsrl["median_ms"]
    ok = speedup >= 3 and hsrl.get("value_rel", 1) <= VALUE_RTOL and hsrl.get("grad_max", 1) <= GRAD_ATOL
    return (
        f"[{device}] target at N=4096 (uniform_loss ≥ 3× faster than pdist, value ≤ 1e-5 rel, "
        f"grad ≤ 1e-6): speed-up {speedup:.2f}×, value {hsrl.get('value_rel', float('nan')):.1e},"
        f" grad {hsrl.get('grad_max', float('nan')):.1e} → {'MET' if ok else 'NOT MET'}"
    )


def auto_block(n: int, device: str) -> str:
    """The rows per block that ``block_size=None`` picks, as hsrl documents it."""
    try:
        from hsrl.losses import AUTO_BLOCK_ELEMENTS
    except ImportError:
        return "auto"
    elements = AUTO_BLOCK_ELEMENTS.get(device, AUTO_BLOCK_ELEMENTS["cuda"])
    return str(max(1, min(n, elements // n)))


def run(args: argparse.Namespace) -> str:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device")
    devices = [args.device]
    if args.device == "auto":
        devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
    runner = Runner(args)
    lines: list[str] = []
    for device in devices:
        lines += [f"## {device}", "", HEADER, RULE]
        by_n: dict[int, dict[str, dict]] = {}
        for n in sorted(set(args.sizes)):
            by_n[n] = {}
            for case, (_, impls) in CASES.items():
                plan = [(impl, impl, None) for impl in impls]
                by_n[n][case] = runner.measure(device, case, n, plan)
                lines += case_rows(case, n, by_n[n][case])
        extra = sorted(set(args.ntxent_sizes) - set(args.sizes))
        if extra:
            lines += ["", f"Contrastive at small N, where NTXentLoss still fits ({device}):", ""]
            lines += [HEADER, RULE]
            for n in extra:
                plan = [(impl, impl, None) for impl in CASES["contrastive"][1]]
                lines += case_rows("contrastive", n, runner.measure(device, "contrastive", n, plan))
        for n in args.block_n:
            lines += ["", f"uniform_loss block sizes at N = {n} ({device}; auto = None):", ""]
            lines += [HEADER, RULE]
            blocks = [None if b == "auto" else int(b) for b in args.block_sizes]
            plan = [(f"hsrl-{b or 'auto'}", "hsrl", b) for b in blocks] + [("pdist",) * 2 + (None,)]
            # The sweep compares block sizes; a reference slower than the time budget
            # is already in the main table.
            results = runner.measure(device, "uniform", n, plan, reference_limit_s=args.budget)
            for b in blocks:
                title = f"uniform_loss(block_size={b if b else f'None → {auto_block(n, device)}'})"
                label = f"hsrl-{b or 'auto'}"
                lines.append(table_row(title, n, results[label], "`pdist` formula", results["pdist"], compared=True))
        lines.append("")
        target = verdict(device, by_n)
        if target:
            lines += [target, ""]
    return "\n".join(header_lines(args, devices) + lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048, 4096, 16384])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30, help="most timed calls per case")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--warmup", type=int, default=2, help="extra warm-up calls if < 1 s")
    parser.add_argument(
        "--budget",
        type=float,
        default=10.0,
        help="seconds of timed calls per implementation and size (adapts repeats)",
    )
    parser.add_argument(
        "--max-call-seconds",
        type=float,
        default=60.0,
        help="skip a call whose extrapolated time exceeds this",
    )
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    parser.add_argument(
        "--ntxent-sizes",
        type=int,
        nargs="*",
        default=[64, 128, 256],
        help="extra small N for the contrastive case only",
    )
    parser.add_argument(
        "--block-n",
        type=int,
        nargs="*",
        default=[4096, 16384],
        help="N for the block-size sweep of uniform_loss",
    )
    parser.add_argument("--block-sizes", nargs="+", default=["auto", "128", "256", "512", "1024", "2048", "4096"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/losses.md")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats: a smoke run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.ntxent_sizes, args.block_n = [128, 512], [64], [512]
        args.block_sizes = ["auto", "128", "512"]
        args.repeats, args.warmup, args.budget = min(args.repeats, 5), 1, min(args.budget, 1.0)
    args.script, args.argv = "benchmarks/losses.py", argv
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        worker = time_worker if job["mode"] == "time" else memory_worker
        print(RESULT_MARK + json.dumps(worker(job)), flush=True)
        return
    args.load_start = os.getloadavg()[0]
    report = run(args)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
