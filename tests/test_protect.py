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
    p = protected_paths([str(xdg)], str(tmp_path), str(tmp_path / "home"), str(tmp_path / "cfg"),
                        env={"XDG_CONFIG_HOME": str(xdg)})
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
    p = protected_paths([str(home / ".claude"), str(home / ".claude.json"), str(tmp_path)], str(tmp_path),
                        str(home), str(cfg), opened=[str(home / ".claude.json"), str(tmp_path / "fence.json")])
    assert str(home / ".claude.json") in p.opened and str(home / ".claude.json") not in p.readonly
    assert str(tmp_path / "fence.json") in p.watch  # fence's own config is never opened
    assert str(home / ".claude" / "settings.json") in p.readonly


def test_git_config_reader_finds_hooks_and_includes(tmp_path):
    cfg = tmp_path / "config"
    cfg.write_text('[core] hooksPath = "h d" # comment\n[include]\n\tpath = a.inc\n'
                   '[includeIf "gitdir:~/w/"]\n  path = ~/b.inc ; c\n[user]\n\tpath = no\n')
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
    assert any("allowWriteProtected[0]" in where and "name each protected path exactly" in msg
               for where, msg in found), found
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
