"""Local ports without socat: allowLocalOutbound(Ports) and -p, as root and unprivileged.

Only servers these tests start on this machine's loopback are contacted.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request

import pytest

from conftest import marker_server
from fence.cli import UsageError, parse_port

MARKER = "fence-local-ports-marker"


@pytest.fixture(scope="module")
def host_server():
    with marker_server(MARKER) as port:
        yield port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(fence, network: dict):
    work = fence.workdir()
    (work / "fence.json").write_text(json.dumps({"network": network}))
    return work


@pytest.mark.sandbox
def test_outbound_ports_reach_the_host_server(fence, host_server):
    work = config(fence, {"allowLocalOutbound": True, "allowLocalOutboundPorts": [host_server]})
    # [::1] inside is relayed to the host's [::1], and to 127.0.0.1 when that refuses (the server is v4 only)
    script = (
        f"curl -sS --max-time 5 http://127.0.0.1:{host_server}/; echo; "
        f"curl -sS --max-time 5 'http://[::1]:{host_server}/'"
    )
    r = fence.run("-c", script, cwd=str(work))
    assert (r.returncode, r.stdout.splitlines()) == (0, [MARKER, MARKER]), r.stderr
    assert "Warning" not in r.stderr


@pytest.mark.sandbox
def test_outbound_ports_with_allowed_domains_and_inherited_from_binding(fence, host_server):
    work = config(
        fence, {"allowedDomains": ["example.com"], "allowLocalBinding": True, "allowLocalOutboundPorts": [host_server]}
    )
    r = fence.run("-c", f"curl -sS --max-time 5 http://127.0.0.1:{host_server}/", cwd=str(work))
    assert (r.returncode, r.stdout) == (0, MARKER), r.stderr


@pytest.mark.sandbox
def test_outbound_without_ports_reaches_nothing_and_warns(fence, host_server):
    work = config(fence, {"allowLocalOutbound": True})
    r = fence.run("-c", f"curl -sS --max-time 5 http://127.0.0.1:{host_server}/ && echo REACHED", cwd=str(work))
    assert "REACHED" not in r.stdout and MARKER not in r.stdout
    assert (
        "[fence:linux] Warning: network.allowLocalOutbound is set but network.allowLocalOutboundPorts "
        "is empty" in r.stderr
    )


@pytest.mark.sandbox
def test_ports_not_listed_are_not_relayed(fence, host_server):
    work = config(fence, {"allowLocalOutbound": False, "allowLocalOutboundPorts": [host_server]})
    r = fence.run("-c", f"curl -sS --max-time 5 http://127.0.0.1:{host_server}/ && echo REACHED", cwd=str(work))
    assert "REACHED" not in r.stdout and "Warning" not in r.stderr


@pytest.mark.sandbox
def test_published_port_reaches_a_server_inside(fence):
    work = config(fence, {})
    port = free_port()
    (work / "index.html").write_text(MARKER)
    proc = fence.popen(
        "-p",
        str(port),
        "-c",
        f"exec python3 -m http.server {port} --bind 127.0.0.1",
        cwd=str(work),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline, body, last = time.monotonic() + 10, None, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2) as resp:
                    body = resp.read().decode()
                    break
            except OSError as e:  # not listening inside yet: the relay closes the connection
                last = e
                time.sleep(0.1)
        assert body == MARKER, (last, proc.poll())
    finally:
        proc.terminate()  # forwarded to the server inside
        _, err = proc.communicate(timeout=10)
    with socket.socket() as s:  # the host listener is gone with the run
        assert s.connect_ex(("127.0.0.1", port)) != 0, err


@pytest.mark.parametrize("value", ["abc", "70000", "0", "1.2.3:80"])
def test_invalid_port_is_an_error(fence, value):
    r = fence.run("-p", value, "--", "true")
    assert (r.returncode, r.stderr.strip()) == (1, f"Error: invalid port: {value}")


def test_parse_port_forms():
    assert parse_port("3000") == ("127.0.0.1", 3000)
    assert parse_port("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_port("[::1]:8080") == ("::1", 8080)
    for bad in ("", ":", "::1:80", "localhost:80", "80x", "-1", "65536", "١٢٣"):
        with pytest.raises(UsageError, match="invalid port"):
            parse_port(bad)
