"""SSH policy (fence.executor.sshpolicy): hosts, remote commands, refused options, aliases resolved
with ``ssh -G``.

``ssh -G`` never connects, so no server is needed.  OpenSSH reads the user's
config from the passwd home directory, not ``$HOME``, so each test gets its
own "user config" through an ``ssh`` wrapper first on PATH that runs the real
ssh with ``-F <temp config>``: the same resolution ssh performs for
``~/.ssh/config``.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from fence.executor import sshpolicy
from fence.executor.commandrules import RuleSources
from fence.executor.preflight import check_command
from fence.executor.shellparse import Command, split_words
from fence.policy import CommandConfig, Policy, SSHConfig

REAL_SSH = shutil.which("ssh")
needs_ssh = pytest.mark.skipif(REAL_SSH is None, reason="OpenSSH client not installed")

USER_CONFIG = """\
Host myalias
  HostName 127.0.0.1
  Port 2222
  User bob
Host sneaky
  HostName box.evil.example.org
Host viajump
  HostName 127.0.0.1
  ProxyJump bastion.evil.example.org
Host viagoodjump
  HostName 127.0.0.1
  ProxyJump jump.example.com
Host withproxy
  HostName 127.0.0.1
  ProxyCommand nc %h %p
Host withlocal
  HostName 127.0.0.1
  PermitLocalCommand yes
  LocalCommand touch /tmp/x
Host withremote
  HostName 127.0.0.1
  RemoteCommand rm -rf /
"""


def write_exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def sshenv(tmp_path) -> dict[str, str]:
    """env for check_command: PATH finds an ssh that uses a temporary user config."""
    if REAL_SSH is None:
        pytest.skip("OpenSSH client not installed")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(USER_CONFIG)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "ssh.log"
    write_exe(bindir / "ssh", f'#!/bin/sh\necho "$@" >> {log}\nexec {REAL_SSH} -F "$HOME/.ssh/config" "$@"\n')
    return {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(home), "SSH_LOG": str(log)}


def calls(env) -> list[str]:
    log = Path(env["SSH_LOG"])
    return log.read_text().splitlines() if log.exists() else []


POLICY = Policy(
    command=CommandConfig(deny=["git push"]),
    ssh=SSHConfig(
        allowed_hosts=["127.0.0.1", "*.example.com", "github.com"],
        denied_hosts=["*.evil.example.org", "blocked.example.com"],
        allowed_commands=["ls", "git-upload-pack", "rsync --server", "uptime"],
        denied_commands=["ls /root"],
    ),
)
SOURCES = RuleSources(
    {
        "ssh.allowedHosts": "project config: /p/fence.json",
        "ssh.deniedHosts": "template: ops",
        "ssh.allowedCommands": "project config: /p/fence.json",
        "ssh.deniedCommands": "project config: /p/fence.json",
        "command.deny": "template: code",
    }
)


def check(text: str, env, policy: Policy = POLICY):
    return check_command(None, text, policy, SOURCES, env=env)


# --------------------------------------------------------------------------- opt-in


def test_no_ssh_policy_means_no_ssh_checks(sshenv):
    policy = Policy(ssh=SSHConfig(allowed_commands=["ls"], denied_commands=["rm"]))
    for text in (
        "ssh anywhere.example.net rm -rf /",
        "ssh -o ProxyCommand='nc x 1' h",
        "scp f far:/x",
        "git clone git@far.example.net:a/b",
    ):
        assert check(text, sshenv, policy) is None, text
    assert calls(sshenv) == []  # ssh -G is never even run
    assert check("ssh h", sshenv, Policy(ssh=SSHConfig(denied_hosts=["x"]))) is None


def test_denied_hosts_alone_allows_other_hosts(sshenv):
    policy = Policy(ssh=SSHConfig(denied_hosts=["*.evil.example.org"]))
    assert check("ssh ok.example.net", sshenv, policy) is None
    assert check("ssh sneaky", sshenv, policy).rule == "*.evil.example.org"
    # a remote command with no allowedCommands and no allowAllCommands: allowlist mode, nothing allowed
    b = check("ssh ok.example.net uptime", sshenv, policy)
    assert b.message == (
        "SSH command blocked: no ssh.allowedCommands configured (allowlist mode requires explicit "
        "commands) (host: ok.example.net, command: uptime) (fence ssh policy)"
    )


# --------------------------------------------------------------------------- hosts, aliases, ssh -G


@needs_ssh
def test_hosts_are_decided_on_what_ssh_would_do(sshenv):
    assert check("ssh myalias", sshenv) is None  # alias -> 127.0.0.1 (allowed)
    assert check("ssh bob@127.0.0.1", sshenv) is None
    assert check("ssh ssh://bob@127.0.0.1:2222", sshenv) is None
    assert check("ssh build.example.com", sshenv) is None
    assert check("ssh GitHub.com", sshenv) is None  # host patterns are case-insensitive
    b = check("ssh sneaky", sshenv)
    assert b.message == (
        'SSH blocked: host matches denied pattern "*.evil.example.org" '
        "(host: sneaky -> box.evil.example.org) (rule from template: ops)"
    )
    assert (b.kind, b.rule, b.source, b.command) == ("ssh", "*.evil.example.org", "template: ops", "ssh sneaky")
    b = check("ssh -o HostName=blocked.example.com myalias", sshenv)
    assert b.rule == "blocked.example.com"
    b = check("ssh other.example.net", sshenv)
    assert b.message == (
        "SSH blocked: host not in allowedHosts (host: other.example.net) (rule from project config: /p/fence.json)"
    )
    assert b.rule == "" and b.source == "project config: /p/fence.json"
    assert any("-G" in line and "myalias" in line for line in calls(sshenv))


@needs_ssh
def test_alias_named_like_an_allowed_host_cannot_hide_a_denied_one(sshenv, tmp_path):
    cfg = Path(sshenv["HOME"]) / ".ssh" / "config"
    cfg.write_text("Host build.example.com\n  HostName evil.example.org\n")
    b = check("ssh build.example.com", sshenv)
    assert b is not None and "host not in allowedHosts" in b.message
    assert "build.example.com -> evil.example.org" in b.message


@needs_ssh
def test_options_after_the_host_count(sshenv):
    b = check("ssh 127.0.0.1 -o ProxyCommand='nc evil 22'", sshenv)
    assert b is not None and b.rule == "ProxyCommand"
    assert check("ssh 127.0.0.1 -p 22 ls", sshenv) is None
    assert check("ssh -- 127.0.0.1 ls", sshenv) is None


# --------------------------------------------------------------------------- remote commands, in order


@needs_ssh
def test_remote_command_evaluation_order(sshenv):
    assert check("ssh myalias", sshenv) is None  # no remote command: allowed
    assert check("ssh myalias ls -la", sshenv) is None
    assert check("ssh myalias 'ls && uptime'", sshenv) is None
    b = check("ssh myalias ls /root", sshenv)  # deniedCommands before allowedCommands
    assert b.message == (
        'SSH command blocked: command "ls /root" matches ssh.deniedCommands "ls /root" '
        "(host: myalias -> 127.0.0.1, command: ls /root) (rule from project config: /p/fence.json)"
    )
    b = check("ssh myalias 'ls; rm -rf /'", sshenv)
    assert b.message.startswith('SSH command blocked: command "rm -rf /" not in ssh.allowedCommands')
    b = check("ssh myalias 'ls $(rm -rf /)'", sshenv)
    assert b is not None and "rm -rf /" in b.message
    b = check("ssh myalias sudo ls", sshenv)
    assert b is not None and '"sudo ls" not in ssh.allowedCommands' in b.message


@needs_ssh
def test_inherit_deny_and_allow_all(sshenv):
    base: dict[str, Any] = {"allowed_hosts": ["127.0.0.1"], "allow_all_commands": True}
    relaxed = Policy(command=CommandConfig(deny=["git push"]), ssh=SSHConfig(**base))
    assert check("ssh myalias git push", sshenv, relaxed) is None  # command.deny is local unless inherited
    assert check("ssh myalias reboot", sshenv, relaxed) is None
    inherit = Policy(command=CommandConfig(deny=["git push"]), ssh=SSHConfig(inherit_deny=True, **base))
    b = check("ssh myalias 'cd /src && git push'", sshenv, inherit)
    assert 'matches inherited global deny "git push"' in b.message and b.source == "template: code"
    b = check("ssh myalias sudo reboot", sshenv, inherit)
    assert 'matches inherited default deny "reboot"' in b.message and b.default_rule
    no_defaults = Policy(command=CommandConfig(use_defaults=False), ssh=SSHConfig(inherit_deny=True, **base))
    assert check("ssh myalias reboot", sshenv, no_defaults) is None
    denied = Policy(ssh=SSHConfig(denied_commands=["shutdown"], **base))
    assert check("ssh myalias shutdown -h now", sshenv, denied).rule == "shutdown"
    assert check("ssh myalias anything at all", sshenv, denied) is None


@needs_ssh
def test_remote_command_from_the_config(sshenv):
    b = check("ssh withremote", sshenv)
    assert b is not None and '"rm -rf /" not in ssh.allowedCommands' in b.message
    b = check("ssh -o RemoteCommand='rm -rf /' 127.0.0.1", sshenv)
    assert b is not None and "rm -rf /" in b.message
    assert check("ssh -N myalias", sshenv) is None  # -N: no command at all
    assert check("ssh -W localhost:22 myalias", sshenv) is None


# --------------------------------------------------------------------------- refused options

REFUSED = [
    ("ssh -o ProxyCommand='nc evil 22' myalias", "ProxyCommand"),
    ("ssh -oProxyCommand=nc\\ evil\\ 22 myalias", "ProxyCommand"),
    ("ssh -o 'ProxyCommand nc evil 22' myalias", "ProxyCommand"),
    ("ssh -o LocalCommand=id -o PermitLocalCommand=yes myalias", "LocalCommand"),
    ("ssh -o PermitLocalCommand=yes myalias", "PermitLocalCommand"),
    ("ssh -o KnownHostsCommand=/bin/true myalias", "KnownHostsCommand"),
    ("ssh -o Include=/tmp/other myalias", "Include"),
    ("ssh -F /tmp/other_config myalias", "-F"),
    ("ssh -I /tmp/lib.so myalias", "-I"),
    ("ssh -o PKCS11Provider=/tmp/lib.so myalias", "pkcs11provider"),
    ("ssh -S /tmp/ctl myalias", "-S"),
    ("ssh -o ControlPath=/tmp/ctl myalias", "ControlPath"),
    ("scp -S /tmp/not-ssh f myalias:/x", "-S"),
    ("ssh -J bastion.evil.example.org 127.0.0.1", "*.evil.example.org"),
    ("ssh -J other.example.net 127.0.0.1", ""),
    ("ssh -o ProxyJump=bob@bastion.evil.example.org:22 127.0.0.1", "*.evil.example.org"),
    ("ssh viajump", "*.evil.example.org"),
    ("ssh withproxy", "ProxyCommand"),
    ("ssh withlocal", "LocalCommand"),
    ("ssh 'a;b'", "a;b"),
    ("ssh '$(id)@127.0.0.1'", "$(id)@127.0.0.1"),
    ('ssh "$HOST"', ""),
]


@needs_ssh
@pytest.mark.parametrize("text,rule", REFUSED)
def test_refused(sshenv, text, rule):
    b = check(text, sshenv)
    assert b is not None and b.kind == "ssh", text
    assert b.rule == rule, b.message
    assert b.message.startswith(("SSH blocked: ", "SSH command blocked: "))


@needs_ssh
def test_harmless_settings_are_accepted(sshenv):
    for text in (
        "ssh -o ProxyCommand=none myalias",
        "ssh -o proxycommand=NONE myalias",
        "ssh -F none 127.0.0.1",
        "ssh -J jump.example.com 127.0.0.1",
        "ssh viagoodjump",
        "ssh -o PermitLocalCommand=no myalias",
        "ssh -S none myalias",
        "ssh -v -4 -C -i ~/.ssh/id -L 8080:localhost:80 myalias",
        "scp -S ssh f myalias:/x",
    ):
        assert check(text, sshenv) is None, (text, check(text, sshenv))


@needs_ssh
def test_shell_characters_never_reach_ssh(sshenv):
    check("ssh 'a;touch /tmp/pwned'", sshenv)
    check("ssh -o Hostname='$(id)' 127.0.0.1", sshenv)
    check("ssh -l '$(id)' 127.0.0.1", sshenv)
    assert not any("$(id)" in line or ";" in line for line in calls(sshenv))


def test_no_connection_no_check(sshenv):
    for text in ("ssh -V", "ssh -G other.example.net", "ssh -Q cipher", "ssh", "scp -D /usr/lib/sftp-server f x:y"):
        assert check(text, sshenv) is None, text


# --------------------------------------------------------------------------- scp, sftp, rsync, git


@needs_ssh
def test_copy_programs(sshenv):
    assert check("scp f myalias:/tmp/x", sshenv) is None
    assert check("scp -P 2222 bob@127.0.0.1:/etc/hosts .", sshenv) is None
    assert check("scp scp://bob@127.0.0.1:2222/x .", sshenv) is None
    assert check("scp ./a:b c", sshenv) is None  # local paths with colons
    assert check("scp f other.example.net:/x", sshenv).message.startswith("SSH blocked: host not in allowedHosts")
    assert check("scp myalias:/a sneaky:/b", sshenv).rule == "*.evil.example.org"
    assert check("scp -o ProxyCommand=x f myalias:/x", sshenv).rule == "ProxyCommand"
    assert check("sftp myalias", sshenv) is None
    assert check("sftp sftp://bob@127.0.0.1:2222/x", sshenv) is None
    assert check("sftp sneaky", sshenv) is not None
    assert check("sftp -s /bin/sh myalias", sshenv) is not None  # subsystem = remote command


@needs_ssh
def test_rsync(sshenv):
    assert check("rsync -av src/ myalias:/dst", sshenv) is None  # remote: rsync --server (allowed)
    assert check("rsync -av -e 'ssh -p 2222' src/ bob@127.0.0.1:/dst", sshenv) is None
    assert check("rsync -av --rsh=ssh src/ sneaky:/dst", sshenv) is not None
    assert check("rsync -av src/ other.example.net:/dst", sshenv) is not None
    assert check("rsync -e 'ssh -o ProxyCommand=x' a myalias:b", sshenv).rule == "ProxyCommand"
    b = check("rsync --rsync-path='sudo rsync' a myalias:b", sshenv)
    assert b is not None and '"sudo rsync --server" not in ssh.allowedCommands' in b.message
    assert check("rsync a other.example.net::module", sshenv) is None  # daemon protocol: network policy
    assert check("rsync rsync://other.example.net/module .", sshenv) is None
    assert check("rsync -av src/ dst/", sshenv) is None


@needs_ssh
def test_git_ssh_transport(sshenv):
    assert check("git clone git@github.com:org/repo.git", sshenv) is None  # git-upload-pack is allowed
    assert check("git fetch ssh://git@github.com/org/repo", sshenv) is None
    assert check("git ls-remote git@myalias:repo", sshenv) is None
    b = check("git clone git@sneaky:org/repo", sshenv)
    assert b is not None and b.rule == "*.evil.example.org"
    b = check("git clone git@other.example.net:org/repo", sshenv)
    assert b is not None and "host not in allowedHosts" in b.message
    b = check("git -C /src fetch git@other.example.net:org/repo", sshenv)
    assert b is not None
    b = check("git pull ssh://git@github.com:22/org/repo main", sshenv)
    assert b is None
    # pushing runs git-receive-pack remotely (and "git push" is denied locally first)
    b = check_command(None, "git push git@github.com:org/repo", Policy(ssh=POLICY.ssh), SOURCES, env=sshenv)
    assert b is not None
    assert b.message.startswith('SSH command blocked: command "git-receive-pack org/repo" not in')
    b = check("git clone --upload-pack='rm -rf /' git@github.com:o/r", sshenv)
    assert b is not None and "rm -rf /" in b.message
    b = check("GIT_SSH_COMMAND='ssh -o ProxyCommand=x' git fetch git@github.com:o/r", sshenv)
    assert b is not None and b.rule == "ProxyCommand"
    b = check("git -c core.sshCommand='ssh -F /tmp/c' clone git@github.com:o/r", sshenv)
    assert b is not None and b.rule == "-F"
    b = check_command(
        None,
        "git fetch git@github.com:o/r",
        POLICY,
        SOURCES,
        env={**sshenv, "GIT_SSH_COMMAND": "ssh -o ProxyCommand=x"},
    )
    assert b is not None and b.rule == "ProxyCommand"
    b = check("git -c url.git@other.example.net:.insteadOf=https://github.com/ clone https://github.com/o/r", sshenv)
    assert b is not None and "other.example.net" in b.message
    for text in (
        "git clone https://other.example.net/r",
        "git fetch origin",
        "git clone /local/path",
        "git clone ./a:b",
        "git status",
        "git remote add x git@other.example.net:r",
    ):
        assert check(text, sshenv) is None, text


@needs_ssh
def test_found_anywhere_in_the_command_line(sshenv):
    for text in (
        "ls && ssh other.example.net",
        "bash -c 'ssh other.example.net'",
        "echo $(ssh sneaky)",
        "sudo -u bob ssh sneaky",
        "timeout 5 scp f other.example.net:x",
        "xargs -I{} ssh sneaky {}",
    ):
        b = check(text, sshenv)
        assert b is not None and b.kind == "ssh", text


# --------------------------------------------------------------------------- ssh -G itself


def test_without_ssh_the_textual_host_is_used(tmp_path):
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
    assert sshpolicy.ssh_binary(env) is None
    assert check("ssh 127.0.0.1 ls", env) is None
    assert check("ssh myalias", env).message.startswith("SSH blocked: host not in allowedHosts (host: myalias)")
    assert check("ssh x.evil.example.org", env).rule == "*.evil.example.org"


def test_ssh_g_failure_and_timeout_block(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    write_exe(bindir / "ssh", "#!/bin/sh\necho 'command-line: bad option' >&2\nexit 255\n")
    env = {"PATH": str(bindir), "HOME": str(tmp_path)}
    b = check("ssh 127.0.0.1", env)
    assert b is not None and "cannot tell where ssh would connect: command-line: bad option" in b.message
    write_exe(bindir / "ssh", "#!/bin/sh\nexec /bin/sleep 30\n")
    monkeypatch.setattr(sshpolicy, "RESOLVE_TIMEOUT", 0.3)
    b = check("ssh 127.0.0.1", env)
    assert b is not None and "took longer than 0.3 s" in b.message


@needs_ssh
def test_resolve_reads_ssh_g(sshenv):
    t = sshpolicy.targets(Command(split_words("ssh -l alice -p 2200 myalias")))[0]
    res = sshpolicy.resolve(t, sshenv)
    assert res is not None
    assert (res.hostname, res.get("port"), res.get("user")) == ("127.0.0.1", "2200", "alice")
    assert res.get("proxycommand") == ""


def test_targets_parsing():
    def one(text):
        ts = sshpolicy.targets(Command(split_words(text)))
        assert len(ts) == 1, ts
        return ts[0]

    t = one("ssh -vp 2200 -l bob -i key -o User=x host uptime -a")
    assert (t.dest, t.remote) == ("host", "uptime -a") and t.options[:2] == ["-p", "2200"]
    t = one("ssh ssh://alice@[::1]:2200")
    assert (t.host, t.user, t.port) == ("::1", "alice", "2200")
    t = one("ssh -s host sftp")
    assert t.remote == "sftp"
    t = one("git clone git@host:org/r.git")
    assert (t.dest, t.remote) == ("git@host", "git-upload-pack 'org/r.git'")
    t = one("git push ssh://git@host:2222/org/r.git")
    assert (t.dest, t.port, t.remote) == ("git@host", "2222", "git-receive-pack '/org/r.git'")
    t = one("git archive --remote=git@host:r HEAD")
    assert t.remote == "git-upload-archive 'r'"
    t = one("rsync -a src host:dst")
    assert t.remote == "rsync --server"
    assert sshpolicy.targets(Command(split_words("ssh -G host"))) == []
    assert sshpolicy.targets(Command(split_words("git fetch"))) == []
    assert sshpolicy.targets(Command(split_words("rsync -e rsh a host:b"))) == []
    assert sshpolicy.host_matches("A.Example.COM", "*.example.com")
    assert not sshpolicy.host_matches("example.com", "*.example.com")
    assert sshpolicy.host_matches("[::1]", "::1")
