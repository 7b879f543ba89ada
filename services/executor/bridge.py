"""Bridges without socat: listening sockets created inside a sandbox's network namespace.

The sandbox runs with ``--unshare-net``, so its loopback is its own.  To give
it a proxy at ``127.0.0.1:3128`` we do not run a relay process inside (the
reference runs four socat processes per sandbox); instead a short-lived child
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

import os
import socket

NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1)
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


class BridgeError(Exception):
    pass


def _setns(fd: int, nstype: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, nstype)
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _enter_netns(pid: int) -> None:
    """Join the network namespace of ``pid`` (and the user namespace that owns it)."""
    import fcntl

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


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen(512)
    return sock


def listen_inside(pid: int, addresses: list[tuple[str, int]]) -> list[socket.socket]:
    """Listening sockets bound to ``addresses`` inside the network namespace of ``pid``.

    Raises BridgeError naming the address and the reason when anything fails:
    a sandbox must never start with a proxy it was promised missing.
    """
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    helper = os.fork()
    if helper == 0:  # pragma: no cover - runs in the forked helper
        code = 0
        try:
            parent.close()
            _enter_netns(pid)
            socks = [_listen(host, port) for host, port in addresses]
            socket.send_fds(child, [b"ok"], [s.fileno() for s in socks])
        except BaseException as e:  # report, never raise out of a forked child
            try:
                child.sendall(b"error: " + f"{type(e).__name__}: {e}".encode()[:4000])
            except OSError:
                pass
            code = 1
        os._exit(code)
    child.close()
    try:
        msg, fds, _flags, _addr = socket.recv_fds(parent, 4096, len(addresses))
    finally:
        parent.close()
        os.waitpid(helper, 0)
    if msg != b"ok" or len(fds) != len(addresses):
        for fd in fds:
            os.close(fd)
        reason = msg.decode(errors="replace").removeprefix("error: ") or "helper died"
        wanted = ", ".join(f"{h}:{p}" for h, p in addresses)
        raise BridgeError(f"cannot create listeners ({wanted}) inside the sandbox network: {reason}")
    return [socket.socket(fileno=fd) for fd in fds]

