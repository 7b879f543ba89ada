"""Issue 14 point 7: pattern matching fed by the sandboxed command decides promptly, whatever its size.

The SSH host check compiled ``*a*a*a*a*b`` to a backtracking regex: a
10,000-character host never finished (400 characters already took a minute),
so ``ssh <long host>`` hung preflight.  The IPv6-literal test on the host was a
regex that is quadratic over a run of colons.  Command rules match a glob word
of the command (the pattern) against rule tokens with ``fnmatch``, whose
translation scans for a closing bracket from every ``[`` in Python: a word of
10,000 ``[`` took 11 s, 20,000 took 45 s, on every run (the default deny list
always applies).  The domain filter is checked in the same shapes (it was
linear already).  Each bound is a hang guard, not a benchmark.  Equivalence with
the old answers is ``tests/test_globmatch.py``.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fence.domains import DomainFilter, HostError, canonical_host
from fence.executor import sshpolicy
from fence.executor.commandrules import ruleset
from fence.executor.preflight import check_command
from fence.executor.shellparse import Command
from fence.policy import CommandConfig, Policy, SSHConfig


@contextmanager
def within(seconds: float):
    """Fail (instead of hanging) when the block runs longer than ``seconds`` of wall-clock time."""

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


ADVERSARIAL = "*a*a*a*a*b"
LONG = "a" * 10_000
needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed")


def no_ssh_config(target, env):
    """``ssh -G`` stand-in: the host is what the command says (the unit tests need no ssh binary)."""
    return None


def ssh_check(ssh: SSHConfig, line: str):
    return (
        check_command(None, line, Policy(ssh=ssh))
        if shutil.which("ssh")
        else sshpolicy.check(
            Command(argv=line.split(), dynamic=[False] * len(line.split())), Policy(ssh=ssh), resolver=no_ssh_config
        )
    )


def test_host_pattern_against_a_long_host_decides_promptly():
    with within(2):
        assert not sshpolicy.host_matches(LONG, ADVERSARIAL)
        assert sshpolicy.host_matches(LONG.upper() + "B", ADVERSARIAL)  # still case-insensitive
        assert not sshpolicy.host_matches(f"[{LONG}]", ADVERSARIAL)


def test_ssh_policy_with_a_long_host_decides_promptly():
    allowed = SSHConfig(allowed_hosts=[ADVERSARIAL])
    denied = SSHConfig(allowed_hosts=["*"], denied_hosts=[ADVERSARIAL], allowed_commands=["echo"])
    with within(10):  # ssh -G runs once per check
        assert ssh_check(allowed, f"ssh {LONG} true").message.startswith(
            "SSH blocked: host not in allowedHosts (host: aaaa"
        )
        assert ssh_check(denied, f"ssh {LONG}b true").message.startswith(
            'SSH blocked: host matches denied pattern "*a*a*a*a*b"'
        )
        assert 'command "true" not in ssh.allowedCommands' in ssh_check(denied, f"ssh {LONG} true").message


def test_a_long_run_of_colons_is_refused_promptly():
    """The IPv6-literal test was ``[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\\Z``: quadratic (100,000 colons: a minute)."""
    with within(2):
        blocked = ssh_check(SSHConfig(allowed_hosts=["*"]), "ssh " + ":" * 100_000 + "x true")
    assert "has characters ssh would not accept" in blocked.message


@settings(max_examples=500, deadline=None)
@given(st.text("0123456789abcdefABCDEFgx:.[]-_", max_size=12))
def test_ipv6_literal_test_is_unchanged(host):
    old = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\Z")
    assert sshpolicy._ipv6_like(host) == (old.match(host) is not None)


def test_command_glob_words_decide_promptly():
    """The command's glob word is the pattern, the rule token the text: both shapes, long either way."""
    with within(2):
        hit = check_command(None, f"{ADVERSARIAL} x", Policy(command=CommandConfig(deny=[LONG + "b"])))
        assert hit is not None and hit.rule == LONG + "b"
        assert check_command(None, f"{ADVERSARIAL} x", Policy(command=CommandConfig(deny=[LONG]))) is None
        assert check_command(None, f"git {ADVERSARIAL}", Policy(command=CommandConfig(deny=[f"git {LONG}b"])))
        word = "*a" * 5_000 + "*b"
        assert ruleset([LONG + "b"]).first_match(Command(argv=[word], dynamic=[False]), deny=True) == LONG + "b"
        assert check_command(None, "[" * 100_000 + " x", Policy(command=CommandConfig(deny=["git"]))) is None


def test_domain_filter_is_linear_already():
    """Exact names and ``*.`` suffixes in dicts, hosts canonicalised to at most 253 characters first."""
    f = DomainFilter(["*.example.com", "a.b"], ["*.bad.example"])
    with within(2):
        for raw in (LONG, "a." * 5_000 + "com", "ä" * 10_000, "[" + ":" * 10_000 + "]", "1." * 5_000 + "1"):
            with pytest.raises(HostError):
                canonical_host(raw)
        assert f.decide(canonical_host("x." * 100 + "example.com")).action == "allow"
        assert f.decide("a." * 5_000 + "com").action == "deny"  # even uncanonicalised: no backtracking


@pytest.mark.sandbox
@needs_ssh
def test_fence_with_an_adversarial_host_pattern_returns_promptly(fence):
    """End to end: preflight decides on the long host (``ssh -G`` resolves it, nothing connects)."""
    work = fence.workdir()
    cfg = work / "fence-test.json"
    cfg.write_text(json.dumps({"ssh": {"allowedHosts": [ADVERSARIAL]}}))
    cfg.chmod(0o644)
    r = fence.run("-s", str(cfg), "-c", f"ssh {LONG} true", cwd=str(work), timeout=30)  # before: killed at 30 s
    assert r.returncode == 1, r.stderr[-500:]
    assert r.stderr.startswith("Error: SSH blocked: host not in allowedHosts (host: aaaa")
    cfg.write_text(json.dumps({"ssh": {"allowedHosts": ["*"], "deniedHosts": [ADVERSARIAL]}}))
    r = fence.run("-s", str(cfg), "-c", f"ssh {LONG}b true", cwd=str(work), timeout=30)
    assert r.returncode == 1 and r.stderr.startswith('Error: SSH blocked: host matches denied pattern "*a*a*a*a*b"')


@pytest.mark.sandbox
def test_fence_with_a_long_bracket_word_runs_promptly(fence):
    """End to end, default policy: the word is checked against the default deny list, then runs (and fails)."""
    work = fence.workdir()
    r = fence.run("-c", "[" * 50_000 + " x; echo done", cwd=str(work), timeout=30)
    assert r.returncode == 0 and r.stdout == "done\n", r.stderr[-300:]
    assert "command not found" in r.stderr
