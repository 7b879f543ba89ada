"""SSH and git through a real sandbox to a real sshd: the SOCKS route and the SSH policy (issue 5 p. 8, issue 6).

The ``sshd`` fixture starts ``/usr/sbin/sshd -D -e`` on 127.0.0.1 (random
free port, its own ed25519 host key, public-key login for a generated client
key, ``UsePAM no``, ``StrictModes no``) and a bare git repository; only that
server is ever contacted.  It needs root (sshd must switch to the login user
and read its host key), so the whole module is skipped otherwise.

The client side is what a user would have, laid out where the sandbox can see
it (under /var/tmp: the sandbox's /tmp is private and its root read-only):

* ``gitbox`` is a host alias (``HostName 127.0.0.1``, ``Port``, key,
  ``UserKnownHostsFile``) in a config that plays ``~/.ssh/config``.  OpenSSH
  reads ``~/.ssh/config`` from the passwd home, not ``$HOME``, and the tests
  must not touch /root, so an ``ssh`` wrapper first on PATH runs the real ssh
  with ``-F <that config>``; the config ends with ``Include
  /etc/ssh/ssh_config`` because ``-F`` skips the system config, and that is
  where fence puts its ProxyCommand inside the sandbox.  Preflight's ``ssh -G``
  finds the same wrapper on the run's PATH, so it resolves the alias the same
  way (as it would read the real ``~/.ssh/config``).
* known_hosts is written beforehand (``[127.0.0.1]:P ssh-ed25519 ...``) and
  ``StrictHostKeyChecking yes``: the sandbox cannot write files outside its
  /tmp on this branch (no ``allowWrite`` yet).
* Each runner (root, and the unprivileged ``fence-test``) gets its own copy
  of the client key, owned by it (ssh refuses a key others own).  The login
  user on the server is root: ``UsePAM no`` makes sshd refuse accounts with a
  locked password (``!``), which ``useradd`` gives ``fence-test``.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import session_dir

pytestmark = pytest.mark.sandbox

SSHD = "/usr/sbin/sshd"
MARKER = "fence-ssh-e2e-hello"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited with {proc.returncode}: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"sshd did not listen on 127.0.0.1:{port}: {log.read_text()}")


def _locked(user: str) -> bool:
    try:
        with open("/etc/shadow") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name == user:
                    return rest.startswith("!")
    except OSError:
        pass
    return False


class Server:
    def __init__(self, root: Path, port: int, host_pub: str, client_key: Path, repo: Path, commit: str):
        self.root, self.port, self.host_pub, self.client_key = root, port, host_pub, client_key
        self.repo, self.commit = repo, commit


@pytest.fixture(scope="module")
def sshd():
    if os.geteuid() != 0:
        pytest.skip("sshd must run as root (switch to the login user, read its host key)")
    if not os.access(SSHD, os.X_OK) or not shutil.which("ssh") or not shutil.which("ssh-keygen"):
        pytest.skip("openssh-server/openssh-client not installed (scripts/setup.sh --test installs them)")
    if not shutil.which("git"):
        pytest.skip("git not installed")
    if _locked("root"):
        pytest.skip("root's password is locked ('!'), so sshd with UsePAM no refuses the login")
    root = session_dir("fence-sshd-")
    os.chmod(root, 0o755)
    keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
    subprocess.run([*keygen, "-f", str(root / "host_ed25519"), "-C", "fence-test-host"], check=True)
    subprocess.run([*keygen, "-f", str(root / "client_ed25519"), "-C", "fence-test-client"], check=True)
    shutil.copy(root / "client_ed25519.pub", root / "authorized_keys")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    port = _free_port()
    (root / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {root}/host_ed25519
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
AllowUsers root
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
LogLevel VERBOSE
Subsystem sftp internal-sftp
""")
    # a bare repository with one commit, reached as gitbox:<root>/repo.git
    repo = root / "repo.git"
    git_env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    src = root / "src"
    subprocess.run(["git", "init", "-q", "-b", "main", str(src)], check=True, env=git_env)
    (src / "README").write_text(MARKER + "\n")
    subprocess.run(["git", "-C", str(src), "add", "README"], check=True, env=git_env)
    subprocess.run(["git", "-C", str(src), "commit", "-q", "-m", "first"], check=True, env=git_env)
    subprocess.run(["git", "clone", "-q", "--bare", str(src), str(repo)], check=True, env=git_env)
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, env=git_env, capture_output=True, text=True
    ).stdout.strip()
    log = root / "sshd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stdout=out, stderr=out)
    try:
        _wait_listening(port, proc, log)
        host_pub = (root / "host_ed25519.pub").read_text().split()
        yield Server(root, port, f"{host_pub[0]} {host_pub[1]}", root / "client_ed25519", repo, commit)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


class Client:
    """One runner's ssh setup: workdir with key, known_hosts, config, ``bin/ssh`` wrapper."""

    def __init__(self, fence, server: Server):
        self.fence, self.server = fence, server
        self.work = fence.workdir()
        w = self.work
        shutil.copy(server.client_key, w / "id_ed25519")
        (w / "known_hosts").write_text(f"[127.0.0.1]:{server.port} {server.host_pub}\n")
        (w / "ssh_config").write_text(f"""\
Host gitbox
  HostName 127.0.0.1
  Port {server.port}
  User root
  IdentityFile {w}/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile {w}/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 10

# as ssh would read the system config after ~/.ssh/config (which -F skips)
Host *
Include /etc/ssh/ssh_config
""")
        (w / "bin").mkdir()
        wrapper = w / "bin" / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {w}/ssh_config "$@"\n')
        wrapper.chmod(0o755)
        (w / "id_ed25519").chmod(0o600)
        if fence.user:
            pw = pwd.getpwnam(fence.user)
            for path in (w / "id_ed25519", w / "known_hosts", w / "ssh_config", w / "bin", wrapper):
                os.chown(path, pw.pw_uid, pw.pw_gid)

    def policy(self, network: dict | None = None, ssh: dict | None = None) -> None:
        cfg = {"network": network if network is not None else {"allowedDomains": ["127.0.0.1"]}}
        if ssh is not None:
            cfg["ssh"] = ssh
        (self.work / "fence.json").write_text(json.dumps(cfg))

    def run(self, script: str, *flags: str, timeout: float = 60) -> subprocess.CompletedProcess:
        env = self.fence.env(PATH=f"{self.work}/bin:" + self.fence.env()["PATH"])
        return self.fence.run(*flags, "-c", script, env=env, cwd=str(self.work), timeout=timeout)


@pytest.fixture
def client(fence, sshd) -> Client:
    return Client(fence, sshd)


ALLOW = {"allowedHosts": ["127.0.0.1"], "allowedCommands": ["echo", "git-upload-pack"]}


def test_ssh_to_an_allowed_host_runs_through_the_socks_proxy(client):
    client.policy(ssh=ALLOW)
    r = client.run(f"ssh gitbox echo {MARKER}", "-d")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == MARKER
    assert "[fence:socks]" in r.stderr and "CONNECT 127.0.0.1:" in r.stderr and "ALLOWED" in r.stderr


def test_ssh_without_an_ssh_policy_is_routed_too(client):
    client.policy()
    r = client.run(f"ssh gitbox echo {MARKER}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == MARKER


def test_the_proxy_filters_ssh_when_the_host_is_not_an_allowed_domain(client):
    client.policy(network={"allowedDomains": ["example.com"]})
    r = client.run(f"ssh gitbox echo {MARKER}")
    assert r.returncode != 0 and MARKER not in r.stdout
    assert "connection not allowed by ruleset" in r.stderr


def test_skipping_the_proxy_command_reaches_nothing(client):
    # no SSH policy, so preflight lets -o ProxyCommand=none through: the netns has no direct route
    client.policy()
    r = client.run(f"ssh -o ProxyCommand=none gitbox echo {MARKER}")
    assert r.returncode != 0 and MARKER not in r.stdout


def test_a_denied_host_is_blocked_by_preflight(client):
    client.policy(ssh={**ALLOW, "deniedHosts": ["gitbox"]})
    r = client.run(f"ssh gitbox echo {MARKER}")
    assert r.returncode == 1 and MARKER not in r.stdout
    assert 'Error: SSH blocked: host matches denied pattern "gitbox" (host: gitbox -> 127.0.0.1)' in r.stderr


def test_a_host_not_in_allowed_hosts_is_blocked_after_resolving_the_alias(client):
    client.policy(ssh={"allowedHosts": ["gitbox", "github.com"], "allowAllCommands": True})
    r = client.run(f"ssh gitbox echo {MARKER}")
    assert r.returncode == 1 and MARKER not in r.stdout
    assert "Error: SSH blocked: host not in allowedHosts (host: gitbox -> 127.0.0.1)" in r.stderr


def test_a_remote_command_not_allowed_never_runs(client, sshd):
    client.policy(ssh=ALLOW)
    victim = sshd.root / f"touched-{client.fence.name}"
    r = client.run(f"ssh gitbox touch {victim}")
    assert r.returncode == 1
    assert (
        f'Error: SSH command blocked: command "touch {victim}" not in ssh.allowedCommands '
        f"(host: gitbox -> 127.0.0.1, command: touch {victim})"
    ) in r.stderr
    assert not victim.exists()


def test_a_denied_remote_command_inside_an_allowed_line_is_blocked(client):
    client.policy(ssh={**ALLOW, "deniedCommands": ["rm"]})
    r = client.run("ssh gitbox 'echo hi; rm -rf /nonexistent-fence-test'")
    assert r.returncode == 1
    assert 'matches ssh.deniedCommands "rm"' in r.stderr


@pytest.mark.parametrize(
    "option, why",
    [
        ("-o ProxyCommand='nc %h %p'", "-o ProxyCommand runs a local command"),
        ("-F /etc/ssh/ssh_config", "-F /etc/ssh/ssh_config reads another ssh config file"),
    ],
)
def test_refused_options_are_blocked(client, option, why):
    client.policy(ssh=ALLOW)
    r = client.run(f"ssh {option} gitbox echo {MARKER}")
    assert r.returncode == 1 and MARKER not in r.stdout
    assert f"Error: SSH blocked: {why}" in r.stderr and "(fence ssh policy)" in r.stderr


def test_git_ls_remote_and_clone_over_ssh_when_allowed(client, sshd):
    client.policy(ssh=ALLOW)
    url = f"gitbox:{sshd.repo}"
    r = client.run(
        f"git ls-remote {url} && git clone -q {url} /tmp/c && cat /tmp/c/README && git -C /tmp/c rev-parse HEAD"
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"{sshd.commit}\trefs/heads/main" in lines  # ls-remote
    assert lines[-2:] == [MARKER, sshd.commit]  # the clone's file and HEAD


def test_git_over_ssh_to_a_host_not_allowed_is_blocked(client, sshd):
    client.policy(ssh={"allowedHosts": ["github.com"], "allowedCommands": ["git-upload-pack"]})
    r = client.run(f"git ls-remote gitbox:{sshd.repo}")
    assert r.returncode == 1 and sshd.commit not in r.stdout
    assert "Error: SSH blocked: host not in allowedHosts (host: gitbox -> 127.0.0.1)" in r.stderr


def test_git_upload_pack_not_allowed_is_blocked(client, sshd):
    client.policy(ssh={"allowedHosts": ["127.0.0.1"], "allowedCommands": ["echo"]})
    r = client.run(f"git clone -q gitbox:{sshd.repo} /tmp/c")
    assert r.returncode == 1
    assert 'command "git-upload-pack' in r.stderr and "not in ssh.allowedCommands" in r.stderr


def test_scp_and_sftp_use_the_same_route(client, sshd):
    # scp and sftp run /usr/bin/ssh by absolute path (not the PATH wrapper): -S points them at it
    client.policy(ssh={"allowedHosts": ["127.0.0.1"]})
    wrapper = client.work / "bin" / "ssh"
    r = client.run(
        f"scp -q -S {wrapper} gitbox:{sshd.repo}/HEAD /tmp/h && cat /tmp/h && "
        f"echo 'get {sshd.repo}/description /tmp/d' | sftp -q -S {wrapper} -b - gitbox >/dev/null "
        "&& test -s /tmp/d && echo sftp-ok"
    )
    assert r.returncode == 0, r.stderr
    assert "ref: refs/heads/main" in r.stdout and "sftp-ok" in r.stdout
