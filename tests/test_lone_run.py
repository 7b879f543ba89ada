"""A lone ``fence run``: every service in one process over the in-process bus.

Drives the same code path as the CLI (``run_sync`` over ``InProcessBus``, no
event loop) and watches the bus: lifecycle events arrive, the proxy session
is opened and closed, and the monitor keeps the events.
"""

import os
import shutil
import sys
from pathlib import Path

import pytest

from conftest import lone_bus, session_dir
from fence.bus import InProcessBus, run_sync
from fence.config.service import ConfigService
from fence.executor.host import host_facts
from fence.executor.runner import RunRequest, new_sandbox_id, run
from fence.messages import Event, LifecycleEvent, RecentEventsReply, RecentEventsRequest
from fence.monitor.service import MonitorService
from fence.proxy.service import ProxyService
from fence.subjects import MONITOR_RECENT

pytestmark = pytest.mark.sandbox


def test_lone_run_publishes_lifecycle_without_an_event_loop():
    bus = InProcessBus()
    proxy, monitor = ProxyService(loopback="relaxed"), MonitorService()  # as cli._run_lone
    for service in (ConfigService(), proxy, monitor):
        run_sync(service.start(bus))
    seen: list[LifecycleEvent] = []

    async def record(event):
        seen.append(event)
        assert not proxy.sessions or event.sandbox in proxy.sessions

    run_sync(bus.subscribe("fence.events.*.lifecycle", Event, record))
    req = RunRequest(command=["sh", "-c", "exit 3"], cwd="/", env=dict(os.environ), sandbox=new_sandbox_id())
    code = run_sync(run(bus, req, host_facts(), attach=proxy.attach))

    assert code == 3
    assert [e.phase for e in seen] == ["started", "exited"]
    assert seen[0].pid > 0 and seen[0].argv == ["sh", "-c", "exit 3"]
    assert seen[1].exit_code == 3 and seen[1].sandbox == req.sandbox
    assert proxy.sessions == {}  # opened for the run, closed after it
    recent = run_sync(bus.request(MONITOR_RECENT, RecentEventsRequest(sandbox=req.sandbox), RecentEventsReply))
    lifecycle = [e for e in recent.events if isinstance(e, LifecycleEvent)]
    assert lifecycle == recent.events and [e.phase for e in lifecycle] == ["started", "exited"]


def test_lone_cli_path_does_not_import_asyncio_or_nats(tmp_path):
    """The hot path stays light: no asyncio, nats, json5 or prometheus in a lone run.

    The first run in a fresh runtime dir compiles and caches the seccomp
    program (pyseccomp); the warm path, measured by the second run, must not.
    """
    import subprocess

    probe = (
        "import sys, runpy\n"
        "sys.argv=['fence','--','true']\n"
        "from fence.cli import main\n"
        "code = main()\n"
        "heavy = [m for m in ('asyncio','nats','json5','prometheus_client','uvloop','subprocess','argparse')"
        " if m in sys.modules]\n"
        "print(code, heavy)\n"
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    runs = [
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=30)
        for _ in range(2)
    ]
    r = runs[-1]  # the warm path
    assert r.stdout.strip() == "0 []", r.stderr


def test_preflight_block_is_an_event_and_nothing_starts():
    from fence.executor.runner import FenceError
    from fence.messages import PreflightBlockedEvent

    bus, seen, attach = lone_bus()
    req = RunRequest(command=["sh", "-c", "reboot"], cwd="/", env=dict(os.environ), sandbox=new_sandbox_id())
    with pytest.raises(FenceError, match='blocked by default sandbox command policy: "reboot" matches "reboot"'):
        run_sync(run(bus, req, host_facts(), attach=attach))
    assert len(seen) == 1 and isinstance(seen[0], PreflightBlockedEvent)
    assert seen[0].rule == "reboot" and seen[0].default_rule and seen[0].sandbox == req.sandbox


def test_quarantine_is_an_event(tmp_path_factory):
    """A protected name the sandbox creates is moved aside after the run and published on .fs."""
    from fence.messages import ProtectedPathEvent

    work = session_dir("fence-quarantine-")
    try:
        (work / "fence.json").write_text('{"filesystem": {"allowWrite": ["."]}}')
        bus, seen, attach = lone_bus("fence.events.*.fs")
        req = RunRequest(
            command=["sh", "-c", "echo {} > .mcp.json"],
            cwd=str(work),
            env={"PATH": "/usr/bin:/bin", "HOME": str(work)},
            sandbox=new_sandbox_id(),
        )
        assert run_sync(run(bus, req, host_facts(), attach=attach)) == 0
        assert [type(e) for e in seen] == [ProtectedPathEvent]
        assert seen[0].path == str(work / ".mcp.json") and seen[0].moved_to.startswith(str(work / ".mcp.json.fence-q"))
        assert not (work / ".mcp.json").exists() and Path(seen[0].moved_to).exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)
