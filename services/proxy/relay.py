"""Tunnel relay: move bytes between two sockets in the kernel (``os.splice``) on the event loop.

After a CONNECT or SOCKS5 handshake the proxy has nothing left to read in the
bytes, so bulk data must not go through Python objects.  Each direction
(a -> b, b -> a) is driven by the loop's readiness callbacks
(``add_reader``/``add_writer``) on the non-blocking fds -- no task, no
future per chunk -- and works in one of two modes:

* copy mode, at the start: ``recv_into`` one 64 KiB buffer shared by the
  session's relays, ``send`` it on at once.  A short exchange (a TLS
  handshake, a request and its answer, one SSH packet) costs two system calls
  and no pipe.  The first read that fills the buffer switches the direction
  to
* splice mode: ``os.splice`` socket -> pipe -> socket, the kernel moves the
  bytes.  The direction's pipe starts at the default size and grows to
  ``BULK_PIPE_SIZE`` once a read fills it; one callback keeps splicing until
  the source would block or ``BUDGET`` bytes moved (fairness).

Either way, when dst would block the direction stops reading src and waits
for "dst writable" (at most one buffer or one pipe per direction is held);
src at EOF -> ``shutdown(SHUT_WR)`` on dst once drained (the other direction
carries on: half-closed tunnels work); both done -> close; a reset or any
other error on either socket -> close both.

A tunnel where one side has finished and the other has been silent for
``half_open_timeout`` seconds is closed, so a half-open peer cannot hold a
shared proxy's file descriptors forever.

Where ``os.splice`` is missing (not Linux) or fails with EINVAL (a socket type
that cannot splice), the direction stays in copy mode.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time

SPLICE = getattr(os, "splice", None)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
BULK_PIPE_SIZE = 1 << 20
"""Pipe size of a direction that moves bulk data (the default /proc/sys/fs/pipe-max-size)."""
DEFAULT_PIPE_SIZE = 1 << 16
BUDGET = 32 << 20
"""Bytes one readiness callback may move before yielding to the loop (fairness)."""
COPY_CHUNK = 1 << 16
"""Copy-mode buffer (shared by a session's relays: a read fills it, a send empties it at once)."""
HALF_OPEN_TIMEOUT = 60.0


class _Direction:
    __slots__ = (
        "relay",
        "src",
        "dst",
        "sfd",
        "dfd",
        "pr",
        "pw",
        "pipe_size",
        "in_pipe",
        "done",
        "moved",
        "splicing",
        "pending",
        "eof",
    )

    def __init__(self, relay: Relay, src: socket.socket, dst: socket.socket):
        self.relay, self.src, self.dst = relay, src, dst
        self.sfd, self.dfd = src.fileno(), dst.fileno()
        self.pr = self.pw = -1
        self.pipe_size = DEFAULT_PIPE_SIZE
        self.in_pipe = 0
        self.done = False
        self.eof = False
        self.moved = 0
        self.splicing = False
        self.pending = b""

    def on_readable(self) -> None:
        if self.splicing:
            return self._splice_readable()
        # copy mode: small exchanges cost one recv and one send, no pipe
        relay = self.relay
        buf = relay.buf
        try:
            n = self.src.recv_into(buf)
        except BlockingIOError:
            return
        except OSError:
            return relay.close()
        if n == 0:
            return self._at_eof()
        try:
            sent = self.dst.send(relay.view[:n])
        except BlockingIOError:
            sent = 0
        except OSError:
            return relay.close()
        self.moved += sent
        relay.last_activity = relay.now()
        if sent < n:
            self.pending = bytes(relay.view[sent:n])
            self._wait_writable()
        if n == len(buf) and SPLICE is not None:
            self.splicing = True  # bulk: from the next read on, the kernel moves the bytes

    def on_writable(self) -> None:
        if self.pending:
            try:
                sent = self.dst.send(self.pending)
            except BlockingIOError:
                return
            except OSError:
                return self.relay.close()
            self.moved += sent
            self.pending = self.pending[sent:]
            if self.pending:
                return
        else:
            try:
                while self.in_pipe:
                    assert SPLICE is not None  # bytes sit in a pipe only in splice mode, entered only with os.splice
                    m = SPLICE(self.pr, self.dfd, self.in_pipe, flags=_FLAGS)
                    self.in_pipe -= m
                    self.moved += m
            except BlockingIOError:
                return
            except OSError:
                return self.relay.close()
        self.relay.last_activity = self.relay.now()
        loop = self.relay.loop
        loop.remove_writer(self.dfd)
        if self.eof:
            return self._finish()
        loop.add_reader(self.sfd, self.on_readable)

    # --- splice mode ------------------------------------------------------------------
    def _splice_readable(self) -> None:
        relay = self.relay
        splice = SPLICE
        assert splice is not None  # splice mode is entered only with os.splice
        if self.pr < 0:
            try:
                self.pr, self.pw = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                return relay.close()
        budget = BUDGET
        sfd, dfd, pr, pw = self.sfd, self.dfd, self.pr, self.pw
        try:
            while budget > 0:
                try:
                    n = splice(sfd, pw, self.pipe_size, flags=_FLAGS)
                except BlockingIOError:
                    break
                if n == 0:
                    return self._at_eof()
                self.in_pipe = n
                if n == self.pipe_size and self.pipe_size < BULK_PIPE_SIZE:
                    self._grow()
                try:
                    m = splice(pr, dfd, n, flags=_FLAGS)
                except BlockingIOError:
                    return self._wait_writable()
                self.in_pipe -= m
                self.moved += m
                budget -= m
                if self.in_pipe:
                    return self._wait_writable()
                if n < DEFAULT_PIPE_SIZE:
                    break  # drained for now; level-triggered readiness calls again when more arrives
        except OSError as e:
            if e.errno == errno.EINVAL and not self.in_pipe:
                self.splicing = False  # this pair cannot splice: copy from now on
                self._close_pipe()
                return self.on_readable()
            return relay.close()
        relay.last_activity = relay.now()

    def _wait_writable(self) -> None:
        loop = self.relay.loop
        loop.remove_reader(self.sfd)
        loop.add_writer(self.dfd, self.on_writable)
        self.relay.last_activity = self.relay.now()

    def _grow(self) -> None:
        try:
            self.pipe_size = fcntl.fcntl(self.pw, F_SETPIPE_SZ, BULK_PIPE_SIZE)
        except OSError:
            self.pipe_size = BULK_PIPE_SIZE  # never retry; the pipe keeps its size, splice reads less
            try:
                self.pipe_size = fcntl.fcntl(self.pw, 1032)  # F_GETPIPE_SZ
            except OSError:
                self.pipe_size = DEFAULT_PIPE_SIZE

    def _at_eof(self) -> None:
        self.eof = True
        self.relay.loop.remove_reader(self.sfd)
        if self.in_pipe or self.pending:
            self._wait_writable()
        else:
            self._finish()

    def _finish(self) -> None:
        self.done = True
        relay = self.relay
        relay.loop.remove_reader(self.sfd)
        if not (relay.ab.done and relay.ba.done):  # the last one needs no FIN of its own: close sends it
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        relay.direction_done()

    def _close_pipe(self) -> None:
        for fd in (self.pr, self.pw):
            if fd >= 0:
                os.close(fd)
        self.pr = self.pw = -1


class Relay:
    """Relay two connected non-blocking sockets until both directions end; then close both.

    ``on_close(relay)`` is called once, when everything is closed; ``up`` and
    ``down`` are the bytes moved client -> upstream and upstream -> client.
    The relay owns both sockets from ``start()`` on.
    """

    __slots__ = (
        "loop",
        "a",
        "b",
        "ab",
        "ba",
        "closed",
        "on_close",
        "last_activity",
        "_timer",
        "half_open_timeout",
        "now",
        "buf",
        "view",
    )

    def __init__(
        self,
        loop,
        client: socket.socket,
        upstream: socket.socket,
        on_close=None,
        half_open_timeout: float = HALF_OPEN_TIMEOUT,
        buf: bytearray | None = None,
    ):
        self.loop = loop
        self.buf = buf if buf is not None else bytearray(COPY_CHUNK)
        self.view = memoryview(self.buf)
        self.a, self.b = client, upstream
        self.ab = _Direction(self, client, upstream)
        self.ba = _Direction(self, upstream, client)
        self.closed = False
        self.on_close = on_close
        self.now = time.monotonic
        self.last_activity = self.now()
        self._timer = None
        self.half_open_timeout = half_open_timeout

    def start(self) -> Relay:
        self.loop.add_reader(self.ab.sfd, self.ab.on_readable)
        self.loop.add_reader(self.ba.sfd, self.ba.on_readable)
        return self

    @property
    def up(self) -> int:
        return self.ab.moved

    @property
    def down(self) -> int:
        return self.ba.moved

    def direction_done(self) -> None:
        if self.ab.done and self.ba.done:
            return self.close()
        if self._timer is None and self.half_open_timeout > 0:
            self._timer = self.loop.call_later(self.half_open_timeout, self._check_half_open)

    def _check_half_open(self) -> None:
        self._timer = None
        if self.closed:
            return
        idle = self.now() - self.last_activity
        if idle >= self.half_open_timeout:
            return self.close()
        self._timer = self.loop.call_later(self.half_open_timeout - idle, self._check_half_open)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        loop = self.loop
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for d in (self.ab, self.ba):
            loop.remove_reader(d.sfd)
            loop.remove_writer(d.dfd)
            d._close_pipe()
        for s in (self.a, self.b):
            try:
                s.close()
            except OSError:
                pass
        if self.on_close is not None:
            cb, self.on_close = self.on_close, None
            cb(self)
