"""Micro-batching, back-pressure, health and load, through real servers running the real MiniLM.

Where a test needs the worker busy at a known moment it wraps the real encoder with a gate (the batch waits
on an event the test sets), so what is asserted never depends on how fast this machine is.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from service_support import SENTENCES, assert_error, build_service, metric_samples, minilm, serve

from hsrl_service.encoders import TextEncoder
from hsrl_service.engine import plan_calls
from hsrl_service.runtime import BatchingConfig


class GatedEncoder(TextEncoder):
    """The real MiniLM encoder, whose batches wait for ``gate`` (open unless a test closes it)."""

    def __init__(self) -> None:
        super().__init__(minilm(), "minilm")
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()

    def encode(self, items: list[Any]):
        self.entered.set()
        if not self.gate.wait(timeout=60):
            raise RuntimeError("test gate never opened")
        return super().encode(items)


class WorkerKilled(BaseException):
    """Not an ``Exception``: the batcher treats it as fatal, as it would a real crash of its thread."""


class FaultyEncoder(TextEncoder):
    """The real encoder, failing on demand: ``boom`` raises an ordinary error, ``die`` kills the worker."""

    def __init__(self) -> None:
        super().__init__(minilm(), "minilm")

    def encode(self, items: list[Any]):
        texts = [getattr(item, "text", item) for item in items]  # tokenised once: each keeps its text
        if "boom" in texts:
            raise RuntimeError("model exploded")
        if "die" in texts:
            raise WorkerKilled("worker killed by the test")
        return super().encode(items)

    def describe(self) -> dict[str, Any]:
        raise KeyError("a bug outside any route's own checks")


def reference(texts: list[str]) -> np.ndarray:
    return minilm().encode(texts, normalize_embeddings=True, convert_to_numpy=True)


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``condition`` (a state, not a duration) until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def in_background(function: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(function()), daemon=True)
    thread.start()
    return thread, result


def batch_sizes(metrics_text: str) -> tuple[dict[str, float], float, float]:
    """Cumulative bucket counts, the number of batches, and the number of items."""
    buckets = {k: v for k, v in metric_samples(metrics_text, "hsrl_batch_size_bucket").items() if 'model="minilm"' in k}
    count = metric_samples(metrics_text, "hsrl_batch_size_count")['{model="minilm"}']
    total = metric_samples(metrics_text, "hsrl_batch_size_sum")['{model="minilm"}']
    return buckets, count, total


def test_concurrent_requests_share_one_batch() -> None:
    encoder = GatedEncoder()
    service = build_service(encoders=[encoder], batching=BatchingConfig(max_batch_size=64, max_wait_ms=2))
    with serve(service) as live:
        encoder.gate.clear()
        first, _ = in_background(lambda: httpx.post(f"{live.url}/v1/embeddings", json={"input": "warm"}, timeout=60))
        assert encoder.entered.wait(30)  # the worker is busy with "warm"; the next requests queue up
        threads = [
            in_background(lambda s=s: httpx.post(f"{live.url}/v1/embeddings", json={"input": s}, timeout=60))
            for s in SENTENCES
        ]
        wait_until(lambda: service.batchers["minilm"].health()["queued_items"] == len(SENTENCES))
        encoder.gate.set()
        for thread, _ in [(first, None), *threads]:
            thread.join(60)
        rows = [result[0].json()["data"][0]["embedding"] for _, result in threads]
        np.testing.assert_allclose(np.array(rows), reference(SENTENCES), atol=1e-5)
        buckets, count, total = batch_sizes(httpx.get(f"{live.url}/metrics").text)
    assert (count, total) == (2, 1 + len(SENTENCES))  # "warm" alone, then all eight together
    assert buckets['{le="4.0",model="minilm"}'] == 1 and buckets['{le="8.0",model="minilm"}'] == 2


def test_a_client_batch_larger_than_max_batch_is_split_not_rejected() -> None:
    texts = [f"{s} ({i})" for i, s in enumerate(SENTENCES * 2)][:13]
    service = build_service(batching=BatchingConfig(max_batch_size=4, max_wait_ms=1))
    with serve(service) as live, live.client() as http:
        response = http.post("/v1/embeddings", json={"input": texts})
        assert response.status_code == 200
        assert [d["index"] for d in response.json()["data"]] == list(range(13))
        rows = np.array([d["embedding"] for d in response.json()["data"]])
        np.testing.assert_allclose(rows, reference(texts), atol=1e-5)
        buckets, count, total = batch_sizes(http.get("/metrics").text)
    assert (count, total) == (4, 13)  # 4 + 4 + 4 + 1
    assert buckets['{le="4.0",model="minilm"}'] == count  # no batch above max_batch_size


class RecordingEncoder(GatedEncoder):
    """The gated MiniLM encoder, remembering the texts of every model call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []

    def encode(self, items: list[Any]):
        self.calls.append([getattr(item, "text", item) for item in items])  # tokenised once: each keeps its text
        return super().encode(items)


def test_a_window_is_cut_by_length_across_requests_run_oldest_first_and_requests_keep_order() -> None:
    encoder = RecordingEncoder()
    service = build_service(encoders=[encoder], batching=BatchingConfig(max_batch_size=2, max_wait_ms=1, window=16))
    requests = [
        [SENTENCES[0] * 3, "Short."],
        ["Tiny.", SENTENCES[1] * 2, SENTENCES[2]],
        [SENTENCES[3]],
    ]
    with serve(service) as live:
        encoder.gate.clear()
        first, _ = in_background(lambda: httpx.post(f"{live.url}/v1/embeddings", json={"input": "warm"}, timeout=60))
        assert encoder.entered.wait(30)
        threads, queued = [], 0
        for texts in requests:  # one after another, so that their arrival order is known
            threads.append(
                in_background(lambda t=texts: httpx.post(f"{live.url}/v1/embeddings", json={"input": t}, timeout=60))
            )
            queued += len(texts)
            wait_until(lambda n=queued: service.batchers["minilm"].health()["queued_items"] == n)
        encoder.gate.set()
        for thread, _ in [(first, None), *threads]:
            thread.join(60)
    for (_, result), texts in zip(threads, requests, strict=True):
        rows = np.array([d["embedding"] for d in result[0].json()["data"]])
        np.testing.assert_allclose(rows, reference(texts), atol=1e-5)  # rows back in the request's own order
    windowed = encoder.calls[1:]  # after "warm": one window of all six texts
    # Sorted by length, cut in pairs: texts of similar length share a call, across requests. The calls then run
    # oldest first: the two holding a text of the first request, then the one holding only later texts.
    assert windowed == [
        ["Tiny.", "Short."],  # the two short texts of two different requests share a call
        [SENTENCES[1] * 2, SENTENCES[0] * 3],
        [SENTENCES[2], SENTENCES[3]],
    ]


def _plan_cost(keys: list[float], calls: list[tuple[int, int]], overhead: float) -> float:
    return sum(overhead + (stop - start) * keys[stop - 1] for start, stop in calls)


def _all_plans(n: int, max_size: int) -> list[list[tuple[int, int]]]:
    """Every way to cut n sorted items into consecutive calls of at most max_size (brute force)."""
    if n == 0:
        return [[]]
    return [
        [*rest, (n - last, n)] for last in range(1, min(max_size, n) + 1) for rest in _all_plans(n - last, max_size)
    ]


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.integers(1, 400), min_size=1, max_size=8).map(sorted),
    max_size=st.integers(1, 5),
    overhead=st.floats(0, 1000, allow_nan=False),
)
def test_plan_calls_is_the_cheapest_split_into_calls_of_at_most_max_size(
    keys: list[int], max_size: int, overhead: float
) -> None:
    calls = plan_calls(keys, max_size, overhead)
    assert calls[0][0] == 0 and calls[-1][1] == len(keys)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(calls))  # consecutive, nothing skipped
    assert all(0 < stop - start <= max_size for start, stop in calls)
    cheapest = min(_plan_cost(keys, plan, overhead) for plan in _all_plans(len(keys), max_size))
    assert _plan_cost(keys, calls, overhead) == pytest.approx(cheapest)


def test_plan_calls_splits_only_where_padding_costs_more_than_a_call() -> None:
    assert plan_calls([10, 10, 10, 10], 32, overhead=200) == [(0, 4)]  # equal lengths: one call
    assert plan_calls([5, 6, 400, 420], 32, overhead=200) == [(0, 2), (2, 4)]  # short and long apart
    assert plan_calls([5, 6, 400, 420], 32, overhead=10_000) == [(0, 4)]  # calls too dear to split


def test_short_and_long_texts_of_one_window_go_to_separate_calls() -> None:
    encoder = RecordingEncoder()
    service = build_service(encoders=[encoder], batching=BatchingConfig(max_batch_size=8, max_wait_ms=1, window=16))
    long_one, long_two = " ".join(SENTENCES), " ".join(reversed(SENTENCES))  # ~280 characters each
    with serve(service) as live:
        encoder.gate.clear()
        first, _ = in_background(lambda: httpx.post(f"{live.url}/v1/embeddings", json={"input": "warm"}, timeout=60))
        assert encoder.entered.wait(30)
        mixed = [long_one, "Short.", long_two, "Tiny."]
        request, result = in_background(
            lambda: httpx.post(f"{live.url}/v1/embeddings", json={"input": mixed}, timeout=60)
        )
        wait_until(lambda: service.batchers["minilm"].health()["queued_items"] == 4)
        encoder.gate.set()
        first.join(60)
        request.join(60)
    # One call would pad both short texts to ~280 characters: more compute than a second call costs.
    assert encoder.calls[1:] == [["Tiny.", "Short."], [long_one, long_two]]
    rows = np.array([d["embedding"] for d in result[0].json()["data"]])
    np.testing.assert_allclose(rows, reference(mixed), atol=1e-5)


def test_a_client_that_disconnects_is_dropped_and_its_texts_are_never_embedded() -> None:
    encoder = RecordingEncoder()
    service = build_service(encoders=[encoder], batching=BatchingConfig(max_batch_size=4, max_wait_ms=1))
    with serve(service) as live:
        encoder.gate.clear()
        first, _ = in_background(lambda: httpx.post(f"{live.url}/v1/embeddings", json={"input": "warm"}, timeout=60))
        assert encoder.entered.wait(30)
        with pytest.raises(httpx.ReadTimeout):  # the client gives up while its texts wait in the queue
            httpx.post(f"{live.url}/v1/embeddings", json={"input": ["abandoned one", "abandoned two"]}, timeout=0.5)

        def abandoned() -> float:
            samples = metric_samples(httpx.get(f"{live.url}/metrics").text, "hsrl_abandoned_requests_total")
            return samples.get('{model="minilm"}', 0.0)

        wait_until(lambda: abandoned() == 1.0)
        assert service.batchers["minilm"].health()["queued_items"] == 2  # still queued, but withdrawn
        encoder.gate.set()
        first.join(60)
        after = httpx.post(f"{live.url}/v1/embeddings", json={"input": "after"}, timeout=60)
        assert after.status_code == 200
        assert service.batchers["minilm"].health()["queued_items"] == 0
    embedded = [text for call in encoder.calls for text in call]
    assert embedded == ["warm", "after"]


def test_full_queue_answers_429_with_retry_after() -> None:
    encoder = GatedEncoder()
    service = build_service(encoders=[encoder], batching=BatchingConfig(max_batch_size=1, max_queue=2, window=1))
    with serve(service) as live:
        encoder.gate.clear()
        post = lambda texts: httpx.post(f"{live.url}/v1/embeddings", json={"input": texts}, timeout=60)  # noqa: E731
        busy, busy_result = in_background(lambda: post("in flight"))
        assert encoder.entered.wait(30)
        queued, queued_result = in_background(lambda: post(["queued one", "queued two"]))
        wait_until(lambda: service.batchers["minilm"].health()["queued_items"] == 2)
        refused = post("one too many")
        body = assert_error(refused, 429, "queue_full")
        assert body["error"]["type"] == "rate_limit_error"
        assert int(refused.headers["retry-after"]) >= 1
        encoder.gate.set()
        busy.join(60)
        queued.join(60)
        assert busy_result[0].status_code == 200 and queued_result[0].status_code == 200
        assert len(queued_result[0].json()["data"]) == 2
        assert post("after the rush").status_code == 200
        rejected = metric_samples(httpx.get(f"{live.url}/metrics").text, "hsrl_queue_rejected_total")
    assert rejected == {'{model="minilm"}': 1.0}


def test_health_is_503_when_the_worker_thread_dies() -> None:
    service = build_service(encoders=[FaultyEncoder()])
    with serve(service) as live, live.client() as http:
        assert http.get("/health").status_code == 200
        assert_error(http.post("/v1/embeddings", json={"input": "die"}), 503, "engine_unavailable")
        assert not service.batchers["minilm"].alive
        health = http.get("/health")
        body = assert_error(health, 503, "engine_unavailable")
        assert body["status"] == "unavailable" and "WorkerKilled" in body["models"]["minilm"]["reason"]
        assert_error(http.post("/v1/embeddings", json={"input": "hello"}), 503, "engine_unavailable")


def test_when_the_worker_dies_mid_window_every_request_of_the_window_gets_503() -> None:
    class DiesOnCue(GatedEncoder):
        def encode(self, items: list[Any]):
            result = super().encode(items)  # waits for the gate
            if "die" in [getattr(item, "text", item) for item in items]:  # tokenised once: each keeps its text
                raise WorkerKilled("worker killed by the test")
            return result

    encoder = DiesOnCue()
    service = build_service(encoders=[encoder], batching=BatchingConfig(max_batch_size=1, max_wait_ms=1, window=16))
    with serve(service) as live:
        encoder.gate.clear()
        post = lambda text: httpx.post(f"{live.url}/v1/embeddings", json={"input": text}, timeout=60)  # noqa: E731
        first, first_result = in_background(lambda: post("warm"))
        assert encoder.entered.wait(30)
        # "die" arrives first and is shorter, so its call runs first in the next window (calls of one item,
        # oldest first); the longer text waits for a later call of the same window.
        dying, dying_result = in_background(lambda: post("die"))
        wait_until(lambda: service.batchers["minilm"].health()["queued_items"] == 1)
        later, later_result = in_background(lambda: post("a longer sentence that waits for a later call"))
        wait_until(lambda: service.batchers["minilm"].health()["queued_items"] == 2)
        encoder.gate.set()
        for thread in (first, dying, later):
            thread.join(60)
            assert not thread.is_alive()  # nobody hangs
    assert first_result[0].status_code == 200
    assert_error(dying_result[0], 503, "engine_unavailable")
    assert_error(later_result[0], 503, "engine_unavailable")


def test_health_is_503_while_a_batch_is_wedged_and_recovers() -> None:
    encoder = GatedEncoder()
    service = build_service(encoders=[encoder], batching=BatchingConfig(wedge_timeout_s=0.2))
    with serve(service) as live, live.client() as http:
        encoder.gate.clear()
        stuck, result = in_background(lambda: httpx.post(f"{live.url}/v1/embeddings", json={"input": "x"}, timeout=60))
        assert encoder.entered.wait(30)
        wait_until(lambda: http.get("/health").status_code == 503)
        assert "running for" in http.get("/health").json()["models"]["minilm"]["reason"]
        encoder.gate.set()
        stuck.join(60)
        assert result[0].status_code == 200
        wait_until(lambda: http.get("/health").status_code == 200)


def test_failures_are_json_500s_and_the_service_survives() -> None:
    with serve(build_service(encoders=[FaultyEncoder()])) as live, live.client() as http:
        body = assert_error(http.post("/v1/embeddings", json={"input": "boom"}), 500, "inference_error")
        assert "Traceback" not in body["error"]["message"] and "exploded" not in body["error"]["message"]
        # One keep-alive connection throughout: an error must not cost the client its connection.
        assert http.post("/v1/embeddings", json={"input": "fine"}).status_code == 200
        body = assert_error(http.get("/info"), 500, "internal_error")  # an unexpected bug in a route
        assert body["error"]["message"] == "internal server error"
        assert http.get("/health").status_code == 200


def test_bounded_load_no_5xx_no_lost_request_memory_stable() -> None:
    clients, rounds, time_cap = 32, 3, 120.0
    service = build_service(batching=BatchingConfig(max_batch_size=32, max_wait_ms=5, max_queue=4096))
    expected = {n: reference([f"{SENTENCES[j % 8]} #{j}" for j in range(n)]) for n in (1, 2, 3)}

    async def one_client(http: httpx.AsyncClient, client_id: int) -> list[tuple[int, bool]]:
        outcomes = []
        for r in range(rounds):
            n = 1 + (client_id + r) % 3
            texts = [f"{SENTENCES[j % 8]} #{j}" for j in range(n)]
            response = await http.post("/v1/embeddings", json={"input": texts})
            ok = response.status_code == 200 and np.allclose(
                [d["embedding"] for d in response.json()["data"]], expected[n], atol=1e-5
            )
            outcomes.append((response.status_code, ok))
        return outcomes

    async def wave(url: str) -> list[tuple[int, bool]]:
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(base_url=url, timeout=time_cap, limits=limits) as http:
            waves = await asyncio.wait_for(
                asyncio.gather(*(one_client(http, c) for c in range(clients))), timeout=time_cap
            )
        return [outcome for outcomes in waves for outcome in outcomes]

    process = psutil.Process()
    with serve(service) as live:
        warm = asyncio.run(wave(live.url))  # first wave: allocator and thread pools reach their working size
        rss_after_warm = process.memory_info().rss
        measured = asyncio.run(wave(live.url))
        rss_after = process.memory_info().rss
        served = metric_samples(httpx.get(f"{live.url}/metrics").text, "hsrl_http_requests_total")
    outcomes = warm + measured
    assert len(outcomes) == 2 * clients * rounds
    assert all(status == 200 for status, _ in outcomes), {s for s, _ in outcomes}
    assert all(ok for _, ok in outcomes)  # every request got its own, correct embeddings back
    assert served['{method="POST",route="/v1/embeddings",status="200"}'] == 2 * clients * rounds
    assert rss_after - rss_after_warm < 64 * 2**20, (rss_after_warm, rss_after)


@pytest.mark.parametrize("bad", [{"max_batch_size": 0}, {"max_queue": 0}, {"max_wait_ms": -1}])
def test_batcher_rejects_nonsense_settings(bad: dict[str, float]) -> None:
    from hsrl_service.engine import Batcher

    with pytest.raises(ValueError):
        Batcher("m", lambda items: np.zeros((len(items), 2)), **bad)
