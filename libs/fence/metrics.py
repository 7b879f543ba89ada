"""Prometheus metrics of a service process (prometheus-client).

Only service processes and the supervisor import this: prometheus-client costs
~60 ms to import, which a lone ``fence run`` never pays (its services get
``metrics=None``).  Process metrics (CPU, memory, fds) come from the default
registry's process collector; we add request counts and latency per handler,
events by kind, a few gauges, and the sandbox runs clients report (counted by
the executor service: ``fence.executor.runstats``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

REQUESTS = Counter(
    "fence_requests_total", "Requests handled, by service, endpoint and outcome", ["service", "endpoint", "outcome"]
)
LATENCY = Histogram(
    "fence_request_duration_seconds",
    "Request handling time, by service and endpoint",
    ["service", "endpoint"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
EVENTS = Counter("fence_events_total", "Events received by the monitor, by kind", ["kind"])
GAUGES = Gauge("fence_service_gauge", "Service-specific levels (sessions open, ...)", ["name"])
RUNS = Counter(
    "fence_sandbox_runs_total",
    "Sandbox runs clients reported on the bus, by phase (started, exited, refused) and outcome",
    ["phase", "outcome"],
)
RUN_SECONDS = Histogram(
    "fence_sandbox_run_seconds",
    "Time from a sandbox's started event to its exited event",
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0),
)


class Metrics:
    """The metrics one service process exposes on a loopback port."""

    def __init__(self) -> None:
        self.port = 0
        self._server: WSGIServer | None = None

    def observe(self, service: str, endpoint: str, outcome: str, seconds: float) -> None:
        REQUESTS.labels(service, endpoint, outcome).inc()
        LATENCY.labels(service, endpoint).observe(seconds)

    def count_event(self, kind: str) -> None:
        EVENTS.labels(kind).inc()

    def set_gauge(self, name: str, value: float) -> None:
        GAUGES.labels(name).set(value)

    def count_run(self, phase: str, outcome: str) -> None:
        RUNS.labels(phase, outcome).inc()

    def observe_run(self, seconds: float) -> None:
        RUN_SECONDS.observe(seconds)

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start the /metrics HTTP server on loopback (a random port by default)."""
        server, _thread = start_http_server(port, addr=host)
        self._server = server
        self.port = server.server_port
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
