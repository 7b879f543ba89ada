"""The proxy service: one filtering session per sandbox.

Foundation scope: sessions are opened and closed and counted, but carry no
listeners yet (port 0): a sandbox has no network at all, so there is nothing
to proxy.  The HTTP/SOCKS5 filtering proxies attach to these sessions in the
network issue; the session is where a sandbox's identity lives.
"""

from __future__ import annotations

from fence.messages import ProxySessionClose, ProxySessionClosed, ProxySessionOpen, ProxySessionOpened
from fence.service import Endpoint, Service
from fence.subjects import PROXY_SESSION_CLOSE, PROXY_SESSION_OPEN


class ProxyService(Service):
    name = "fence-proxy"
    description = "Filtering HTTP and SOCKS5 proxies, one session per sandbox"

    def __init__(self, metrics=None):
        super().__init__(metrics)
        self.sessions: dict[str, ProxySessionOpen] = {}

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("session-open", PROXY_SESSION_OPEN, ProxySessionOpen, self.open),
            Endpoint("session-close", PROXY_SESSION_CLOSE, ProxySessionClose, self.close),
        ]

    async def open(self, req: ProxySessionOpen) -> ProxySessionOpened:
        self.sessions[req.sandbox] = req
        if self.metrics is not None:
            self.metrics.set_gauge("fence_proxy_sessions", len(self.sessions))
        return ProxySessionOpened(sandbox=req.sandbox)

    async def close(self, req: ProxySessionClose) -> ProxySessionClosed:
        existed = self.sessions.pop(req.sandbox, None) is not None
        if self.metrics is not None:
            self.metrics.set_gauge("fence_proxy_sessions", len(self.sessions))
        return ProxySessionClosed(sandbox=req.sandbox, existed=existed)

    async def on_stop(self) -> None:
        self.sessions.clear()
