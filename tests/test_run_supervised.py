"""``fence run`` with a supervisor: config, proxy and monitor over NATS, executor in-process.

A real ``fence up --detach`` in private XDG dirs; a NATS client (the
``client`` user) watches ``fence.events.>`` while ``fence run`` executes, and
the run's lifecycle events (started, exited with code) arrive on the bus and
at the supervisor's monitor service.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from conftest import session_dir
from fence.messages import Event, LifecycleEvent, RecentEventsReply, RecentEventsRequest
from fence.natsbus import NatsBus
from fence.runtime import Credentials
from fence.subjects import MONITOR_RECENT

pytestmark = [pytest.mark.nats, pytest.mark.sandbox]


@pytest.fixture(scope="module")
def supervised():
    root = session_dir("fence-supervised-")  # not /tmp: private inside
    (root / "run").mkdir(mode=0o700)
    (root / "home").mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root / "home"),
        "LANG": "C.UTF-8",
        "XDG_RUNTIME_DIR": str(root / "run"),
        "XDG_DATA_HOME": str(root / "data"),
    }
    up = subprocess.run(
        [sys.executable, "-m", "fence", "up", "--detach"], env=env, cwd=root, capture_output=True, text=True, timeout=60
    )
    assert up.returncode == 0, up.stderr
    try:
        yield root, env
    finally:
        down = subprocess.run([sys.executable, "-m", "fence", "down"], env=env, capture_output=True, timeout=30)
        leftover = os.listdir(root / "run")
        shutil.rmtree(root, ignore_errors=True)
        assert down.returncode == 0 and leftover == [], (down.stderr, leftover)


def client_creds(root: Path) -> Credentials:
    return msgspec.json.decode((root / "run" / "fence" / "creds" / "client.json").read_bytes(), type=Credentials)


def test_run_events_arrive_on_the_bus(supervised):
    root, env = supervised
    creds = client_creds(root)

    async def scenario():
        bus = await NatsBus.connect(
            creds.url, user=creds.user, password=creds.password, inbox_prefix=creds.inbox_prefix
        )
        seen: list[LifecycleEvent] = []
        done = asyncio.Event()

        async def record(event):
            if isinstance(event, LifecycleEvent):
                seen.append(event)
                if event.phase == "exited":
                    done.set()

        await bus.subscribe("fence.events.>", Event, record)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fence",
            "-d",
            "--",
            "sh",
            "-c",
            "echo inside; exit 3",
            env=env,
            cwd=str(root),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        await asyncio.wait_for(done.wait(), 10)
        recent = None
        for _ in range(50):  # the monitor service consumes the same events asynchronously
            recent = await bus.request(MONITOR_RECENT, RecentEventsRequest(sandbox=seen[0].sandbox), RecentEventsReply)
            if len(recent.events) == 2:
                break
            await asyncio.sleep(0.05)
        await bus.close()
        return proc.returncode, out.decode(), err.decode(), seen, recent

    code, out, err, seen, recent = asyncio.run(scenario())
    assert code == 3 and out == "inside\n", err
    assert [e.phase for e in seen] == ["started", "exited"]
    assert seen[0].argv == ["sh", "-c", "echo inside; exit 3"] and seen[0].pid > 0
    assert seen[1].exit_code == 3 and seen[1].sandbox == seen[0].sandbox
    assert [e.phase for e in recent.events] == ["started", "exited"]
    # the run used the supervisor's services (debug lines come from its event subscription)
    assert f"[fence] Sandbox {seen[0].sandbox} exited with code 3" in err


def test_supervised_run_keeps_the_sandbox_contract(supervised):
    root, env = supervised
    target = root / "written-from-sandbox"
    r = subprocess.run(
        [sys.executable, "-m", "fence", "--", "sh", "-c", f"echo x > {target}"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0 and not target.exists()
    r = subprocess.run(
        [sys.executable, "-m", "fence", "--", "printf", "%s\\n", "a b", "c"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (r.returncode, r.stdout) == (0, "a b\nc\n")
    # the sandbox cannot read the bus credentials
    r = subprocess.run(
        [sys.executable, "-m", "fence", "--", "sh", "-c", f"ls -A {root}/run/fence"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.stdout.strip() == ""


def test_bad_config_error_over_the_bus(supervised):
    root, env = supervised
    bad = root / "bad.json"
    bad.write_text('{"network": {"allowedDomains": ["*.com"]}}')
    r = subprocess.run(
        [sys.executable, "-m", "fence", "-s", str(bad), "--", "true"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1
    assert r.stderr.startswith("Error: failed to load config:")
    assert 'invalid allowed domain "*.com": wildcard pattern too broad' in r.stderr


def test_missing_settings_file_refused_over_the_bus(supervised):
    root, env = supervised
    r = subprocess.run(
        [sys.executable, "-m", "fence", "-s", "missing.json", "--", "true"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (r.returncode, r.stderr) == (1, "Error: settings file missing.json does not exist\n")


def test_supervised_pty_run_relays_the_terminal(supervised):
    """The relay runs in a worker thread beside uvloop: typing, resizing and Ctrl-C work as in a lone run."""
    from conftest import Terminal

    root, env = supervised
    cfg = root / "pty.json"
    cfg.write_text('{"allowPty": true}')
    script = r"""
import os, signal
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGWINCH})
c, r = os.get_terminal_size(0)
print(f"size {r}x{c}", flush=True)
line = input("name? ")
print(f"hello {line}", flush=True)
signal.sigwait({signal.SIGWINCH})
c, r = os.get_terminal_size(0)
try:
    print(f"size {r}x{c}", flush=True)
    signal.pause()
except KeyboardInterrupt:
    print("interrupted", flush=True)
raise SystemExit(6)
"""
    argv = [sys.executable, "-m", "fence", "-d", "-s", str(cfg), "--", "python3", "-c", script]
    with Terminal(argv, env, str(root), None, 24, 80) as term:
        term.expect(", pty")
        term.expect("size 24x80")
        term.expect("name? ")
        term.send(b"sandbox\r")
        term.expect("hello sandbox")
        term.resize(50, 132)
        term.expect("size 50x132")
        term.send(b"\x03")
        term.expect("interrupted")
        assert term.wait() == 6
        assert "exited with code 6" in term.text  # the supervisor's monitor saw the run end


def test_plan_endpoint_agrees_with_a_supervised_debug_run(supervised):
    """The supervisor's executor service answers ``fence.exec.plan`` with the sandbox ``fence -d`` ran."""
    import json
    import re
    import shlex

    from fence.messages import ConfigResolveReply, ConfigResolveRequest, ExecPlanReply, ExecPlanRequest
    from fence.subjects import CONFIG_RESOLVE, EXEC_PLAN

    root, env = supervised
    work = root / "agree"
    (work / "out").mkdir(parents=True, exist_ok=True)
    (work / "fence.json").write_text(
        json.dumps(
            {
                "network": {"allowedDomains": ["example.com"]},
                "filesystem": {"allowWrite": ["./out"], "denyRead": ["~/.ssh"]},
            }
        )
    )
    r = subprocess.run(
        [sys.executable, "-m", "fence", "-d", "--", "true"],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    printed = next(
        shlex.split(line.split(": ", 1)[1])
        for line in r.stderr.splitlines()
        if line.startswith("[fence] Sandboxed command: ")
    )
    started = re.search(r"Sandbox ([0-9a-f]{12}) started", r.stderr)
    assert started is not None, r.stderr
    sandbox = started.group(1)
    creds = client_creds(root)

    async def ask():
        bus = await NatsBus.connect(
            creds.url, user=creds.user, password=creds.password, inbox_prefix=creds.inbox_prefix
        )
        try:
            resolved = await bus.request(
                CONFIG_RESOLVE, ConfigResolveRequest(cwd=str(work), home=env["HOME"]), ConfigResolveReply
            )
            return await bus.request(
                EXEC_PLAN,
                ExecPlanRequest(
                    policy=resolved.policy,
                    argv=["true"],
                    cwd=str(work),
                    env=env,
                    sandbox=sandbox,
                    chain=resolved.chain,
                    config_dir=resolved.user_config_dir,
                    debug=True,
                ),
                ExecPlanReply,
            )
        finally:
            await bus.close()

    reply = asyncio.run(ask())
    assert reply.bwrap_argv == printed
    assert reply.plan is not None and reply.plan.network.intent == "filtered"
