"""serve_metrics: the one way the pipeline, the alert service and the crawler serve /metrics."""

from __future__ import annotations

import socket

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from finpulse.metrics import MetricsPortError, serve_metrics
from tests.conftest import free_port


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("finpulse_test_things", "Things.", registry=registry).inc(3)
    return registry


def test_serves_the_registry_on_the_port():
    port = free_port()
    server = serve_metrics(_registry(), host="127.0.0.1", port=port, setting="FINPULSE_X_PORT")
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert "finpulse_test_things_total 3.0" in text
    finally:
        server.shutdown()


def test_port_zero_serves_nothing():
    assert serve_metrics(_registry(), host="127.0.0.1", port=0, setting="FINPULSE_X_PORT") is None


def test_a_taken_port_is_one_line_naming_the_setting():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsPortError) as err:
            serve_metrics(_registry(), host="127.0.0.1", port=port, setting="FINPULSE_X_PORT")
    message = str(err.value)
    assert f"127.0.0.1:{port}" in message and "set FINPULSE_X_PORT to a free port, or 0" in message
    assert "\n" not in message
