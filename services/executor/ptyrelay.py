"""A pseudo-terminal for an interactive sandboxed command (``allowPty``).

Only a PTY run imports this module.  Three parts:

* **Inside** (the init helper ``fence.executor.inithelper`` with ``--pty``, run
  by the host's interpreter, ``python -I -S``): ``setsid()``, then it opens
  its stdin, the PTY's slave, as the new session's leader (no TIOCSCTTY: the
  filter refuses it), then (after Landlock) exec the command.  The command thus owns the
  PTY as its controlling terminal in a session of its own: ``/dev/tty``
  works, a shell does job control, and keyboard signals (the PTY's line
  discipline turns a Ctrl-C byte into SIGINT) reach the PTY's foreground
  process group only.  Why not simply let bwrap own the terminal (no helper):
  bwrap's own process, outside the sandbox, would then sit in the terminal's
  foreground group, and a Ctrl-C would kill bwrap and with it the whole
  sandbox (``--die-with-parent``) before the command could handle SIGINT.
  The command's session is orphaned (its parent, the sandbox's init, lives in
  bwrap's session), so a Ctrl-Z sent to a program that ignores job control is
  discarded by the kernel instead of stopping it with nothing left to resume
  it; shells manage their own jobs.

* **The spawn side** (``PtyRelay.__init__``, ``spawn_actions``): fence opens
  the PTY, copies the user's terminal modes and window size onto it, and
  bwrap is spawned in a fresh session (``posix_spawn(setsid=True)``) with the
  slave as stdin/stdout/stderr.  The sandbox never receives the user's
  terminal, which is why a PTY run may drop bwrap's ``--new-session``.

* **The relay** (``PtyRelay.run``): the user's terminal goes to raw mode (every
  byte, Ctrl-C and Ctrl-Z included, travels to the PTY) and is restored on
  every way out; bytes are copied both ways by a ``poll`` loop with no asyncio,
  so the same loop serves a lone run (main thread) and a supervised run
  (a worker thread beside uvloop).  Signal handlers only queue the signal and
  wake the loop through a pipe; the loop acts on it:

  ===========================  ===================================================
  SIGWINCH                     copy the window size to the PTY; the kernel then
                               signals the PTY's foreground group (fence does not
                               forward WINCH itself, which would deliver it twice)
  SIGHUP                       the user's terminal is gone: hang the PTY up (close
                               the master); the kernel sends SIGHUP to the command
  SIGINT/QUIT/TERM/USR1/USR2   (sent with kill: the keyboard no longer makes them)
                               to the PTY's foreground process group
  SIGTSTP                      restore the terminal, stop fence (SIGSTOP)
  SIGCONT                      back to raw mode, window size re-read
  ===========================  ===================================================

  The loop ends when every slave descriptor is closed (EIO on the master) or
  bwrap has exited (its pidfd), after writing what the PTY still holds.
  A SIGKILLed fence cannot restore the terminal (``reset`` does).
"""

from __future__ import annotations

import collections
import fcntl
import os
import select
import signal
import termios
import threading
from collections.abc import Callable

JOB_SIGNALS = (signal.SIGTSTP, signal.SIGCONT)
"""Caught only during a PTY run, to restore the user's terminal around fence's own stop."""

_MAX_INPUT = 1 << 16
"""Bytes typed ahead that wait for the command to read them; past this stdin is not read."""


class PtyRelay:
    """One PTY between the user's terminal (``stdin``/``stdout``) and a sandbox."""

    def __init__(self, fallback: Callable[[int], None], stdin: int = 0, stdout: int = 1):
        self.stdin, self.stdout = stdin, stdout
        self.fallback = fallback
        """Delivers a signal when the PTY has no foreground group yet (the command has not started)."""
        self.pid = 0
        self._saved: list | None = None
        self._pending: collections.deque[int] = collections.deque()
        self._stdout_ok = True
        self._closing = threading.Lock()
        """Held while closing: a signal arriving then (any thread) must not write to a reused fd number."""
        master, slave = os.openpty()
        self.master, self.slave = _high(master), _high(slave)  # clear of the fds bwrap is told to use
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            termios.tcsetattr(self.slave, termios.TCSANOW, termios.tcgetattr(stdin))
        except termios.error:
            pass
        self.resize()
        os.set_blocking(self.master, False)

    def spawn_actions(self) -> list[tuple]:
        """posix_spawn file actions: the slave becomes bwrap's stdin, stdout and stderr."""
        return [(os.POSIX_SPAWN_DUP2, self.slave, fd) for fd in (0, 1, 2)]

    def spawned(self, pid: int) -> None:
        """bwrap holds the slave now: drop ours, so the master sees EIO once the sandbox is gone."""
        self.pid = pid
        self._close_slave()

    # signals -------------------------------------------------------------------
    def notify(self, signum: int) -> None:
        """Queue ``signum`` for the relay loop (safe in a signal handler, from any thread)."""
        self._pending.append(signum)
        if not self._closing.acquire(blocking=False):  # never block: this may interrupt close() itself
            return
        try:
            if self._wake_w >= 0:
                os.write(self._wake_w, b"!")
        except OSError:  # full: the loop has plenty to do already
            pass
        finally:
            self._closing.release()

    def resize(self) -> None:
        """Copy the user's window size (rows, columns, pixels) onto the PTY."""
        if self.master < 0:
            return
        for fd in (self.stdout, self.stdin):
            try:
                size = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
            except OSError:
                continue
            try:
                fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)
            except OSError:
                pass
            return

    def _handle_pending(self) -> None:
        while self._pending:
            signum = self._pending.popleft()
            if signum == signal.SIGWINCH:
                self.resize()
            elif signum == signal.SIGCONT:
                self._enter_raw()
                self.resize()
            elif signum == signal.SIGTSTP:
                self._restore()
                os.kill(os.getpid(), signal.SIGSTOP)  # uncatchable: no handler juggling, in any thread
                self._enter_raw()  # continued (SIGCONT's own turn repeats this harmlessly)
                self.resize()
            elif signum == signal.SIGHUP:
                self.hangup()
            else:
                self._to_foreground(signum)

    def _to_foreground(self, signum: int) -> None:
        try:
            pgrp = os.tcgetpgrp(self.master) if self.master >= 0 else 0
        except OSError:
            pgrp = 0
        if pgrp > 0 and pgrp != self.pid:  # never bwrap's own group: that would kill the sandbox outright
            try:
                os.killpg(pgrp, signum)
                return
            except OSError:
                pass
        self.fallback(signum)

    def hangup(self) -> None:
        """Close the master: the kernel hangs the PTY up and sends SIGHUP to the command's session."""
        if self.master >= 0:
            os.close(self.master)
            self.master = -1

    # the relay -----------------------------------------------------------------
    def run(self) -> None:
        """Relay until the sandbox is gone and its output written; restores the terminal on every path."""
        pidfd = _pidfd(self.pid)
        try:
            self._enter_raw()
            self._handle_pending()  # signals that arrived while the sandbox was starting
            self._loop(pidfd)
        finally:
            if pidfd >= 0:
                os.close(pidfd)
            self.close()

    def _loop(self, pidfd: int) -> None:
        to_pty = bytearray()
        reading = True
        while self.master >= 0:
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            if pidfd >= 0:
                poller.register(pidfd, select.POLLIN)
            poller.register(self.master, select.POLLIN | (select.POLLOUT if to_pty else 0))
            if reading and len(to_pty) < _MAX_INPUT:
                poller.register(self.stdin, select.POLLIN)
            for fd, events in poller.poll():
                if fd == self._wake_r:
                    _drain(self._wake_r)
                    self._handle_pending()
                elif self.master < 0:  # hung up while handling signals
                    return
                elif fd == pidfd:  # bwrap has exited: what the PTY still holds (bounded), then stop
                    for _ in range(256):
                        if self._copy_output() <= 0:
                            break
                    return
                elif fd == self.master:
                    if events & select.POLLOUT and to_pty:
                        try:
                            del to_pty[: os.write(self.master, to_pty)]
                        except BlockingIOError:
                            pass
                        except OSError:  # nobody reads the PTY any more
                            to_pty.clear()
                    if events & (select.POLLIN | select.POLLHUP | select.POLLERR) and self._copy_output() < 0:
                        return  # EIO: every slave descriptor is closed, the sandbox is gone
                elif fd == self.stdin:
                    try:
                        data = os.read(self.stdin, 4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if data:
                        to_pty += data
                    else:  # the user's terminal hung up; SIGHUP (if it comes) hangs the PTY up too
                        reading = False

    def _copy_output(self) -> int:
        """Move one chunk from the PTY to the user's terminal: 1 moved, 0 none ready, -1 no slave left."""
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return 0
        except OSError:  # EIO
            return -1
        if not data:
            return -1
        if self._stdout_ok:
            self._stdout_ok = _write_all(self.stdout, data)
        return 1

    # the user's terminal ----------------------------------------------------------
    def _enter_raw(self) -> None:
        try:
            if self._saved is None:
                self._saved = termios.tcgetattr(self.stdin)
            termios.tcsetattr(self.stdin, termios.TCSANOW, raw_mode(self._saved))
        except termios.error:
            pass

    def _restore(self) -> None:
        if self._saved is not None:
            try:
                termios.tcsetattr(self.stdin, termios.TCSADRAIN, self._saved)
            except termios.error:
                pass

    def close(self) -> None:
        """Restore the user's terminal and close every descriptor (idempotent)."""
        self._restore()
        self._saved = None
        self._close_slave()
        self.hangup()
        with self._closing:
            for name in ("_wake_r", "_wake_w"):
                fd = getattr(self, name)
                if fd >= 0:
                    setattr(self, name, -1)
                    os.close(fd)

    def _close_slave(self) -> None:
        if self.slave >= 0:
            os.close(self.slave)
            self.slave = -1


def raw_mode(attrs: list) -> list:
    """``cfmakeraw``: no echo, no line editing, no signal keys, no output processing, 8-bit bytes.

    The PTY's own line discipline inside does all of that for the command.
    """
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
    iflag &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
    )
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    cc = list(cc)
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    return [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]


def _high(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


def _pidfd(pid: int) -> int:
    """A pidfd for bwrap (readable once it exits), or -1 where the kernel has none (< 5.3)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return -1


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except OSError:
        pass


def _write_all(fd: int, data: bytes) -> bool:
    """Write everything (waiting out a non-blocking terminal); False when the terminal is gone."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])
        except OSError:
            return False
    return True
