"""Fuzz the control API from its own OpenAPI description (schemathesis, bounded).

Every documented operation gets up to 25 generated requests (valid and invalid
bodies, paths and queries) with the bearer token.  None may answer 5xx -- except
503 from the routes that talk to a device, which is their documented "device not
found" answer -- and every 4xx must carry an ``error`` message.
The live stream (endless by design) and the Bluetooth scan (seconds of radio time
per call) are left out.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis missing: pip install schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from collector.api import create_app  # noqa: E402
from collector.clock import SystemClock  # noqa: E402
from collector.features import build_daemon  # noqa: E402
from simulators.ble_backend import SimulatedAir  # noqa: E402
from conftest import fast_config  # noqa: E402

TOKEN = "fuzz-token-0123456789"
DEVICE_ROUTES = ("/api/v1/sessions", "/api/v1/spirometry/sessions")


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    db = tmp_path_factory.mktemp("fuzz") / "fuzz.sqlite"
    cfg = fast_config()
    cfg["ble"]["scan_timeout_s"] = 0.05
    air = SimulatedAir(SystemClock())  # an empty ward: starting a night finds no oximeter (503)
    daemon = build_daemon(db, config=cfg, ble_backend=air.client_backend, scanner_backend=air.scanner_backend)
    app = create_app(daemon, TOKEN)
    with TestClient(app):  # runs the app's event loop for the daemon's writes
        yield app
    daemon.writer.close()


@pytest.fixture(scope="module")
def api_schema(fuzz_app: Any) -> Any:
    return (
        schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
        .exclude(path="/api/v1/events/stream")
        .exclude(path="/api/v1/scan")
    )


def _check(case: Any) -> None:
    response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
    status = response.status_code
    if status == 503:
        assert case.path in DEVICE_ROUTES, (case.method, case.path, response.text)
    else:
        assert status < 500, (case.method, case.formatted_path, status, response.text)
    if 400 <= status < 500:
        body = response.json()
        assert isinstance(body.get("error"), str) and body["error"].strip(), body


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_api_never_answers_5xx(api_schema: Any, mode: str) -> None:
    """(schemathesis' own pytest plugin does not load under pytest 9, so the operations are driven here.)"""
    generation_mode = schemathesis.GenerationMode(mode)
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=generation_mode))
        @settings(max_examples=25 if mode == "positive" else 15, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        def run(case: Any) -> None:
            _check(case)

        try:
            run()
        except Unsatisfiable:
            assert mode == "negative", operation.label  # nothing to break in an operation without inputs
