"""The HTTP proxy: CONNECT tunnels and absolute-URI plain HTTP with keep-alive (docs/compatibility.md#network).

* ``CONNECT host:port`` (port 443 when missing): the canonical host is
  decided; allowed -> dial (10 s), ``200 Connection Established``, then the
  splice relay; denied -> ``403``; grey with ``defaultAction: "proxy"`` ->
  a CONNECT through the upstream proxy (its refusal -> 403, unreachable ->
  502); dial failure -> ``502``.
* Plain HTTP: only the absolute form ``http://host[:port]/path`` (port 80 by
  default).  The URI's host is what is decided *and* what is dialled; the
  ``Host`` header is replaced by it (RFC 9112 §3.2.2), so a mismatching
  ``Host`` bypasses nothing.  ``Proxy-Connection`` and ``Proxy-Authorization``
  are dropped.  Bodies are framed both ways (Content-Length, chunked,
  close-delimited; HEAD/1xx/204/304 have none) so the client connection and
  one cached upstream connection stay alive between requests; ``101
  Switching Protocols`` turns the exchange into a tunnel.  ``https://``
  absolute URIs get 400 (use CONNECT).
* Blocked: ``403`` with ``Connection blocked by network allowlist`` and a
  second line naming the config key that decides (``fence.domains.block_hint``).
  Errors as Go's ``http.Error``: ``Content-Type: text/plain; charset=utf-8``,
  ``X-Content-Type-Options: nosniff``.
* Hostile input: the head must arrive within ``head_timeout`` and fit in
  ``max_head`` bytes (else 431 / close); bad syntax, obs-folded headers,
  bare CR/LF, both Content-Length and Transfer-Encoding, or conflicting
  lengths -> 400 and close.
"""

from __future__ import annotations

import asyncio
import re
import time
from email.utils import formatdate

from fence.domains import ALLOW, DENY, Decision, HostError, block_hint, display_host, split_host_port
from fence.proxy.conn import Conn, DeadlineExceeded, PeerClosed, ProtocolError
from fence.proxy.session import DialError

BLOCKED = "Connection blocked by network allowlist\n"
ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"
REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    505: "HTTP Version Not Supported",
}
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
MAX_LINE = 8192

_date_cache = (0, "")
"""(second, its Date header value): one tuple, replaced whole."""


def _date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def error_response(status: int, body: str, close: bool = False) -> bytes:
    data = body.encode()
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n"
        f"Date: {_date()}\r\nContent-Length: {len(data)}\r\n"
    )
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + data


def blocked_body(host: str, decision: Decision) -> str:
    return BLOCKED + block_hint(host, decision) + "\n"


class Request:
    __slots__ = ("method", "target", "version", "headers")

    def __init__(self, method: str, target: str, version: bytes, headers: list[tuple[bytes, bytes, bytes]]):
        self.method, self.target, self.version, self.headers = method, target, version, headers

    def get(self, lname: bytes) -> list[bytes]:
        return [v for n, _, v in self.headers if n == lname]


def parse_headers(lines: list[bytes]) -> list[tuple[bytes, bytes, bytes]]:
    """[(lowercase name, name, value)], strict: no obs-fold, no space before ':', no bare CR/LF or NUL."""
    headers = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise ProtocolError(f"malformed header line {line[:80]!r}")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise ProtocolError(f"control character in header {name.decode()}")
        headers.append((name.lower(), name, value))
    return headers


def parse_request(head: bytes) -> Request:
    lines = head[:-4].split(b"\r\n")
    while lines and not lines[0]:
        lines.pop(0)  # RFC 9112 §2.2: ignore empty lines before the request line
    if not lines:
        raise ProtocolError("empty request")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise ProtocolError("malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or not target:
        raise ProtocolError("malformed request line")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if version.startswith(b"HTTP/"):
            raise ProtocolError("unsupported HTTP version", 505)
        raise ProtocolError("malformed request line")
    try:
        target_text = target.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("request target is not UTF-8") from None
    if any(c <= " " or c == "\x7f" for c in target_text):
        raise ProtocolError("control character in request target")
    return Request(method.decode("ascii"), target_text, version, parse_headers(lines[1:]))


def _body_framing(headers: list[tuple[bytes, bytes, bytes]]) -> tuple[str, int]:
    """("none"|"length"|"chunked"|"close", length) from a message's headers; ProtocolError when ambiguous."""
    te = [v for n, _, v in headers if n == b"transfer-encoding"]
    cl = [v for n, _, v in headers if n == b"content-length"]
    if te:
        if cl:
            raise ProtocolError("both Transfer-Encoding and Content-Length")
        codings = [c.strip().lower() for v in te for c in v.split(b",")]
        if codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
            raise ProtocolError("unsupported Transfer-Encoding", 501)
        return "chunked", 0
    if cl:
        values = {c.strip() for v in cl for c in v.split(b",")}
        if len(values) != 1:
            raise ProtocolError("conflicting Content-Length")
        value = values.pop()
        if not value.isdigit() or len(value) > 18:
            raise ProtocolError("invalid Content-Length")
        return "length", int(value)
    return "none", 0


def _has_token(headers, lname: bytes, token: bytes) -> bool:
    return any(token in [t.strip().lower() for t in v.split(b",")] for n, _, v in headers if n == lname)


# --- the connection loop --------------------------------------------------------------------


async def handle_http(session, sock) -> None:
    """Serve one client connection (closes it unless a tunnel took it over)."""
    conn = Conn(session.loop, sock)
    ex = _Exchange(session, conn)
    try:
        timeout = session.head_timeout
        while True:
            started = time.monotonic()
            conn.deadline = session.loop.time() + timeout  # slowloris: the whole head within the deadline
            try:
                head = await conn.read_until(b"\r\n\r\n", session.max_head)
            except DeadlineExceeded:
                conn.deadline = None
                if conn.buf:
                    await _send_quietly(conn, error_response(408, "Request Timeout\n", close=True))
                return
            except ProtocolError as e:
                session.record("http", "", "", 0, "", None, e.status, "error", started, str(e))
                await _send_quietly(conn, error_response(e.status, f"{REASONS[e.status]}\n{e}\n", close=True))
                return
            except (PeerClosed, OSError):
                return
            if head is None:
                return
            conn.deadline = None  # from here on, each phase bounds its own waits
            try:
                req = parse_request(head)
            except ProtocolError as e:
                session.record("http", "", "", 0, "", None, e.status, "error", started, str(e))
                await _send_quietly(conn, error_response(e.status, f"{REASONS[e.status]}\n{e}\n", close=True))
                return
            if req.method == "CONNECT":
                result = await ex.connect(req, started)
            else:
                result = await ex.plain(req, started)
            if result == "handed":
                ex.handed = True
                return
            if result != "keep":
                return
            timeout = session.idle_timeout
    finally:
        ex.close()


async def _send_quietly(conn: Conn, data: bytes) -> None:
    conn.deadline = conn.loop.time() + 5
    try:
        await conn.sendall(data)
    except (OSError, DeadlineExceeded):
        pass


class _Exchange:
    """Per client connection: the request handlers and one cached upstream connection."""

    __slots__ = ("session", "conn", "cache_key", "cache", "handed")

    def __init__(self, session, conn: Conn):
        self.session, self.conn = session, conn
        self.cache_key = None
        self.cache: Conn | None = None
        self.handed = False

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self.cache = None
        if not self.handed:
            self.conn.close()

    async def _reply(self, data: bytes) -> bool:
        try:
            await self.conn.sendall(data)
            return True
        except OSError:
            return False

    # --- CONNECT -----------------------------------------------------------------------
    async def connect(self, req: Request, started: float) -> str:
        session, conn = self.session, self.conn
        try:
            raw_host, port = split_host_port(req.target, 443)
        except HostError as e:
            session.record("http", "CONNECT", req.target, 0, "", None, 400, "error", started, str(e))
            await self._reply(error_response(400, f"Bad Request\n{e}\n", close=True))
            return "close"
        try:
            host, decision = session.check(raw_host)
        except HostError as e:
            session.record(
                "http",
                "CONNECT",
                raw_host,
                port,
                f"https://{raw_host}:{port}",
                None,
                403,
                "blocked",
                started,
                str(e),
                reason="invalid",
            )
            await self._reply(error_response(403, BLOCKED + f"{e}\n"))
            return "keep"
        url = f"https://{display_host(host)}:{port}"
        if decision.action == DENY:
            session.record("http", "CONNECT", host, port, url, decision, 403, "blocked", started)
            await self._reply(error_response(403, blocked_body(host, decision)))
            return "keep"
        if decision.action == ALLOW:
            try:
                upstream = await session.dial(host, port)
            except DialError as e:
                return await self._dial_failed("CONNECT", host, port, url, decision, e, started)
            leftover = b""
        else:  # PROXY: through the upstream proxy
            result = await self._upstream_connect(host, port, url, decision, started)
            if isinstance(result, str):
                return result
            upstream, leftover = result
        session.record("http", "CONNECT", host, port, url, decision, 200, "allowed", started)
        try:
            await conn.sendall(ESTABLISHED)
            if conn.buf:  # the client did not wait for our 200 (e.g. a TLS ClientHello already sent)
                await Conn(session.loop, upstream).sendall(conn.buf)
                conn.buf = b""
            if leftover:
                await conn.sendall(leftover)
        except OSError:
            upstream.close()
            return "close"
        session.relay(conn.sock, upstream)
        return "handed"

    async def _dial_failed(
        self, method: str, host: str, port: int, url: str, decision, e: DialError, started: float
    ) -> str:
        session = self.session
        if e.kind == "denied":
            blocked = Decision(DENY, "denied", e.rule)
            session.record(
                "http",
                method,
                host,
                port,
                url,
                decision,
                403,
                "blocked",
                started,
                e.message,
                reason="resolved-denied",
                rule=e.rule,
            )
            await self._reply(error_response(403, BLOCKED + f"{e.message}: {block_hint(host, blocked)}\n"))
            return "keep"
        session.record("http", method, host, port, url, decision, 502, "error", started, e.message)
        await self._reply(error_response(502, f"Bad Gateway\n{e.message}\n"))
        return "keep"

    async def _dial_upstream_proxy(self) -> Conn:
        session = self.session
        up = session.upstream
        sock = await session.dial(up.host, up.port, check_resolved=False)
        return Conn(session.loop, sock)

    async def _upstream_connect(self, host: str, port: int, url: str, decision, started: float):
        session = self.session
        hostport = f"{display_host(host)}:{port}".encode()
        try:
            upc = await self._dial_upstream_proxy()
        except DialError as e:
            return await self._upstream_unreachable("CONNECT", host, port, url, decision, e.message, started)
        try:
            async with asyncio.timeout(session.response_timeout):
                await upc.sendall(
                    b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (hostport, hostport, session.upstream.auth)
                )
                head = await upc.read_until(b"\r\n\r\n", session.max_head)
            if head is None:
                raise PeerClosed("upstream proxy closed the connection")
            status = _status_of(head)
        except (OSError, TimeoutError, PeerClosed, ProtocolError) as e:
            upc.close()
            return await self._upstream_unreachable(
                "CONNECT", host, port, url, decision, f"upstream proxy: {e or type(e).__name__}", started
            )
        if not 200 <= status < 300:
            upc.close()
            return await self._upstream_refused("CONNECT", host, port, url, decision, status, started)
        return upc.sock, upc.buf

    async def _upstream_unreachable(self, method, host, port, url, decision, message, started) -> str:
        self.session.record("http", method, host, port, url, decision, 502, "error", started, message)
        await self._reply(error_response(502, f"Bad Gateway\nupstream proxy {self.session.upstream.url}: {message}\n"))
        return "keep"

    async def _upstream_refused(self, method, host, port, url, decision, status, started) -> str:
        text = (
            BLOCKED + f'The upstream proxy (network.upstreamProxy) refused "{display_host(host)}:{port}" '
            f"(HTTP {status}).\n"
        )
        self.session.record(
            "http", method, host, port, url, decision, 403, "blocked", started, f"upstream proxy answered {status}"
        )
        await self._reply(error_response(403, text))
        return "keep"

    # --- plain HTTP ------------------------------------------------------------------------
    async def plain(self, req: Request, started: float) -> str:
        session, conn = self.session, self.conn
        target = req.target
        lower = target[:8].lower()
        try:
            if not lower.startswith("http://"):
                if lower.startswith("https://"):
                    raise ProtocolError("https:// URLs must be proxied with CONNECT")
                raise ProtocolError("not a proxy request: expected an absolute http:// URL")
            rest = target[7:]
            cut = min([i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0] or [len(rest)])
            authority, path = rest[:cut], rest[cut:].split("#", 1)[0]
            if not path.startswith("/"):
                path = "/" + path
            if "@" in authority:
                raise ProtocolError("user information in the URL is not accepted")
            try:
                raw_host, port = split_host_port(authority, 80)
            except HostError as e:
                raise ProtocolError(str(e)) from None
            framing, length = _body_framing(req.headers)
        except ProtocolError as e:
            session.record("http", req.method, "", 0, target, None, e.status, "error", started, str(e))
            await self._reply(error_response(e.status, f"{REASONS[e.status]}\n{e}\n", close=True))
            return "close"
        has_body = framing != "none" and not (framing == "length" and length == 0)
        try:
            host, decision = session.check(raw_host)
        except HostError as e:
            session.record(
                "http", req.method, raw_host, port, target, None, 403, "blocked", started, str(e), reason="invalid"
            )
            await self._reply(error_response(403, BLOCKED + f"{e}\n", close=has_body))
            return "close" if has_body else "keep"
        if decision.action == DENY:
            session.record("http", req.method, host, port, target, decision, 403, "blocked", started)
            await self._reply(error_response(403, blocked_body(host, decision), close=has_body))
            return "close" if has_body else "keep"

        via_upstream = decision.action != ALLOW
        hostport = display_host(host) + (f":{port}" if port != 80 else "")
        lines = [
            f"{req.method} {'http://' + hostport + path if via_upstream else path} ".encode() + req.version,
            b"Host: " + hostport.encode(),
        ]
        lines += [
            name + b": " + value
            for lname, name, value in req.headers
            if lname not in (b"host", b"proxy-connection", b"proxy-authorization")
        ]
        head = b"\r\n".join(lines) + b"\r\n" + (session.upstream.auth if via_upstream else b"") + b"\r\n"
        client_close = _has_token(req.headers, b"connection", b"close") or (
            req.version == b"HTTP/1.0" and not _has_token(req.headers, b"connection", b"keep-alive")
        )

        expect = has_body and _has_token(req.headers, b"expect", b"100-continue")
        reusable = True
        key = ("upstream",) if via_upstream else (host, port)
        upc = None
        if self.cache is not None and self.cache_key == key:
            upc, self.cache = self.cache, None
            reused = True
        else:
            if self.cache is not None:
                self.cache.close()
                self.cache = None
            reused = False
        try:
            resp_head = None
            for attempt in (0, 1):
                if upc is None:
                    try:
                        upc = await (self._dial_upstream_proxy() if via_upstream else self._dial_conn(host, port))
                    except DialError as e:
                        if via_upstream:
                            await self._upstream_unreachable(
                                req.method, host, port, target, decision, e.message, started
                            )
                        else:
                            await self._dial_failed(req.method, host, port, target, decision, e, started)
                        return "close" if has_body else "keep"
                    reused = False
                try:
                    await upc.sendall(head)
                    if expect:  # the client waits for "100 Continue" before it sends the body
                        async with asyncio.timeout(session.response_timeout):
                            resp_head = await upc.read_until(b"\r\n\r\n", session.max_head)
                        if resp_head is not None and _status_of(resp_head) == 100:
                            await conn.sendall(resp_head)
                            resp_head = None
                        elif resp_head is not None:
                            client_close = True  # a final answer instead: the unsent body must not follow
                            reusable = False
                    if has_body and resp_head is None:
                        await _copy_body(conn, upc, framing, length, session)
                    if resp_head is None:
                        async with asyncio.timeout(session.response_timeout):
                            resp_head = await upc.read_until(b"\r\n\r\n", session.max_head)
                except (OSError, PeerClosed) as e:
                    if reused and not has_body and attempt == 0:
                        upc.close()
                        upc = None
                        continue  # a kept-alive upstream connection went stale: once more, fresh
                    raise _UpstreamFailed(str(e) or type(e).__name__) from None
                if resp_head is None:
                    if reused and not has_body and attempt == 0:
                        upc.close()
                        upc = None
                        continue
                    raise _UpstreamFailed("upstream closed the connection without a response")
                break
            assert upc is not None and resp_head is not None  # the loop breaks only with both
            return await self._relay_response(
                req, upc, resp_head, client_close, key, host, port, target, decision, started, reusable
            )
        except (_UpstreamFailed, ProtocolError, TimeoutError) as e:
            if upc is not None:
                upc.close()
            message = str(e) or type(e).__name__
            session.record("http", req.method, host, port, target, decision, 502, "error", started, message)
            await self._reply(error_response(502, f"Bad Gateway\n{message}\n", close=True))
            return "close"
        except (OSError, PeerClosed):
            if upc is not None:
                upc.close()
            return "close"

    async def _dial_conn(self, host: str, port: int) -> Conn:
        return Conn(self.session.loop, await self.session.dial(host, port))

    async def _relay_response(
        self,
        req: Request,
        upc: Conn,
        resp_head: bytes,
        client_close: bool,
        key,
        host: str,
        port: int,
        target: str,
        decision,
        started: float,
        reusable: bool = True,
    ) -> str:
        session, conn = self.session, self.conn
        while True:
            status, version, headers = _parse_response(resp_head)
            if status == 101 or not 100 <= status < 200:
                break
            await conn.sendall(resp_head)  # interim (100 Continue, 103 Early Hints): pass on, read the final
            async with asyncio.timeout(session.response_timeout):
                final = await upc.read_until(b"\r\n\r\n", session.max_head)
            if final is None:
                raise _UpstreamFailed("upstream closed the connection without a response")
            resp_head = final
        if status == 407 and key == ("upstream",):
            upc.close()
            return await self._upstream_refused(req.method, host, port, target, decision, status, started)
        if status == 101 or req.method == "HEAD" or status in (204, 304):
            framing, length = "none", 0
        else:
            framing, length = _body_framing(headers)
            if framing == "none":
                framing = "close"
        session.record("http", req.method, host, port, target, decision, status, "allowed", started)
        try:
            return await self._send_response(
                req, upc, resp_head, status, version, headers, framing, length, client_close, key, reusable
            )
        except (OSError, PeerClosed, ProtocolError, TimeoutError):
            upc.close()  # the response has started: all that is left is to close
            return "close"

    async def _send_response(
        self,
        req: Request,
        upc: Conn,
        resp_head: bytes,
        status: int,
        version: bytes,
        headers,
        framing: str,
        length: int,
        client_close: bool,
        key,
        reusable: bool,
    ) -> str:
        session, conn = self.session, self.conn
        await conn.sendall(resp_head)
        if status == 101:
            if conn.buf:
                await upc.sendall(conn.buf)
                conn.buf = b""
            if upc.buf:
                await conn.sendall(upc.buf)
                upc.buf = b""
            session.relay(conn.sock, upc.sock)
            return "handed"
        if framing == "close":
            await _copy_until_eof(upc, conn, session)
            upc.close()
            return "close"
        if framing != "none":
            await _copy_body(upc, conn, framing, length, session)
        if reusable and version == b"HTTP/1.1" and not _has_token(headers, b"connection", b"close"):
            self.cache_key, self.cache = key, upc
        else:
            upc.close()
        return "close" if client_close else "keep"


class _UpstreamFailed(Exception):
    pass


def _status_of(head: bytes) -> int:
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
        raise ProtocolError(f"malformed status line {line[:80]!r}")
    return int(parts[1])


def _parse_response(head: bytes) -> tuple[int, bytes, list]:
    lines = head[:-4].split(b"\r\n")
    status = _status_of(head)
    return status, lines[0][:8], parse_headers(lines[1:])


async def _copy_exact(src: Conn, dst: Conn, n: int, what: str, progress=None) -> None:
    """Relay exactly ``n`` bytes (``PeerClosed`` naming ``what`` if src ends first); ``progress()`` per piece."""
    while n > 0:
        chunk = await src.recv(min(n, 262144))
        if not chunk:
            raise PeerClosed(f"connection closed in the middle of {what}")
        await dst.sendall(chunk)
        n -= len(chunk)
        if progress is not None:
            progress()


async def _copy_body(src: Conn, dst: Conn, framing: str, length: int, session) -> None:
    loop = session.loop
    async with asyncio.timeout(session.idle_timeout) as deadline:
        if framing == "length":

            def idle_again() -> None:
                deadline.reschedule(loop.time() + session.idle_timeout)

            await _copy_exact(src, dst, length, "a body", idle_again)
            return
        while True:  # chunked
            line = await src.read_until(b"\r\n", MAX_LINE)
            if line is None:
                raise PeerClosed("connection closed in the middle of a chunked body")
            size_text = line[:-2].split(b";", 1)[0].strip(b" \t")
            if not _HEX.fullmatch(size_text):
                raise ProtocolError("malformed chunk size")
            size = int(size_text, 16)
            await dst.sendall(line)
            if size == 0:
                while True:  # trailers, up to the empty line
                    trailer = await src.read_until(b"\r\n", session.max_head)
                    if trailer is None:
                        raise PeerClosed("connection closed in the trailers")
                    await dst.sendall(trailer)
                    if trailer == b"\r\n":
                        return
            await _copy_exact(src, dst, size, "a chunk")
            if await src.read_exact(2) != b"\r\n":
                raise ProtocolError("malformed chunk")
            await dst.sendall(b"\r\n")
            deadline.reschedule(loop.time() + session.idle_timeout)


async def _copy_until_eof(src: Conn, dst: Conn, session) -> None:
    async with asyncio.timeout(session.idle_timeout) as deadline:
        while True:
            chunk = await src.recv(262144)
            if not chunk:
                return
            await dst.sendall(chunk)
            deadline.reschedule(session.loop.time() + session.idle_timeout)
