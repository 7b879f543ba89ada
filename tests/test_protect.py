"""Mandatory protection's planning and placeholders, on real files (no sandbox needed)."""

from __future__ import annotations

import os
import subprocess

import msgspec
import pytest

from fence.config.validate import problems
from fence.executor.protect import _git_config_refs, protected_paths
from fence.executor.reserve import DIR, PathSwapped, Placeholder, Reservation
from fence.policy import Policy


def test_home_persistence_paths_in_a_granted_tree_are_protected_or_reserved(tmp_path):
    home = tmp_path / "home"
    (home / ".config" / "fish").mkdir(parents=True)
    p = protected_paths([str(home / ".config")], str(tmp_path), str(home), str(tmp_path / "cfg"))
    assert str(home / ".config" / "fish") in p.readonly  # exists: read-only
    # ~/.config/git is missing: reserved as an empty read-only directory (covers config and attributes)
    git_dir = str(home / ".config" / "git")
    assert git_dir in {ph.path for ph in p.placeholders} and git_dir in p.readonly
    (home / ".config" / "git").mkdir()
    p = protected_paths([str(home / ".config")], str(tmp_path), str(home), str(tmp_path / "cfg"))
    assert {git_dir + "/config", git_dir + "/attributes"} <= {ph.path for ph in p.placeholders}
    assert git_dir in p.pinned  # the parent of protected files: pinned so it cannot be renamed away
    assert str(home / ".bashrc") not in p.readonly + p.watch  # home itself is not writable


def test_xdg_config_home_is_protected_too(tmp_path):
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    p = protected_paths(
        [str(xdg)], str(tmp_path), str(tmp_path / "home"), str(tmp_path / "cfg"), env={"XDG_CONFIG_HOME": str(xdg)}
    )
    assert str(xdg / "git") in {ph.path for ph in p.placeholders}


def test_a_git_dir_outside_every_writable_root_is_not_pinned(tmp_path):
    home = tmp_path / "home"
    subprocess.run(["git", "init", "-q", str(home)], check=True)
    work = home / "proj"
    work.mkdir()
    p = protected_paths([str(work)], str(work), str(home), str(tmp_path / "cfg"))
    assert str(home / ".git") not in p.pinned  # a pin is a writable bind: it would open the read-only home


def test_allow_write_protected_opens_only_what_it_names(tmp_path):
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude.json").write_text("{}")
    cfg = tmp_path / "cfg"
    p = protected_paths(
        [str(home / ".claude"), str(home / ".claude.json"), str(tmp_path)],
        str(tmp_path),
        str(home),
        str(cfg),
        opened=[str(home / ".claude.json"), str(tmp_path / "fence.json")],
    )
    assert str(home / ".claude.json") in p.opened and str(home / ".claude.json") not in p.readonly
    assert str(tmp_path / "fence.json") in p.watch  # fence's own config is never opened
    assert str(home / ".claude" / "settings.json") in p.readonly


def test_git_config_reader_finds_hooks_and_includes(tmp_path):
    cfg = tmp_path / "config"
    cfg.write_text(
        '[core] hooksPath = "h d" # comment\n[include]\n\tpath = a.inc\n'
        '[includeIf "gitdir:~/w/"]\n  path = ~/b.inc ; c\n[user]\n\tpath = no\n'
    )
    refs = _git_config_refs(str(cfg))
    assert refs.hooks_path == ["h d"]
    assert refs.includes == ["a.inc", "~/b.inc"]


def test_placeholder_refuses_a_symlink_swapped_into_its_path(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "git").symlink_to(elsewhere)
    with pytest.raises(PathSwapped, match="became a symlink"):
        Placeholder(str(root / "git" / "config"), str(root), b"").create()
    (root / "config").symlink_to(elsewhere / "x")
    with pytest.raises(PathSwapped):
        Placeholder(str(root / "config"), str(root), b"").create()
    assert os.listdir(elsewhere) == []


def test_only_the_last_run_out_removes_placeholders(tmp_path):
    state, root = tmp_path / "state", tmp_path / "root"
    root.mkdir()
    first, second = Reservation(str(state)), Reservation(str(state))
    assert first.make([Placeholder(str(root / "a" / "config"), str(root), b"")]) == {}
    assert second.make([Placeholder(str(root / "d"), str(root), DIR)]) == {}
    first.close()
    assert (root / "a" / "config").exists() and (root / "d").is_dir()  # the second run still holds them
    second.close()
    assert os.listdir(root) == []


def test_a_placeholder_written_by_the_user_is_kept(tmp_path):
    state, root = tmp_path / "state", tmp_path / "root"
    root.mkdir()
    run = Reservation(str(state))
    run.make([Placeholder(str(root / "config"), str(root), b"")])
    (root / "config").write_text("[user]\n\tname = me\n")  # git config --global, on the host, during the run
    run.close()
    assert (root / "config").read_text() == "[user]\n\tname = me\n"


def test_allow_write_protected_takes_exact_paths_only():
    policy = msgspec.convert({"filesystem": {"allowWriteProtected": ["~/.claude/*", ""]}}, Policy)
    found = problems(policy)
    assert any(
        "allowWriteProtected[0]" in where and "name each protected path exactly" in msg for where, msg in found
    ), found
    assert any("allowWriteProtected[1]" in where for where, _ in found), found


def test_a_corrupt_or_foreign_registry_never_stops_a_run_or_removes_what_it_names(tmp_path):
    """placeholders.json is fence's own (masked from sandboxes), but a damaged one must not break runs."""
    state, root = tmp_path / "state", tmp_path / "root"
    root.mkdir()
    state.mkdir(mode=0o700)
    (state / "placeholders.json").write_text("{not json")
    keep = tmp_path / "keep"
    keep.mkdir()
    run = Reservation(str(state))
    assert run.make([Placeholder(str(root / "config"), str(root), b"")]) == {}
    run.close()
    assert os.listdir(root) == [] and keep.is_dir()
    st = keep.stat()  # the very directory: a trusted entry naming it would remove it (it is empty)
    (state / "placeholders.json").write_text(f'[{{"path": "{keep}", "dev": {st.st_dev}, "ino": {st.st_ino}}}]')
    os.chmod(state / "placeholders.json", 0o666)  # writable by others: not trusted, so not read
    run = Reservation(str(state))
    run.close()
    assert keep.is_dir()


# --- the table of protected names (fence.protectednames) ---------------------------------------

SRT_AND_FENCE = (
    ".gitconfig",
    ".gitmodules",
    ".bashrc",
    ".bash_profile",
    ".zshrc",
    ".zprofile",
    ".profile",
    ".ripgreprc",
    ".mcp.json",
    ".vscode",
    ".idea",
    ".claude/commands",
    ".claude/agents",
    ".claude/settings.json",
    ".claude/settings.local.json",
)
"""The Go tool Fence's mandatory protections and srt's dangerous files (docs/filesystem.md#protected-names)."""
ISSUE_15 = (
    ".claude/settings.json",
    ".claude/settings.local.json",
    ".cursor",
    ".codex/config.toml",
    ".gemini/settings.json",
    ".vscode",
    ".idea",
    ".envrc",
    ".devcontainer",
    ".github/hooks",
    ".mcp.json",
)


def test_the_table_is_the_union_with_a_reason_a_row():
    from fence.policy import AGENT_TOOLS
    from fence.protectednames import BOTH, EMPTY, HOME, JSON, PROJECT, PROTECTED_NAMES, TOOL_NAMES

    paths = [n.path for n in PROTECTED_NAMES]
    assert len(paths) == len(set(paths)), "one row a path"
    covered = set(paths) | {p.split("/", 1)[0] for p in paths}  # .codex covers .codex/config.toml in projects
    assert not [p for p in SRT_AND_FENCE + ISSUE_15 if p not in covered]
    for n in PROTECTED_NAMES:
        assert n.why and n.where in (PROJECT, HOME, BOTH) and n.placeholder in (None, EMPTY, JSON, DIR), n
        assert not n.path.startswith("/") and ".." not in n.path.split("/"), n
    assert {n.tool for n in PROTECTED_NAMES if n.tool} == set(AGENT_TOOLS) == set(TOOL_NAMES)


def test_the_documentation_lists_every_row():
    from conftest import REPO
    from fence.protectednames import PROTECTED_NAMES

    doc = (REPO / "docs" / "filesystem.md").read_text()
    section = doc.split("### Protected names", 1)[1].split("\n### ", 1)[0]
    missing = [n.path for n in PROTECTED_NAMES if f"`{n.path}`" not in section]
    assert not missing, f"docs/filesystem.md#protected-names misses {missing}"


def test_the_working_directory_reserves_empty_directories_and_watches_files(tmp_path):
    work, home = tmp_path / "w", tmp_path / "home"
    (work / ".claude").mkdir(parents=True)
    home.mkdir()
    (work / ".github").mkdir()
    p = protected_paths([str(work)], str(work), str(home), str(tmp_path / "cfg"))
    reserved = {ph.path: ph.content for ph in p.placeholders}
    for rel in (".cursor", ".codex", ".gemini", ".vscode", ".idea", ".devcontainer", ".opencode", ".github/hooks"):
        assert reserved.get(str(work / rel)) == DIR and str(work / rel) in p.readonly, rel
    for rel in (
        ".mcp.json",
        ".envrc",
        ".devcontainer.json",
        "opencode.json",
        ".claude/settings.json",
        ".claude/settings.local.json",  # a file placeholder is what git add -A commits
        ".claude/commands",
        ".claude/hooks",
    ):  # entries that run only when invoked or named
        assert str(work / rel) in p.watch and str(work / rel) not in reserved, rel
    assert str(work / ".github") in p.pinned  # holds a reserved directory: cannot be renamed away


def test_nested_repositories_watch_and_the_home_rows_stay_in_the_home_directory(tmp_path):
    work, home = tmp_path / "w", tmp_path / "home"
    subprocess.run(["git", "init", "-q", str(work / "pkg")], check=True)
    (home / ".cursor").mkdir(parents=True)
    p = protected_paths([str(work), str(home / ".cursor")], str(work), str(home), str(tmp_path / "cfg"))
    assert str(work / "pkg" / ".cursor") in p.watch and str(work / "pkg" / ".envrc") in p.watch
    assert not [ph for ph in p.placeholders if ph.path.startswith(str(work / "pkg"))]  # bounded: cwd only
    # ~/.cursor is Cursor's own state: only its mcp.json and hooks.json are protected, not the directory
    assert str(home / ".cursor") not in p.readonly
    assert {str(home / ".cursor" / "mcp.json"), str(home / ".cursor" / "hooks.json")} <= {
        ph.path for ph in p.placeholders
    }


def test_allow_agent_config_drops_only_the_named_tools_rows(tmp_path):
    work, home = tmp_path / "w", tmp_path / "home"
    (home / ".codex").mkdir(parents=True)
    work.mkdir()
    p = protected_paths(
        [str(work), str(home / ".codex")], str(work), str(home), str(tmp_path / "cfg"), open_tools=["codex", "claude"]
    )
    protected = set(p.readonly) | set(p.watch)
    assert not [x for x in protected if "/.codex" in x or "/.claude" in x or x.endswith(".mcp.json")], protected
    assert str(work / ".gemini") in protected and str(work / ".bashrc") in protected


def test_allow_agent_config_takes_known_tools_only():
    policy = msgspec.convert({"filesystem": {"allowAgentConfig": ["claude", "Codex", "intellij", ""]}}, Policy)
    found = dict(problems(policy))
    assert "$.filesystem.allowAgentConfig[0]" not in found
    assert found["$.filesystem.allowAgentConfig[1]"].startswith(
        'unknown tool "Codex" in filesystem.allowAgentConfig; did you mean "codex"? (tools: claude, codex,'
    )
    assert "did you mean" not in found["$.filesystem.allowAgentConfig[2]"]
    assert "empty tool name" in found["$.filesystem.allowAgentConfig[3]"]


def test_a_symlinked_parent_of_a_protected_name_is_kept_as_the_link_it_is(tmp_path):
    work = tmp_path / "w"
    (work / "shared" / "claude").mkdir(parents=True)
    (work / ".claude").symlink_to("shared/claude")
    p = protected_paths([str(work)], str(work), str(tmp_path / "home"), str(tmp_path / "cfg"))
    assert (str(work / ".claude"), "shared/claude") in p.links
    assert str(work / "shared" / "claude" / "commands") in p.watch


def test_quarantine_moves_a_link_made_in_place_of_a_watched_parent_not_what_it_leads_to(tmp_path):
    from fence.executor.protect import quarantine

    work, theirs = tmp_path / "w", tmp_path / "theirs"
    work.mkdir()
    theirs.mkdir()
    (theirs / "settings.json").write_text('{"mine": 1}')
    watched = [str(work / ".claude" / "settings.json"), str(work / ".claude" / "settings.local.json")]
    (work / ".claude").symlink_to(theirs)  # made by the sandbox during the run
    moved = quarantine(watched, "id2")
    assert [(path, os.path.basename(to)) for path, to, _ in moved] == [
        (str(work / ".claude"), ".claude.fence-quarantine-id2")
    ]
    assert (theirs / "settings.json").read_text() == '{"mine": 1}' and not (work / ".claude").exists()


def test_quarantine_keeps_samples_only_in_git_hooks_directories(tmp_path):
    from fence.executor.protect import quarantine

    hooks = tmp_path / ".claude" / "hooks"
    hooks.mkdir(parents=True)
    (hooks / "pre-tool.sample").write_text("x")
    moved = quarantine([str(hooks)], "id3")
    assert [os.path.basename(to) for _, to, _ in moved] == ["hooks.fence-quarantine-id3"]


def test_a_placeholder_another_run_holds_keeps_its_place_in_quarantine(tmp_path, monkeypatch):
    from fence.executor.protect import quarantine
    from fence.runtime import runtime_dir

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    work = tmp_path / "w"
    work.mkdir()
    held = Reservation(runtime_dir())
    try:
        held.make([Placeholder(str(work / ".vscode"), str(work), DIR)])
        (work / ".vscode" / "tasks.json").write_text("evil")  # by a sandbox that did not bind it
        moved = quarantine([str(work / ".vscode")], "id4")
        assert [os.path.basename(to) for _, to, _ in moved] == ["tasks.json.fence-quarantine-id4"]
        assert (work / ".vscode").is_dir()  # renaming it would free the name in the holder's sandbox
    finally:
        held.close()


def test_reserved_directories_in_the_working_directory_are_watched_too(tmp_path):
    work = tmp_path / "w"
    (work / ".idea").mkdir(parents=True)
    p = protected_paths([str(work)], str(work), str(tmp_path / "home"), str(tmp_path / "cfg"))
    assert str(work / ".vscode") in p.watch and str(work / ".vscode") in p.readonly
    assert str(work / ".idea") not in p.watch  # the user's own: never moved aside
