"""Filtered network under a supervisor: the sandbox's listeners handed to the proxy process (SCM_RIGHTS).

A real ``fence up --detach`` (as root, and as the unprivileged ``fence-test``
user with its own supervisor), a real curl inside the sandbox, and a marker
server on 127.0.0.1 (nothing else is contacted).  Then the hand-off socket
itself is abused: garbage, unknown sandboxes, wrong descriptors, a silent
client, another uid; the proxy must refuse each with a clear error and keep
serving other sandboxes.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest

from conftest import FenceRunner, marker_server
from fence.messages import ErrorReply, ProxyHandoffDone
from fence.runtime import Credentials, SupervisorInfo

pytestmark = [pytest.mark.nats, pytest.mark.sandbox]

MARKER = "fence-supervised-net-marker"
BLOCKED = "Connection blocked by network allowlist"
SUPERVISOR_PACKAGES = ("nats", "prometheus_client", "json5")
"""What a supervisor needs beyond the run's hot-path packages (conftest's portable install)."""


class Supervised:
    def __init__(self, runner: FenceRunner, root: Path, env: dict[str, str]):
        self.runner, self.root, self.env = runner, root, env
        self.rdir = root / "run" / "fence"

    def fence(self, *args: str, cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        return self.runner.run(*args, env=self.env, cwd=str(cwd or self.root), timeout=timeout)

    def config(self, network: dict) -> Path:
        path = self.root / f"net-{os.urandom(3).hex()}.json"
        path.write_text(json.dumps({"network": network}))
        if self.runner.user:
            shutil.chown(path, self.runner.user)
        return path

    def info(self) -> SupervisorInfo:
        return msgspec.json.decode((self.rdir / "supervisor.json").read_bytes(), type=SupervisorInfo)

    def proxy_pid(self) -> int:
        return next(c.pid for c in self.info().components if c.name == "proxy")

    def creds(self) -> Credentials:
        return msgspec.json.decode((self.rdir / "creds" / "client.json").read_bytes(), type=Credentials)


def _add_supervisor_packages(runner: FenceRunner) -> dict[str, str]:
    """The unprivileged runner's copy gains what ``fence up`` imports; nats-server comes from the venv's bin."""
    site = Path(runner.base_env["PYTHONPATH"])
    purelib = Path(sysconfig.get_paths()["purelib"])
    for name in SUPERVISOR_PACKAGES:
        if not (site / name).exists():
            shutil.copytree(purelib / name, site / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chmod", "-R", "a+rX", str(site)], check=True)
    return {"PATH": runner.base_env["PATH"] + ":" + os.path.dirname(sys.executable)}


@pytest.fixture(scope="module", params=["self", "unprivileged"])
def sup(request):
    runner: FenceRunner = request.getfixturevalue(f"{request.param}_runner")
    extra = _add_supervisor_packages(runner) if runner.user else {}
    root = runner.workdir()
    (root / "run").mkdir(mode=0o700)
    if runner.user:
        shutil.chown(root / "run", runner.user)
    env = runner.env(
        XDG_RUNTIME_DIR=str(root / "run"), XDG_DATA_HOME=str(root / "data"), XDG_STATE_HOME=str(root / "state"), **extra
    )
    up = runner.run("up", "--detach", env=env, cwd=str(root), timeout=60)
    assert up.returncode == 0, up.stderr
    s = Supervised(runner, root, env)
    try:
        yield s
    finally:
        pids = [s.info().pid, *(c.pid for c in s.info().components)]
        down = runner.run("down", env=env, cwd=str(root), timeout=30)
        leftover = os.listdir(root / "run")
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        shutil.rmtree(root, ignore_errors=True)
        assert down.returncode == 0 and leftover == [], (down.stderr, leftover)


@pytest.fixture(scope="module")
def origin():
    with marker_server(MARKER) as port:
        yield port


def _root_only(sup: Supervised) -> None:
    if sup.runner.user:
        pytest.skip("hand-off abuse is driven from the test process (root) against root's supervisor")


# --- the hand-off at work ---------------------------------------------------------------------
def test_allowed_host_reached_blocked_host_403(sup, origin):
    cfg = sup.config({"allowedDomains": ["127.0.0.1"]})
    script = (
        f"NO_PROXY= no_proxy= curl -sS --max-time 10 http://127.0.0.1:{origin}/; echo; "
        f"NO_PROXY= no_proxy= curl -s --max-time 10 -w '%{{http_code}}' http://localhost:{origin}/; echo; "
        f'curl -sS --max-time 10 --noproxy "" --proxy "$ALL_PROXY" http://127.0.0.1:{origin}/; echo; '
        "echo $HTTP_PROXY"
    )
    r = sup.fence("-m", "-s", str(cfg), "-c", script)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == MARKER, r.stderr
    assert lines[1] == BLOCKED and lines[-3].endswith("403"), r.stdout
    assert lines[-2] == MARKER  # SOCKS5h
    assert lines[-1] == "http://127.0.0.1:3128"
    # -m shows the blocked request, from the proxy process's event over the run's subscription
    net = [line for line in r.stderr.splitlines() if line.startswith("[fence:http]")]
    assert len(net) == 1 and "✗" in net[0] and "403 localhost" in net[0], r.stderr


def test_no_network_block_is_answered_and_shown(sup):
    """No domain allowed: the proxy process still gets the sandbox's listeners, denies, and -m shows it."""
    cfg = sup.config({})
    r = sup.fence("-m", "-s", str(cfg), "-c", "curl -s --max-time 10 http://blocked.invalid/; echo; echo $HTTP_PROXY")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == BLOCKED and lines[-1] == "http://127.0.0.1:3128", (r.stdout, r.stderr)
    net = [line for line in r.stderr.splitlines() if line.startswith("[fence:http]")]
    assert len(net) == 1 and " ✗ GET     403 blocked.invalid http://blocked.invalid/ (" in net[0], r.stderr


def test_debug_says_the_run_went_through_the_supervisor(sup):
    info = sup.info()
    services = "; the config, proxy and monitor services are the supervisor's"
    r = sup.fence("-d", "--", "true")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[0] == (
        f"[fence] Supervised run: through the bus at {info.nats_url} (supervisor pid {info.pid}){services}"
    ), r.stderr
    r = sup.fence("-d", "--bus", info.nats_url, "--", "true")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[0] == f"[fence] Supervised run: through the bus at {info.nats_url} (--bus){services}"
    assert "Lone run" not in r.stderr


def test_direct_connections_still_fail_and_debug_shows_netns(sup, origin):
    cfg = sup.config({"allowedDomains": ["127.0.0.1"]})
    r = sup.fence(
        "-d",
        "-s",
        str(cfg),
        "-c",
        f"curl -sS --max-time 5 --noproxy '*' http://127.0.0.1:{origin}/ && echo DIRECT; true",
    )
    assert "DIRECT" not in r.stdout
    assert "[fence:linux] Sandbox: bwrap(network,pid,fs), netns-bridges" in r.stderr


def test_session_gone_after_the_run(sup, origin):
    """The run closes its session; the proxy keeps no session (gauge back to 0)."""
    cfg = sup.config({"allowedDomains": ["127.0.0.1"]})
    r = sup.fence("-s", str(cfg), "--", "true")
    assert r.returncode == 0, r.stderr
    proxy = next(c for c in sup.info().components if c.name == "proxy")
    import urllib.request

    deadline = time.monotonic() + 3
    while True:
        body = urllib.request.urlopen(proxy.metrics_url, timeout=3).read().decode()
        if 'fence_service_gauge{name="fence_proxy_sessions"} 0.0' in body or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert 'fence_service_gauge{name="fence_proxy_sessions"} 0.0' in body


def _run_metrics(url: str) -> dict[str, float]:
    """The executor's run metrics from its /metrics page: ``{'phase/outcome': n, 'seconds_count': n, ...}``."""
    import re
    import urllib.request

    body = urllib.request.urlopen(url, timeout=3).read().decode()
    found = {}
    for m in re.finditer(r"^fence_sandbox_runs_total\{(.*)\} (\S+)$", body, re.M):
        labels = dict(re.findall(r'(\w+)="(\w*)"', m[1]))
        found[f"{labels['phase']}/{labels['outcome']}"] = float(m[2])
    for name, key in (
        ("fence_sandbox_run_seconds_count", "seconds_count"),
        ('fence_service_gauge{name="fence_sandboxes_running"}', "running"),
    ):
        value = re.search(rf"^{re.escape(name)} (\S+)$", body, re.M)
        if value:
            found[key] = float(value[1])
    return found


def test_executor_metrics_count_the_runs_clients_report(sup):
    """The executor service never runs a sandbox (fence run does); it counts what runs report on the bus."""
    executor = next(c for c in sup.info().components if c.name == "executor")
    before = _run_metrics(executor.metrics_url)
    runs = [
        sup.fence("--", "true"),
        sup.fence("-c", "exit 3"),
        sup.fence("-c", "kill -9 $$"),
        sup.fence("-c", "reboot"),
    ]
    assert [r.returncode for r in runs] == [0, 3, 137, 1], [r.stderr for r in runs]
    want = {
        "started/started": 3,
        "exited/ok": 1,
        "exited/failed": 1,
        "exited/signal": 1,
        "refused/preflight": 1,
        "seconds_count": 3,
    }
    deadline = time.monotonic() + 5
    while True:  # events reach the service asynchronously
        after = _run_metrics(executor.metrics_url)
        delta = {key: after.get(key, 0) - before.get(key, 0) for key in want}
        if delta == want or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert delta == want, after
    assert after["running"] == 0


def test_unreachable_proxy_fails_closed_before_the_command(sup, origin):
    cfg = sup.config({"allowedDomains": ["127.0.0.1"]})
    sock = sup.rdir / "proxy.sock"
    moved = sup.rdir / "proxy.sock.away"
    os.rename(sock, moved)
    try:
        r = sup.fence("-s", str(cfg), "-c", "echo COMMAND-RAN; echo COMMAND-RAN >&2")
    finally:
        os.rename(moved, sock)
    assert r.returncode == 1 and "COMMAND-RAN" not in r.stdout + r.stderr, r.stderr
    assert r.stderr.startswith("Error: network.allowedDomains: cannot reach the supervisor's proxy at ")
    assert "No such file or directory" in r.stderr and "stopped before its command ran" in r.stderr
    none = sup.config({})  # no domain allowed: its proxies (denying all) are promised too, and fail closed alike
    os.rename(sock, moved)
    try:
        r = sup.fence("-s", str(none), "-c", "echo COMMAND-RAN; echo COMMAND-RAN >&2")
    finally:
        os.rename(moved, sock)
    assert r.returncode == 1 and "COMMAND-RAN" not in r.stdout + r.stderr, r.stderr
    assert r.stderr.startswith("Error: network: cannot reach the supervisor's proxy at "), r.stderr


# --- abuse of the hand-off socket -----------------------------------------------------------
def _exchange(path: Path, data: bytes, fds: Sequence[int] = ()) -> ErrorReply | ProxyHandoffDone | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.settimeout(10)
    conn.connect(str(path))
    try:
        socket.send_fds(conn, [data], list(fds)) if fds else conn.send(data)
        answer = conn.recv(4096)
    finally:
        conn.close()
    return msgspec.json.decode(answer, type=ProxyHandoffDone | ErrorReply) if answer else None


def _listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def _handoff(sandbox: str, token: str = "0" * 32, names=("http",)) -> bytes:
    return json.dumps({"type": "ProxyHandoff", "sandbox": sandbox, "token": token, "listeners": list(names)}).encode()


def test_bad_handoffs_are_refused_and_the_proxy_keeps_serving(sup, origin):
    _root_only(sup)
    path = sup.rdir / "proxy.sock"
    pid = sup.proxy_pid()
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"

    silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # connects and says nothing meanwhile
    silent.settimeout(10)
    silent.connect(str(path))

    reply = _exchange(path, b"\x00garbage{")
    assert isinstance(reply, ErrorReply) and "not a ProxyHandoff message" in reply.message
    lsock = _listener()
    reply = _exchange(path, _handoff("feedfacecafe"), [lsock.fileno()])
    assert isinstance(reply, ErrorReply) and reply.code == "not_found"
    assert "no proxy session feedfacecafe waiting for sockets" in reply.message
    r, w = os.pipe()
    reply = _exchange(path, _handoff("feedfacecafe"), [r])
    assert isinstance(reply, ErrorReply) and "not a socket" in reply.message
    os.close(r)
    os.close(w)
    reply = _exchange(path, _handoff("feedfacecafe", names=("http", "socks", "http")), [lsock.fileno()] * 3)
    assert isinstance(reply, ErrorReply) and "too large" in reply.message
    unbound = socket.socket()
    reply = _exchange(path, _handoff("feedfacecafe"), [unbound.fileno()])
    assert isinstance(reply, ErrorReply) and "not listening" in reply.message
    reply = _exchange(path, _handoff("feedfacecafe", names=("http", "socks")), [lsock.fileno()])
    assert isinstance(reply, ErrorReply) and "2 listener(s) but 1 descriptor(s)" in reply.message
    unbound.close()

    # other sandboxes are served while the silent client is still connected
    cfg = sup.config({"allowedDomains": ["127.0.0.1"]})
    r = sup.fence("-s", str(cfg), "-c", f"NO_PROXY= no_proxy= curl -sS --max-time 10 http://127.0.0.1:{origin}/")
    assert (r.returncode, r.stdout) == (0, MARKER), r.stderr
    assert silent.recv(4096) != b""  # then it times out with an error of its own
    silent.close()
    assert sup.proxy_pid() == pid  # never crashed nor restarted
    # nothing the refused hand-offs passed is served: our listener has no proxy behind it
    lsock.setblocking(False)
    probe = socket.create_connection(lsock.getsockname(), 2)
    time.sleep(0.2)
    conn, _ = lsock.accept()  # still queued for us: nobody else accepted it
    for sock in (conn, probe, lsock):
        sock.close()


def test_handoff_from_another_uid_is_refused(sup, unprivileged_runner):
    """Even with the socket file opened up, SO_PEERCRED keeps other users out."""
    _root_only(sup)
    path = sup.rdir / "proxy.sock"
    dirs = [sup.root, sup.root / "run", sup.rdir]
    modes = [os.stat(d).st_mode & 0o777 for d in dirs]
    script = (
        "import socket; c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); c.settimeout(5); "
        f"c.connect({str(path)!r}); c.send(b'{{}}'); print(c.recv(4096).decode())"
    )
    try:
        for d in dirs:
            os.chmod(d, 0o711)
        os.chmod(path, 0o666)
        r = subprocess.run(
            [unprivileged_runner.argv_prefix[0], "-c", script],
            user=unprivileged_runner.user,
            capture_output=True,
            text=True,
            timeout=15,
        )
    finally:
        os.chmod(path, 0o600)
        for d, mode in zip(dirs, modes, strict=True):
            os.chmod(d, mode)
    uid = __import__("pwd").getpwnam(unprivileged_runner.user).pw_uid
    assert f"permission denied: uid {uid} may not hand sockets to this proxy" in r.stdout, r.stderr


def test_session_lives_as_long_as_its_handoff_connection(sup):
    """A handed-over listener is served until the hand-off connection ends, then closed; tokens are one-time."""
    _root_only(sup)
    from fence.executor.handoff import HandoffError, hand_over
    from fence.messages import ProxySessionClose, ProxySessionClosed, ProxySessionOpen, ProxySessionOpened
    from fence.natsbus import NatsBus
    from fence.policy import NetworkConfig
    from fence.subjects import PROXY_SESSION_CLOSE, PROXY_SESSION_OPEN

    creds = sup.creds()
    sandbox = os.urandom(6).hex()

    async def main():
        bus = await NatsBus.connect(
            creds.url, user=creds.user, password=creds.password, inbox_prefix=creds.inbox_prefix
        )
        try:
            opened = await bus.request(
                PROXY_SESSION_OPEN,
                ProxySessionOpen(sandbox=sandbox, network=NetworkConfig(allowed_domains=["127.0.0.1"]), loopback=False),
                ProxySessionOpened,
            )
            assert opened.http_port == 0 and opened.handoff == str(sup.rdir / "proxy.sock") and opened.token
            lsock = _listener()
            port = lsock.getsockname()[1]
            conn = hand_over(opened, [lsock])
            assert lsock.fileno() == -1  # our copy is closed: the proxy owns it
            loop = asyncio.get_running_loop()
            head = await loop.run_in_executor(None, _proxy_get, port, "http://blocked.invalid/")
            assert head.startswith(b"HTTP/1.1 403 ")
            with pytest.raises(HandoffError, match="waiting for sockets"):  # the token was used
                hand_over(opened, [_listener()])
            conn.close()  # the run "died": the proxy ends the session and closes the listener
            refused = False
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close()
                except (ConnectionRefusedError, ConnectionResetError):  # reset: caught in the closing backlog
                    refused = True
                    break
                await asyncio.sleep(0.02)
            assert refused
            closed = await bus.request(PROXY_SESSION_CLOSE, ProxySessionClose(sandbox=sandbox), ProxySessionClosed)
            assert not closed.existed
        finally:
            await bus.close()

    asyncio.run(main())


def _proxy_get(port: int, url: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.settimeout(5)
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return s.recv(4096)
