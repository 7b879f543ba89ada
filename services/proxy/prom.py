"""Prometheus counters of the proxy service (imported only when the service has metrics).

* ``fence_proxy_requests_total{protocol, decision}``: decisions by protocol
  (http, socks) and outcome (allowed, blocked, error);
* ``fence_proxy_bytes_total{direction}``: bytes relayed through tunnels,
  ``up`` (sandbox -> upstream) and ``down``, counted when a tunnel closes;
* ``fence_proxy_open_tunnels``: tunnels open now.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

REQUESTS = Counter("fence_proxy_requests_total", "Proxy decisions, by protocol and outcome", ["protocol", "decision"])
BYTES = Counter("fence_proxy_bytes_total", "Bytes relayed through proxy tunnels, by direction", ["direction"])
TUNNELS = Gauge("fence_proxy_open_tunnels", "Proxy tunnels open now")


class ProxyStats:
    """What a session reports; label children are bound once."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str], Counter] = {}
        self._up = BYTES.labels("up")
        self._down = BYTES.labels("down")

    def request(self, protocol: str, decision: str) -> None:
        child = self._requests.get((protocol, decision))
        if child is None:
            child = self._requests[(protocol, decision)] = REQUESTS.labels(protocol, decision)
        child.inc()

    def tunnel_opened(self) -> None:
        TUNNELS.inc()

    def tunnel_closed(self, up: int, down: int) -> None:
        TUNNELS.dec()
        if up:
            self._up.inc(up)
        if down:
            self._down.inc(down)
