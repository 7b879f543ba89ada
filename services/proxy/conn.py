"""Non-blocking socket I/O for the handshakes, on the loop's readiness callbacks.

The proxies work on raw sockets, not asyncio transports: after a handshake a
tunnel hands both file descriptors to the splice relay (``fence.proxy.relay``),
which a transport would not let go of cleanly (and uvloop closes an fd twice
when a socket moves between ``sock_*`` calls and transports).  Each operation
first tries the system call and only waits for readiness when it would
block, so a request that has already arrived costs no extra loop turn.
"""

from __future__ import annotations

import errno
import os
import socket


class ProtocolError(Exception):
    """The peer sent something unacceptable; ``status`` is the HTTP status to answer (0: just close)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class PeerClosed(Exception):
    """The peer closed the connection in the middle of a message."""


class DeadlineExceeded(Exception):
    """A wait passed its deadline (deliberately not ``TimeoutError``, which is an ``OSError``)."""


def _wake(fut) -> None:
    if not fut.done():
        fut.set_result(None)


def _expire(fut) -> None:
    if not fut.done():
        fut.set_exception(DeadlineExceeded())


async def wait_fd(loop, fd: int, write: bool, deadline: float | None) -> None:
    """Wait until ``fd`` is readable (writable); ``DeadlineExceeded`` at loop time ``deadline``.

    The timer exists only while waiting: the common case (data already
    there) never creates one.
    """
    fut = loop.create_future()
    if write:
        loop.add_writer(fd, _wake, fut)
    else:
        loop.add_reader(fd, _wake, fut)
    timer = loop.call_at(deadline, _expire, fut) if deadline is not None else None
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)
        if timer is not None:
            timer.cancel()


class Conn:
    """One non-blocking socket with a read buffer.

    ``deadline`` (loop time, or None) bounds every wait of every operation
    until it is changed: ``DeadlineExceeded`` when it passes.
    """

    __slots__ = ("loop", "sock", "fd", "buf", "deadline")

    def __init__(self, loop, sock: socket.socket, deadline: float | None = None):
        self.loop, self.sock = loop, sock
        self.fd = sock.fileno()
        self.buf = b""
        self.deadline = deadline

    def readable(self):
        return wait_fd(self.loop, self.fd, False, self.deadline)

    def writable(self):
        return wait_fd(self.loop, self.fd, True, self.deadline)

    async def recv(self, n: int = 65536) -> bytes:
        """Buffered bytes first, else at least one byte from the socket; b"" at EOF."""
        if self.buf:
            data, self.buf = self.buf[:n], self.buf[n:]
            return data
        sock = self.sock
        while True:
            try:
                return sock.recv(n)
            except BlockingIOError:
                await self.readable()
            except (ConnectionResetError, TimeoutError):
                return b""

    async def read_until(self, sep: bytes, limit: int) -> bytes | None:
        """Bytes up to and including ``sep``; None at EOF before any byte.

        Raises ``ProtocolError(431)`` past ``limit`` bytes and ``PeerClosed``
        at EOF in the middle.
        """
        buf = self.buf
        start = 0
        while True:
            i = buf.find(sep, start)
            if i >= 0:
                end = i + len(sep)
                self.buf = buf[end:]
                return buf[:end]
            if len(buf) > limit:
                raise ProtocolError("request header too large", 431)
            start = max(0, len(buf) - len(sep) + 1)
            self.buf = b""
            chunk = await self.recv(65536)
            if not chunk:
                if not buf:
                    return None
                raise PeerClosed("connection closed in the middle of a message")
            buf = buf + chunk if buf else chunk
            self.buf = buf

    async def read_exact(self, n: int) -> bytes:
        parts = []
        while n > 0:
            chunk = await self.recv(min(n, 262144))
            if not chunk:
                raise PeerClosed("connection closed in the middle of a message")
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    async def sendall(self, data) -> None:
        sock = self.sock
        view = memoryview(data)
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                await self.writable()
                continue
            view = view[sent:]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


async def connect(loop, family: int, sockaddr, deadline: float | None = None) -> socket.socket:
    """A connected non-blocking TCP socket (TCP_NODELAY); raises OSError with the errno, DeadlineExceeded."""
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        err = sock.connect_ex(sockaddr)
        if err == errno.EINPROGRESS:
            await wait_fd(loop, sock.fileno(), True, deadline)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    except BaseException:
        sock.close()
        raise
