"""The proxy service: one filtering session (HTTP + SOCKS5 proxies) per sandbox.

Endpoints (bus):

* ``fence.proxy.session.open`` (``ProxySessionOpen{sandbox, network}`` ->
  ``ProxySessionOpened{sandbox, http_port, socks_port, address, relaxed}``):
  builds the sandbox's filter and opens the session's own listeners on
  ``127.0.0.1`` (random ports unless ``httpProxyPort``/``socksProxyPort``)
  when the request asks for them (``loopback``: the sandbox shares the
  host's network), whatever the policy allows: a policy allowing nothing
  still gets proxies that deny every request, as in the Go tool Fence, so
  blocks are answered and reported.  Without ``loopback`` the service's
  default decides (``loopback=``), for policies that can allow something
  (``fence.netintent``).  A session without listeners of its own (ports 0)
  starts no event loop until a sandbox's listeners are attached to it, so a
  lone run that never connects never pays for asyncio.  Opening an id again
  replaces its session.
* ``fence.proxy.session.close``: stops the listeners, cuts every connection
  and tunnel of the session.

In process (not on the bus): ``attach(sandbox, sock_http, sock_socks)``
serves listening sockets that a bridge created inside the sandbox's network
namespace (and passed over SCM_RIGHTS); the session owns and closes them.
A session without listeners of its own is created on demand there.

Across processes (a supervisor's proxy, ``handoff=PATH``): the same sockets
arrive over the unix socket at ``PATH`` (``fence.proxy.handoff``), each
hand-off carrying the one-time token of its session's ``session.open``
reply, which also advertises ``PATH``.  The session then lives as long as
that connection: its end closes the session.

Where the proxies run: on the running event loop when the service was
started on one (``python -m fence.serve proxy``: uvloop), otherwise (a lone
run drives the in-process bus without a loop) on a uvloop loop in a daemon
thread the service starts on the first session that needs it.

Every decision is published as a ``NetDecisionEvent`` on
``fence.events.<sandbox>.net`` through the service's bus, from a bounded
queue drained by one task (a flood of requests never waits on the bus; past
``EVENT_BACKLOG`` queued events the oldest are dropped and counted), and
counted in Prometheus metrics (``fence.proxy.prom``) when the service has
``metrics``.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from typing import TYPE_CHECKING, Any

from fence.bus import ServiceError
from fence.messages import ProxySessionClose, ProxySessionClosed, ProxySessionOpen, ProxySessionOpened
from fence.netintent import NONE, RELAXED, intent
from fence.service import Endpoint, Service
from fence.subjects import PROXY_SESSION_CLOSE, PROXY_SESSION_OPEN, event
from fence.textsafe import printable

if TYPE_CHECKING:  # the lone run imports this module: no asyncio or threading until a proxy is needed
    import asyncio
    import threading

    from fence.proxy.handoff import HandoffServer
    from fence.proxy.prom import ProxyStats
    from fence.proxy.session import Session

EVENT_BACKLOG = 10000
LOOPBACK = "127.0.0.1"


class _Idle:
    """A session that has no listeners (its policy allows nothing) and no loop yet."""

    __slots__ = ("sandbox", "network")

    def __init__(self, sandbox: str, network):
        self.sandbox, self.network = sandbox, network


class ProxyService(Service):
    name = "fence-proxy"
    description = "Filtering HTTP and SOCKS5 proxies, one session per sandbox"

    def __init__(
        self,
        metrics=None,
        *,
        resolver=None,
        loopback: str = "always",
        session_options: dict | None = None,
        handoff: str = "",
    ):
        """``resolver``: the sessions' name resolver hook (tests); ``loopback``: when sessions get their own
        listeners on 127.0.0.1 unless the open request says (``ProxySessionOpen.loopback``): ``"always"``
        (when the policy can allow anything), ``"relaxed"`` (only for ``"*"``, once bridges serve the others)
        or ``"never"``; ``session_options``: ``Session`` keyword arguments (timeouts, limits); ``handoff``:
        the unix socket path where sandboxes' listening sockets are accepted from other processes ("" none)."""
        super().__init__(metrics)
        self.sessions: dict = {}
        self.resolver = resolver
        self.loopback = loopback
        self.session_options = dict(session_options or {})
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._events: deque = deque()
        self._dropped = 0
        self._publishing = False
        self._proxy_stats: ProxyStats | None = None  # not _stats: that name is Service's $SRV.STATS handler
        self.bus = None
        self.handoff = handoff
        self._handoff_server: HandoffServer | None = None
        self._tokens: dict[str, str] = {}
        """Sessions that may still receive a hand-off, and the token it must carry."""

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("session-open", PROXY_SESSION_OPEN, ProxySessionOpen, self.open),
            Endpoint("session-close", PROXY_SESSION_CLOSE, ProxySessionClose, self.close),
        ]

    # --- where the proxies run ---------------------------------------------------------------
    def _proxy_loop(self):
        """(loop, on_it): the loop the sessions run on, and whether the caller is running it."""
        running = _running_loop()
        if self.loop is None:
            if running is not None:
                self.loop = running
            else:
                self._start_thread()
        return self.loop, running is self.loop

    def _start_thread(self) -> None:
        import asyncio  # lazy: a lone run starts the proxy loop only on first use (asyncio ~35 ms)
        import threading  # lazy: a lone run starts the proxy thread only on first use (threading ~0.7 ms)

        try:
            import uvloop  # lazy: a lone run starts the proxy loop only on first use (uvloop, ~4 ms over asyncio)

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - uvloop is a dependency
            loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="fence-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        self.loop = loop

    async def _on_loop(self, coro):
        """Run ``coro`` on the proxy loop, from any thread (blocking only when the caller has no loop)."""
        import asyncio  # lazy: only with a proxy loop, which a lone run starts on first use (asyncio ~35 ms)

        loop, on_it = self._proxy_loop()
        if on_it:
            return await coro
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        if _running_loop() is None:
            return future.result(30)
        return await asyncio.wrap_future(future)

    # --- endpoints ---------------------------------------------------------------------------
    async def open(self, req: ProxySessionOpen) -> ProxySessionOpened:
        old = self.sessions.pop(req.sandbox, None)
        self._tokens.pop(req.sandbox, None)
        if old is not None and not isinstance(old, _Idle):
            await self._on_loop(old.close())
        wants = intent(req.network)  # not the filter: deciding this must not import it (a no-network run)
        may_allow, relaxed = wants != NONE, wants == RELAXED
        if req.loopback is not None:  # the sandbox shares the host's network: proxies even to deny all
            listen = req.loopback
        else:
            listen = may_allow and (self.loopback == "always" or (self.loopback == "relaxed" and relaxed))
        handoff: dict[str, Any] = {}
        if self.handoff:
            handoff = {"handoff": self.handoff, "token": os.urandom(16).hex()}
        if not listen:
            self.sessions[req.sandbox] = _Idle(req.sandbox, req.network)
            self._track(req.sandbox, handoff)
            return ProxySessionOpened(sandbox=req.sandbox, relaxed=relaxed, **handoff)
        try:
            session = await self._on_loop(self._open_session(req.sandbox, req.network, listen=True))
        except OSError as e:
            raise ServiceError(
                f"cannot open proxy listeners for {req.sandbox}: {e.strerror or e}", "unavailable"
            ) from None
        self.sessions[req.sandbox] = session
        self._track(req.sandbox, handoff)
        return ProxySessionOpened(
            sandbox=req.sandbox,
            http_port=session.http_port,
            socks_port=session.socks_port,
            address=LOOPBACK,
            relaxed=relaxed,
            **handoff,
        )

    def _track(self, sandbox: str, handoff: dict) -> None:
        """A new session: remember its hand-off token (if this service takes hand-offs), update the gauge."""
        if handoff:
            self._tokens[sandbox] = handoff["token"]
        self._gauge()

    async def _open_session(self, sandbox: str, network, listen: bool):
        from fence.proxy.session import Session  # lazy: the proxies themselves (~30 ms), only once a session serves

        session = Session(
            sandbox,
            network,
            loop=self.loop,
            resolver=self.resolver,
            emit=self._emit,
            stats=self._metrics_stats(),
            **self.session_options,
        )
        if listen:
            try:
                await session.listen(LOOPBACK, network.http_proxy_port, network.socks_proxy_port)
            except OSError:
                await session.close()
                raise
        return session

    async def close(self, req: ProxySessionClose) -> ProxySessionClosed:
        session = self.sessions.pop(req.sandbox, None)
        self._tokens.pop(req.sandbox, None)
        if session is not None and not isinstance(session, _Idle):
            await self._on_loop(session.close())
        self._gauge()
        return ProxySessionClosed(sandbox=req.sandbox, existed=session is not None)

    # --- bridges (in process) -----------------------------------------------------------------
    def attach(self, sandbox: str, sock_http=None, sock_socks=None) -> None:
        """Serve listening sockets made inside ``sandbox``'s network namespace (ownership passes here).

        Call from a thread that is not running the proxy loop (a lone run's
        main thread), after ``session.open``; returns once they are served.
        On the proxy loop, ``await attach_async(...)`` instead.
        """
        import asyncio  # lazy: only with a proxy loop, which a lone run starts on first use (asyncio ~35 ms)

        loop, on_it = self._proxy_loop()
        if on_it:
            raise RuntimeError("attach() would block the proxy loop: await attach_async() there")
        asyncio.run_coroutine_threadsafe(self.attach_async(sandbox, sock_http, sock_socks), loop).result(30)

    async def attach_async(self, sandbox: str, sock_http=None, sock_socks=None) -> None:
        """``attach`` for callers on the proxy loop (a supervised proxy service process)."""
        session = self.sessions.get(sandbox)
        if session is None:
            raise ServiceError(f"no proxy session {sandbox}", "not_found")
        if isinstance(session, _Idle):
            session = await self._open_session(sandbox, session.network, listen=False)
            self.sessions[sandbox] = session
        session.serve(sock_http, sock_socks)

    # --- hand-off from other processes (a supervisor's proxy) ---------------------------------
    async def on_start(self, bus) -> None:
        if self.handoff:
            await self._on_loop(self._start_handoff())

    async def _start_handoff(self) -> None:
        # lazy: only a supervisor's proxy process takes hand-offs (~3.5 ms)
        from fence.proxy.handoff import HandoffServer

        server = HandoffServer(self.handoff, self._accept_handoff, loop=self.loop)
        server.start()
        self._handoff_server = server

    async def _accept_handoff(self, req, listeners: dict):
        """Serve a hand-off's sockets in its session; returns what to do when its connection ends."""
        import hmac  # lazy: only a supervisor's proxy process takes hand-offs (hmac ~3 ms)

        # lazy: only a supervisor's proxy process takes hand-offs (~3.5 ms)
        from fence.proxy.handoff import HandoffRefused

        token = self._tokens.get(req.sandbox)
        if req.sandbox not in self.sessions or token is None:
            raise HandoffRefused(
                f"no proxy session {req.sandbox} waiting for sockets (open it with "
                "fence.proxy.session.open first; a closed or already served session takes none)",
                "not_found",
            )
        if not hmac.compare_digest(token.encode(), req.token.encode()):
            raise HandoffRefused(f"wrong hand-off token for proxy session {req.sandbox}")
        del self._tokens[req.sandbox]
        await self.attach_async(req.sandbox, listeners.get("http"), listeners.get("socks"))
        session: Session = self.sessions[req.sandbox]  # attach_async made it a served Session

        async def on_end() -> None:
            if self.sessions.get(req.sandbox) is session:  # still the handed-over one: the run is gone
                del self.sessions[req.sandbox]
                self._gauge()
                await session.close()

        return on_end

    # --- events and metrics -------------------------------------------------------------------
    def _emit(self, ev) -> None:
        if self.bus is None:
            return
        if len(self._events) >= EVENT_BACKLOG:
            self._events.popleft()
            self._dropped += 1
        self._events.append(ev)
        if not self._publishing:
            assert self.loop is not None  # events come from sessions, which run on the loop
            self._publishing = True
            self.loop.create_task(self._publish())

    async def _publish(self) -> None:
        try:
            bus = self.bus
            assert bus is not None  # _emit queues events only with a bus
            while self._events:
                ev = self._events.popleft()
                try:
                    await bus.publish(event(ev.sandbox, "net"), ev)
                except Exception as e:  # the bus going away must not take the proxy with it
                    print(
                        printable(f"[fence:proxy] Warning: cannot publish a net event: {type(e).__name__}: {e}"),
                        file=sys.stderr,
                    )
                    self._events.clear()
        finally:
            self._publishing = False

    def _metrics_stats(self):
        if self.metrics is None:
            return None
        if self._proxy_stats is None:
            # lazy: only a service process with metrics (prometheus-client, ~40 ms)
            from fence.proxy.prom import ProxyStats

            self._proxy_stats = ProxyStats()
        return self._proxy_stats

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.set_gauge("fence_proxy_sessions", len(self.sessions))

    async def on_stop(self) -> None:
        if self._handoff_server is not None:
            server, self._handoff_server = self._handoff_server, None
            server.close()
        sessions = [s for s in self.sessions.values() if not isinstance(s, _Idle)]
        self.sessions.clear()
        self._tokens.clear()
        for session in sessions:
            try:
                await self._on_loop(session.close())
            except Exception:
                pass
        if self._thread is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(2)
            self._thread = None
            self.loop = None


def _running_loop():
    asyncio = sys.modules.get("asyncio")
    return asyncio._get_running_loop() if asyncio is not None else None
