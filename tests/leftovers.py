"""What a test session leaves behind, and how it is taken away.

Several sessions run at once on one host (engineers in parallel, CI), so a
before/after picture of the machine would blame this session for another's
work.  Instead a session recognises what is *its own* by construction:

* directories: every test directory lives under the session's roots, whose
  names carry the session's token; whatever is still in a root is a leftover;
* processes: descendants of the pytest process, and any process whose argv,
  environment or working directory mentions the token (the session exports it
  and every path it hands out contains it, so a daemon that double-forked away,
  a sandbox run as another user, a supervisor's service all still carry it);
* mounts: mount points inside a root;
* network names: network namespaces and links whose name carries the
  session's short id (a test that makes one must use ``Marks.net_name``).

Finding is separate from removing so a report can say what was left before
anything is cleaned.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Leftover:
    kind: str
    """``path``, ``process``, ``mount``, ``netns`` or ``link``."""
    ident: str
    """Stable identity across scans (a path; ``pid@starttime`` so a reused pid is another process)."""
    detail: str
    """What a person reads to recognise it."""

    def __str__(self) -> str:
        return f"{self.kind} {self.detail}"


@dataclass(frozen=True)
class Marks:
    """How one session recognises what is its own."""

    token: str
    """In every root's name and in the session's environment (``FENCE_TEST_SESSION``)."""
    short: str
    """Short enough for a network interface name (15 bytes); part of ``token``."""
    roots: tuple[str, ...]
    """Directories every test directory lives in."""
    scaffolding: tuple[str, ...] = ()
    """Paths in the roots that the session itself keeps until the end (its HOME, pytest's basetemp)."""
    pid: int = field(default_factory=os.getpid)
    """The session's process: everything below it is the session's too."""

    def net_name(self, stem: str) -> str:
        """A netns or link name this session will recognise (and remove) as its own."""
        name = f"ft{self.short}{stem}"
        if len(name) > 15:
            raise ValueError(f"{name!r} is longer than a network interface name may be")
        return name


def find(marks: Marks, verdicts: dict[str, bool] | None = None) -> list[Leftover]:
    """Everything of this session that exists right now, scaffolding and the session's process apart.

    ``verdicts`` (kept by the caller between scans) remembers which processes
    were already judged foreign, so a scan after every test reads only new ones.
    """
    return [*paths(marks), *processes(marks, verdicts), *mounts(marks), *net_names(marks)]


# --- directories ---------------------------------------------------------------------------------


def paths(marks: Marks) -> list[Leftover]:
    found = []
    for root in marks.roots:
        try:
            names = sorted(os.listdir(root))
        except FileNotFoundError:
            continue
        for name in names:
            path = os.path.join(root, name)
            if path not in marks.scaffolding:
                found.append(Leftover("path", path, path + ("/" if os.path.isdir(path) else "")))
    return found


# --- processes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    state: str
    start: str


def _stat(pid: int) -> _Proc | None:
    text = _read(f"/proc/{pid}/stat").decode(errors="replace")
    if not text:
        return None
    rest = text[text.rfind(")") + 2 :].split()  # the command name in parentheses may hold anything
    return _Proc(pid, int(rest[1]), rest[0], rest[19])


def _read(path: str) -> bytes:
    """The whole file, or nothing (gone, or not ours to read); raw os calls: this runs after every test."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _mentions(pid: int, token: bytes) -> bool:
    if token in _read(f"/proc/{pid}/cmdline") or token in _read(f"/proc/{pid}/environ"):
        return True
    try:
        return token in os.readlink(f"/proc/{pid}/cwd").encode()
    except OSError:
        return False


def _describe(proc: _Proc) -> str:
    argv = _read(f"/proc/{proc.pid}/cmdline").rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    if len(argv) > 160:
        argv = argv[:157] + "..."
    try:
        import pwd

        user = pwd.getpwuid(os.stat(f"/proc/{proc.pid}").st_uid).pw_name
    except (OSError, KeyError):
        user = "?"
    return f"pid {proc.pid} [{user}] {argv or '(no argv)'}"


def _table() -> dict[int, _Proc]:
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (proc := _stat(int(name))) is not None:
            table[proc.pid] = proc
    return table


def _descendants(pid: int, table: dict[int, _Proc]) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def processes(marks: Marks, verdicts: dict[str, bool] | None = None) -> list[Leftover]:
    """Live processes of this session; zombies hold nothing but a pid and are left to their parents.

    A process gets the token only from its parent (environment, paths), so a
    process once judged foreign stays foreign: ``verdicts`` skips re-reading it.
    """
    table = _table()
    below = _descendants(marks.pid, table)
    token = marks.token.encode()
    verdicts = {} if verdicts is None else verdicts
    found = []
    for proc in table.values():
        if proc.pid == marks.pid or proc.state == "Z":
            continue
        ident = f"{proc.pid}@{proc.start}"
        ours = True if proc.pid in below else verdicts.get(ident)
        if ours is None:
            ours = verdicts[ident] = _mentions(proc.pid, token)
        if ours:
            found.append(Leftover("process", ident, _describe(proc)))
    return found


# --- mounts and network names --------------------------------------------------------------------


def _unescape(field_: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field_ = field_.replace(code, char)
    return field_


def mounts(marks: Marks) -> list[Leftover]:
    found = []
    for line in _read("/proc/self/mountinfo").decode(errors="replace").splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = _unescape(fields[4])
            if any(point == root or point.startswith(root + "/") for root in marks.roots):
                found.append(Leftover("mount", point, point))
    return found


def net_names(marks: Marks) -> list[Leftover]:
    found = []
    for kind, where in (("netns", "/run/netns"), ("link", "/sys/class/net")):
        try:
            names = sorted(os.listdir(where))
        except OSError:
            continue
        found += [Leftover(kind, name, name) for name in names if f"ft{marks.short}" in name]
    return found


# --- removal -------------------------------------------------------------------------------------


def remove(leftovers: list[Leftover], marks: Marks, wait: float = 5.0) -> list[str]:
    """Take every leftover away (processes first: they may hold mounts and directories); the failures."""
    problems = []
    procs = [item for item in leftovers if item.kind == "process"]
    for item in procs:
        pid, start = item.ident.split("@")
        now = _stat(int(pid))
        if now is not None and now.start == start:  # still that process, not a reused pid
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + wait
    for item in procs:
        pid, start = item.ident.split("@")
        while True:
            try:
                os.waitpid(int(pid), os.WNOHANG)  # our own child: reap it, or it stays a zombie
            except ChildProcessError:
                pass
            now = _stat(int(pid))
            if now is None or now.start != start or now.state == "Z":
                break
            if time.monotonic() > deadline:
                problems.append(f"still running after SIGKILL: {item.detail}")
                break
            time.sleep(0.05)
    for item in sorted((i for i in leftovers if i.kind == "mount"), key=lambda i: -len(i.ident)):
        r = subprocess.run(["umount", "-l", item.ident], capture_output=True, text=True)
        if r.returncode:
            problems.append(f"cannot unmount {item.ident}: {r.stderr.strip()}")
    for item in leftovers:
        argv = {"netns": ["ip", "netns", "delete", item.ident], "link": ["ip", "link", "delete", item.ident]}
        if item.kind in argv:
            r = subprocess.run(argv[item.kind], capture_output=True, text=True)
            if r.returncode:
                problems.append(f"cannot delete {item}: {r.stderr.strip()}")
    for root in marks.roots:
        problems += remove_tree(root)
    return problems


def remove_tree(path: str) -> list[str]:
    """``rm -rf``: read-only directories a test (or a sandbox) left are made writable first."""
    problems = []

    def retry(func, target, _exc_info):
        try:
            os.chmod(os.path.dirname(target), 0o700)
            func(target)
        except FileNotFoundError:
            pass
        except OSError as e:
            problems.append(f"cannot remove {target}: {e.strerror}")

    if os.path.lexists(path):
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=retry)
        else:
            shutil.rmtree(path, onerror=retry)
    return problems
