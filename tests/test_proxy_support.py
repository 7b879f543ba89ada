"""Shared pieces of the proxy tests (no tests here): local servers, a proxy service, clients.

Nothing here ever resolves a real name or leaves the machine: every server
listens on 127.0.0.1 (or ::1), and the proxy's resolver hook maps names
ending in ``.test`` and ``localhost`` to 127.0.0.1 and refuses everything
else (recording each call, so tests can prove that a denied name was never
looked up).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import socket
import socketserver
import ssl
import subprocess
import threading
import time

from fence.bus import InProcessBus, run_sync
from fence.messages import Event, ProxySessionClose, ProxySessionClosed, ProxySessionOpen, ProxySessionOpened
from fence.policy import NetworkConfig
from fence.proxy.service import ProxyService
from fence.subjects import PROXY_SESSION_CLOSE, PROXY_SESSION_OPEN

CURL_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}


# --- resolver hook ------------------------------------------------------------------------
class Resolver:
    """Maps ``*.test`` and ``localhost`` to 127.0.0.1; anything else fails. Records every call."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.extra: dict[str, str] = {}

    def __call__(self, host: str, port: int):
        self.calls.append(host)
        if host in self.extra:
            ip = self.extra[host]
            return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, (ip, port))]
        if host.endswith(".test") or host == "localhost":
            return [(socket.AF_INET, ("127.0.0.1", port))]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (test resolver)")


# --- origin servers -------------------------------------------------------------------------
class OriginHandler(http.server.BaseHTTPRequestHandler):
    """Echoes what it received as JSON: method, path, headers, body; keeps connections alive."""

    protocol_version = "HTTP/1.1"
    server_version = "origin"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms Nagle/delayed-ACK stall

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        server = self.server
        assert isinstance(server, ThreadingServer)
        if server.requests is not None:
            server.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "conn": id(self.connection),
                }
            )
        if self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world\n"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.startswith("/big"):
            n = int(self.path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            self.wfile.write(b"x" * n)
            return
        data = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "host": self.headers.get("Host"),
                "headers": dict(self.headers.items()),
                "body": body.decode("latin-1"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _read_chunked(self) -> bytes:
        out = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b""):
                    pass
                return out
            out += self.rfile.read(size)
            self.rfile.readline()

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


class ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    requests: list[dict] | None = None
    """What the origin was asked, when it records (``start_origin(record=True)``)."""


def start_origin(tls_context: ssl.SSLContext | None = None, record: bool = True):
    server = ThreadingServer(("127.0.0.1", 0), OriginHandler)
    server.requests = [] if record else None
    if tls_context is not None:
        server.socket = tls_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def make_cert(directory: str, name: str) -> tuple[str, str]:
    """A self-signed certificate for ``name`` (openssl CLI); returns (cert, key) paths."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName=DNS:{name}",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class EchoServer:
    """An asyncio echo server on its own loop thread; ``half_close``: echo, then close after the peer's EOF."""

    def __init__(self, host: str = "127.0.0.1", close_on_eof: bool = True):
        self.loop = asyncio.new_event_loop()
        self.close_on_eof = close_on_eof
        self.connections = 0
        ready = threading.Event()
        outer = self

        class Echo(asyncio.Protocol):
            def connection_made(self, transport):
                self.t = transport
                outer.connections += 1

            def data_received(self, data):
                self.t.write(data)

            def eof_received(self):
                return not outer.close_on_eof  # True keeps the connection half-open

        async def start():
            self.server = await self.loop.create_server(Echo, host, 0, backlog=2048)
            self.port = self.server.sockets[0].getsockname()[1]

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(5)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# --- a tiny upstream HTTP proxy --------------------------------------------------------------
class UpstreamProxy:
    """An http:// upstream proxy for the defaultAction "proxy" tests (threads, blocking sockets).

    Every host goes to 127.0.0.1 (same port); hosts containing "refuse" get
    403.  ``log`` records (method, target) of every request it received.
    """

    def __init__(self) -> None:
        self.log: list[tuple[str, str, str]] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            head, rest = head.split(b"\r\n\r\n", 1)
            method, target, _ = head.split(b"\r\n")[0].decode().split(" ")
            self.log.append((method, target, head.decode("latin-1")))
            if "refuse" in target:
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            if method == "CONNECT":
                port = int(target.rsplit(":", 1)[1])
                up = socket.create_connection(("127.0.0.1", port))
                conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
                _pump(conn, up, rest)
                return
            authority = target.split("://", 1)[1].split("/", 1)[0]
            port = int(authority.rsplit(":", 1)[1]) if ":" in authority else 80
            path = "/" + target.split("://", 1)[1].split("/", 1)[1] if "/" in target.split("://", 1)[1] else "/"
            lines = head.split(b"\r\n")
            lines[0] = f"{method} {path} HTTP/1.1".encode()
            lines = [line for line in lines if not line.lower().startswith((b"connection:", b"proxy-"))]
            up = socket.create_connection(("127.0.0.1", port))
            up.sendall(b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n" + rest)
            _pump(conn, up, b"")

    def close(self) -> None:
        # close() alone leaves the port listening: the thread blocked in accept() holds the socket open
        self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)
        self.sock.close()


def _pump(a: socket.socket, b: socket.socket, first: bytes) -> None:
    if first:
        b.sendall(first)

    def one_way(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    t = threading.Thread(target=one_way, args=(b, a), daemon=True)
    t.start()
    one_way(a, b)
    t.join(10)
    b.close()


# --- the proxy under test ------------------------------------------------------------------
class Proxy:
    """A ProxyService on the in-process bus (thread mode, as in a lone run) with one open session."""

    def __init__(self, service: ProxyService, bus: InProcessBus, opened: ProxySessionOpened, events: list):
        self.service, self.bus, self.opened, self.events = service, bus, opened, events
        self.http_port, self.socks_port = opened.http_port, opened.socks_port
        self.url = f"http://127.0.0.1:{opened.http_port}"

    def session(self):
        return self.service.sessions[self.opened.sandbox]

    def wait_events(self, n: int, timeout: float = 5.0) -> list:
        end = time.monotonic() + timeout
        while len(self.events) < n and time.monotonic() < end:
            time.sleep(0.01)
        return list(self.events)


class ProxyFactory:
    def __init__(self, resolver: Resolver):
        self.resolver = resolver
        self.bus = InProcessBus()
        self.events: dict[str, list] = {}
        self.service: ProxyService | None = None
        self._n = 0

    def start(self, metrics=None, collect_events: bool = True, **session_options) -> None:
        self.service = ProxyService(metrics, resolver=self.resolver, session_options=session_options)
        run_sync(self.service.start(self.bus))
        if not collect_events:
            return

        async def on_event(ev) -> None:
            self.events.setdefault(ev.sandbox, []).append(ev)

        run_sync(self.bus.subscribe("fence.events.*.net", Event, on_event))

    def open(self, **network) -> Proxy:
        self._n += 1
        sandbox = f"{os.getpid():x}{self._n:04x}"
        opened = run_sync(
            self.bus.request(
                PROXY_SESSION_OPEN,
                ProxySessionOpen(sandbox=sandbox, network=NetworkConfig(**network)),
                ProxySessionOpened,
                timeout=10,
            )
        )
        assert self.service is not None, "start() first"
        return Proxy(self.service, self.bus, opened, self.events.setdefault(sandbox, []))

    def close(self, proxy: Proxy) -> ProxySessionClosed:
        return run_sync(
            self.bus.request(
                PROXY_SESSION_CLOSE, ProxySessionClose(sandbox=proxy.opened.sandbox), ProxySessionClosed, timeout=10
            )
        )

    def stop(self) -> None:
        if self.service is not None:
            run_sync(self.service.stop())


# --- clients ---------------------------------------------------------------------------------
def curl(*args: str, timeout: float = 15) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, env=CURL_ENV, timeout=timeout
    )


def raw_exchange(port: int, data: bytes, timeout: float = 5.0, host: str = "127.0.0.1") -> bytes:
    """Send ``data`` to the proxy, half-close, read everything until the proxy closes."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        return read_response(s)


def read_response(s: socket.socket) -> bytes:
    """One HTTP response (head + Content-Length body), or what arrived before EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


def body_of(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in response else b""


def connect_tunnel(port: int, target: bytes, timeout: float = 5.0) -> tuple[socket.socket, bytes]:
    """CONNECT through the proxy; returns (socket, response head)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    return s, head


def socks_connect(
    port: int, atyp: int, addr: bytes, dport: int, cmd: int = 1, methods: bytes = b"\x00", timeout: float = 5.0
) -> tuple[socket.socket, bytes]:
    """A raw SOCKS5 handshake; returns (socket, the reply bytes)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(b"\x05" + bytes([len(methods)]) + methods)
    choice = s.recv(2)
    if choice != b"\x05\x00":
        return s, choice
    if atyp == 3:
        addr = bytes([len(addr)]) + addr
    s.sendall(bytes([5, cmd, 0, atyp]) + addr + dport.to_bytes(2, "big"))
    reply = b""
    while len(reply) < 10:
        chunk = s.recv(64)
        if not chunk:
            break
        reply += chunk
    return s, reply


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))
