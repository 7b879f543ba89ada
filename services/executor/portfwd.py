"""Local ports without socat: ``allowLocalOutboundPorts`` and ``-p``, relayed by fence.

* **Outbound** (``allowLocalOutbound`` + ``allowLocalOutboundPorts``): the
  listeners at the sandbox's 127.0.0.1:P and [::1]:P are made inside its
  netns by ``bridge.listen_inside`` (``plan.listen_inside``); each accepted
  connection is relayed to the host's 127.0.0.1:P (or [::1]:P; the other
  loopback when that one refuses).
* **Inbound** (``-p [ADDR:]PORT``): a normal listener on the host's ADDR:PORT;
  each accepted connection gets a socket connected to 127.0.0.1:PORT (then
  [::1]:PORT) *inside* the sandbox from ``bridge.NetnsHelper``, and is relayed.

Everything runs on plain threads in fence's process: one daemon thread per
listener (accept), two per connection (one per direction, ``os.splice``
through a pipe, so bytes never become Python objects).  Connections are
bounded (``MAX_CONNECTIONS`` at once; more are accepted and closed at once)
and everything is shut down by ``close()`` when the sandbox ends.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

from fence.executor.bridge import BridgeError, NetnsHelper
from fence.textsafe import printable

MAX_CONNECTIONS = 256
"""Relayed connections open at once per run (each costs two threads and a pipe)."""

CONNECT_TIMEOUT = 5.0
CHUNK = 1 << 16


class PortError(Exception):
    """A host listener for ``-p`` cannot be created."""


def bind_published(ports: list[tuple[str, int]]) -> list[socket.socket]:
    """Host listeners for ``-p`` (bound before the sandbox starts, so a busy port fails the run early)."""
    socks: list[socket.socket] = []
    try:
        for addr, port in ports:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((addr, port))
                sock.listen(128)
            except OSError as e:
                shown = f"[{addr}]" if family == socket.AF_INET6 else addr
                raise PortError(f"cannot listen on {shown}:{port} for --port: {e.strerror}") from None
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class Forwarder:
    """The relays of one run; ``close()`` stops accepting and cuts open connections."""

    def __init__(self, max_connections: int = MAX_CONNECTIONS, debug: bool = False):
        self.max_connections = max_connections
        self.debug = debug
        self._lock = threading.Lock()
        self._listeners: list[socket.socket] = []
        self._conns: set[socket.socket] = set()
        self._active = 0
        self._closed = False
        self._helper: NetnsHelper | None = None

    # setup ------------------------------------------------------------------------
    def outbound(self, listener: socket.socket, target: tuple[str, int]) -> None:
        """Relay connections accepted on ``listener`` (inside the sandbox) to the host's ``target``.

        A loopback target that refuses is retried on the other loopback
        (127.0.0.1 <-> ::1): a client inside resolving ``localhost`` to ::1
        reaches a host server bound to 127.0.0.1 only, as it would on the
        host, where it would have fallen back itself.
        """
        host, port = target
        other = {"127.0.0.1": "::1", "::1": "127.0.0.1"}.get(host)

        def dial() -> socket.socket:
            try:
                return socket.create_connection(target, timeout=CONNECT_TIMEOUT)
            except OSError:
                if other is None:
                    raise
                return socket.create_connection((other, port), timeout=CONNECT_TIMEOUT)

        self._serve(listener, dial, f"outbound {target[0]}:{target[1]}")

    def inbound(self, listener: socket.socket, init_pid: int, port: int) -> None:
        """Relay connections accepted on the host ``listener`` to 127.0.0.1:``port`` inside the sandbox."""
        if self._helper is None:
            self._helper = NetnsHelper(init_pid)  # BridgeError if the sandbox is already gone
        helper = self._helper

        def dial() -> socket.socket:
            try:
                return helper.connect("127.0.0.1", port)
            except BridgeError as first:
                try:
                    return helper.connect("::1", port)
                except BridgeError:
                    raise OSError(str(first)) from None

        self._serve(listener, dial, f"port {port}")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            listeners, self._listeners = self._listeners, []
            conns = list(self._conns)
        for sock in listeners:
            _shutdown(sock)  # wakes a thread blocked in accept()
            sock.close()
        for sock in conns:
            _shutdown(sock)  # the copy threads see EOF/errors and close their sockets
        if self._helper is not None:
            self._helper.close()

    # relaying ---------------------------------------------------------------------
    def _serve(self, listener: socket.socket, dial, label: str) -> None:
        with self._lock:
            if self._closed:
                listener.close()
                return
            self._listeners.append(listener)
        threading.Thread(
            target=self._accept_loop, args=(listener, dial, label), daemon=True, name=f"fence-{label}"
        ).start()

    def _accept_loop(self, listener: socket.socket, dial, label: str) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed by close()
            with self._lock:
                refuse = self._closed or self._active >= self.max_connections
                if not refuse:
                    self._active += 1
                    self._conns.add(conn)
            if refuse:
                conn.close()
                continue
            threading.Thread(target=self._connect_and_relay, args=(conn, dial, label), daemon=True).start()

    def _connect_and_relay(self, conn: socket.socket, dial, label: str) -> None:
        peer = None
        try:
            try:
                peer = dial()
                peer.settimeout(None)
            except OSError as e:
                if self.debug:
                    print(printable(f"[fence:ports] {label}: connect failed: {e}"), file=sys.stderr)
                return
            with self._lock:
                if self._closed:
                    return
                self._conns.add(peer)
            back = threading.Thread(target=_pump, args=(peer, conn), daemon=True)
            back.start()
            _pump(conn, peer)
            back.join()
        finally:
            with self._lock:
                self._active -= 1
                self._conns.discard(conn)
                if peer is not None:
                    self._conns.discard(peer)
            conn.close()
            if peer is not None:
                peer.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` to ``dst`` until EOF, then half-close ``dst``; on error cut both."""
    try:
        try:
            _splice_copy(src.fileno(), dst.fileno())
        except OSError as e:
            if e.errno not in (22, 38):  # EINVAL/ENOSYS: no splice for this pair
                raise
            _plain_copy(src, dst)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        _shutdown(src)
        _shutdown(dst)


def _splice_copy(src: int, dst: int) -> None:
    r, w = os.pipe()
    try:
        while True:
            n = os.splice(src, w, CHUNK)
            if n == 0:
                return
            while n:
                n -= os.splice(r, dst, n)
    finally:
        os.close(r)
        os.close(w)


def _plain_copy(src: socket.socket, dst: socket.socket) -> None:
    while True:
        data = src.recv(CHUNK)
        if not data:
            return
        dst.sendall(data)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
