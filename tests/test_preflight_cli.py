"""Preflight through the real CLI: blocked commands never start, the message names the rule and its
source, exit code 1.  The runner calls ``fence.executor.preflight.check_command`` before planning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.sandbox


def settings(workdir: Path, config: dict) -> Path:
    path = workdir / "fence-test.json"
    path.write_text(json.dumps(config))
    path.chmod(0o644)
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["-c", "git push origin main"],
        ["-c", "echo start > marker; git push origin main"],
        ["-c", "ls && git push"],
        ["-c", "bash -c 'git push'"],
        ["-c", "if git push; then :; fi"],
        ["-c", "echo $(git push)"],
        ["--", "git", "push", "origin", "main"],
        ["--", "sh", "-c", "git push"],
        ["--", "env", "GIT_TRACE=1", "git", "push"],
    ],
)
def test_denied_command_never_runs(fence, args):
    work = fence.workdir()
    cfg = settings(work, {"command": {"deny": ["git push"]}, "filesystem": {"allowWrite": ["."]}})
    r = fence.run("-s", str(cfg), *args, cwd=str(work))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("Error: command blocked by sandbox command policy: ")
    assert 'matches "git push"' in r.stderr and f"(rule from settings: {cfg})" in r.stderr
    assert not (work / "marker").exists()  # nothing ran, not even the part before the denied command


def test_reference_message_for_the_simplest_case(fence):
    work = fence.workdir()
    cfg = settings(work, {"command": {"deny": ["git push"]}})
    r = fence.run("-s", str(cfg), "-c", "git push origin main", cwd=str(work))
    assert r.stderr.splitlines()[0] == (
        f'Error: command blocked by sandbox command policy: "git push origin main" matches "git push" '
        f"(rule from settings: {cfg})"
    )


def test_default_list_and_use_defaults(fence):
    work = fence.workdir()
    r = fence.run("-c", "true && shutdown -h now", cwd=str(work))
    assert r.returncode == 1
    assert 'blocked by default sandbox command policy: "shutdown -h now" matches "shutdown"' in r.stderr
    cfg = settings(work, {"command": {"useDefaults": False}})
    r = fence.run("-s", str(cfg), "-c", "command -v shutdown >/dev/null || echo absent", cwd=str(work))
    assert r.returncode == 0


def test_template_rule_is_named(fence):
    work = fence.workdir()
    r = fence.run("-t", "code", "-c", "git push", cwd=str(work))
    assert r.returncode == 1 and "(rule from template: code)" in r.stderr


def test_allowed_commands_still_run(fence):
    work = fence.workdir()
    cfg = settings(work, {"command": {"deny": ["git push"]}})
    r = fence.run("-s", str(cfg), "-c", "echo 'git push' | cat; git pushall 2>/dev/null; echo ok", cwd=str(work))
    assert r.returncode == 0 and r.stdout.endswith("ok\n")


def test_ssh_policy_blocks_before_anything_starts(fence):
    if shutil.which("ssh") is None:
        pytest.skip("OpenSSH client not installed")
    work = fence.workdir()
    cfg = settings(work, {"ssh": {"allowedHosts": ["127.0.0.1"], "allowedCommands": ["true"]}})
    r = fence.run("-s", str(cfg), "-c", "ssh other.example.net true", cwd=str(work))
    assert r.returncode == 1
    assert r.stderr.startswith("Error: SSH blocked: host not in allowedHosts (host: other.example.net)")
    r = fence.run("-s", str(cfg), "-c", "ssh -o ProxyCommand='nc x 22' 127.0.0.1 true", cwd=str(work))
    assert r.returncode == 1 and "ProxyCommand" in r.stderr
    r = fence.run("-s", str(cfg), "-c", "ssh 127.0.0.1 rm -rf /", cwd=str(work))
    assert r.returncode == 1 and 'command "rm -rf /" not in ssh.allowedCommands' in r.stderr
