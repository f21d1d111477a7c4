"""Schemathesis against the service's own OpenAPI schema, on a real server: whatever it generates, no 5xx.

Bounded: a few examples per operation, small request limits (so generated inputs cost the model little),
no shrinking, no example database.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_support import LiveServer, build_service, make_index, unit_rows

from hsrl_service.limits import Limits

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

KEY = "schema-key"
EXAMPLES_PER_OPERATION = 6


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder: Path = make_index(tmp_path_factory.mktemp("schema") / "docs", unit_rows(16))
    limits = Limits(max_request_bytes=256 * 1024, max_items=8, max_text_chars=512, max_k=50)
    service = build_service(image=True, indexes=[("docs", folder)], limits=limits, api_key=KEY)
    from hsrl_service.app import create_app

    with LiveServer(create_app(service)) as server:
        yield server


def _fuzz(operation, mode, url: str, failures: list[str], statuses: Counter):
    """A hypothesis test sending generated cases of ``operation``, recording any 5xx in ``failures``."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case) -> None:
        response = case.call(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        statuses[response.status_code // 100] += 1
        if response.status_code >= 500:
            failures.append(
                f"{operation.method.upper()} {operation.path}: {response.status_code} {response.text[:300]}"
            )

    return check


def test_no_operation_answers_5xx(live: LiveServer) -> None:
    import httpx

    raw = httpx.get(f"{live.url}/openapi.json", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    schema = schemathesis.openapi.from_dict(raw)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/embeddings", "/v1/embeddings/upload", "/search", "/index/{name}/add"}
    statuses: Counter = Counter()
    for operation in operations:
        _fuzz(operation, schemathesis.GenerationMode.POSITIVE, live.url, failures, statuses)()
        # Schema-violating inputs; an operation without parameters or body has none to violate.
        with contextlib.suppress(Unsatisfiable):
            _fuzz(operation, schemathesis.GenerationMode.NEGATIVE, live.url, failures, statuses)()
    assert failures == []
    assert statuses[2] > 0 and statuses[4] > 0, statuses  # both accepted and refused requests were generated
    assert httpx.get(f"{live.url}/health", timeout=30).status_code == 200
