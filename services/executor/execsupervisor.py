"""Runtime exec policy "argv": fence checks the real argv of every exec inside the sandbox.

Preflight sees the command line; ``git push`` run by a script, a Makefile or
``python -c 'subprocess...'`` it never sees, and the path layer
(``execdeny``) can only mask whole programs.  With ``command.runtimeExecPolicy:
"argv"`` every execve/execveat in the sandbox waits for this module's
answer, which applies the full command policy (multi-token rules included)
to what is really being run.

How (seccomp_unotify(2))::

    fence run (host)                                   sandbox
    socketpair: ours, theirs ---- theirs (fd N) -----> init helper (inithelper.py --exec-notify N):
                                                         seccomp(SET_MODE_FILTER, NEW_LISTENER) with
                                                         execve/execveat -> USER_NOTIF
    thread: recvmsg(ours) <------ SCM_RIGHTS listener -- closes both fds, execs the command
    loop: poll; NOTIF_RECV -> pid, syscall, args        (every exec below waits here)
          read path and argv from /proc/<pid>/mem; NOTIF_ID_VALID (the pid is still that task)
          decide; NOTIF_SEND: CONTINUE, or error EPERM + "Runtime exec policy blocked: ..." + an event

bwrap's ``--seccomp`` loads a plain program and cannot ask for a listener,
hence the helper.  The helper's own exec of the command is the first
notification (preflight already allowed it; it is checked again).

**Fails closed.**  Arguments that cannot be read (unmapped pointers, more
than ``MAX_ARGC`` arguments or ``MAX_ARGV_BYTES`` bytes, a string longer than
the kernel's own limit) are refused with EPERM.  If this thread dies, its
``finally`` closes the listener and from then on the kernel fails every
exec in the sandbox with ENOSYS; if fence dies, bwrap's
``--die-with-parent`` ends the sandbox.  A kernel without user
notification (before 5.0) makes the run refuse to start, and the helper
refuses to run the command if installing the filter fails.  A process in
the sandbox cannot install a listener of its own to answer for itself: the
kernel refuses a second listener in one filter chain (EBUSY).

**The CONTINUE race** (seccomp_unotify(2), "Design goals; use of
SECCOMP_USER_NOTIF_FLAG_CONTINUE"): the answer lets the kernel carry on
with the syscall *as the target's memory is then*.  Another thread of the
target (or a process sharing its memory) can rewrite the path or argv
strings between this read and the kernel's, so a hostile multi-threaded
program can pass a harmless argv to the check and exec another.  The argv
check is therefore exact for honest programs (scripts, build tools,
agents' tool calls) and advisory against a hostile one.  What holds
regardless: single-token rules are also enforced on the files by the path
layer (``execdeny``: the program is /dev/null in the sandbox, which no
exec can run, whatever the check read) and, with Landlock, by not granting
EXECUTE on those files.  A multi-token rule (``git push``) has no such
backstop: a program that races the check can run ``git push``.
"""

from __future__ import annotations

import _socket
import errno
import fcntl
import os
import select
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence

from fence.defaults import DEFAULT_DENY_SOURCE
from fence.executor.commandrules import RuleSources
from fence.executor.features import kernel_version, seccomp_support
from fence.executor.inithelper import EXEC_SYSCALLS
from fence.executor.preflight import command_rule_hit
from fence.executor.shellparse import Command, basename
from fence.goquote import go_quote
from fence.messages import ExecBlockedEvent
from fence.textsafe import printable

NOTIF_RECV = 0xC0502100
"""SECCOMP_IOCTL_NOTIF_RECV: _IOWR('!', 0, struct seccomp_notif) (80 bytes)."""
NOTIF_SEND = 0xC0182101
"""SECCOMP_IOCTL_NOTIF_SEND: _IOWR('!', 1, struct seccomp_notif_resp) (24 bytes)."""
NOTIF_ID_VALID = 0x40082102
"""SECCOMP_IOCTL_NOTIF_ID_VALID: _IOW('!', 2, __u64)."""
FLAG_CONTINUE = 1
"""SECCOMP_USER_NOTIF_FLAG_CONTINUE: let the kernel run the syscall as the target asked."""

NOTIF = struct.Struct("=QIIiIQ6Q")
"""struct seccomp_notif: id, pid, flags, then seccomp_data: nr, arch, instruction_pointer, args[6]."""
RESPONSE = struct.Struct("=QqiI")
"""struct seccomp_notif_resp: id, val, error, flags."""
ZERO_NOTIF = bytes(NOTIF.size)
"""The kernel refuses NOTIF_RECV into a buffer that is not zeroed."""

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
PATH_MAX = 4096
MAX_ARG_STRLEN = 32 * 4096
"""The kernel's limit for one argument (execve fails with E2BIG past it)."""
MAX_ARGC = 1 << 18
MAX_ARGV_BYTES = 4 << 20
"""Bounds on what is read per exec; past them the exec is refused (fails closed).  The kernel's own
bound is a quarter of the stack limit, 2 MiB by default, for argv and environment together."""
WINDOW = 8192
"""Bytes read at a time: an argv's strings usually sit next to each other, one read gets several."""
ARGV_SHOWN = 64
"""At most this many arguments go into an event (each cut at 256 characters)."""


class Gone(Exception):
    """The notifying task no longer waits (killed): there is nothing to answer."""


class Unreadable(Exception):
    """The exec's path or arguments could not be read: it is refused."""


# --------------------------------------------------------------------------- reading the target


class ExecCall:
    """One exec as the target asked for it."""

    __slots__ = ("pid", "path", "argv", "dirfd", "flags")

    def __init__(self, pid: int, path: str, argv: list[str], dirfd: int = AT_FDCWD, flags: int = 0):
        self.pid, self.path, self.argv, self.dirfd, self.flags = pid, path, argv, dirfd, flags

    def target(self) -> str:
        """The file, through the target's own view (``/proc/<pid>/root``, ``cwd``, ``fd/N``)."""
        if self.path.startswith("/"):
            return f"/proc/{self.pid}/root{self.path}"
        base = f"/proc/{self.pid}/cwd" if self.dirfd == AT_FDCWD else f"/proc/{self.pid}/fd/{self.dirfd}"
        if not self.path and self.flags & AT_EMPTY_PATH:
            return base
        return f"{base}/{self.path}"

    def program(self) -> str:
        """The file's name: the path's basename, or for ``fexecve`` (empty path) the fd's."""
        if self.path:
            return basename(self.path)
        try:
            return basename(os.readlink(self.target()))
        except OSError:
            return ""

    def __repr__(self) -> str:
        return f"ExecCall(pid={self.pid}, path={self.path!r}, argv={self.argv!r})"


class Memory:
    """Reads another process's memory through an open ``/proc/<pid>/mem``, a window at a time."""

    __slots__ = ("fd", "base", "data", "total")

    def __init__(self, fd: int):
        self.fd, self.base, self.data, self.total = fd, 0, b"", 0

    def read(self, address: int, size: int) -> bytes:
        """Up to ``size`` bytes (fewer where the mapping ends; b"" when unmapped)."""
        try:
            return os.pread(self.fd, size, address)
        except OSError as e:
            if e.errno in (errno.EIO, errno.EFAULT, errno.EINVAL, errno.EOVERFLOW):
                return b""
            raise Unreadable(f"cannot read its memory: {e.strerror}") from None

    def string(self, address: int, limit: int) -> str:
        """The NUL-terminated string at ``address`` (at most ``limit`` bytes before the NUL)."""
        if not address:
            raise Unreadable("a NULL string pointer")
        offset = address - self.base
        if 0 <= offset < len(self.data):
            end = self.data.find(b"\0", offset)
            if end >= 0 and end - offset <= limit:
                return self._take(self.data[offset:end])
        parts: list[bytes] = []
        size = 0
        at = address
        while True:
            chunk = self.read(at, WINDOW)
            if not chunk:
                raise Unreadable(f"unreadable string at {address:#x}")
            end = chunk.find(b"\0")
            if end >= 0:
                if not parts:
                    self.base, self.data = at, chunk
                parts.append(chunk[:end])
                size += end
                if size > limit:
                    raise Unreadable(f"an argument longer than {limit} bytes")
                return self._take(b"".join(parts))
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                raise Unreadable(f"an argument longer than {limit} bytes")
            at += len(chunk)

    def _take(self, raw: bytes) -> str:
        self.total += len(raw) + 1
        if self.total > MAX_ARGV_BYTES:
            raise Unreadable(f"arguments larger than {MAX_ARGV_BYTES} bytes")
        return raw.decode("utf-8", "surrogateescape")

    def pointers(self, address: int) -> list[int]:
        """The NULL-terminated pointer array at ``address`` (NULL: none)."""
        out: list[int] = []
        if not address:
            return out
        while True:
            chunk = self.read(address, 4096 - address % 4096 or 4096)
            count = len(chunk) // 8
            if not count:
                raise Unreadable(f"unreadable argument array at {address:#x}")
            values = struct.unpack_from(f"={count}Q", chunk)
            try:
                end = values.index(0)
            except ValueError:
                out += values
            else:
                return out + list(values[:end])
            if len(out) > MAX_ARGC:
                raise Unreadable(f"more than {MAX_ARGC} arguments")
            address += count * 8


def read_call(pid: int, nr: int, args: Sequence[int], execveat: int, still_valid: Callable[[], None]) -> ExecCall:
    """Path and argv of the exec ``pid`` is blocked in.

    ``/proc/<pid>/mem`` is opened first and ``still_valid`` (NOTIF_ID_VALID)
    checked after: the open fd holds that process's memory, so once the
    notification is known to be alive the pid cannot have been reused under
    us.  ``Gone`` when it is not; ``Unreadable`` when the memory says nothing
    sensible.
    """
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        raise Gone() from None
    except OSError as e:
        raise Unreadable(f"cannot open its memory: {e.strerror}") from None
    try:
        still_valid()
        mem = Memory(fd)
        if nr == execveat:
            dirfd = args[0] & 0xFFFFFFFF
            dirfd = dirfd - (1 << 32) if dirfd & 0x80000000 else dirfd
            path_at, argv_at, flags = args[1], args[2], args[4] & 0xFFFFFFFF
        else:
            dirfd, path_at, argv_at, flags = AT_FDCWD, args[0], args[1], 0
        path = mem.string(path_at, PATH_MAX)
        argv = [mem.string(p, MAX_ARG_STRLEN) for p in mem.pointers(argv_at)]
        return ExecCall(pid, path, argv, dirfd, flags)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the decision


class Verdict:
    """Why an exec is refused: the rule, where it came from, the line for stderr."""

    __slots__ = ("rule", "source", "default_rule", "message", "reason")

    def __init__(self, message: str, rule: str = "", source: str = "", default_rule: bool = False, reason: str = ""):
        self.message, self.rule, self.source, self.default_rule, self.reason = (
            message,
            rule,
            source,
            default_rule,
            reason,
        )


class ExecPolicy:
    """The command policy applied to one exec.

    The exec is checked as one simple command (``shellparse.Command``) under
    every name it goes by: the basename of ``argv[0]``, the basename of the
    file (``exec -a ls git push`` is still git), and, through ``identities``
    (``execdeny.identities``: (dev, ino) -> rule heads), any rule head that
    is the same file (a symlink or hard link to git under another name).
    Refused if any name is refused, each with preflight's order: an allow
    rule for it, then ``command.deny``, then the default list.
    """

    def __init__(self, policy, sources=None, identities: dict | None = None):
        self.policy = policy
        self.sources = sources or RuleSources()
        self.identities = identities or {}

    def names(self, call: ExecCall) -> list[str]:
        names = []
        if call.argv and call.argv[0]:
            names.append(basename(call.argv[0]))
        program = call.program()
        if program and program not in names:
            names.append(program)
        if self.identities:
            key = _file_key(call.target())
            for name in self.identities.get(key, ()):
                if name not in names:
                    names.append(name)
        return names

    def check(self, call: ExecCall) -> Verdict | None:
        """None when the exec may go on."""
        for name in self.names(call):
            hit = command_rule_hit(Command([name] + call.argv[1:]), self.policy)
            if hit is None:
                continue
            rule, default = hit
            source = DEFAULT_DENY_SOURCE if default else self.sources.rule_label("command.deny", rule)
            shown = " ".join(call.argv) if call.argv else call.path
            via = (
                ""
                if call.argv and basename(call.argv[0]) == name
                else f" ({printable(call.path or call.program())} is {printable(name)})"
            )
            message = f"Runtime exec policy blocked: {go_quote(shown[:500])}{via} matches {go_quote(rule)}" + (
                f" (rule from {source})" if source else ""
            )
            # Always EPERM, even where the file does not exist: the existence check would be resolved
            # by this (host) process, and its answer would tell the sandbox whether a host path it cannot
            # see (a denyRead directory) exists.
            return Verdict(message, rule, source, default)
        return None


def _file_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def unreadable_verdict(pid: int, why: str) -> Verdict:
    return Verdict(f"Runtime exec policy blocked: cannot check an exec by pid {pid} ({why}); refused", reason=why)


# --------------------------------------------------------------------------- the supervisor


class Supervisor:
    """One sandbox's exec supervisor: a thread answering every exec notification.

    ``sandbox_fd()`` is the socket end bwrap inherits (above 10, under its own number);
    ``start()`` before spawning bwrap, ``spawned()`` after, ``stop()`` once
    bwrap has exited.  ``report(verdict, call)`` is called (on this thread)
    for every refused exec, after the exec has been answered.
    """

    def __init__(
        self,
        policy: ExecPolicy,
        report: Callable[[Verdict, ExecCall | None], None] | None = None,
        say: Callable[[str], None] | None = None,
        machine: str | None = None,
    ):
        self.policy = policy
        self.report = report
        self.say = say or _stderr
        self.execveat = EXEC_SYSCALLS[machine or os.uname().machine][2]
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        self._sock = ours
        self._theirs = fcntl.fcntl(theirs.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
        theirs.close()
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._last: tuple | None = None
        self.listener_received = threading.Event()
        self.served = 0
        self.refused = 0

    def sandbox_fd(self) -> int:
        return self._theirs

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._run, name="fence-exec-supervisor", daemon=True)
        self._thread.start()
        return self

    def spawned(self) -> None:
        """bwrap has its copy of the socket: drop ours, so a bwrap that dies unsent ends the wait (EOF)."""
        if self._theirs >= 0:
            os.close(self._theirs)
            self._theirs = -1

    def stop(self, timeout: float = 2.0) -> None:
        self.spawned()
        if self._stop_w >= 0:
            try:
                os.write(self._stop_w, b"x")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._stop_r = self._stop_w = -1

    # the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        listener = -1
        try:
            listener = self._receive()
            if listener >= 0:
                self.listener_received.set()
                self._serve(listener)
        except BaseException as e:  # whatever it was, execs from now on fail (the listener closes)
            self.say(
                f"[fence] Error: the exec supervisor stopped ({type(e).__name__}: {e}); "
                "every further exec in the sandbox fails"
            )
        finally:
            if listener >= 0:
                os.close(listener)
            self._sock.close()

    def _receive(self) -> int:
        """The listener the helper sends, or -1 (bwrap ended first, or stop())."""
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = dict(poller.poll())
            if self._stop_r in ready:
                return -1
            if ready:
                break
        space = _socket.CMSG_SPACE(4)
        _data, ancillary, _flags, _addr = self._sock.recvmsg(1, space, _socket.MSG_CMSG_CLOEXEC)
        fds = []
        for level, kind, payload in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                fds += [int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, len(payload) - 3, 4)]
        if not fds:
            return -1  # EOF: the helper never sent one (it refuses to run the command then)
        listener, extra = fds[0], fds[1:]
        for fd in extra:
            os.close(fd)
        try:
            target = os.readlink(f"/proc/self/fd/{listener}")
        except OSError:
            target = ""
        if target != "anon_inode:seccomp notify":
            os.close(listener)
            raise RuntimeError(f"the sandbox sent {target or 'an unknown fd'}, not a seccomp listener")
        return listener

    def _serve(self, listener: int) -> None:
        poller = select.poll()
        poller.register(listener, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        buf = bytearray(NOTIF.size)
        while True:
            events = dict(poller.poll())
            if self._stop_r in events:
                return
            flags = events.get(listener, 0)
            if flags & select.POLLIN:
                self._one(listener, buf)
            elif flags:  # POLLHUP: every process under the filter is gone
                return

    def _one(self, listener: int, buf: bytearray) -> None:
        buf[:] = ZERO_NOTIF
        try:
            fcntl.ioctl(listener, NOTIF_RECV, buf, True)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EINTR):  # the task was killed between poll and here
                return
            raise
        nid, pid, _flags, nr, _arch, _ip, *args = NOTIF.unpack(buf)
        self.served += 1
        check = _id_check(listener, nid)
        call = None
        try:
            call = read_call(pid, nr, args, self.execveat, check)
            verdict = self.policy.check(call)
        except Gone:
            return
        except Unreadable as e:
            verdict = unreadable_verdict(pid, str(e))
            call = call or ExecCall(pid, "", [])
        except Exception as e:  # a bug in the checker refuses this exec, never allows it
            verdict = unreadable_verdict(pid, f"internal error in the checker: {type(e).__name__}: {e}")
            call = call or ExecCall(pid, "", [])
        if verdict is None:
            _respond(listener, nid, 0, FLAG_CONTINUE)
            return
        _respond(listener, nid, -errno.EPERM, 0)
        self.refused += 1
        again = (pid, verdict.message)
        if again == self._last:  # a PATH search trying each directory: say it once
            return
        self._last = again
        self.say(verdict.message)
        if self.report is not None:
            try:
                self.report(verdict, call)
            except Exception as e:  # reporting must never stop the answering
                self.say(f"[fence] Warning: cannot report a blocked exec: {type(e).__name__}: {e}")


def _id_check(listener: int, nid: int) -> Callable[[], None]:
    packed = nid.to_bytes(8, sys.byteorder)

    def check() -> None:
        try:
            fcntl.ioctl(listener, NOTIF_ID_VALID, packed)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise Gone() from None
            raise

    return check


def _respond(listener: int, nid: int, error: int, flags: int) -> None:
    try:
        fcntl.ioctl(listener, NOTIF_SEND, RESPONSE.pack(nid, 0, error, flags))
    except OSError as e:
        if e.errno != errno.ENOENT:  # ENOENT: the task was killed meanwhile
            raise


def _stderr(line: str) -> None:
    """One line on fence's stderr, escaped (``fence.textsafe``: the argv and paths in it are the sandbox's)."""
    try:
        os.write(2, (printable(line) + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def event_for(sandbox: str, verdict: Verdict, call: ExecCall | None, pid: int = 0):
    """The bus event for a refused exec."""
    argv = [a[:256] for a in call.argv[:ARGV_SHOWN]] if call is not None else []
    return ExecBlockedEvent(
        sandbox=sandbox,
        ts=time.time(),
        pid=call.pid if call is not None else pid,
        path=call.path if call is not None else "",
        argv=argv,
        rule=verdict.rule,
        source=verdict.source,
        default_rule=verdict.default_rule,
        reason=verdict.reason,
    )


def supported(machine: str | None = None) -> str:
    """ "" when this kernel and architecture can run the argv policy, else why not."""
    uname = os.uname()
    machine = machine or uname.machine
    if machine not in EXEC_SYSCALLS:
        return f"not built for {machine}"
    filters, usernotif = seccomp_support(machine, kernel_version(uname.release))
    if not filters:
        return "this kernel has no seccomp filters"
    if not usernotif:
        return "this kernel has no seccomp user notification (Linux 5.0+)"
    return ""
