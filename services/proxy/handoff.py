"""The proxy service's hand-off socket: sandboxes' own listening sockets arrive here over SCM_RIGHTS.

Why it exists: a sandbox's proxy listeners (127.0.0.1:3128 and :1080) are
created *inside* its network namespace by ``fence run`` (``executor/bridge.py``).
In a lone run the proxy lives in the same process and takes them directly;
under a supervisor the proxy is another process, so the sockets travel over
a unix socket in the runtime dir, one message per sandbox:
``ProxyHandoff{sandbox, token, listeners}`` with the descriptors attached,
answered ``ProxyHandoffDone`` or ``ErrorReply`` (the protocol, shared with
the client ``fence.executor.handoff``, is ``fence.handoffwire``).

Who may hand over: the socket file is 0600 in the 0700 runtime dir (masked
inside every sandbox), and each connection's ``SO_PEERCRED`` uid must be the
proxy's own or root; the message must name an open session and carry the
one-time token its ``session.open`` reply gave.  Anything else (garbage,
a non-socket or non-listening descriptor, too many descriptors, an unknown
or closed session, a client that connects and says nothing) is answered
with an ``ErrorReply`` naming the problem, its descriptors are closed, and
the connection dropped: one bad client never stalls another (every step is
non-blocking on the proxy's loop, each connection has a deadline, and their
number is bounded).

After a successful hand-off the connection stays open for the sandbox's
life: when it ends (``fence run`` finished or died) the session is closed,
so a killed run leaves no listener or netns behind in the proxy.

Listening sockets are served by ``Session.serve`` (non-blocking ``accept``
under ``loop.add_reader``), the same path a lone run uses; it never pairs
``sock_accept`` with ``open_connection(sock=...)``, the combination that
makes uvloop close a descriptor twice.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import sys
from collections.abc import Awaitable, Callable

import msgspec

from fence.handoffwire import (
    LISTENER_NAMES,
    MAX_FDS,
    MAX_MESSAGE,
    SOCK_TYPE,
    TIMEOUT,
    decode_handoff,
    encode_answer,
    peer_uid,
    trusted_uids,
)
from fence.messages import ErrorReply, ProxyHandoff, ProxyHandoffDone
from fence.textsafe import printable

MAX_CLIENTS = 64

OnEnd = Callable[[], Awaitable[None]]
Accept = Callable[[ProxyHandoff, dict[str, socket.socket]], Awaitable[OnEnd]]


class HandoffRefused(Exception):
    """Why a hand-off is refused; the message goes back to the client as ``ErrorReply``."""

    def __init__(self, message: str, code: str = "bad_request"):
        super().__init__(message)
        self.code = code


class _Client:
    __slots__ = ("conn", "timer", "on_end", "busy", "refusal")

    def __init__(self, conn: socket.socket, refusal: HandoffRefused | None = None):
        self.conn = conn
        self.timer = None
        self.on_end: OnEnd | None = None
        self.busy = False
        self.refusal = refusal
        """Refused at connect time; told so once its message is read (closing a unix socket with
        unread data resets it, and the client would never see why)."""


class HandoffServer:
    """Accepts hand-offs on ``path`` (a SOCK_SEQPACKET unix socket) on ``loop``; ``accept`` decides."""

    def __init__(
        self,
        path: str,
        accept: Accept,
        *,
        loop,
        timeout: float = TIMEOUT,
        max_clients: int = MAX_CLIENTS,
        uids: tuple[int, ...] | None = None,
    ):
        self.path = path
        self.accept = accept
        self.loop = loop
        self.timeout = timeout
        self.max_clients = max_clients
        self.uids = uids if uids is not None else trusted_uids()
        self.sock: socket.socket | None = None
        self.clients: dict[int, _Client] = {}
        self._inode = 0
        self._tasks: set = set()
        """Running hand-offs and session ends (the loop keeps only weak references to tasks)."""

    # --- the listening socket ---------------------------------------------------------------
    def start(self) -> None:
        _remove_stale(self.path)
        sock = socket.socket(socket.AF_UNIX, SOCK_TYPE | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            sock.bind(self.path)
            os.chmod(self.path, 0o600)  # before listen(): nobody can connect until it is private
            self._inode = os.lstat(self.path).st_ino
            sock.listen(self.max_clients)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.loop.add_reader(sock.fileno(), self._on_accept)

    def close(self) -> None:
        """Stop accepting, drop every connection (sessions end with them), remove the socket file."""
        sock, self.sock = self.sock, None
        if sock is not None:
            self.loop.remove_reader(sock.fileno())
            sock.close()
            try:
                if os.lstat(self.path).st_ino == self._inode:  # never remove a successor's socket
                    os.unlink(self.path)
            except OSError:
                pass
        for client in list(self.clients.values()):
            self._drop(client)

    def _on_accept(self) -> None:
        for _ in range(16):
            if self.sock is None:
                return
            try:
                conn, _addr = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause()
                return
            conn.setblocking(False)
            try:
                uid = peer_uid(conn)
            except OSError:
                uid = -1
            if len(self.clients) >= self.max_clients:
                _send(conn, ErrorReply(code="unavailable", message="too many hand-offs in progress; retry"))
                conn.close()
                continue
            refusal = None
            if uid not in self.uids:
                refusal = HandoffRefused(
                    f"permission denied: uid {uid} may not hand sockets to this proxy (only uid {self.uids[0]} or root)"
                )
            client = _Client(conn, refusal)
            self.clients[conn.fileno()] = client
            client.timer = self.loop.call_later(self.timeout, self._expire, client)
            self.loop.add_reader(conn.fileno(), self._on_readable, client)

    def _pause(self) -> None:
        """Out of descriptors: stop accepting for a moment instead of spinning."""
        if self.sock is None:
            return
        fd = self.sock.fileno()
        self.loop.remove_reader(fd)

        def resume() -> None:
            if self.sock is not None and self.sock.fileno() == fd:
                self.loop.add_reader(fd, self._on_accept)

        self.loop.call_later(0.1, resume)

    # --- one connection ----------------------------------------------------------------------
    def _on_readable(self, client: _Client) -> None:
        try:
            msg, fds, flags, _addr = socket.recv_fds(client.conn, MAX_MESSAGE, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        socks, problem = _adopt(fds)
        if client.on_end is not None or client.busy:  # handed over already: only the end is expected
            _close_all(socks)
            if not msg and not fds:
                self._drop(client)
            return
        if not msg and not fds:  # connected and left without a word
            self._drop(client)
            return
        if client.refusal is not None:  # nothing it sent is looked at
            _close_all(socks)
            self._refuse(client, client.refusal)
            return
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise HandoffRefused(f"hand-off too large: at most {MAX_MESSAGE} bytes and {MAX_FDS} descriptors")
            if problem:
                raise HandoffRefused(problem)
            req, named = _parse(msg, socks)
        except HandoffRefused as e:
            _close_all(socks)
            self._refuse(client, e)
            return
        client.busy = True
        self.loop.remove_reader(client.conn.fileno())
        self._spawn(self._hand_over(client, req, named))

    async def _hand_over(self, client: _Client, req: ProxyHandoff, named: dict[str, socket.socket]) -> None:
        try:
            on_end = await self.accept(req, named)
        except HandoffRefused as e:
            _close_all(named.values())
            self._refuse(client, e)
            return
        except Exception as e:  # a bug in accept must not take the proxy down
            _close_all(named.values())
            print(
                printable(f"[fence:proxy] Warning: hand-off for {req.sandbox} failed: {type(e).__name__}: {e}"),
                file=sys.stderr,
            )
            self._refuse(client, HandoffRefused(f"hand-off failed: {type(e).__name__}: {e}", "internal"))
            return
        if self.clients.get(client.conn.fileno()) is not client:  # the server closed meanwhile
            await on_end()
            return
        client.on_end = on_end
        client.busy = False
        if client.timer is not None:
            client.timer.cancel()
            client.timer = None
        _send(client.conn, ProxyHandoffDone(sandbox=req.sandbox))
        self.loop.add_reader(client.conn.fileno(), self._on_readable, client)

    def _refuse(self, client: _Client, error: HandoffRefused) -> None:
        _send(client.conn, ErrorReply(code=error.code, message=str(error)))
        self._drop(client)

    def _expire(self, client: _Client) -> None:
        client.timer = None
        if client.on_end is None and not client.busy:
            self._refuse(client, client.refusal or HandoffRefused(f"no hand-off within {self.timeout:.0f}s"))

    def _drop(self, client: _Client) -> None:
        conn = client.conn
        if self.clients.get(conn.fileno()) is client:
            del self.clients[conn.fileno()]
        if client.timer is not None:
            client.timer.cancel()
            client.timer = None
        try:
            self.loop.remove_reader(conn.fileno())
        except (OSError, ValueError):
            pass
        conn.close()
        on_end, client.on_end = client.on_end, None
        if on_end is not None:
            self._spawn(_quietly(on_end()))

    def _spawn(self, coro) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _parse(msg: bytes, socks: list[socket.socket]) -> tuple[ProxyHandoff, dict[str, socket.socket]]:
    try:
        req = decode_handoff(msg)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise HandoffRefused(f"not a ProxyHandoff message: {e}") from None
    if req.v != 1:
        raise HandoffRefused(f"unsupported ProxyHandoff version {req.v}")
    if len(req.listeners) != len(socks):
        raise HandoffRefused(
            f"the message names {len(req.listeners)} listener(s) but {len(socks)} descriptor(s) came with it"
        )
    if not socks:
        raise HandoffRefused("no listening socket passed")
    if len(set(req.listeners)) != len(req.listeners) or not set(req.listeners) <= set(LISTENER_NAMES):
        raise HandoffRefused(f"listeners must be distinct names among {', '.join(LISTENER_NAMES)}; got {req.listeners}")
    return req, dict(zip(req.listeners, socks, strict=True))


def _adopt(fds: list[int]) -> tuple[list[socket.socket], str]:
    """Wrap received descriptors as sockets (closing what is not one); the first problem found, if any."""
    socks, problem = [], ""
    for fd in fds:
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            problem = problem or "a passed descriptor is not a socket"
            continue
        socks.append(sock)
        if not problem:
            problem = _listener_problem(sock)
    return socks, problem


def _listener_problem(sock: socket.socket) -> str:
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return "a passed socket is not a TCP socket"
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    return "" if listening else "a passed socket is not listening"


def _close_all(socks) -> None:
    for sock in socks:
        sock.close()


def _send(conn: socket.socket, message) -> None:
    try:
        conn.send(encode_answer(message))
    except OSError:
        pass  # the client left; nothing to tell


async def _quietly(coro) -> None:
    try:
        await coro
    except Exception as e:
        print(
            printable(f"[fence:proxy] Warning: closing a handed-over session failed: {type(e).__name__}: {e}"),
            file=sys.stderr,
        )


def _remove_stale(path: str) -> None:
    """A socket left by a previous proxy process goes; anything else at ``path`` is an error."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    os.unlink(path)
