"""Agent and editor files that run code later stay the user's, as root and as an unprivileged user.

The attack: under ``-t code`` (which grants the project, ``~/.claude/**``,
``~/.codex/**``, ``~/.cursor/**``, ``~/.gemini/**``, ``~/.config/**``...) a
command writes hooks, MCP servers or tasks that the user's next Claude Code,
Codex, Cursor, VS Code or direnv runs outside the sandbox.  Each case checks
the host afterwards: nothing the sandbox wrote is where the tool reads it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from test_home_persistence import Home

pytestmark = pytest.mark.sandbox


@pytest.fixture
def home(fence):
    h = Home(fence)
    yield h
    shutil.rmtree(h.path, ignore_errors=True)


def planted(root: Path, rel: str) -> bool:
    """True when the sandbox's content is at ``rel`` (a quarantined copy next to it does not count)."""
    path = root / rel
    return path.is_file() and "evil" in path.read_text()


PROJECT_FILES = (
    ".mcp.json",
    ".envrc",
    ".devcontainer.json",
    "opencode.json",
    ".claude/settings.json",
    ".claude/settings.local.json",
    ".claude/hooks/pre.sh",
    ".claude/skills/x/SKILL.md",
    ".cursor/mcp.json",
    ".cursor/rules/r.mdc",
    ".codex/config.toml",
    ".gemini/settings.json",
    ".vscode/tasks.json",
    ".idea/workspace.xml",
    ".devcontainer/devcontainer.json",
    ".github/hooks/hooks.json",
    ".opencode/plugin/p.js",
)


def write_all(rels) -> str:
    return "; ".join(f'mkdir -p "$(dirname {rel})"; echo evil > {rel}' for rel in rels) + "; echo done"


def test_agent_files_created_in_the_project_are_refused_or_quarantined(home):
    (home.project / ".claude").mkdir()
    (home.project / ".github" / "workflows").mkdir(parents=True)
    home.own(home.project)
    r = home.fence_sh(write_all(PROJECT_FILES), "-t", "code")
    assert "done" in r.stdout, r.stderr
    assert not [rel for rel in PROJECT_FILES if planted(home.project, rel)], r.stderr
    # reserved directories: the writes were refused and nothing is left; files: moved aside, with the warning
    assert "Read-only file system" in r.stderr
    for rel in (".mcp.json", ".envrc", ".claude/settings.json", ".claude/settings.local.json"):
        assert list((home.project / rel).parent.glob(Path(rel).name + ".fence-quarantine-*")), rel
        assert f"created protected path {home.project / rel}" in r.stderr, rel
    for rel in (
        ".cursor",
        ".codex",
        ".gemini",
        ".vscode",
        ".idea",
        ".devcontainer",
        ".opencode",
        ".github/hooks",
        ".claude/hooks",
        ".claude/skills",
    ):
        assert not (home.project / rel).exists(), rel  # the placeholder is gone with the run
    assert (home.project / ".github" / "workflows").is_dir()


def test_existing_agent_files_cannot_be_changed_replaced_or_renamed(home):
    settings = home.put("proj/.claude/settings.json", '{"hooks": {}}\n')
    tasks = home.put("proj/.vscode/tasks.json", '{"version": "2.0.0"}\n')
    script = (
        "echo evil >> .claude/settings.json; echo '{\"evil\":1}' > new.json; mv new.json .claude/settings.json; "
        "rm -f .claude/settings.json; mv .claude .c2; mv .claude/settings.json .claude/s2; "
        "mv .vscode .v2; mkdir -p .claude && echo evil > .claude/settings.local.json; "
        "echo evil > .vscode/tasks.json; echo done"
    )
    r = home.fence_sh(script, "-t", "code")
    assert "done" in r.stdout, r.stderr
    assert settings.read_text() == '{"hooks": {}}\n' and tasks.read_text() == '{"version": "2.0.0"}\n'
    assert not (home.project / ".c2").exists() and not (home.project / ".v2").exists()
    assert not planted(home.project, ".claude/settings.local.json"), r.stderr


def test_a_renamed_parent_leaves_no_writable_agent_file(home):
    """``mv .claude .c2; mkdir .claude``: refused (pinned) where ``.claude`` holds a protected name, and what
    is made in the new one is quarantined (the names are watched by path)."""
    (home.project / ".claude").mkdir()
    (home.project / ".github" / "workflows").mkdir(parents=True)
    home.own(home.project)
    r = home.fence_sh(
        "mv .claude .c2; mkdir -p .claude; echo evil > .claude/settings.json; "
        "mv .github .g2; mkdir -p .github/hooks; echo evil > .github/hooks/h.json; echo done",
        "-t",
        "code",
    )
    assert "done" in r.stdout, r.stderr
    assert not planted(home.project, ".claude/settings.json")
    assert list((home.project / ".claude").glob("settings.json.fence-quarantine-*")), r.stderr
    assert "Device or resource busy" in r.stderr and not (home.project / ".g2").exists()  # .github holds hooks/
    assert not planted(home.project, ".github/hooks/h.json")


def test_agent_files_in_the_home_directory_are_reserved(home):
    home.mkdir(".codex", ".cursor", ".gemini", ".copilot")
    rels = (
        ".claude/settings.local.json",
        ".claude/hooks/h.sh",
        ".claude/plugins/p/hooks.json",
        ".codex/config.toml",
        ".codex/rules/default.rules",
        ".cursor/mcp.json",
        ".cursor/hooks.json",
        ".gemini/settings.json",
        ".gemini/commands/c.toml",
        ".copilot/mcp-config.json",
        ".config/Code/User/tasks.json",
        ".config/Code/User/settings.json",
        ".config/direnv/direnvrc",
        ".local/share/direnv/allow/x",
        ".config/opencode/opencode.json",
    )
    r = home.fence_sh(write_all("~/" + rel for rel in rels) + "; echo ok > ~/.codex/history.jsonl", "-t", "code")
    assert "done" in r.stdout, r.stderr
    assert not [rel for rel in rels if planted(home.path, rel)], r.stderr
    assert (home.path / ".codex" / "history.jsonl").read_text() == "ok\n"  # the tool's own state stays writable
    for rel in (".codex/config.toml", ".cursor/mcp.json", ".config/Code", ".config/direnv", ".local/share/direnv"):
        assert not (home.path / rel).exists(), rel  # placeholders removed after the run


def test_allow_agent_config_opens_one_tool_on_purpose(home):
    (home.project / "open.json").write_text(
        json.dumps({"extends": "code", "filesystem": {"allowAgentConfig": ["codex"]}})
    )
    home.mkdir(".codex")
    home.own(home.project)
    r = home.fence_sh(
        "mkdir -p .codex && echo evil > .codex/config.toml; echo evil > ~/.codex/config.toml; "
        "mkdir -p .gemini; echo evil > .gemini/settings.json; echo done",
        "-d",
        "-s",
        "open.json",
    )
    assert "done" in r.stdout, r.stderr
    assert planted(home.project, ".codex/config.toml") and planted(home.path, ".codex/config.toml"), r.stderr
    assert not planted(home.project, ".gemini/settings.json")
    assert 'filesystem.allowAgentConfig "codex"' in r.stderr
    (home.project / "typo.json").write_text(
        json.dumps({"extends": "code", "filesystem": {"allowAgentConfig": ["Codex"]}})
    )
    home.own(home.project)
    r = home.fence_sh("true", "-s", "typo.json")
    assert r.returncode == 1
    assert 'unknown tool "Codex" in filesystem.allowAgentConfig; did you mean "codex"?' in r.stderr


def test_a_nested_repository_watches_its_agent_files(home):
    inner = home.project / "libs" / "inner"
    home.git("init", "-q", str(inner))
    home.own(home.project)
    rels = ("libs/inner/.cursor/mcp.json", "libs/inner/.envrc", "libs/inner/.gemini/settings.json")
    r = home.fence_sh(write_all(rels), "-t", "code")
    assert "done" in r.stdout, r.stderr
    for rel in (".cursor", ".envrc", ".gemini"):
        assert not (inner / rel).exists() and list(inner.glob(rel + ".fence-quarantine-*")), rel


def test_a_symlinked_agent_directory_cannot_be_swapped(home):
    shared = home.put("proj/shared/claude/settings.json", '{"mine": 1}\n').parent
    os.symlink("shared/claude", home.project / ".claude")
    home.own(home.project)
    r = home.fence_sh("rm .claude && mkdir .claude && echo evil > .claude/settings.json; echo done", "-t", "code")
    assert "done" in r.stdout, r.stderr
    assert os.readlink(home.project / ".claude") == "shared/claude"  # the link is back
    assert (shared / "settings.json").read_text() == '{"mine": 1}\n'
    assert not planted(home.project, ".claude/settings.json")
    assert list(home.project.glob(".claude.fence-quarantine-*")), r.stderr


def test_a_link_made_in_place_of_a_watched_parent_is_moved_not_what_it_leads_to(home):
    """Quarantining ``.claude/settings.json`` through a link the sandbox made would move the user's own file."""
    mine = home.put(".claude/settings.json", '{"mine": 1}\n')
    command = home.put(".claude/commands/review.md", "review\n")
    home.writable({"filesystem": {"allowWrite": ["."]}, "command": {"useDefaults": False}})
    r = home.fence_sh("ln -s ~/.claude .claude; echo done")
    assert "done" in r.stdout, r.stderr
    assert mine.read_text() == '{"mine": 1}\n' and command.read_text() == "review\n"
    assert not (home.project / ".claude").exists() and list(home.project.glob(".claude.fence-quarantine-*"))


def test_a_quarantined_agent_file_is_an_event():
    """``.envrc`` created in the project: moved aside after the run and published on ``.fs``."""
    from conftest import lone_bus, session_dir
    from fence.bus import run_sync
    from fence.executor.host import host_facts
    from fence.executor.runner import RunRequest, new_sandbox_id, run
    from fence.messages import ProtectedPathEvent

    work = session_dir("fence-agent-event-")
    try:
        (work / "fence.json").write_text('{"filesystem": {"allowWrite": ["."]}}')
        bus, seen, attach = lone_bus("fence.events.*.fs")
        req = RunRequest(
            command=["sh", "-c", "echo evil > .envrc"],
            cwd=str(work),
            env={"PATH": "/usr/bin:/bin", "HOME": str(work)},
            sandbox=new_sandbox_id(),
        )
        assert run_sync(run(bus, req, host_facts(), attach=attach)) == 0
        assert [(type(e), e.path) for e in seen] == [(ProtectedPathEvent, str(work / ".envrc"))]
        assert not (work / ".envrc").exists() and Path(seen[0].moved_to).read_text() == "evil\n"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_a_run_ending_never_frees_a_placeholder_another_run_still_holds(home):
    """Run Y (from the parent, watching ``proj/.vscode``) fills run X's reserved ``proj/.vscode``; Y's
    quarantine moves what it wrote, not the directory, so X's sandbox still cannot write there."""
    wait = "i=0; until {cond}; do i=$((i+1)); [ $i -gt 300 ] && exit 7; sleep 0.1; done"
    y_script = (
        "touch y-started; "
        + wait.format(cond="[ -d proj/.vscode ]")
        + "; echo evil > proj/.vscode/tasks.json; echo Y=$?"
    )
    x_script = (
        wait.format(cond="ls -a .vscode 2>/dev/null | grep -q quarantine || [ ! -d .vscode ]")
        + "; mkdir -p .vscode; echo evil > .vscode/tasks.json; echo X=$?"
    )
    y = home.fence.popen(
        "-t",
        "code",
        "-c",
        y_script,
        env=home.env(),
        cwd=str(home.path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    x = None
    try:
        for _ in range(300):
            if (home.path / "y-started").exists() or y.poll() is not None:
                break
            time.sleep(0.05)
        x = home.fence_popen(x_script, "-t", "code")
        y_out, y_err = y.communicate(timeout=60)
        x_out, x_err = x.communicate(timeout=60)
    finally:
        for proc in (y, x):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert "Y=0" in y_out, y_err
    assert "X=1" in x_out and "Read-only file system" in x_err, (x_out, x_err)
    assert not planted(home.project, ".vscode/tasks.json")
