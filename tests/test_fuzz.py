"""Schemathesis over the running service's own OpenAPI (/docs.json): whatever a client sends that
the spec allows, or gets subtly wrong, the answer is never a 5xx. Bounded examples per endpoint.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

pytestmark = [pytest.mark.server, pytest.mark.slow]

_spec = importlib.util.spec_from_file_location("_http_tests", Path(__file__).with_name("test_http.py"))
_http = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_http)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    bundle = _http.build_tiny_bundle(tmp_path_factory.mktemp("shop"), "popular")
    env = {"SHOPREC_BUNDLE": str(bundle), "SHOPREC_API_KEY": _http.API_KEY, "SHOPREC_POLL_SECONDS": "0"}
    with _http.bentoml_server(env) as url:
        yield url


def test_no_server_error(base_url: str) -> None:
    """Every operation of /docs.json, 25 generated cases each (with the key, so /events and /forget
    are fuzzed past the auth guard too); any 5xx fails with the case that caused it."""
    api = schemathesis.openapi.from_url(f"{base_url}/docs.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 7
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case) -> None:
            case.call_and_validate(
                base_url=base_url, headers=_http.AUTH, checks=[not_a_server_error], timeout=10
            )

        run()
