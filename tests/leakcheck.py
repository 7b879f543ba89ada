"""A test session cleans up after itself, or fails saying what it left and which test left it.

Every directory the tests make lives under one of this session's two roots,
``/var/tmp/fence-tests-<id>`` (visible inside sandboxes; ``session_dir``) and
``/tmp/fence-tests-<id>`` (pytest's ``tmp_path`` and ``tempfile``'s default), and
the session's process exports ``FENCE_TEST_SESSION=fence-tests-<id>`` with HOME
inside the first root, so what the tests start carries the id too
(``leftovers.py`` says how each kind of leftover is recognised).  The id is
random per session: sessions running side by side never see each other's
things.

After every test the session's things are listed and each is remembered with
the test after which it first appeared (a module fixture's server is "first
seen" after the first test that used it).  When the session ends, after every
fixture's teardown, whatever is still there is reported with that test,
removed, and the run fails.  Loaded by ``tests/conftest.py``, which imports
these hooks, or by ``pytest -p leakcheck`` with ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from pathlib import Path

import pytest

import leftovers

ENV = "FENCE_TEST_SESSION"
HERMETIC_UNSET = ("XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME")
"""Unset for the session: in-process fence would otherwise write the real runtime/state dirs."""
SETTLE = 3.0
"""Seconds a process that is already on its way out gets before it counts as left behind."""


class Session:
    """One session's roots, marks, and what was seen when."""

    def __init__(self, config: pytest.Config):
        short = secrets.token_hex(4)
        self.token = f"fence-tests-{short}"
        self.var_root = os.path.join("/var/tmp", self.token)
        self.tmp_root = os.path.join("/tmp", self.token)
        os.mkdir(self.var_root)
        os.chmod(self.var_root, 0o755)  # the unprivileged test user's directories are inside
        os.mkdir(self.tmp_root, 0o700)
        self.home = os.path.join(self.var_root, "home")
        os.mkdir(self.home, 0o700)
        scaffolding = [self.home]
        if config.option.basetemp is None:  # the user's own --basetemp is theirs to keep
            config.option.basetemp = os.path.join(self.tmp_root, "pytest")
            scaffolding.append(config.option.basetemp)
        self.marks = leftovers.Marks(self.token, short, (self.var_root, self.tmp_root), tuple(scaffolding))
        self.first_seen: dict[str, str] = {}
        self._verdicts: dict[str, bool] = {}
        self.report: list[str] = []
        self.finished = False
        self._saved_env = {name: os.environ.get(name) for name in (ENV, "HOME", *HERMETIC_UNSET)}
        self._saved_tempdir = tempfile.tempdir
        os.environ[ENV] = self.token
        os.environ["HOME"] = self.home
        for name in HERMETIC_UNSET:
            os.environ.pop(name, None)
        tempfile.tempdir = self.tmp_root

    def record(self, when: str) -> None:
        for item in leftovers.find(self.marks, self._verdicts):
            self.first_seen.setdefault(item.ident, when)

    def settle(self) -> list[leftovers.Leftover]:
        """What is left once processes already exiting (a server told to stop) have gone."""
        deadline = time.monotonic() + SETTLE
        while True:
            left = leftovers.find(self.marks)
            if not any(item.kind == "process" for item in left) or time.monotonic() > deadline:
                return left
            time.sleep(0.1)

    def finish(self) -> bool:
        """Report, remove, restore; True when the session left something behind."""
        self.finished = True
        left = self.settle()
        self.report = [
            f"{item}\n    first seen after {self.first_seen.get(item.ident, 'the last teardown')}" for item in left
        ]
        problems = leftovers.remove(left, self.marks)
        self.report += [f"cleanup: {problem}" for problem in problems]
        self._restore()
        return bool(self.report)

    def abandon(self) -> None:
        """No session ran (``--help``, ``--markers``): only the empty roots to take away."""
        if not self.finished:
            self.finished = True
            for root in self.marks.roots:
                leftovers.remove_tree(root)
            self._restore()

    def _restore(self) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        tempfile.tempdir = self._saved_tempdir


_session: Session | None = None


def session_dir(prefix: str) -> Path:
    """A fresh directory of this session under /var/tmp (not /tmp: a sandbox's /tmp is private).

    Remove it when done; whatever is still there when the session ends fails the run.
    """
    if _session is None:
        raise RuntimeError("the leakcheck plugin is not active (tests/conftest.py loads it)")
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_session.var_root))


def marks() -> leftovers.Marks:
    if _session is None:
        raise RuntimeError("the leakcheck plugin is not active (tests/conftest.py loads it)")
    return _session.marks


@pytest.hookimpl(tryfirst=True)  # before the tmp_path plugin reads --basetemp
def pytest_configure(config: pytest.Config) -> None:
    global _session
    if _session is None and not hasattr(config, "workerinput"):
        _session = Session(config)


def pytest_collection_finish(session: pytest.Session) -> None:
    if _session is not None:
        _session.record("collection")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    yield
    if _session is not None:
        _session.record(item.nodeid)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _session is None or _session.finished:
        return
    if _session.finish() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    if _session is not None:
        _session.abandon()


def pytest_terminal_summary(terminalreporter) -> None:
    if _session is None or not _session.report:
        return
    terminalreporter.section("left behind by this session (now removed)", sep="=", red=True, bold=True)
    for line in _session.report:
        terminalreporter.line(line, red=True)
    # counted in the summary line ("N passed, M left behind"); objects, not strings: other plugins read
    # every entry of ``stats`` as a report (hypothesis's reads ``__dict__``)
    terminalreporter.stats.setdefault("left behind", []).extend(_Leftover(line) for line in _session.report)


class _Leftover:
    """One line of the leak report, as an entry of the terminal reporter's stats."""

    def __init__(self, line: str) -> None:
        self.line = line

    def __str__(self) -> str:
        return self.line
