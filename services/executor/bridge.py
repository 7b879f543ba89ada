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
``setns`` into a user namespace needs a single-threaded caller and cannot be
undone: a forked child does it.  Root needs no user namespace (it holds
CAP_SYS_ADMIN over every child namespace and its own), so its calling
thread enters the netns, binds, and comes back: no process at all
(``setns`` is per thread).

Every sandbox with its own network pays this (no-network runs too: their
proxies deny every request, and say so), so it is kept to the syscalls: it
speaks ``_socket``, the C half of ``socket`` (importing ``socket`` builds
four enums, ~2-3 ms), and calls ``setns`` through the init helper's
``_ctypes`` binding where Python has no ``os.setns`` (before 3.12), bound
before the fork (in a forked child of this process every touched page is
copied: ``import ctypes`` there cost ~3 ms).  bwrap reads ``--block-fd``
only after building the mounts, so this mostly overlaps its own set-up.
Its listeners are ``_socket.socket`` objects; ``as_socket`` makes one a
``socket.socket`` for code that accepts on it.  Measured here for the two
proxy listeners (interleaved, medians): root ~0.15 ms; an unprivileged
user ~2.5-3.5 ms, the fork (its page faults: ~2000 minor faults per run
between the child and the parent's copy-on-write) and nothing else.
"""

from __future__ import annotations

import _socket
import errno
import fcntl
import os
import signal
import sys
import time

NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1)
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
SETNS_SYSCALL = {"x86_64": 308, "aarch64": 268}
FD_SIZE = 4
"""Bytes per descriptor in an SCM_RIGHTS message (a C int)."""


class BridgeError(Exception):
    pass


def as_socket(raw):
    """A ``socket.socket`` owning ``raw``'s descriptor (``raw``, a ``_socket.socket``, is left closed)."""
    import socket  # lazy: only code that accepts needs the socket module (~2-3 ms: four enums)

    return socket.socket(fileno=raw.detach())


def _report(sock, error: BaseException) -> None:
    """A forked helper's failure, sent to fence as ``error: ...`` (it must never raise out of the child)."""
    try:
        sock.sendall(b"error: " + f"{type(error).__name__}: {error}".encode()[:4000])
    except OSError:
        pass


def _setns_function():
    """``setns(fd, nstype)`` as a callable, bound now.

    Called before a fork, so the child only makes syscalls: every page a
    forked child of this big process touches is copied, and an import there
    (``ctypes``, or the binding itself) cost 2-3 ms on every run.
    """
    if hasattr(os, "setns"):  # Python >= 3.12
        return os.setns
    number = SETNS_SYSCALL.get(os.uname().machine)
    if number is not None:
        from fence.executor.inithelper import load_libc, syscall  # lazy: only Pythons without os.setns

        load_libc()
        return lambda fd, nstype: syscall(number, fd, nstype)
    import ctypes  # lazy: only an architecture the syscall table lacks, on Python < 3.12 (~1.6 ms)

    libc = ctypes.CDLL(None, use_errno=True)

    def setns(fd: int, nstype: int) -> None:
        if libc.setns(fd, nstype) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return setns


def get_ready() -> None:
    """Load and bind what ``listen_inside`` calls (``_socket``, ``setns``: ~1.5 ms on Python 3.11).

    The launcher calls this right after spawning bwrap, while it waits for
    bwrap to report its sandbox, so the cost overlaps bwrap's own start.
    """
    _setns_function()


def _enter_netns(pid: int, setns) -> None:
    """Join the network namespace of ``pid`` (and the user namespace that owns it)."""
    netfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        userfd = fcntl.ioctl(netfd, NS_GET_USERNS)
        try:
            setns(userfd, CLONE_NEWUSER)
        except OSError:
            if os.geteuid() != 0:  # root reaches a child netns without joining its userns
                raise
        finally:
            os.close(userfd)
        setns(netfd, CLONE_NEWNET)
    finally:
        os.close(netfd)


SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1
IFNAMSIZ = 16


def _wait_loopback_up(timeout: float = 2.0) -> None:
    """Wait until ``lo`` is up in the current netns (bounded; then go on and let bind say what is wrong).

    bwrap reports the sandbox's pid (``--info-fd``) right after creating it,
    while the sandbox may still be bringing its loopback up: binding too
    early skipped the IPv6 listener now and then, and, once the launcher
    overlapped its imports with bwrap's start, failed 127.0.0.1 too
    (EADDRNOTAVAIL): both addresses appear when ``lo`` comes up.
    """
    ifreq = b"lo".ljust(IFNAMSIZ, b"\0") + bytes(24)  # struct ifreq: the name, then ifr_flags (no struct import)
    probe = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.0002
        while True:
            try:
                req = fcntl.ioctl(probe.fileno(), SIOCGIFFLAGS, ifreq)
                if int.from_bytes(req[IFNAMSIZ : IFNAMSIZ + 2], sys.byteorder) & IFF_UP:
                    return
            except OSError:
                return  # no lo to ask about: nothing to wait for
            if time.monotonic() > deadline:
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.001)  # bwrap brings lo up early: a short poll never oversleeps it
    finally:
        probe.close()


def _listen(host: str, port: int):
    family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    if family == _socket.AF_INET6:
        sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen(512)
    return sock


IPV6_SETTLE = 0.05
"""After lo is up, how long ``::1`` may take to appear before the netns is taken to have no IPv6."""


def _listen_settled(host: str, port: int):
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


def _send_fds(sock, message: bytes, fds: list[int]) -> None:
    rights = b"".join(fd.to_bytes(FD_SIZE, sys.byteorder) for fd in fds)
    sock.sendmsg([message], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)] if fds else [])


def _recv_fds(sock, size: int, most: int) -> tuple[bytes, list[int]]:
    """``socket.recv_fds`` without the ``socket`` module: the message and the descriptors that came
    (close-on-exec, as every descriptor Python makes)."""
    message, ancillary, _flags, _addr = sock.recvmsg(size, _socket.CMSG_LEN(most * FD_SIZE), _socket.MSG_CMSG_CLOEXEC)
    fds = []
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            whole = len(data) - len(data) % FD_SIZE
            fds += [int.from_bytes(data[i : i + FD_SIZE], sys.byteorder) for i in range(0, whole, FD_SIZE)]
    return message, fds


def _bind_all(addresses: list[tuple[str, int]]) -> tuple[list, str]:
    """Listeners for ``addresses`` in the current netns and the mask of those made ("1"/"0", IPv6 optional)."""
    _wait_loopback_up()  # 127.0.0.1 and ::1 are assigned when lo comes up
    socks, bound = [], []
    try:
        for host, port in addresses:
            try:
                socks.append(_listen_settled(host, port))
                bound.append("1")
            except OSError as e:
                if not _optional(host, e):
                    raise
                bound.append("0")
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks, "".join(bound)


def _failed(addresses: list[tuple[str, int]], reason: str) -> BridgeError:
    wanted = ", ".join(f"{h}:{p}" for h, p in addresses)
    return BridgeError(f"cannot create listeners ({wanted}) inside the sandbox network: {reason}")


def listen_inside(pid: int, addresses: list[tuple[str, int]]) -> list:
    """Listening sockets (``_socket.socket``; see ``as_socket``) bound to ``addresses`` inside the network
    namespace of ``pid``.

    Raises BridgeError naming the address and the reason when anything fails:
    a sandbox must never start with a proxy it was promised missing.  The one
    exception is an IPv6 address when the netns has no IPv6 (``::1`` cannot
    be bound): its slot is ``None``.

    Where this thread may enter the netns itself (root, holding
    CAP_SYS_ADMIN over it and its own namespace) it does, binds, and comes
    back: no process at all.  Otherwise (an unprivileged user must join the
    sandbox's user namespace first, which no thread of a running process can
    undo) a forked child does it and sends the sockets back.
    """
    setns = _setns_function()
    if os.geteuid() == 0:
        made = _listen_from_this_thread(pid, addresses, setns)
        if made is not None:
            return made
    return _listen_from_a_child(pid, addresses, setns)


def _listen_from_this_thread(pid: int, addresses: list[tuple[str, int]], setns) -> list | None:
    """``listen_inside`` by moving this thread into the netns and back; None when the kernel refuses entry.

    Only this thread changes namespace (``setns`` is per thread), for the
    few syscalls below.  If it could not come back, every later socket of
    this thread would be the sandbox's: that is an error, never ignored.
    """
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise _failed(addresses, f"{type(e).__name__}: {e}") from None
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            setns(target, CLONE_NEWNET)
        except OSError as e:
            if e.errno == errno.EPERM:
                return None  # not privileged over it here: a child joins its user namespace first
            raise _failed(addresses, f"{type(e).__name__}: {e}") from None
        finally:
            os.close(target)
        try:
            socks, mask = _bind_all(addresses)
        except OSError as e:
            raise _failed(addresses, f"{type(e).__name__}: {e}") from None
        finally:
            setns(own, CLONE_NEWNET)  # raises (and so stops the run) if this thread cannot come back
    finally:
        os.close(own)
    it = iter(socks)
    return [next(it) if bit == "1" else None for bit in mask]


def _listen_from_a_child(pid: int, addresses: list[tuple[str, int]], setns) -> list:
    parent, child = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    helper = os.fork()
    if helper == 0:  # pragma: no cover - runs in the forked helper
        code = 0
        try:
            parent.close()
            _enter_netns(pid, setns)
            socks, mask = _bind_all(addresses)
            _send_fds(child, b"ok " + mask.encode(), [s.fileno() for s in socks])
        except BaseException as e:  # report, never raise out of a forked child
            _report(child, e)
            code = 1
        os._exit(code)
    child.close()
    try:
        msg, fds = _recv_fds(parent, 4096, len(addresses))
    finally:
        parent.close()
        os.waitpid(helper, 0)
    mask = msg[3:].decode(errors="replace") if msg.startswith(b"ok ") else ""
    if len(mask) != len(addresses) or len(fds) != mask.count("1"):
        for fd in fds:
            os.close(fd)
        raise _failed(addresses, msg.decode(errors="replace").removeprefix("error: ") or "helper died")
    it = iter(fds)
    return [_socket.socket(fileno=next(it)) if bit == "1" else None for bit in mask]


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
        import ctypes  # lazy: only -p's helper needs ctypes (~1.6 ms); every run's listeners do not
        import socket  # lazy: nor socket (~2-3 ms)
        import threading  # lazy: nor threading (~0.7 ms)

        self._lock = threading.Lock()
        libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork: the child only calls prctl
        prctl = libc.prctl
        fence_pid = os.getpid()
        setns = _setns_function()
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
                _enter_netns(pid, setns)
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

    def connect(self, host: str, port: int):
        """A ``socket.socket`` connected to ``host:port`` inside the sandbox's netns (BridgeError otherwise)."""
        import socket  # lazy: -p's helper only (loaded by its __init__ already)

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


def _serve_connects(chan, timeout: float) -> None:  # pragma: no cover - in the helper
    import socket  # lazy: -p's helper only (loaded before its fork)

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
