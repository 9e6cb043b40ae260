"""The API fuzzed from its own OpenAPI description (schemathesis): no 5xx, no crash, documented statuses only."""

from __future__ import annotations

import itertools

import pytest
import schemathesis
from edgewatch.sidecar.testing import wait_ready
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance


@pytest.fixture(scope="module")
def api_schema(tiny_model_dir, serve):
    # small generation limits keep each fuzzed completion cheap; a deadline 5xx would be a real failure
    with serve(tiny_model_dir, max_body_bytes=32 * 1024, timeout=30.0) as s:
        wait_ready(s.url)
        yield schemathesis.openapi.from_url(f"{s.url}/openapi.json")


def test_api(api_schema):
    ops = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in ops} >= {"/v1/classify", "/v1/completions", "/ready", "/health"}
    for op, mode in itertools.product(ops, schemathesis.GenerationMode):  # valid and invalid inputs
        if mode is schemathesis.GenerationMode.NEGATIVE and op.method.upper() != "POST":
            continue  # a GET without parameters has no invalid form

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            if isinstance(case.body, dict) and isinstance(case.body.get("max_tokens"), int):
                case.body["max_tokens"] = min(case.body["max_tokens"], 8)  # fuzz the inputs, not the patience
            response = case.call(timeout=60)
            case.validate_response(response, checks=[not_a_server_error, status_code_conformance])

        fuzz()
