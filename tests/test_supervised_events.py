"""Every event kind reaches the supervisor's monitor, published by the identity that publishes it in production.

A real ``fence up --detach`` (nats-server with the generated permissions, the
four service processes) in private XDG dirs under /var/tmp.  Each event kind
is published over NATS as the bus user that sends it in production (``fence
run`` connects as ``client`` and runs the executor in-process; the proxy
service publishes network decisions as ``proxy``), and must come back from the
monitor's ``fence.monitor.recent``.  Then real runs: a command refused by
preflight and a sandbox that creates a protected path must each produce their
event at the monitor, and nats-server must never have logged a permissions
violation (a refused publish is otherwise silent: events just go missing).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from conftest import session_dir
from fence import messages
from fence.messages import RecentEventsReply, RecentEventsRequest
from fence.natsbus import NatsBus
from fence.runtime import Credentials
from fence.subjects import EVENTS, MONITOR_RECENT, event

pytestmark = [pytest.mark.nats, pytest.mark.sandbox]

PUBLISHERS = [(e.kind, user) for e in EVENTS for user in e.published_by]
"""(event kind, bus user that publishes it in production), from the subject table."""


class Supervised:
    """A detached supervisor in private dirs, and what a test needs to talk to it."""

    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "XDG_RUNTIME_DIR": str(root / "run"),
            "XDG_DATA_HOME": str(root / "data"),
        }
        self.log = self.home / ".local" / "state" / "fence" / "supervisor.log"

    def creds(self, user: str) -> Credentials:
        path = self.root / "run" / "fence" / "creds" / f"{user}.json"
        return msgspec.json.decode(path.read_bytes(), type=Credentials)

    async def connect(self, user: str) -> NatsBus:
        c = self.creds(user)
        return await NatsBus.connect(
            c.url, user=c.user, password=c.password, inbox_prefix=c.inbox_prefix, name=f"test-{user}"
        )

    def fence(self, *args: str, cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "fence", *args], env=self.env, cwd=cwd, capture_output=True, text=True, timeout=60
        )

    def violations(self) -> list[str]:
        """nats-server's permission refusals, as the supervisor forwarded them to its log."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if "Violation" in line]

    def recent(self, sandbox: str = "", want=lambda events: False, timeout: float = 5.0) -> list:
        """The monitor's recent events (of one sandbox), polled until ``want`` accepts them or time is up."""

        async def poll() -> list:
            bus = await self.connect("client")
            try:
                deadline = time.monotonic() + timeout
                while True:
                    reply = await bus.request(
                        MONITOR_RECENT, RecentEventsRequest(sandbox=sandbox, limit=1000), RecentEventsReply
                    )
                    if want(reply.events) or time.monotonic() > deadline:
                        return reply.events
                    await asyncio.sleep(0.05)
            finally:
                await bus.close()

        return asyncio.run(poll())


@pytest.fixture(scope="module")
def supervised():
    root = session_dir("fence-events-")  # not /tmp: private inside
    (root / "run").mkdir(mode=0o700)
    (root / "home").mkdir()
    sup = Supervised(root)
    up = sup.fence("up", "--detach", cwd=root)
    assert up.returncode == 0, up.stderr
    try:
        yield sup
    finally:
        down = sup.fence("down", cwd=root)
        leftover = os.listdir(root / "run")
        # the runs' placeholder locks stay (removing a lock file a run may be waiting on would split the lock)
        locks = set(os.listdir(root / "run" / "fence")) if leftover == ["fence"] else set()
        shutil.rmtree(root, ignore_errors=True)
        assert down.returncode == 0 and (leftover == [] or locks <= {"reserve.lock", "placeholders.lock"}), (
            down.stderr,
            leftover,
            locks,
        )


def sample(kind: str, sandbox: str) -> messages.Message:
    """One valid event of ``kind`` for ``sandbox``."""
    now = time.time()
    return {
        "lifecycle": lambda: messages.LifecycleEvent(sandbox=sandbox, phase="started", ts=now, pid=1, argv=["true"]),
        "preflight": lambda: messages.PreflightBlockedEvent(
            sandbox=sandbox, ts=now, command="reboot", rule="reboot", default_rule=True
        ),
        "net": lambda: messages.NetDecisionEvent(
            sandbox=sandbox,
            ts=now,
            proto="http",
            host="example.com",
            port=443,
            decision="deny",
            reason="nomatch",
            outcome="blocked",
        ),
        "exec": lambda: messages.ExecBlockedEvent(
            sandbox=sandbox, ts=now, pid=2, path="/usr/bin/git", argv=["git", "push"], rule="git push"
        ),
        "fs": lambda: messages.ProtectedPathEvent(
            sandbox=sandbox, ts=now, path="/var/tmp/x/.mcp.json", moved_to="/var/tmp/x/.mcp.json.fence-quarantine-1"
        ),
    }[kind]()


def test_every_event_kind_reaches_the_monitor_from_its_publisher(supervised):
    assert {kind for kind, _ in PUBLISHERS} == {e.kind for e in EVENTS}  # every kind has a publisher
    sandbox = os.urandom(8).hex()
    sent = [(kind, user, sample(kind, sandbox)) for kind, user in PUBLISHERS]
    assert [type(m).__name__ for kind, _, m in sent] == [e.message for e in EVENTS for _ in e.published_by]

    async def publish_all() -> dict[tuple[str, str], int]:
        refused = {}
        for kind, user, message in sent:
            bus = await supervised.connect(user)
            try:
                await bus.publish(event(sandbox, kind), message)
                await asyncio.sleep(0.2)  # a refused publish is reported asynchronously (-ERR)
                refused[kind, user] = bus.permission_errors
            finally:
                await bus.close()
        return refused

    refused = asyncio.run(publish_all())
    got = supervised.recent(sandbox, lambda events: len(events) >= len(sent))
    assert refused == dict.fromkeys(PUBLISHERS, 0), refused
    assert sorted(type(e).__name__ for e in got) == sorted(type(m).__name__ for _, _, m in sent)
    assert supervised.violations() == []


def test_blocked_command_reaches_the_monitor(supervised):
    marker = f"fence-test-{os.urandom(4).hex()}"
    r = supervised.fence("--", "reboot", marker, cwd=supervised.root)
    assert r.returncode == 1 and "blocked by default sandbox command policy" in r.stderr, r.stderr

    def found(events):
        return [e for e in events if isinstance(e, messages.PreflightBlockedEvent) and marker in e.command]

    assert found(supervised.recent(want=found)), "the preflight block never reached the monitor"
    assert supervised.violations() == []


def test_quarantined_path_reaches_the_monitor(supervised):
    work = session_dir("fence-events-fs-")
    try:
        (work / "fence.json").write_text('{"filesystem": {"allowWrite": ["."]}}')
        r = supervised.fence("--", "sh", "-c", "echo {} > .mcp.json", cwd=work)
        assert r.returncode == 0, r.stderr
        assert "created protected path" in r.stderr

        def found(events):
            return [
                e for e in events if isinstance(e, messages.ProtectedPathEvent) and e.path == str(work / ".mcp.json")
            ]

        assert found(supervised.recent(want=found)), "the quarantine event never reached the monitor"
        assert supervised.violations() == []
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_a_refused_publish_does_show_in_the_supervisor_log(supervised):
    """The other tests' "no violation" checks can fail: a forged .net event from ``client`` is logged.

    Last in the module on purpose: it leaves a violation in the shared supervisor's log.
    """
    sandbox = os.urandom(8).hex()

    async def forge() -> int:
        bus = await supervised.connect("client")
        try:
            await bus.publish(event(sandbox, "net"), sample("net", sandbox))
            await asyncio.sleep(0.2)
            return bus.permission_errors
        finally:
            await bus.close()

    assert asyncio.run(forge()) == 1
    deadline = time.monotonic() + 5
    while not supervised.violations() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(f"fence.events.{sandbox}.net" in line for line in supervised.violations()), supervised.violations()
    assert supervised.recent(sandbox, timeout=0.3) == []
