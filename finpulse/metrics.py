"""Serving a component's Prometheus registry on /metrics: one rule for the pipeline and the alert service."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server


class MetricsPortError(RuntimeError):
    """The metrics port cannot be bound. One line for the operator, naming the setting to change."""


def serve_metrics(registry: CollectorRegistry, *, host: str, port: int, setting: str):
    """Serve ``registry`` at http://host:port/metrics from a background thread; None (nothing served) when
    ``port`` is 0. A port that cannot be bound raises MetricsPortError naming ``setting``."""
    if not port:
        return None
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MetricsPortError(f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}): set {setting} to a "
                               "free port, or 0 for no metrics") from None
    return server
