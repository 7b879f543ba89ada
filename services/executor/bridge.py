"""Bridges without socat: listening sockets created inside a sandbox's network namespace.

The sandbox runs with ``--unshare-net``, so its loopback is its own.  To give
it a proxy at ``127.0.0.1:3128`` we do not run a relay process inside (the
Go tool Fence runs socat relays for each sandbox); instead a short-lived child
of fence joins the sandbox's namespaces, binds and listens there, and hands the
listening sockets back over a socketpair (``SCM_RIGHTS``).  A socket keeps
the namespace it was created in, so fence (or the proxy service it passes them
to) accepts connections made inside the sandbox while itself staying outside.
Which socket a connection arrives on says which sandbox made it: an identity
the sandbox cannot forge.

Joining: the network namespace is owned by the user namespace bwrap created
(or nested: bwrap may create two), so we take the owner with the
``NS_GET_USERNS`` ioctl on the netns rather than trusting ``/proc/PID/ns/user``,
join it (as its owner we hold every capability there), then join the netns.
``setns`` into a user namespace needs a single-threaded caller: a forked
child always is.  Root may skip the user namespace (it already has
CAP_SYS_ADMIN over every child namespace).

Measured here: ~1.3 ms for two listeners, as root and as an unprivileged user.
Only runs that allow some network pay it (and the ctypes import).
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import struct
import threading
import time

NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1)
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1


class BridgeError(Exception):
    pass


def _report(sock: socket.socket, error: BaseException) -> None:
    """A forked helper's failure, sent to fence as ``error: ...`` (it must never raise out of the child)."""
    try:
        sock.sendall(b"error: " + f"{type(error).__name__}: {error}".encode()[:4000])
    except OSError:
        pass


def _setns(fd: int, nstype: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, nstype)
        return
    import ctypes  # lazy: only Pythons without os.setns (< 3.12) need ctypes (~1.6 ms)

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _enter_netns(pid: int) -> None:
    """Join the network namespace of ``pid`` (and the user namespace that owns it)."""
    netfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        userfd = fcntl.ioctl(netfd, NS_GET_USERNS)
        try:
            _setns(userfd, CLONE_NEWUSER)
        except OSError:
            if os.geteuid() != 0:  # root reaches a child netns without joining its userns
                raise
        finally:
            os.close(userfd)
        _setns(netfd, CLONE_NEWNET)
    finally:
        os.close(netfd)


SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1


def _wait_loopback_up(timeout: float = 2.0) -> None:
    """Wait until ``lo`` is up in the current netns (bounded; then go on and let bind say what is wrong).

    bwrap reports the sandbox's pid (``--info-fd``) right after creating it,
    while the sandbox may still be bringing its loopback up: 127.0.0.1 is
    already assigned then, but [::1] only appears once ``lo`` is up, so
    binding too early skipped the IPv6 listener now and then.
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.0002
        while True:
            try:
                req = fcntl.ioctl(probe.fileno(), SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0))
                if struct.unpack("16sH22x", req)[1] & IFF_UP:
                    return
            except OSError:
                return  # no lo to ask about: nothing to wait for
            if time.monotonic() > deadline:
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
    finally:
        probe.close()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen(512)
    return sock


IPV6_SETTLE = 0.05
"""After lo is up, how long ``::1`` may take to appear before the netns is taken to have no IPv6."""


def _listen_settled(host: str, port: int) -> socket.socket:
    """``_listen``, retrying ``::1`` briefly: the kernel adds it when lo comes up, a moment after 127.0.0.1."""
    deadline = time.monotonic() + IPV6_SETTLE
    while True:
        try:
            return _listen(host, port)
        except OSError as e:
            if ":" not in host or e.errno != errno.EADDRNOTAVAIL or time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def _optional(host: str, err: BaseException) -> bool:
    """An IPv6 loopback address is best effort: a netns may have no IPv6 at all."""
    return ":" in host and isinstance(err, OSError) and err.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)


def listen_inside(pid: int, addresses: list[tuple[str, int]]) -> list[socket.socket | None]:
    """Listening sockets bound to ``addresses`` inside the network namespace of ``pid``.

    Raises BridgeError naming the address and the reason when anything fails:
    a sandbox must never start with a proxy it was promised missing.  The one
    exception is an IPv6 address when the netns has no IPv6 (``::1`` cannot
    be bound): its slot is ``None``.
    """
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    helper = os.fork()
    if helper == 0:  # pragma: no cover - runs in the forked helper
        code = 0
        try:
            parent.close()
            _enter_netns(pid)
            _wait_loopback_up()
            socks, bound = [], []
            for host, port in addresses:
                try:
                    socks.append(_listen_settled(host, port))
                    bound.append("1")
                except OSError as e:
                    if not _optional(host, e):
                        raise
                    bound.append("0")
            socket.send_fds(child, [b"ok " + "".join(bound).encode()], [s.fileno() for s in socks])
        except BaseException as e:  # report, never raise out of a forked child
            _report(child, e)
            code = 1
        os._exit(code)
    child.close()
    try:
        msg, fds, _flags, _addr = socket.recv_fds(parent, 4096, len(addresses))
    finally:
        parent.close()
        os.waitpid(helper, 0)
    mask = msg[3:].decode(errors="replace") if msg.startswith(b"ok ") else ""
    if len(mask) != len(addresses) or len(fds) != mask.count("1"):
        for fd in fds:
            os.close(fd)
        reason = msg.decode(errors="replace").removeprefix("error: ") or "helper died"
        wanted = ", ".join(f"{h}:{p}" for h, p in addresses)
        raise BridgeError(f"cannot create listeners ({wanted}) inside the sandbox network: {reason}")
    it = iter(fds)
    return [socket.socket(fileno=next(it)) if bit == "1" else None for bit in mask]


class NetnsHelper:
    """A long-lived child inside a sandbox's network namespace that connects sockets on request.

    For ``-p``: a connection accepted on the host must become a connection to
    127.0.0.1:PORT *inside* the sandbox.  Forking per connection would cost a
    fork and two ``setns`` each time, so one child joins the namespaces once
    (``_enter_netns``) and then serves ``connect HOST PORT`` requests read
    from a ``SOCK_SEQPACKET`` socketpair, answering each with the connected
    socket (``SCM_RIGHTS``) or ``error: ...``.  The socket keeps the netns it
    was created in, so fence relays it from outside.

    The child closes every other inherited descriptor, asks for SIGKILL when
    its parent goes (``PR_SET_PDEATHSIG``), and exits on EOF: ``close()`` or
    fence's death ends it.  Requests are serialised by a lock (loopback
    connects are immediate; each has a timeout).  Call from the main thread:
    the death signal follows the thread that forked.
    """

    def __init__(self, pid: int, connect_timeout: float = 3.0):
        import ctypes  # lazy: only -p's helper needs ctypes (~1.6 ms); filtered runs' bridges do not

        self._lock = threading.Lock()
        libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork: the child only calls prctl
        prctl = libc.prctl
        fence_pid = os.getpid()
        sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock: socket.socket | None = sock  # None once closed
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - runs in the forked helper
            code = 0
            try:
                keep = child.fileno()
                os.closerange(3, keep)
                os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
                prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
                if os.getppid() != fence_pid:  # fence died before prctl
                    os._exit(1)
                _enter_netns(pid)
                _wait_loopback_up()
                child.send(b"ready")
                _serve_connects(child, connect_timeout)
            except BaseException as e:
                _report(child, e)
                code = 1
            os._exit(code)
        child.close()
        first = sock.recv(4096)
        if first != b"ready":
            self.close()
            reason = first.decode(errors="replace").removeprefix("error: ") or "helper died"
            raise BridgeError(f"cannot enter the sandbox network: {reason}")

    def connect(self, host: str, port: int) -> socket.socket:
        """A socket connected to ``host:port`` inside the sandbox's netns (BridgeError otherwise)."""
        with self._lock:
            if self._sock is None:
                raise BridgeError("netns helper closed")
            try:
                self._sock.send(f"connect {host} {port}".encode())
                msg, fds, _flags, _addr = socket.recv_fds(self._sock, 4096, 1)
            except OSError as e:
                raise BridgeError(f"netns helper: {e}") from None
        if msg == b"ok" and len(fds) == 1:
            return socket.socket(fileno=fds[0])
        for fd in fds:
            os.close(fd)
        raise BridgeError(msg.decode(errors="replace").removeprefix("error: ") or "netns helper died")

    def close(self) -> None:
        """End the child (EOF on its socket) and reap it."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is None:
            return
        sock.close()
        if self.pid > 0:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass


def _serve_connects(chan: socket.socket, timeout: float) -> None:  # pragma: no cover - in the helper
    while True:
        req = chan.recv(256)
        if not req:
            return  # fence closed its end (or died)
        try:
            verb, host, port = req.decode().split()
            if verb != "connect":
                raise ValueError(f"unknown request {verb!r}")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect((host, int(port)))
                sock.settimeout(None)
                socket.send_fds(chan, [b"ok"], [sock.fileno()])
            finally:
                sock.close()
        except Exception as e:
            chan.send(b"error: " + f"{type(e).__name__}: {e}".encode()[:1000])
