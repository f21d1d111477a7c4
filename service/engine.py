"""Dynamic micro-batching: concurrent requests share model batches, run by one worker thread per model.

A request's items are queued as one slice. The worker waits until ``max_batch_size`` items are queued or the
oldest has waited ``max_wait_ms``, then takes up to ``window`` items from the front of the queue (splitting a
slice that does not fit, so a client batch of any size is spread over several model calls, never rejected).
With a ``sort_key`` (text: the string's length) the window is sorted by it and cut into model calls of at most
``max_batch_size`` items: texts of similar length share a call, so little compute goes to padding, across
requests and not only within one. With a ``call_overhead`` as well, :func:`plan_calls` picks the cut points
that minimise padding plus per-call cost, so a mixed window becomes a call of short texts and one of long
ones. The calls then run oldest first (by the longest-waiting item each holds), and each request is answered
as soon as its last item is embedded. The model runs in the worker thread, so the event loop keeps accepting
requests while it computes; results are handed back with ``loop.call_soon_threadsafe``.

The queue is bounded in items: :meth:`Batcher.submit` raises :class:`QueueFullError` instead of waiting, which the
app answers with 429 and ``Retry-After``. The worker records a heartbeat and the start of the call in flight,
so :meth:`Batcher.health` can tell a dead or wedged worker from a busy one. A request whose client has gone
(its handler was cancelled) is marked done, and its items still queued or later in the window are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hsrl_service.metrics import ServiceMetrics

__all__ = ["Batcher", "Embedded", "EngineUnavailableError", "QueueFullError", "plan_calls"]

log = logging.getLogger("hsrl.service.engine")

#: Maps items to ``(n, d)`` float32 rows, or to ``(rows, per-item token counts)``.
EncodeFn = Callable[[list[Any]], "np.ndarray | tuple[np.ndarray, np.ndarray]"]
Embedded = tuple[np.ndarray, np.ndarray]


def plan_calls(
    keys: Sequence[float], max_size: int, overhead: float, max_tokens: float | None = None
) -> list[tuple[int, int]]:
    """Cut items sorted by ``keys`` (ascending) into consecutive model calls of at most ``max_size`` items.

    A call of items ``i..j-1`` costs ``overhead + (j - i) * keys[j - 1]``: every item is padded to the call's
    longest (its last), plus a fixed cost per call. Dynamic programming over the cut points finds the split of
    least total cost, so a window of mixed lengths becomes several calls of similar lengths when the padding
    saved outweighs the extra calls, and one call when it does not. With ``max_tokens`` (keys in tokens: TEI's
    ``--max-batch-tokens``) a call also holds at most ``max_tokens`` padded tokens, ``(j - i) * keys[j - 1]``,
    unless it is a single item (a text longer than the budget still runs, alone). O(n · max_size).

    Returns:
        ``(start, stop)`` ranges over the sorted items, in order, covering all of them.
    """
    n = len(keys)
    best = [0.0] + [math.inf] * n  # best[j]: least cost of the first j items
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = keys[j - 1]
        for i in range(j - 1, max(0, j - max_size) - 1, -1):  # calls i..j-1, growing to the left
            if max_tokens is not None and i < j - 1 and (j - i) * longest > max_tokens:
                break  # padded tokens only grow as the call grows
            cost = best[i] + overhead + (j - i) * longest
            if cost <= best[j]:  # on a tie, the larger call (as when scanning left to right with <)
                best[j], cut[j] = cost, i
    calls, j = [], n
    while j > 0:
        calls.append((cut[j], j))
        j = cut[j]
    return calls[::-1]


class QueueFullError(Exception):
    """The batching queue cannot take the request now; retry after ``retry_after`` seconds."""

    def __init__(self, model: str, retry_after: int) -> None:
        super().__init__(f"the {model!r} queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class EngineUnavailableError(Exception):
    """The worker thread is not running (it died, or the service is shutting down)."""


@dataclass(eq=False)
class _Request:
    """One client request: its items, where the rows go, and the future the handler awaits."""

    items: list[Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Embedded]
    enqueued_at: float
    remaining: int
    result: np.ndarray | None = None
    tokens: np.ndarray | None = None
    done: bool = False  # failed or abandoned: later slices are skipped

    def resolve(self, value: Embedded | BaseException) -> None:
        """Complete the future from any thread, at most once."""
        if self.done:
            return
        self.done = True

        def _set() -> None:
            if self.future.done():  # the client went away and the handler was cancelled
                return
            if isinstance(value, BaseException):
                self.future.set_exception(value)
            else:
                self.future.set_result(value)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(_set)


@dataclass(eq=False)
class _Slice:
    """Items ``[start, stop)`` of ``request``: queued, or taken off the queue into a window."""

    request: _Request
    start: int
    stop: int


@dataclass(frozen=True)
class _Item:
    """Item ``index`` of ``request``: one row of a model call."""

    request: _Request
    index: int


@dataclass
class _State:
    queue: deque[_Slice] = field(default_factory=deque)
    queued_items: int = 0
    busy_since: float | None = None
    heartbeat: float = field(default_factory=time.monotonic)
    stopping: bool = False
    dead_reason: str | None = None


class Batcher:
    """Micro-batches items for one model.

    Args:
        name: the model's name, used in metrics and messages.
        encode: maps a list of items to an ``(n, d)`` float32 array; called only from the worker thread.
        max_batch_size: most items per model call; the worker starts as soon as this many are queued.
        max_wait_ms: longest an item waits for its batch to fill before the worker runs a partial batch.
        window: most items taken off the queue per round (at least ``max_batch_size``). With ``sort_key`` they
            are sorted and cut into calls of ``max_batch_size``; a larger window wastes less on padding, at the
            price of new requests waiting for the round in progress.
        sort_key: orders a window's items (e.g. ``len`` for texts, or a tuple whose first part is the cost, such as
            (tokens, characters)); ``None`` keeps arrival order.
        call_overhead: with ``sort_key``, the fixed cost of one model call in ``sort_key`` units (texts: the
            characters whose compute takes as long as a call's overhead). The sorted window is then cut by
            :func:`plan_calls` where padding costs more than an extra call; ``None``: calls of ``max_batch_size``.
        max_tokens: with ``sort_key`` giving token counts, the most padded tokens (items x longest) per model call
            (TEI's ``--max-batch-tokens``); a single longer item still runs alone. ``None``: no such bound.
        max_queue: most items waiting (not counting the batch in flight). A request is always admitted into an
            empty queue, so one request larger than ``max_queue`` is still served.
        wedge_timeout_s: a batch running longer than this makes :meth:`health` report the worker as wedged.
        metrics: where batch sizes, queue waits and inference times are recorded.
    """

    def __init__(
        self,
        name: str,
        encode: EncodeFn,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 0.0,
        max_queue: int = 1024,
        window: int | None = None,
        sort_key: Callable[[Any], Any] | None = None,
        call_overhead: float | None = None,
        max_tokens: float | None = None,
        wedge_timeout_s: float = 120.0,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        window = max_batch_size if window is None else window
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0 or wedge_timeout_s <= 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait_ms >= 0, wedge_timeout_s > 0")
        if window < max_batch_size:
            raise ValueError(f"window ({window}) must be at least max_batch_size ({max_batch_size})")
        self.name, self.encode = name, encode
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_ms / 1000.0, max_queue
        self.window, self.sort_key, self.call_overhead = window, sort_key, call_overhead
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.max_tokens = max_tokens
        self.wedge_timeout_s = wedge_timeout_s
        self._idle_beat_s = min(1.0, wedge_timeout_s / 4)
        self.metrics = metrics or ServiceMetrics()
        self._state = _State()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._recent_batch_s = 0.05  # smoothed batch time, for Retry-After
        self.metrics.queue_size.set_function(lambda: self._state.queued_items, model=name)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._state.stopping, self._state.dead_reason = False, None
        self._state.heartbeat = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"hsrl-batcher-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued work, then stop the worker."""
        with self._cond:
            self._state.stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---------------------------------------------------------------- requests
    async def submit(self, items: Sequence[Any]) -> Embedded:
        """Embed ``items`` as part of whatever batches the worker forms.

        Returns:
            ``(len(items), d)`` float32 rows and ``(len(items),)`` token counts.

        Raises:
            QueueFullError: the queue holds ``max_queue`` items already.
            EngineUnavailableError: the worker is not running.
        """
        if not items:
            raise ValueError("nothing to embed")
        loop = asyncio.get_running_loop()
        request = _Request(list(items), loop, loop.create_future(), time.monotonic(), len(items))
        with self._cond:
            if not self.alive or self._state.stopping or self._state.dead_reason:
                raise EngineUnavailableError(self._state.dead_reason or f"the {self.name!r} worker is not running")
            state = self._state
            if state.queued_items and state.queued_items + len(items) > self.max_queue:
                self.metrics.rejected.inc(model=self.name)
                raise QueueFullError(self.name, self._retry_after())
            state.queue.append(_Slice(request, 0, len(items)))
            state.queued_items += len(items)
            self._cond.notify()
        try:
            return await request.future
        finally:
            request.done = True  # cancelled or finished: the worker skips whatever is still queued

    def _retry_after(self) -> int:
        """Seconds until the queue has likely drained: queued batches x recent batch time, at least 1."""
        batches = -(-self._state.queued_items // self.max_batch_size) + 1
        return max(1, int(np.ceil(batches * self._recent_batch_s)))

    # ---------------------------------------------------------------- health
    def health(self) -> dict[str, Any]:
        """The worker's state: ``ok`` false when the thread is dead or a batch has run past the wedge timeout."""
        now = time.monotonic()
        state = self._state
        busy_for = None if state.busy_since is None else now - state.busy_since
        heartbeat_age = now - state.heartbeat
        # Idle, the worker beats every _idle_beat_s (<= 1 s); a silent worker outside a batch is stuck too.
        stale = busy_for is None and heartbeat_age > self.wedge_timeout_s + 1.0
        wedged = (busy_for is not None and busy_for > self.wedge_timeout_s) or stale
        alive = self.alive
        reason = None
        if not alive:
            reason = state.dead_reason or "worker thread is not running"
        elif stale:
            reason = f"no heartbeat from the worker for {heartbeat_age:.1f} s"
        elif wedged:
            reason = f"a batch has been running for {busy_for:.1f} s (timeout {self.wedge_timeout_s:g} s)"
        return {
            "ok": alive and not wedged,
            "alive": alive,
            "wedged": wedged,
            "reason": reason,
            "queued_items": state.queued_items,
            "batch_running_s": None if busy_for is None else round(busy_for, 3),
            "heartbeat_age_s": round(heartbeat_age, 3),
        }

    # ---------------------------------------------------------------- worker
    def _run(self) -> None:
        window: list[list[_Item]] = []
        try:
            while True:
                parts = self._next_batch()
                if parts is None:
                    return
                window = self._plan(parts)
                for call in window:
                    self._process(call)
                window = []
        except BaseException as error:  # the worker dies: say why, and fail everyone waiting, in flight or queued
            self._state.dead_reason = f"worker thread died: {type(error).__name__}: {error}"
            log.critical("%s", self._state.dead_reason)
            failure = EngineUnavailableError(self._state.dead_reason)
            for call in window:  # the call that died and the window's calls not run yet (answered ones stay)
                for item in call:
                    item.request.resolve(failure)
            self._fail_queued(failure)
        finally:
            self._state.busy_since = None

    def _next_batch(self) -> list[_Slice] | None:
        """Block until a window is ready; ``None`` when stopping with an empty queue."""
        state = self._state
        with self._cond:
            while not state.queue:
                if state.stopping:
                    return None
                self._cond.wait(timeout=self._idle_beat_s)
                state.heartbeat = time.monotonic()
            # Wait for one model call's worth of items, at most max_wait after the oldest item arrived.
            deadline = state.queue[0].request.enqueued_at + self.max_wait_s
            while state.queued_items < self.max_batch_size and not state.stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(timeout=remaining)
            parts = self._take(self.window)
            state.heartbeat = time.monotonic()
            return parts

    def _take(self, capacity: int) -> list[_Slice]:
        """Pop up to ``capacity`` items off the queue (lock held), splitting the last slice if needed."""
        state, parts, size = self._state, [], 0
        now = time.monotonic()
        while state.queue and size < capacity:
            piece = state.queue[0]
            count = min(piece.stop - piece.start, capacity - size)
            if piece.request.done:  # abandoned or failed: drop the rest of it
                state.queue.popleft()
                state.queued_items -= piece.stop - piece.start
                continue
            parts.append(_Slice(piece.request, piece.start, piece.start + count))
            self.metrics.queue_wait.observe(now - piece.request.enqueued_at, model=self.name)
            size += count
            state.queued_items -= count
            if piece.start + count == piece.stop:
                state.queue.popleft()
            else:
                piece.start += count
        return parts

    def _plan(self, parts: list[_Slice]) -> list[list[_Item]]:
        """Cut a window into model calls of at most ``max_batch_size`` items, sorted by ``sort_key`` if any
        (and then cut by :func:`plan_calls` when ``call_overhead`` is set).

        The sort is stable, so items of equal key keep their arrival order.
        """
        items = [_Item(part.request, index) for part in parts for index in range(part.start, part.stop)]
        step = self.max_batch_size
        if self.sort_key is None:
            return [items[i : i + step] for i in range(0, len(items), step)]
        key = self.sort_key
        keyed = sorted(((key(item.request.items[item.index]), item) for item in items), key=lambda pair: pair[0])
        items = [item for _, item in keyed]
        if self.call_overhead is None and self.max_tokens is None:
            return [items[i : i + step] for i in range(0, len(items), step)]
        # A tuple key sorts by all its parts (e.g. tokens, then characters) and costs by its first.
        costs = [k[0] if isinstance(k, tuple) else k for k, _ in keyed]
        ranges = plan_calls(costs, step, self.call_overhead or 0.0, self.max_tokens)
        calls = [items[start:stop] for start, stop in ranges]
        # Run first the call holding the item that has waited longest: length order decides what shares a
        # call, arrival order decides which call goes first, so no request waits behind a whole window of
        # newer, shorter texts (this bounds the tail latency).
        calls.sort(key=lambda call: min(item.request.enqueued_at for item in call))
        return calls

    def _process(self, call: list[_Item]) -> None:
        """Run one model call and hand each row to its request; skip the items of requests already done."""
        call = [item for item in call if not item.request.done]  # the client left while the window ran
        if not call:
            return
        size = len(call)
        inputs = [item.request.items[item.index] for item in call]
        self._state.busy_since = time.monotonic()
        started = time.perf_counter()
        try:
            output = self.encode(inputs)
            vectors, tokens = output if isinstance(output, tuple) else (output, np.zeros(size, dtype=np.int64))
            vectors = np.asarray(vectors, dtype=np.float32)
            tokens = np.asarray(tokens, dtype=np.int64)
            if vectors.ndim != 2 or vectors.shape[0] != size or len(tokens) != size:
                raise RuntimeError(f"model returned {vectors.shape} rows and {len(tokens)} counts for {size} items")
        except Exception as error:  # one bad call fails its requests, not the worker
            log.exception("batch of %d failed on %s", size, self.name)
            for item in call:
                item.request.resolve(error)
            return
        finally:
            elapsed = time.perf_counter() - started
            self._recent_batch_s = 0.8 * self._recent_batch_s + 0.2 * elapsed
            self._state.busy_since = None
            self._state.heartbeat = time.monotonic()
        self.metrics.inference.observe(elapsed, model=self.name)
        self.metrics.batch_size.observe(size, model=self.name)
        self.metrics.items.inc(size, model=self.name)
        for row, item in enumerate(call):
            request = item.request
            if request.done:
                continue
            if request.result is None or request.tokens is None:
                request.result = np.empty((len(request.items), vectors.shape[1]), dtype=np.float32)
                request.tokens = np.zeros(len(request.items), dtype=np.int64)
            request.result[item.index] = vectors[row]
            request.tokens[item.index] = tokens[row]
            request.remaining -= 1
            if request.remaining == 0:
                request.resolve((request.result, request.tokens))

    def _fail_queued(self, error: Exception) -> None:
        with self._cond:
            pending = {piece.request for piece in self._state.queue}
            self._state.queue.clear()
            self._state.queued_items = 0
        for request in pending:
            request.resolve(error)
