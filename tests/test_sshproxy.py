"""ssh through the SOCKS proxy: the generated ssh_config (sshproxy) and the ProxyCommand program (socksconnect).

The end-to-end path through a sandbox to a real sshd is tests/test_ssh_e2e.py;
here socksconnect talks to a small SOCKS5 server in this process (127.0.0.1).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from fence.executor import sshproxy

SCRIPT = sshproxy.script_path()


# --------------------------------------------------------------------------- the generated ssh_config


def test_proxy_command_runs_the_script_isolated_and_quotes_paths():
    cmd = sshproxy.proxy_command("/usr/bin/python3", "/opt/fence/socksconnect.py")
    assert cmd == "/usr/bin/python3 -I -S /opt/fence/socksconnect.py %h %p"
    odd = sshproxy.proxy_command("/opt/my python/bin/python3", "/srv/100%/socks'connect.py")
    assert odd == "'/opt/my python/bin/python3' -I -S '/srv/100%%/socks'\\''connect.py' %h %p"


def test_route_puts_the_proxy_command_first_and_keeps_the_host_config(tmp_path):
    original = b"Include /etc/ssh/ssh_config.d/*.conf\nHost *\n    SendEnv LANG\n"
    cfg = tmp_path / "ssh_config"
    cfg.write_bytes(original)
    route = sshproxy.route({}, python="/py", script="/s.py", config_path=str(cfg))
    assert route.env == {}
    [(path, content)] = route.files
    assert path == str(cfg)
    lines = content.decode().splitlines()
    first = next(ln for ln in lines if ln and not ln.startswith("#"))
    assert first == "ProxyCommand /py -I -S /s.py %h %p"  # before any Host/Match: applies to every host
    assert content.endswith(original)


def test_route_does_not_copy_a_masked_config(tmp_path):
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host secret\n")
    for masks in ([(str(cfg), False)], [(str(tmp_path), True)]):
        [(_, content)] = sshproxy.route({}, masks, python="/py", script="/s.py", config_path=str(cfg)).files
        assert b"secret" not in content and b"ProxyCommand /py" in content


def test_route_without_a_system_config_falls_back_to_git_ssh_command(tmp_path):
    missing = str(tmp_path / "ssh_config")
    route = sshproxy.route({}, python="/py", script="/s.py", config_path=missing)
    assert route.files == []
    assert route.env == {"GIT_SSH_COMMAND": "ssh -o 'ProxyCommand=/py -I -S /s.py %h %p'"}
    # the user's own choice of ssh for git is left alone
    assert sshproxy.route({"GIT_SSH_COMMAND": "ssh -i k"}, python="/py", script="/s.py", config_path=missing).env == {}
    # inside a masked (tmpfs) directory bwrap can create the file
    assert sshproxy.route({}, [(str(tmp_path), True)], python="/py", script="/s.py", config_path=missing).files


def test_route_skips_an_oversized_config(tmp_path):
    cfg = tmp_path / "ssh_config"
    cfg.write_bytes(b"#" * (sshproxy.MAX_CONFIG + 1))
    route = sshproxy.route({}, python="/py", script="/s.py", config_path=str(cfg))
    assert route.files == [] and "GIT_SSH_COMMAND" in route.env


def test_filtered_runs_only_import_it():
    code = "import sys; from fence.executor import runner; print('fence.executor.sshproxy' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "False", r.stderr


# --------------------------------------------------------------------------- socksconnect.py


class FakeSocks:
    """SOCKS5 server on 127.0.0.1: records requests; CONNECT to 'echo' answers what it read after EOF."""

    def __init__(self, reply: int = 0):
        self.reply = reply
        self.requests: list[tuple[int, bytes, int]] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    @staticmethod
    def exact(conn, n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            assert chunk
            data += chunk
        return data

    def handle(self, conn):
        with conn:
            ver, n = self.exact(conn, 2)
            methods = self.exact(conn, n)
            assert ver == 5 and 0 in methods
            conn.sendall(b"\x05\x00")
            _ver, _cmd, _rsv, atyp = self.exact(conn, 4)
            assert atyp == 3
            name = self.exact(conn, self.exact(conn, 1)[0])
            port = int.from_bytes(self.exact(conn, 2), "big")
            self.requests.append((atyp, name, port))
            conn.sendall(bytes((5, self.reply, 0, 1, 127, 0, 0, 1, 0, 80)))
            if self.reply:
                return
            # half-close: read until the client's EOF, then answer, then close
            got = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                got += chunk
            time.sleep(0.05)
            conn.sendall(b"len=%d sum=%d" % (len(got), sum(got) % 65521))

    def close(self):
        self.sock.close()


def socksconnect(proxy: FakeSocks, host: str, port: str, data: bytes, timeout: float = 20):
    return subprocess.run(
        [sys.executable, "-I", "-S", SCRIPT, "-x", f"127.0.0.1:{proxy.port}", host, port],
        input=data,
        capture_output=True,
        timeout=timeout,
    )


def test_socksconnect_keeps_the_reply_direction_after_stdin_ends():
    proxy = FakeSocks()
    try:
        payload = os.urandom(3 * 1024 * 1024)
        r = socksconnect(proxy, "gitbox.example", "22", payload)
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"len=%d sum=%d" % (len(payload), sum(payload) % 65521)
        assert proxy.requests == [(3, b"gitbox.example", 22)]
    finally:
        proxy.close()


def test_socksconnect_sends_ip_literals_as_names_for_the_proxy_to_decide():
    proxy = FakeSocks()
    try:
        for host, want in (("127.0.0.1", b"127.0.0.1"), ("::1", b"::1"), ("[::1]", b"::1")):
            r = socksconnect(proxy, host, "2222", b"")
            assert r.returncode == 0, r.stderr
            assert proxy.requests[-1] == (3, want, 2222)
    finally:
        proxy.close()


def test_socksconnect_reports_a_refusal():
    proxy = FakeSocks(reply=2)
    try:
        r = socksconnect(proxy, "evil.example", "22", b"SSH-2.0-x\r\n")
        assert r.returncode == 1 and r.stdout == b""
        assert b"fence: cannot reach evil.example:22 through the SOCKS proxy" in r.stderr
        assert b"connection not allowed by ruleset" in r.stderr
    finally:
        proxy.close()


def test_socksconnect_without_a_proxy_and_bad_arguments():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    r = subprocess.run(
        [sys.executable, "-I", "-S", SCRIPT, "-x", f"127.0.0.1:{port}", "h", "22"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode == 1 and "Connection refused" in r.stderr
    for args in ([], ["h"], ["h", "x"], ["h", "70000"], ["", "22"]):
        r = subprocess.run([sys.executable, "-I", "-S", SCRIPT, *args], capture_output=True, text=True, timeout=20)
        assert r.returncode == 2 and r.stderr.startswith("socksconnect:")


# --------------------------------------------------------------------------- in a sandbox


@pytest.mark.sandbox
@pytest.mark.skipif(not os.path.isfile(sshproxy.SYSTEM_CONFIG), reason="no /etc/ssh/ssh_config to overlay")
def test_only_filtered_runs_see_the_generated_config(fence):
    import json

    with open(sshproxy.SYSTEM_CONFIG, "rb") as f:
        host_config = f.read()
    for network, generated in (
        ({"allowedDomains": ["127.0.0.1"]}, True),
        ({}, False),
        ({"allowedDomains": ["*"]}, False),
    ):
        work = fence.workdir()
        (work / "fence.json").write_text(json.dumps({"network": network}))
        r = fence.run("--", "cat", sshproxy.SYSTEM_CONFIG, cwd=str(work))
        assert r.returncode == 0, r.stderr
        assert ("ProxyCommand " in r.stdout and "socksconnect.py %h %p" in r.stdout) is generated
        assert r.stdout.encode().endswith(host_config)
