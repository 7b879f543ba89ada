"""Launching is thin: start a planned sandbox, relay signals, report how it ended.

bwrap is spawned in its own process group so a terminal's Ctrl-C reaches fence
only; fence then forwards SIGINT/SIGTERM/SIGHUP (and QUIT, USR1, USR2, WINCH)
to the sandboxed command's process group.  bwrap itself does not forward
signals, and killing it would SIGKILL the sandbox (``--die-with-parent``), so
the command would never see a polite signal.

The command's host pid is found from bwrap's ``--info-fd`` (the pid of the
sandbox's init) and that init's only child (``/proc/PID/task/PID/children``),
looked up lazily when the first signal arrives.  If fence dies, bwrap's
``--die-with-parent`` takes the sandbox down with it.

A PTY run (``plan.pty``) differs only in where stdio and signals go:
``fence.executor.ptyrelay`` opens the PTY, bwrap starts in a session of its
own with the PTY as stdio, ``waitpid`` relays the terminal until bwrap ends,
and every signal goes to the relay (which resizes, hangs up, or forwards to
the PTY's foreground group, as a terminal would).  A detached PTY sandbox
(``fence.executor.fleet``) brings its own PTY as ``stdio``: bwrap starts in
a session of its own the same way, and the executor service relays nothing
here (it pumps the master on its event loop).

Uses ``os.posix_spawn`` directly: the ``subprocess`` module costs ~10 ms of
imports on every run and we need none of it.
"""

from __future__ import annotations

import fcntl
import os
import signal
import stat
import time
from typing import TYPE_CHECKING, Any

from fence.executor.plan import SECCOMP_FD, SandboxPlan

if TYPE_CHECKING:
    from fence.executor.ptyrelay import PtyRelay

FORWARDED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)


class LaunchError(Exception):
    pass


class Sandbox:
    """A running sandbox: bwrap's pid, the sandbox init's pid, and signal relaying."""

    def __init__(
        self,
        plan: SandboxPlan,
        relay_signals: bool = True,
        inherit: dict[int, int] | None = None,
        stdio: tuple[int, int, int] | None = None,
    ):
        """``inherit``: more fds for bwrap, ``{number in bwrap: our fd}`` (our fds above 10, close-on-exec;
        bwrap passes inherited fds on to the sandbox's command).  ``{fd: fd}`` keeps the number: a dup2
        onto itself clears close-on-exec (glibc 2.29+).  ``stdio``: our fds to become bwrap's 0, 1, 2
        (a detached sandbox's pipes or PTY slave, above 10); None inherits ours (``fence run``).  A PTY
        run with ``stdio`` takes the caller's PTY (a detached sandbox's) and relays nothing itself."""
        self.plan = plan
        self.stdio = stdio
        self.inherit = dict(inherit or {})
        self.relay_signals = relay_signals
        self.pid = 0
        self.init_pid = 0
        self.command_pid = 0
        self.pending: list[int] = []
        self.listeners: list = []
        """Listening sockets made inside the sandbox's netns (``plan.listen_inside``), in order."""
        self.relay: PtyRelay | None = None
        """The PTY relay of a PTY run (``fence.executor.ptyrelay.PtyRelay``), else None."""
        self._old_handlers: dict[int, signal._HANDLER] = {}

    @property
    def signals(self) -> tuple[int, ...]:
        """Every signal this sandbox wants routed to ``on_signal`` (a PTY run adds TSTP and CONT)."""
        if self.plan.pty:
            from fence.executor.ptyrelay import JOB_SIGNALS  # lazy: only PTY runs need the relay (termios, ~1.2 ms)

            return FORWARDED_SIGNALS + JOB_SIGNALS
        return FORWARDED_SIGNALS

    def start(self, prepare=None) -> Sandbox:
        """Spawn bwrap; with bridges planned, create them inside before the command may run.

        ``prepare(listeners)``, when given, runs once the listeners exist and
        before bwrap is released; if it raises, the sandbox is killed before
        the command starts and LaunchError carries the reason.
        """
        seccomp_read = -1
        data_reads: list[tuple[int, int]] = []  # (read end, fd bwrap reads it from)
        try:  # the inputs bwrap reads to EOF first: a too-large one fails before anything else is open
            if self.plan.seccomp_program:
                seccomp_read = _filled_pipe(self.plan.seccomp_program, "seccomp program")
            for fd, content in self.plan.data_files:
                data_reads.append((_filled_pipe(content, "generated file"), fd))
        except BaseException:
            for end in (seccomp_read, *(end for end, _ in data_reads)):
                if end >= 0:
                    os.close(end)
            raise
        read_end, write_end = _pipe()
        block_read = block_write = -1
        if self.plan.block_fd:
            block_read, block_write = _pipe()
        if self.plan.pty and self.stdio is None:
            from fence.executor.ptyrelay import PtyRelay  # lazy: only PTY runs need the relay (termios, ~1.2 ms)

            try:
                self.relay = PtyRelay(self.deliver)
            except OSError as e:
                for fd in (read_end, write_end, block_read, block_write, seccomp_read, *(e_ for e_, _ in data_reads)):
                    if fd >= 0:
                        os.close(fd)
                raise LaunchError(f"cannot open a pseudo-terminal: {e.strerror}") from None
        moved: dict[int, int] = {}
        inherit = dict(self.inherit)
        try:
            if self.plan.interpreter_fd:
                try:
                    inherit[self.plan.interpreter_fd] = _open_interpreter(self.plan.interpreter)
                except LaunchError:
                    self._close_relay()
                    for fd in (read_end, block_write):
                        if fd >= 0:
                            os.close(fd)
                    raise
            if self.relay_signals:  # else the caller routes signals to on_signal (an event loop's handlers)
                self._install_signal_relay()
            actions = self.relay.spawn_actions() if self.relay else []  # first: later dup2s may reuse its fd
            if self.stdio is not None:  # first too: the targets 0-2 are no later source, nor these sources a target yet
                actions += [(os.POSIX_SPAWN_DUP2, ours, target) for target, ours in enumerate(self.stdio)]
            actions.append((os.POSIX_SPAWN_DUP2, write_end, self.plan.info_fd))
            if block_read >= 0:
                actions.append((os.POSIX_SPAWN_DUP2, block_read, self.plan.block_fd))
            if seccomp_read >= 0:
                actions.append((os.POSIX_SPAWN_DUP2, seccomp_read, SECCOMP_FD))
            for end, fd in data_reads:
                actions.append((os.POSIX_SPAWN_DUP2, end, fd))
            moved = _clear_of_targets(inherit)
            actions += [(os.POSIX_SPAWN_DUP2, ours, target) for target, ours in moved.items()]
            # own process group (Ctrl-C reaches fence only), or for a PTY run its own session with no
            # controlling terminal: nothing in the sandbox shares the user's terminal session
            group: dict[str, Any] = {"setsid": True} if self.plan.pty else {"setpgroup": 0}
            try:
                self.pid = os.posix_spawn(
                    self.plan.argv[0], self.plan.argv, self.plan.env, file_actions=actions, **group
                )
            except OSError as e:
                self._restore_signals()
                self._close_relay()
                os.close(read_end)
                if block_write >= 0:
                    os.close(block_write)
                raise LaunchError(f"cannot start bwrap ({self.plan.argv[0]}): {e.strerror}") from None
        finally:
            _close_moved(moved, inherit)
            if self.plan.interpreter_fd in inherit:
                os.close(inherit[self.plan.interpreter_fd])
            os.close(write_end)
            for fd in (block_read, seccomp_read, *(end for end, _ in data_reads)):
                if fd >= 0:
                    os.close(fd)
        if self.relay:
            self.relay.spawned(self.pid)
        if self.plan.listen_inside:  # while bwrap starts: the bridge's imports overlap it
            from fence.executor.bridge import get_ready  # lazy: relaxed and shared runs make no listeners

            get_ready()
        try:
            self.init_pid = _read_child_pid(read_end)
        finally:
            os.close(read_end)
        if block_write >= 0:
            try:
                if self.plan.listen_inside:
                    if not self.init_pid:
                        raise LaunchError("bwrap failed before the sandbox existed")
                    # lazy: only runs with a netns make bridges (loaded by get_ready above)
                    from fence.executor.bridge import listen_inside

                    try:
                        self.listeners = listen_inside(self.init_pid, self.plan.listen_inside)
                        if prepare is not None:
                            prepare(self.listeners)
                    except Exception as e:
                        self._abort()
                        raise LaunchError(str(e)) from None
                os.write(block_write, b"go")
            finally:
                os.close(block_write)
        if self.pending:
            self._flush_pending()
        return self

    def _abort(self) -> None:
        """Kill a sandbox still held on ``--block-fd`` (its command never ran) and what was made for it.

        The sandbox's init goes first, while the block pipe is still open:
        killing bwrap alone does not stop it (``--die-with-parent`` is not in
        force yet while it waits on ``--block-fd``), and the pipe's EOF would
        then release the command.  Killing a pid namespace's init kills all in it.
        """
        if self.init_pid:
            _kill(self.init_pid, signal.SIGKILL)
        _kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self._restore_signals()
        self._close_relay()
        for sock in self.listeners:
            if sock is not None:
                sock.close()
        self.listeners = []

    def kill(self) -> None:
        """Stop the whole sandbox now (SIGKILL to its init and to bwrap) and reap bwrap."""
        if self.init_pid:
            _kill(self.init_pid, signal.SIGKILL)
        _kill(self.pid, signal.SIGKILL)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:  # already reaped (its waiter got there first)
            pass
        self._restore_signals()

    def wait(self) -> int:
        """Wait for bwrap; its status is the command's (bwrap maps a signal death to 128+N)."""
        try:
            status = self.waitpid()
        finally:
            self._restore_signals()
        return exit_code(status)

    def waitpid(self) -> int:
        """Block until bwrap ends and return its raw wait status (safe in a worker thread).

        A PTY run relays the terminal here first; the relay restores the
        user's terminal however it ends.
        """
        if self.relay:
            try:
                self.relay.run()
            finally:
                self._close_relay()
        _, status = os.waitpid(self.pid, 0)
        return status

    def _close_relay(self) -> None:
        if self.relay:
            self.relay.close()

    # signals ----------------------------------------------------------------------
    def _install_signal_relay(self) -> None:
        for sig in self.signals:
            self._old_handlers[sig] = signal.signal(sig, self.on_signal)

    def _restore_signals(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()

    def on_signal(self, signum: int, _frame=None) -> None:
        if self.relay:  # a PTY run: the relay decides (resize, hang up, foreground group)
            self.relay.notify(signum)
            return
        if not self.init_pid:
            self.pending.append(signum)  # bwrap has not reported yet: deliver once it has
            return
        self.deliver(signum)

    def _flush_pending(self) -> None:
        pending, self.pending = self.pending, []
        for signum in pending:
            self.deliver(signum)

    def deliver(self, signum: int) -> None:
        """Send ``signum`` to the sandboxed command's process group, as a terminal would.

        bwrap's ``--new-session`` makes its init (pid 1 inside) the session and
        group leader, so the group includes that init; it is unaffected, since
        a namespace's init only receives signals it has handlers for.
        """
        pid = self.command_pid or self._find_command()
        if not pid:
            if signum != signal.SIGWINCH:  # the command never started or already ended: stop the sandbox
                _kill(self.pid, signal.SIGKILL)
            return
        pgid = _process_group(pid)
        try:
            if pgid and pgid != self.pid:  # never bwrap's own group (a PTY run, before the init helper's setsid)
                os.killpg(pgid, signum)
            else:
                os.kill(pid, signum)
        except OSError:
            _kill(pid, signum)

    def _find_command(self, patience: float = 0.5) -> int:
        deadline = time.monotonic() + patience
        path = f"/proc/{self.init_pid}/task/{self.init_pid}/children"
        while True:
            try:
                with open(path) as f:
                    children = f.read().split()
            except OSError:
                return 0
            if children:
                self.command_pid = int(children[0])
                return self.command_pid
            if time.monotonic() > deadline:
                return 0
            time.sleep(0.001)


def exit_code(status: int) -> int:
    """fence's exit code for a wait status: the code, or 128+N for death by signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _open_interpreter(path: str) -> int:
    """The init helper's interpreter, opened ``O_PATH`` above the fixed fds: bwrap execs it through
    ``/proc/self/fd`` because the exec masks cover its path (``plan._init_helper_argv``)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise LaunchError(f"cannot open the init helper's interpreter {path}: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LaunchError(f"the init helper's interpreter {path} is not a regular file")
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    finally:
        os.close(fd)


def _clear_of_targets(inherit: dict[int, int]) -> dict[int, int]:
    """``inherit`` with every source fd that is also some target moved above all targets first.

    The plan decides the numbers bwrap receives (``{target: ours}``); posix_spawn
    applies the dup2s in order, so a source that sits on another entry's target
    would be overwritten before it is copied.  Moved copies are close-on-exec
    and closed by ``_close_moved`` once bwrap has its own.
    """
    if not inherit:
        return {}
    targets = set(inherit)
    floor = max(targets) + 1
    return {
        target: ours if ours == target or ours not in targets else fcntl.fcntl(ours, fcntl.F_DUPFD_CLOEXEC, floor)
        for target, ours in inherit.items()
    }


def _close_moved(moved: dict[int, int], inherit: dict[int, int]) -> None:
    for target, ours in moved.items():
        if ours != inherit[target]:
            os.close(ours)


def _pipe() -> tuple[int, int]:
    """A close-on-exec pipe whose ends sit above the fds bwrap is told to use (3, 4).

    posix_spawn's dup2 into fd 3/4 must never clobber another end we still need.
    """
    ends = []
    for fd in os.pipe():
        ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10))
        os.close(fd)
    return ends[0], ends[1]


def _filled_pipe(data: bytes, what: str) -> int:
    """The read end of a pipe already holding ``data`` and closed for writing (bwrap reads to EOF)."""
    if len(data) > 65536:  # a pipe's default capacity: the write below must not block
        raise LaunchError(f"{what} too large ({len(data)} bytes)")
    read_end, write_end = _pipe()
    try:
        os.write(write_end, data)
    finally:
        os.close(write_end)
    return read_end


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError:
        pass


def _process_group(pid: int) -> int:
    """The process group of ``pid`` as this pid namespace numbers it (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[2]) if len(fields) > 2 else 0


def _read_child_pid(fd: int) -> int:
    """Parse ``"child-pid": N`` from bwrap's info JSON; 0 if bwrap failed before writing it."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        chunks.append(chunk)
        if b"}" in chunk:
            break
    text = b"".join(chunks).decode("ascii", "replace")
    key = text.find('"child-pid"')
    if key < 0:
        return 0
    digits = "".join(c for c in text[key + 11 :].split(",")[0].split("}")[0] if c.isdigit())
    return int(digits) if digits else 0
