"""Tunnel relay: move bytes between two sockets in the kernel (``os.splice``) on the event loop.

After a CONNECT or SOCKS5 handshake the proxy has nothing left to read in the
bytes, so it must not pull them through Python objects.  Each direction
(a -> b, b -> a) owns a pipe and splices socket -> pipe -> socket with
non-blocking fds, driven by the loop's readiness callbacks
(``add_reader``/``add_writer``) -- no task, no future, no bytes object per
chunk:

* on "src readable": splice as much as the pipe holds from src into the pipe,
  then from the pipe into dst; repeat until src would block (or a fairness
  budget is spent, so one fast tunnel cannot starve the others);
* when dst would block: stop reading src and wait for "dst writable" (the
  pipe is the only buffer: at most one pipe's worth per direction);
* src at EOF: ``shutdown(SHUT_WR)`` on dst once the pipe is drained (the
  other direction carries on: half-closed tunnels work), both done: close;
* a reset or any other error on either socket: close both.

Pipes are created lazily on a direction's first data (an idle tunnel holds
two sockets and no pipe) and start at the default pipe size; a direction that
fills its pipe in one go grows it to ``BULK_PIPE_SIZE`` (fewer syscalls per
byte for bulk transfers, small memory for chatty ones).

A tunnel where one side has finished and the other has been silent for
``half_open_timeout`` seconds is closed, so a half-open peer cannot hold a
shared proxy's file descriptors forever.

Where ``os.splice`` is missing (not Linux) or fails with EINVAL (a socket type
that cannot splice), the direction falls back to ``recv_into``/``send`` with
one reusable buffer.
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
COPY_CHUNK = 1 << 18
HALF_OPEN_TIMEOUT = 60.0


class _Direction:
    __slots__ = ("relay", "src", "dst", "sfd", "dfd", "pr", "pw", "pipe_size", "in_pipe", "done", "moved",
                 "waiting_write", "copy_buf", "eof")

    def __init__(self, relay: "Relay", src: socket.socket, dst: socket.socket):
        self.relay, self.src, self.dst = relay, src, dst
        self.sfd, self.dfd = src.fileno(), dst.fileno()
        self.pr = self.pw = -1
        self.pipe_size = DEFAULT_PIPE_SIZE
        self.in_pipe = 0
        self.done = False
        self.eof = False
        self.moved = 0
        self.waiting_write = False
        self.copy_buf = None if SPLICE is not None else bytearray(COPY_CHUNK)

    # --- splice path -------------------------------------------------------------------
    def on_readable(self) -> None:
        relay = self.relay
        if self.copy_buf is not None:
            return self._copy_readable()
        if self.pr < 0:
            try:
                self.pr, self.pw = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                return relay.close()
        budget = BUDGET
        sfd, dfd, pr, pw = self.sfd, self.dfd, self.pr, self.pw
        try:
            while budget > 0:
                if not self.in_pipe:
                    try:
                        n = SPLICE(sfd, pw, self.pipe_size, flags=_FLAGS)
                    except BlockingIOError:
                        break
                    if n == 0:
                        return self._at_eof()
                    self.in_pipe = n
                    if n == self.pipe_size and self.pipe_size < BULK_PIPE_SIZE:
                        self._grow()
                try:
                    m = SPLICE(pr, dfd, self.in_pipe, flags=_FLAGS)
                except BlockingIOError:
                    return self._wait_writable()
                self.in_pipe -= m
                self.moved += m
                budget -= m
                if self.in_pipe:
                    return self._wait_writable()
        except OSError as e:
            if e.errno == errno.EINVAL and not self.moved and not self.in_pipe:
                self._fall_back_to_copy()
                return self._copy_readable()
            return relay.close()
        relay.last_activity = relay.now()

    def on_writable(self) -> None:
        if self.copy_buf is not None:
            return self._copy_writable()
        try:
            while self.in_pipe:
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
        self.waiting_write = False
        if self.eof:
            return self._finish()
        loop.add_reader(self.sfd, self.on_readable)

    def _wait_writable(self) -> None:
        loop = self.relay.loop
        loop.remove_reader(self.sfd)
        loop.add_writer(self.dfd, self.on_writable)
        self.waiting_write = True
        self.relay.last_activity = self.relay.now()

    def _grow(self) -> None:
        try:
            self.pipe_size = fcntl.fcntl(self.pw, F_SETPIPE_SZ, BULK_PIPE_SIZE)
        except OSError:
            self.pipe_size = BULK_PIPE_SIZE  # never retry: treat as grown
            try:
                self.pipe_size = fcntl.fcntl(self.pw, 1032)  # F_GETPIPE_SZ
            except OSError:
                self.pipe_size = DEFAULT_PIPE_SIZE

    def _at_eof(self) -> None:
        self.eof = True
        self.relay.loop.remove_reader(self.sfd)
        if self.in_pipe:
            self._wait_writable()
        else:
            self._finish()

    def _finish(self) -> None:
        self.done = True
        self.relay.loop.remove_reader(self.sfd)
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.relay.direction_done()

    # --- copy fallback ------------------------------------------------------------------
    def _fall_back_to_copy(self) -> None:
        self.copy_buf = bytearray(COPY_CHUNK)
        self._close_pipe()

    def _copy_readable(self) -> None:
        buf = self.copy_buf
        view = memoryview(buf)
        try:
            n = self.src.recv_into(buf)
        except BlockingIOError:
            return
        except OSError:
            return self.relay.close()
        if n == 0:
            self.eof = True
            return self._finish()
        try:
            sent = self.dst.send(view[:n])
        except BlockingIOError:
            sent = 0
        except OSError:
            return self.relay.close()
        self.moved += sent
        self.relay.last_activity = self.relay.now()
        if sent < n:
            self.in_pipe = n - sent
            buf[:self.in_pipe] = buf[sent:n]
            self._wait_writable()

    def _copy_writable(self) -> None:
        view = memoryview(self.copy_buf)
        try:
            sent = self.dst.send(view[:self.in_pipe])
        except BlockingIOError:
            return
        except OSError:
            return self.relay.close()
        self.moved += sent
        rest = self.in_pipe - sent
        if rest:
            self.copy_buf[:rest] = self.copy_buf[sent:self.in_pipe]
            self.in_pipe = rest
            return
        self.in_pipe = 0
        loop = self.relay.loop
        loop.remove_writer(self.dfd)
        self.waiting_write = False
        loop.add_reader(self.sfd, self.on_readable)

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

    __slots__ = ("loop", "a", "b", "ab", "ba", "closed", "on_close", "last_activity", "_timer",
                 "half_open_timeout", "now")

    def __init__(self, loop, client: socket.socket, upstream: socket.socket, on_close=None,
                 half_open_timeout: float = HALF_OPEN_TIMEOUT):
        self.loop = loop
        self.a, self.b = client, upstream
        self.ab = _Direction(self, client, upstream)
        self.ba = _Direction(self, upstream, client)
        self.closed = False
        self.on_close = on_close
        self.now = time.monotonic
        self.last_activity = self.now()
        self._timer = None
        self.half_open_timeout = half_open_timeout

    def start(self) -> "Relay":
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
