"""The proxy service as its own process under ``fence up``: sessions over NATS, net events, metrics.

A private supervisor (temporary XDG dirs), the ``client`` credentials, and
real clients against an echo server on 127.0.0.1.  The service process uses
the real resolver, so only IP literals are allowed here and denied names are
never resolved: nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.request

import msgspec
import pytest

from fence.runtime import Credentials, SupervisorInfo, pid_alive
from test_proxy_support import EchoServer, connect_tunnel, curl, socks_connect

pytestmark = pytest.mark.nats


@pytest.fixture(scope="module")
def supervisor(tmp_path_factory):
    root = tmp_path_factory.mktemp("proxysup")
    (root / "run").mkdir(mode=0o700)
    (root / "home").mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root / "home"),
        "LANG": "C.UTF-8",
        "XDG_RUNTIME_DIR": str(root / "run"),
        "XDG_DATA_HOME": str(root / "data"),
    }

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "fence.supervisor", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=40,
            cwd=root,
        )

    r = cli("up", "--detach")
    assert r.returncode == 0, r.stderr
    rdir = root / "run" / "fence"
    info = msgspec.json.decode((rdir / "supervisor.json").read_bytes(), type=SupervisorInfo)
    creds = msgspec.json.decode((rdir / "creds" / "client.json").read_bytes(), type=Credentials)
    yield info, creds
    cli("down")
    for pid in [info.pid, *(c.pid for c in info.components)]:
        if pid_alive(pid):
            os.kill(pid, 9)


def test_session_over_nats_events_and_metrics(supervisor):
    from fence.messages import (
        Event,
        NetDecisionEvent,
        ProxySessionClose,
        ProxySessionClosed,
        ProxySessionOpen,
        ProxySessionOpened,
    )
    from fence.natsbus import NatsBus
    from fence.policy import NetworkConfig
    from fence.subjects import PROXY_SESSION_CLOSE, PROXY_SESSION_OPEN

    info, creds = supervisor
    echo = EchoServer()
    sandbox = os.urandom(6).hex()
    events: list = []

    async def main():
        bus = await NatsBus.connect(
            creds.url, user=creds.user, password=creds.password, inbox_prefix=creds.inbox_prefix, name="test-proxy"
        )
        try:

            async def on_event(ev):
                events.append(ev)

            sub = await bus.subscribe(f"fence.events.{sandbox}.net", Event, on_event)
            opened = await bus.request(
                PROXY_SESSION_OPEN,
                ProxySessionOpen(
                    sandbox=sandbox,
                    network=NetworkConfig(allowed_domains=["127.0.0.1"], denied_domains=["blocked.invalid"]),
                ),
                ProxySessionOpened,
                timeout=5,
            )
            assert opened.http_port and opened.socks_port and opened.address == "127.0.0.1"
            loop = asyncio.get_running_loop()

            def clients():
                sock, head = connect_tunnel(opened.http_port, f"127.0.0.1:{echo.port}".encode())
                assert head.startswith(b"HTTP/1.1 200 ")
                sock.sendall(b"over nats")
                assert sock.recv(9) == b"over nats"
                sock.close()
                r = curl("-p", "--proxy", f"http://127.0.0.1:{opened.http_port}", "http://blocked.invalid/")
                assert "403" in r.stderr
                s, reply = socks_connect(opened.socks_port, 3, b"blocked.invalid", 443)
                s.close()
                assert reply[:2] == b"\x05\x02"

            await loop.run_in_executor(None, clients)
            deadline = loop.time() + 5
            while len(events) < 3 and loop.time() < deadline:
                await asyncio.sleep(0.02)
            closed = await bus.request(
                PROXY_SESSION_CLOSE, ProxySessionClose(sandbox=sandbox), ProxySessionClosed, timeout=5
            )
            assert closed.existed
            await sub.unsubscribe()
        finally:
            await bus.close()

    try:
        asyncio.run(main())
    finally:
        echo.close()
    assert all(isinstance(e, NetDecisionEvent) and e.sandbox == sandbox for e in events)
    assert [(e.proto, e.outcome) for e in events] == [("http", "allowed"), ("http", "blocked"), ("socks", "blocked")]
    proxy = next(c for c in info.components if c.name == "proxy")
    body = ""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        body = urllib.request.urlopen(proxy.metrics_url, timeout=3).read().decode()
        if 'fence_proxy_bytes_total{direction="up"} 9.0' in body:
            break
        time.sleep(0.05)
    assert re.search(r'fence_proxy_requests_total\{decision="allowed",protocol="http"\} 1\.0', body), body
    assert re.search(r'fence_proxy_requests_total\{decision="blocked",protocol="socks"\} 1\.0', body)
    assert 'fence_proxy_bytes_total{direction="up"} 9.0' in body
    assert "fence_proxy_open_tunnels 0.0" in body
