"""The supervisor with real processes: ``fence up --detach | status | down`` and a foreground ``up``.

Nothing is mocked: a real nats-server on loopback, four service processes,
real NATS clients.  Every test runs with its own temporary XDG_RUNTIME_DIR,
XDG_DATA_HOME and HOME, so the real runtime dir is never touched.  One
supervisor is shared by the tests of the detached life (start, inspect, kill
a service, stop) to keep the file well under a minute.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import msgspec
import pytest

from fence.runtime import Credentials, SupervisorInfo, pid_alive

pytestmark = pytest.mark.nats

SERVICES = ("config", "proxy", "executor", "monitor")
USERS = ("supervisor", *SERVICES, "client")


class Env:
    """One private set of XDG dirs and the CLI run with them."""

    startup_seconds: float
    """(the module's ``up``) how long ``up --detach`` took to be healthy"""
    first: SupervisorInfo
    """(the module's ``up``) the supervisor's info right after it started"""

    def __init__(self, root: Path):
        self.root = root
        self.run_dir = root / "run"
        self.run_dir.mkdir(mode=0o700)
        self.home = root / "home"
        self.home.mkdir()
        self.vars = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "XDG_RUNTIME_DIR": str(self.run_dir),
            "XDG_DATA_HOME": str(root / "data"),
        }
        self.rdir = self.run_dir / "fence"

    def cli(self, *args: str, timeout: float = 40) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "fence.supervisor", *args],
            env=self.vars,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "fence.supervisor", *args],
            env=self.vars,
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def info(self) -> SupervisorInfo | None:
        try:
            return msgspec.json.decode((self.rdir / "supervisor.json").read_bytes(), type=SupervisorInfo)
        except (OSError, msgspec.DecodeError):
            return None

    def creds(self, user: str) -> Credentials:
        return msgspec.json.decode((self.rdir / "creds" / f"{user}.json").read_bytes(), type=Credentials)

    def wait_info(self, ok, timeout: float) -> SupervisorInfo:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.info()
            if info is not None and ok(info):
                return info
            time.sleep(0.05)
        raise AssertionError(f"supervisor.json did not reach the expected state within {timeout}s: {self.info()}")


def all_pids(info: SupervisorInfo) -> list[int]:
    return [info.pid, *(c.pid for c in info.components)]


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if pid_alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if pid_alive(p)]


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def nats_connect(env: Env, user: str | None):
    """A raw nats-py connection (permission errors arrive on error_cb), and its error list."""
    import nats

    errors: list[str] = []

    async def on_error(e):
        errors.append(str(e))

    info = env.info()
    assert info is not None
    kw = {}
    if user is not None:
        c = env.creds(user)
        kw = {"user": c.user, "password": c.password, "inbox_prefix": c.inbox_prefix}
    nc = await nats.connect(
        info.nats_url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2, error_cb=on_error, **kw
    )
    return nc, errors


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    """A detached supervisor for the module; stopped (and checked gone) at the end."""
    env = Env(tmp_path_factory.mktemp("sup"))
    t0 = time.monotonic()
    r = env.cli("up", "--detach")
    assert r.returncode == 0, r.stderr
    env.startup_seconds = time.monotonic() - t0
    print(f"\nup --detach: healthy in {env.startup_seconds:.2f}s: {r.stdout.strip()}")
    first = env.info()
    assert first is not None
    env.first = first
    yield env
    info = env.info()
    if info is not None:  # the down test did not run or failed: leave nothing behind
        env.cli("down")
        kill_all(all_pids(info))


def test_up_detach_reports_every_component_healthy(up):
    info = up.first
    assert info is not None and pid_alive(info.pid)
    assert [c.name for c in info.components] == ["nats-server", *SERVICES]
    assert all(c.healthy and c.pid > 0 and c.restarts == 0 for c in info.components)
    assert info.nats_url.startswith("nats://127.0.0.1:")
    assert info.log.endswith("supervisor.log") and str(up.home) in info.log


def test_status_lists_components_with_metrics_urls(up):
    r = up.cli("status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert up.first.nats_url in lines[0]
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in ("nats-server", *SERVICES)}
    assert sorted(rows) == sorted(["nats-server", *SERVICES])
    for name in SERVICES:
        assert "http://127.0.0.1:" in rows[name] and rows[name].split()[4] == "yes", rows[name]
    as_json = msgspec.json.decode(up.cli("status", "--json").stdout, type=SupervisorInfo)
    assert len(as_json.components) == 5


def test_second_up_is_refused(up):
    r = up.cli("up")
    assert r.returncode == 1
    assert f"Error: a supervisor is already running (pid {up.first.pid})" in r.stderr


def test_runtime_files_are_private(up):
    assert stat.S_IMODE(up.rdir.stat().st_mode) == 0o700
    assert stat.S_IMODE((up.rdir / "creds").stat().st_mode) == 0o700
    for user in USERS:
        assert stat.S_IMODE((up.rdir / "creds" / f"{user}.json").stat().st_mode) == 0o600
    for name in ("nats.conf", "supervisor.json"):
        assert stat.S_IMODE((up.rdir / name).stat().st_mode) == 0o600
    conf = (up.rdir / "nats.conf").read_text()
    assert 'listen: "127.0.0.1:-1"' in conf and "no_auth_user" not in conf
    # the durable JetStream store is outside the runtime dir
    assert (up.root / "data" / "fence" / "jetstream").is_dir()


def test_metrics_urls_answer(up):
    for c in up.first.components[1:]:
        assert c.metrics_url.startswith("http://127.0.0.1:"), c
        body = urllib.request.urlopen(c.metrics_url, timeout=3).read().decode()
        assert "fence_requests_total" in body or "process_cpu_seconds_total" in body


def test_every_service_answers_ping_over_nats(up):
    async def main():
        nc, errors = await nats_connect(up, "client")
        try:
            for c in up.first.components[1:]:
                reply = msgspec.json.decode((await nc.request(f"$SRV.PING.{c.service}", b"", timeout=2)).data)
                assert reply["name"] == c.service and reply["metadata"]["pid"] == str(c.pid)
                info = msgspec.json.decode((await nc.request(f"$SRV.INFO.{c.service}", b"", timeout=2)).data)
                assert info["metadata"]["metrics_url"] == c.metrics_url
        finally:
            await nc.close()
        assert errors == []

    asyncio.run(main())


def test_permissions_are_least_privilege(up):
    import nats

    async def main():
        # the monitor can never start (or plan) a sandbox
        mon, mon_errors = await nats_connect(up, "monitor")
        with pytest.raises(nats.errors.Error):  # refused by the server: no responder ever sees it
            await mon.request("fence.exec.plan", b"{}", timeout=0.5)
        await asyncio.sleep(0.1)
        assert any("permissions violation for publish" in e and "fence.exec.plan" in e for e in mon_errors), mon_errors
        await mon.close()

        # a client cannot forge the proxy's net events nor listen on a service's subject
        cl, cl_errors = await nats_connect(up, "client")
        await cl.publish("fence.events.x.net", b"{}")
        await cl.subscribe("fence.config.resolve")
        await cl.flush()
        await asyncio.sleep(0.2)
        assert any("publish" in e and "fence.events.x.net" in e for e in cl_errors), cl_errors
        assert any("subscription" in e and "fence.config.resolve" in e for e in cl_errors), cl_errors
        # ... but may publish its own sandbox's lifecycle events
        n = len(cl_errors)
        await cl.publish("fence.events.x.lifecycle", b"{}")
        await cl.flush()
        await asyncio.sleep(0.1)
        assert len(cl_errors) == n, cl_errors
        await cl.close()

        # no anonymous access, no wrong password
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await nats.connect(up.first.nats_url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await nats.connect(
                up.first.nats_url,
                user="client",
                password="guess",
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=2,
            )

    asyncio.run(main())


def test_client_resolves_a_policy_through_the_bus(up):
    from fence.messages import ConfigResolveReply, ConfigResolveRequest
    from fence.natsbus import NatsBus
    from fence.subjects import CONFIG_RESOLVE

    async def main():
        c = up.creds("client")
        bus = await NatsBus.connect(
            c.url, user=c.user, password=c.password, inbox_prefix=c.inbox_prefix, name="test-client"
        )
        try:
            return await bus.request(
                CONFIG_RESOLVE, ConfigResolveRequest(cwd=str(up.root), home=str(up.home)), ConfigResolveReply, timeout=5
            )
        finally:
            await bus.close()

    reply = asyncio.run(main())
    assert isinstance(reply, ConfigResolveReply)


def test_killed_service_is_restarted(up):
    before = {c.name: c for c in up.info().components}
    victim = before["proxy"]
    t0 = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    info = up.wait_info(
        lambda i: any(
            c.name == "proxy" and c.pid != victim.pid and c.healthy and c.restarts == 1 for c in i.components
        ),
        timeout=8,
    )
    print(f"\nproxy restarted and healthy in {time.monotonic() - t0:.2f}s")
    proxy = next(c for c in info.components if c.name == "proxy")
    assert pid_alive(proxy.pid) and not pid_alive(victim.pid)
    assert proxy.metrics_url.startswith("http://127.0.0.1:")
    others = [c for c in info.components if c.name != "proxy"]
    assert all(c.restarts == 0 and c.pid == before[c.name].pid for c in others)
    r = up.cli("status")
    assert r.returncode == 0
    row = next(line for line in r.stdout.splitlines() if line.startswith("proxy"))
    assert row.split()[1] == str(proxy.pid) and row.split()[3] == "1" and row.split()[4] == "yes", row


def test_down_stops_everything_and_cleans_up(up):
    info = up.info()
    assert info is not None
    pids = all_pids(info)
    t0 = time.monotonic()
    r = up.cli("down")
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    left = wait_gone(pids, max(0.0, 5.0 - elapsed))
    assert not left, f"still running after down: {left}"
    assert elapsed < 5.0
    assert not up.rdir.exists() or list(up.rdir.iterdir()) == []
    # and then there is nothing to talk to
    r = up.cli("status")
    assert r.returncode == 1 and "No supervisor running" in r.stderr
    r = up.cli("down")
    assert r.returncode == 1 and "No supervisor running" in r.stderr


def test_foreground_up_stops_on_sigterm(tmp_path):
    env = Env(tmp_path)
    proc = env.popen("up")
    try:
        info = env.wait_info(lambda i: i.pid == proc.pid and all(c.healthy for c in i.components), timeout=20)
        pids = all_pids(info)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=5)
        assert time.monotonic() - t0 < 5.0
        _, err = proc.communicate(timeout=1)
        assert code == 0, err
        assert "supervisor ready" in err
        assert not wait_gone(pids, 0.5)
        assert not env.rdir.exists() or list(env.rdir.iterdir()) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = env.info()
        if left is not None:
            kill_all(all_pids(left))


def test_killed_supervisor_leaves_no_orphans(tmp_path):
    """SIGKILL gives the supervisor no chance to clean up: its services notice and exit, and
    the next ``up`` stops the orphaned nats-server (found through its ports file)."""
    env = Env(tmp_path)
    r = env.cli("up", "--detach")
    assert r.returncode == 0, r.stderr
    info = env.info()
    assert info is not None
    nats_pid, services = info.components[0].pid, [c.pid for c in info.components[1:]]
    try:
        os.kill(info.pid, signal.SIGKILL)
        assert not wait_gone(services, 3.0)
        assert pid_alive(nats_pid)
        r = env.cli("up", "--detach")
        assert r.returncode == 0, r.stderr
        assert not wait_gone([nats_pid], 2.0)
        second = env.info()
        assert second is not None
        assert second.pid != info.pid and second.components[0].pid != nats_pid
        r = env.cli("down")
        assert r.returncode == 0, r.stderr
        assert not wait_gone(all_pids(second), 5.0)
        assert not env.rdir.exists() or list(env.rdir.iterdir()) == []
    finally:
        kill_all([nats_pid, *services])
        last = env.info()
        if last is not None:
            kill_all(all_pids(last))


def test_service_process_fails_clearly():
    env = {k: v for k, v in os.environ.items() if k != "FENCE_BUS_CREDS"}
    r = subprocess.run(
        [sys.executable, "-m", "fence.serve", "config"], env=env, capture_output=True, text=True, timeout=20
    )
    assert r.returncode == 1 and "Error:" in r.stderr and "FENCE_BUS_CREDS" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "fence.serve", "nonesuch"], env=env, capture_output=True, text=True, timeout=20
    )
    assert r.returncode == 1 and "unknown component" in r.stderr


def test_restart_backoff_doubles_to_ten_seconds_and_resets_after_thirty_healthy():
    from fence.supervisor import Child

    child = Child("config", "fence-config")
    assert [child.next_backoff() for _ in range(8)] == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    child.mark_healthy(True)
    assert child.next_backoff() == 10.0  # crashed again soon after coming back
    child.mark_healthy(True)
    child.healthy_since -= 31
    child.mark_healthy(False)  # stopped answering, then died: it had still been healthy for 30 s
    assert child.next_backoff() == 0.2
    assert child.next_backoff() == 0.4
