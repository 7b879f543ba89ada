"""The supervisor's files: the lock, the log, the JetStream data dir, and what a dead one left behind.

Why apart from the process logic: these decide *where* things live and how a
crashed supervisor's leftovers are recognised (a runtime dir is shared with
``fence run``'s caches, so only the supervisor's own names are ever removed).
"""

from __future__ import annotations

import fcntl
import os
import signal

from fence import runtime
from fence.supervisor.natsconf import NATS
from fence.supervisor.output import say

LOG_ROTATE_SIZE = 1024 * 1024


def data_dir() -> str:
    """``$XDG_DATA_HOME/fence`` (default ``~/.local/share/fence``): durable, unlike the runtime dir."""
    base = os.environ.get("XDG_DATA_HOME", "")
    if not base or not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "fence")


def log_path() -> str:
    base = os.environ.get("XDG_STATE_HOME", "")
    if not base or not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "fence", "supervisor.log")


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        say(f"cannot remove {path}: {e}")


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


class Lock:
    """``supervisor.lock``: one supervisor per runtime dir, from the first instant.

    ``supervisor.json`` only appears once everything is healthy; the lock
    closes the window in which two ``fence up`` could both start.
    """

    def __init__(self, path: str):
        self.path = path
        self.fd = -1

    def acquire(self) -> int:
        """0 when acquired, else the pid of the holder (or -1 when unknown)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = int(os.read(fd, 32).decode().strip() or -1)
            except ValueError:
                holder = -1
            os.close(fd)
            return holder
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return 0

    def release(self) -> None:
        if self.fd >= 0:
            unlink(self.path)  # while still held: a waiting `up` cannot grab a lock being removed
            os.close(self.fd)
            self.fd = -1


def lock_holder(rdir: str) -> int:
    """The pid holding ``supervisor.lock`` (a supervisor starting or running), else 0."""
    path = os.path.join(rdir, runtime.LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            return int(os.read(fd, 32).decode().strip() or -1)
        except ValueError:
            return -1
    finally:
        os.close(fd)
    return 0


def clean_stale(rdir: str) -> None:
    """Leftovers of a supervisor that died without cleaning (SIGKILL, power loss).

    Its services exit by themselves when their supervisor is gone; an orphaned
    nats-server is found through its ports file (which names its pid) and
    stopped if its command line still names this runtime dir's config.
    """
    conf = os.path.join(rdir, runtime.NATS_CONF).encode()
    for entry in os.listdir(rdir):
        path = os.path.join(rdir, entry)
        if entry.startswith(f"{NATS}_") and entry.endswith(".ports"):
            try:
                pid = int(entry[len(NATS) + 1 : -len(".ports")])
            except ValueError:
                continue
            if runtime.pid_alive(pid) and conf in cmdline(pid):
                os.kill(pid, signal.SIGKILL)
            unlink(path)
        elif entry in (runtime.INFO_FILE, runtime.NATS_CONF, runtime.PROXY_HANDOFF) or entry.endswith(".tmp"):
            unlink(path)


def rotate_log(path: str) -> None:
    try:
        if os.path.getsize(path) > LOG_ROTATE_SIZE:
            os.replace(path, path + ".1")
    except OSError:
        pass


def clear_cache(cache: str) -> None:
    """Drop fence's regenerable caches (compiled seccomp programs, feature probes) kept in the runtime dir.

    They are not the supervisor's, but a stopped fence leaves nothing in its
    runtime dir, and every run rebuilds what it misses.
    """
    try:
        names = os.listdir(cache)
    except OSError:
        return
    for name in names:
        unlink(os.path.join(cache, name))
    try:
        os.rmdir(cache)
    except OSError:
        pass


def log_since(path: str, offset: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace").splitlines()
    except OSError:
        return []
