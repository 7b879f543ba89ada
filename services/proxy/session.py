"""One sandbox's proxy session: its filter, its listeners, its connections, its events.

A session is the unit of identity: every connection accepted on one of its
listening sockets is that sandbox's traffic, decided by that sandbox's
``NetworkConfig``.  The listeners are either

* its own, on host loopback random ports (``await session.listen()``:
  relaxed ``"*"`` mode, lone runs and tests), or
* passed in (``session.serve(sock_http, sock_socks)``): listening sockets a
  bridge created inside the sandbox's network namespace.  The session owns
  them from then on and closes them at ``close()`` (they keep the namespace
  alive).

Both may be used on one session.  All methods run on the session's loop.

Name resolution goes through ``resolver`` (default: ``loop.getaddrinfo``),
only ever for a canonical name that the filter allowed, never before
deciding.  Tests point it at 127.0.0.1.

Hostile clients: handshakes have a deadline (``head_timeout``: slowloris),
heads a size cap, every connection handler catches everything (a bad client
never reaches the loop), and a session holds at most ``max_connections``
connections (more are accepted and closed at once), so one sandbox cannot
take all of a shared proxy's file descriptors.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from fence.domains import ALLOW, DENY, DomainFilter, HostError, canonical_host, display_host, is_ip, split_host_port
from fence.messages import NetDecisionEvent
from fence.netintent import forwards_upstream
from fence.proxy.conn import DeadlineExceeded, connect
from fence.proxy.relay import COPY_CHUNK, HALF_OPEN_TIMEOUT, Relay
from fence.textsafe import printable

Resolver = Callable[[str, int], "Awaitable[list[tuple[int, tuple]]] | list[tuple[int, tuple]]"]
"""(canonical name, port) -> [(family, sockaddr), ...]; may be sync or async; raises OSError on failure."""

DIAL_TIMEOUT = 10.0
HEAD_TIMEOUT = 30.0
IDLE_TIMEOUT = 60.0
RESPONSE_TIMEOUT = 120.0
MAX_HEAD = 64 * 1024
MAX_CONNECTIONS = 4096


class DialError(Exception):
    """The upstream could not be reached; ``kind`` picks the HTTP status / SOCKS5 reply."""

    def __init__(self, kind: str, message: str, rule: str = ""):
        super().__init__(message)
        self.kind = kind  # "refused" | "net" | "host" | "timeout" | "dns" | "denied" | "other"
        self.message = message
        self.rule = rule


def _dial_kind(err: OSError) -> str:
    code = err.errno
    if code == errno.ECONNREFUSED:
        return "refused"
    if code in (errno.ENETUNREACH, errno.ENETDOWN):
        return "net"
    if code in (errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ETIMEDOUT):
        return "host"
    return "other"


class Upstream:
    """The parsed ``network.upstreamProxy`` (http://[user:pass@]host[:port])."""

    __slots__ = ("host", "port", "auth", "url")

    def __init__(self, url: str):
        self.url = url
        rest = url.split("://", 1)[1]
        authority = rest.split("/", 1)[0].split("?", 1)[0]
        self.auth = b""
        if "@" in authority:
            userinfo, authority = authority.rsplit("@", 1)
            self.auth = b"Proxy-Authorization: Basic " + base64.b64encode(unquote(userinfo).encode()) + b"\r\n"
        host, self.port = split_host_port(authority, 80)
        self.host = canonical_host(host)


class Session:
    """Filtering HTTP + SOCKS5 proxies for one sandbox."""

    def __init__(
        self,
        sandbox: str,
        network,
        *,
        loop=None,
        resolver: Resolver | None = None,
        emit: Callable[[NetDecisionEvent], None] | None = None,
        stats: Any = None,
        dial_timeout: float = DIAL_TIMEOUT,
        head_timeout: float = HEAD_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        response_timeout: float = RESPONSE_TIMEOUT,
        half_open_timeout: float = HALF_OPEN_TIMEOUT,
        max_head: int = MAX_HEAD,
        max_connections: int = MAX_CONNECTIONS,
    ):
        self.sandbox = sandbox
        self.network = network
        self.upstream: Upstream | None = None
        if network is not None and forwards_upstream(network):
            try:
                self.upstream = Upstream(network.upstream_proxy)
            except (HostError, IndexError, ValueError) as e:  # validated earlier; fail closed if not
                print(
                    printable(
                        f"[fence:proxy] Warning: ignoring network.upstreamProxy {network.upstream_proxy!r}: "
                        f"{e}; traffic matching no rule is denied"
                    ),
                    file=sys.stderr,
                )
        if network is None:
            self.filter = DomainFilter(None)
        else:  # grey traffic goes upstream only when there is an upstream to go to
            self.filter = DomainFilter(
                network.allowed_domains, network.denied_domains, "proxy" if self.upstream is not None else ""
            )
        self.loop = loop or asyncio.get_running_loop()
        self.resolver = resolver
        self.emit = emit
        self.stats = stats
        self.dial_timeout, self.head_timeout, self.idle_timeout = dial_timeout, head_timeout, idle_timeout
        self.response_timeout, self.half_open_timeout = response_timeout, half_open_timeout
        self.max_head, self.max_connections = max_head, max_connections
        self.http_port = 0
        self.socks_port = 0
        self.listeners: list[socket.socket] = []
        self.tasks: set[asyncio.Task] = set()
        self.relays: set[Relay] = set()
        self.connections = 0
        self.closed = False
        self._decisions: dict = {}
        self._relay_buf = bytearray(COPY_CHUNK)  # one copy-mode buffer for all relays (one loop, sync use)

    # --- listeners ---------------------------------------------------------------------------
    async def listen(self, host: str = "127.0.0.1", http_port: int = 0, socks_port: int = 0) -> tuple[int, int]:
        """Open this session's own listeners on ``host`` (random ports by default); returns the ports."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        socks = []
        try:
            for port in (http_port, socks_port):
                s = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                socks.append(s)
                if port:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
                s.listen(1024)
        except OSError:
            for s in socks:
                s.close()
            raise
        self.serve(socks[0], socks[1])
        return self.http_port, self.socks_port

    def serve(self, sock_http: socket.socket | None = None, sock_socks: socket.socket | None = None) -> None:
        """Serve listening sockets created elsewhere (e.g. inside the sandbox's netns); takes ownership."""
        if self.closed:
            raise RuntimeError("session is closed")
        from fence.proxy.http import handle_http  # lazy: import cycle (http imports DialError from here)
        from fence.proxy.socks import handle_socks  # lazy: import cycle (socks imports DialError from here)

        for sock, handler, attr in ((sock_http, handle_http, "http_port"), (sock_socks, handle_socks, "socks_port")):
            if sock is None:
                continue
            sock.setblocking(False)
            self.listeners.append(sock)
            if not getattr(self, attr):
                try:
                    setattr(self, attr, sock.getsockname()[1])
                except (OSError, IndexError, TypeError):
                    pass
            self.loop.add_reader(sock.fileno(), self._accept, sock, handler)

    def _accept(self, lsock: socket.socket, handler) -> None:
        for _ in range(64):
            try:
                conn, _addr = lsock.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause(lsock, handler)  # out of descriptors: back off instead of spinning
                return
            if self.connections >= self.max_connections:
                conn.close()
                continue
            conn.setblocking(False)
            if conn.family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections += 1
            task = self.loop.create_task(self._run(handler, conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _pause(self, lsock: socket.socket, handler) -> None:
        fd = lsock.fileno()
        self.loop.remove_reader(fd)

        def resume() -> None:
            if not self.closed and lsock.fileno() == fd:
                self.loop.add_reader(fd, self._accept, lsock, handler)

        self.loop.call_later(0.1, resume)

    async def _run(self, handler, conn: socket.socket) -> None:
        try:
            await handler(self, conn)
        except asyncio.CancelledError:
            conn.close()
            raise
        except BaseException:  # a hostile or broken client must never reach the loop
            conn.close()
        finally:
            self.connections -= 1

    # --- deciding ---------------------------------------------------------------------------
    def check(self, raw_host: str):
        """(canonical host, Decision) for a host as the client wrote it; raises ``HostError``.

        Cached per session (bounded): a client repeating a host costs a dict lookup.
        """
        hit = self._decisions.get(raw_host)
        if hit is not None:
            return hit
        host = canonical_host(raw_host)
        hit = (host, self.filter.decide(host))
        if len(self._decisions) >= 1024:
            self._decisions.clear()
        self._decisions[raw_host] = hit
        return hit

    # --- tunnels --------------------------------------------------------------------------
    def relay(self, client: socket.socket, upstream: socket.socket) -> Relay:
        """Hand both sockets to a splice relay (the session closes it at ``close()``)."""
        self.connections += 1  # a tunnel still holds descriptors after its handler returned
        relay = Relay(self.loop, client, upstream, self._relay_closed, self.half_open_timeout, self._relay_buf)
        self.relays.add(relay)
        if self.stats is not None:
            self.stats.tunnel_opened()
        return relay.start()

    def _relay_closed(self, relay: Relay) -> None:
        self.relays.discard(relay)
        self.connections -= 1
        if self.stats is not None:
            self.stats.tunnel_closed(relay.up, relay.down)

    # --- dialling ----------------------------------------------------------------------------
    async def resolve(self, host: str, port: int) -> list[tuple[int, tuple]]:
        if self.resolver is not None:
            result = self.resolver(host, port)
            if hasattr(result, "__await__"):
                result = await result
            return list(result)
        infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        return [(family, sockaddr) for family, _t, _p, _c, sockaddr in infos]

    async def dial(self, host: str, port: int, check_resolved: bool = True) -> socket.socket:
        """Connect to a canonical host (already decided); raises ``DialError``.

        A name's resolved addresses are checked against the denied IP
        patterns first (deny wins after DNS too).
        """
        deadline = self.loop.time() + self.dial_timeout
        try:
            if is_ip(host):
                ip_family = socket.AF_INET6 if ":" in host else socket.AF_INET
                addrs: list[tuple[int, tuple]] = [(ip_family, (host, port))]
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        addrs = await self.resolve(host, port)
                except TimeoutError:
                    raise DeadlineExceeded() from None
                except OSError as e:
                    raise DialError("dns", f"cannot resolve {host}: {e.strerror or e}") from None
                if not addrs:
                    raise DialError("dns", f"cannot resolve {host}: no addresses")
                if check_resolved:
                    for _family, sockaddr in addrs:
                        rule = self.filter.denies_address(_plain_ip(sockaddr[0]))
                        if rule:
                            raise DialError("denied", f"{host} resolves to {sockaddr[0]}, which is denied", rule)
            last: OSError | None = None
            for family, sockaddr in addrs:
                try:
                    return await connect(self.loop, family, sockaddr, deadline)
                except OSError as e:
                    last = e
            assert last is not None
            raise DialError(_dial_kind(last), f"{display_host(host)}:{port}: {(last.strerror or str(last)).lower()}")
        except DeadlineExceeded:
            raise DialError(
                "timeout", f"{display_host(host)}:{port}: connection timed out after {self.dial_timeout:g}s"
            ) from None

    # --- events ----------------------------------------------------------------------------
    def record(
        self,
        proto: str,
        method: str,
        host: str,
        port: int,
        url: str,
        decision,
        status: int,
        outcome: str,
        started: float,
        detail: str = "",
        reason: str = "",
        rule: str = "",
    ) -> None:
        """Publish one decision (``NetDecisionEvent``) and count it."""
        if self.stats is not None:
            self.stats.request(proto, outcome)
        if self.emit is None:
            return
        self.emit(
            NetDecisionEvent(
                sandbox=self.sandbox,
                ts=time.time(),
                proto=proto,
                method=method,
                host=host,
                port=port,
                url=url,
                decision=decision.action if decision is not None else DENY,
                reason=reason or (decision.reason if decision is not None else "invalid"),
                rule=rule or (decision.rule if decision is not None else ""),
                status=status,
                outcome=outcome,
                duration_ms=round((time.monotonic() - started) * 1000, 3),
                detail=detail,
            )
        )

    # --- teardown ----------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop listening, cut every connection and tunnel, close passed-in sockets."""
        if self.closed:
            return
        self.closed = True
        for sock in self.listeners:
            try:
                self.loop.remove_reader(sock.fileno())
            except (OSError, ValueError):
                pass
            sock.close()
        self.listeners.clear()
        for relay in list(self.relays):
            relay.close()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _plain_ip(ip: str) -> str:
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    return ip


__all__ = ["Session", "DialError", "Upstream", "ALLOW", "DENY"]
