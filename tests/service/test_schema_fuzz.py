"""Schema-generated requests against the real service (schemathesis on `/openapi.json`): no 5xx, and nothing
that contradicts the document (statuses it does not list, error bodies that are not the envelope).

Bounded to a few dozen examples per operation for `make test`; the long run is recorded in BENCHMARKS.md.
`model` is pinned to the served names (half the base model, half an adapter) and `max_tokens` kept small, so
that generated requests reach the engine instead of stopping at a 404.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.service.conftest import API_KEY, BASE
from tsumugi.launcher import ServerProcess

pytestmark = pytest.mark.engine  # the real vLLM engine, in a server process

MAX_EXAMPLES = int(os.environ.get("TSUMUGI_FUZZ_EXAMPLES", "40"))


def operations(server: ServerProcess) -> list:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def pinned(case):
    """The case with `model` set to a served name and a small `max_tokens`, so it reaches the engine."""
    if isinstance(case.body, dict):
        case.body["model"] = BASE if len(repr(case.body)) % 2 else "ada"
        if isinstance(case.body.get("max_tokens"), int):
            case.body["max_tokens"] = max(1, min(case.body["max_tokens"], 8))
    return case


def test_generated_requests_get_documented_answers_and_no_5xx(server: ServerProcess):
    # schemathesis' own pytest plugin does not run on pytest 9; its Python API and hypothesis do the same.
    found = operations(server)
    assert {op.label for op in found} >= {"POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models"}
    for operation in found:

        @given(operation.as_strategy().map(pinned))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:
            case.call_and_validate(
                base_url=server.url,
                headers={"Authorization": f"Bearer {API_KEY}"},
                checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
                timeout=60,
            )

        check()
