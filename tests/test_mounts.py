"""The pure filesystem planner (``fence.executor.mounts``) and the protection finder (``protect``)."""

from __future__ import annotations

import os
import subprocess

from fence.executor.mounts import (
    PINNED_FD_BASE,
    FsView,
    filesystem_args,
    filesystem_mounts,
    landlock_options,
    repair_runtime_env,
    writable_inside,
)
from fence.executor.protect import _hooks_path, protected_paths, quarantine
from fence.mountops import Bind, BindFd, Tmpfs


def pairs(args: list[str]) -> list[str]:
    return " ".join(args).replace(" --", "\n--").splitlines()


def test_phase_order_later_mounts_win():
    view = FsView(
        write=[("/w", True)],
        protected=["/w/.bashrc"],
        pinned=["/w/.git"],
        deny_write=[("/w/locked", True), ("/etc/hosts", False)],
        deny_read=[("/w/secret", True), ("/w/k", False)],
    )
    lines = pairs(filesystem_args(view, ("/run/fence",)))
    assert lines == [
        "--ro-bind / /",
        "--dev /dev",
        "--proc /proc",
        "--remount-ro /proc",
        "--tmpfs /tmp",
        "--dir /tmp/fence",
        "--bind-fd 11 /w",
        "--bind-fd 12 /w/.git",
        "--ro-bind /w/.bashrc /w/.bashrc",
        "--ro-bind /w/locked /w/locked",  # /etc/hosts: already read-only, no mount
        "--tmpfs /w/secret",
        "--remount-ro /w/secret",
        "--ro-bind /dev/null /w/k",
        "--tmpfs /run/fence",
    ]


def test_mounts_are_typed_ops_in_the_same_order():
    """What ``filesystem_args`` renders is a list of typed ops: tests, ``-d`` and the service read structure."""
    view = FsView(write=[("/w", True)], pinned=["/w/.git"], protected=["/w/.bashrc"], deny_read=[("/w/k", False)])
    ops = filesystem_mounts(view, ("/run/fence",))
    assert ops[0] == Bind(src="/", dest="/") and ops[-1] == Tmpfs(dest="/run/fence")
    # writable sources are bound from fds whose numbers the plan decides, parents first
    assert [op for op in ops if isinstance(op, BindFd)] == [
        BindFd(dest="/w", fd=PINNED_FD_BASE),
        BindFd(dest="/w/.git", fd=PINNED_FD_BASE + 1),
    ]
    assert Bind(src="/w/.bashrc", dest="/w/.bashrc") in ops and Bind(src="/dev/null", dest="/w/k") in ops


def test_sizes_hidden_runtime_dir_and_grants_in_path_order():
    """/dev/shm and /tmp sized; /run/user/0 hidden after a write grant above it, its grants bound back over it,
    fence's mask inside it, and the hidden tmpfs made read-only last."""
    view = FsView(
        write=[("/run", True), ("/run/user/0/w", True)],
        hidden=["/run/user/0"],
        hidden_grants=["/run/user/0/bus"],
        tmp_size=8 << 20,
        shm_size=4 << 20,
    )
    lines = pairs(filesystem_args(view, ("/run/user/0/fence",)))
    assert lines == [
        "--ro-bind / /",
        "--dev /dev",
        "--size 4194304",
        "--tmpfs /dev/shm",
        "--proc /proc",
        "--remount-ro /proc",
        "--size 8388608",
        "--tmpfs /tmp",
        "--dir /tmp/fence",
        f"--bind-fd {PINNED_FD_BASE} /run",
        "--tmpfs /run/user/0",
        "--ro-bind /run/user/0/bus /run/user/0/bus",
        f"--bind-fd {PINNED_FD_BASE + 1} /run/user/0/w",
        "--tmpfs /run/user/0/fence",
        "--remount-ro /run/user/0",
    ]
    assert pairs(filesystem_args(FsView(devices="host", shm_size=4 << 20)))[1] == "--dev-bind /dev /dev"
    assert not any("/dev/shm" in line for line in pairs(filesystem_args(FsView(devices="host", shm_size=4 << 20))))


def test_hidden_runtime_dir_is_repaired_unless_written_inside():
    view = FsView(write=[("/", True)], hidden=["/run/user/5"])
    changes, dirs = repair_runtime_env({"XDG_RUNTIME_DIR": "/run/user/5"}, view, "abc")
    assert changes == {"XDG_RUNTIME_DIR": "/tmp/fence-runtime-abc"} and dirs == [("/tmp/fence-runtime-abc", "0700")]
    view = FsView(write=[("/run/user/5/app", True)], hidden=["/run/user/5"])
    assert writable_inside(view, "/run/user/5/app/x") and not writable_inside(view, "/run/user/5")


def test_root_writable_and_host_devices():
    lines = pairs(filesystem_args(FsView(write=[("/", True)], devices="host")))
    assert lines[:2] == ["--bind / /", "--dev-bind /dev /dev"]
    assert "--bind / /" not in lines[2:]


def test_default_deny_read_binds_only_readable_tiers():
    view = FsView(
        default_deny_read=True,
        read=[("/usr", True), ("/usr/lib", True), ("/etc", True)],
        execute=[("/opt/tool", True)],
        write=[("/w", True)],
        symlinks=[("usr/lib64", "/lib64")],
        devices_allow=["/dev/kvm"],
    )
    lines = pairs(filesystem_args(view))
    assert lines[:6] == [
        "--ro-bind /etc /etc",
        "--ro-bind /opt/tool /opt/tool",
        "--ro-bind /usr /usr",
        "--symlink usr/lib64 /lib64",
        "--dev /dev",
        "--dev-bind /dev/kvm /dev/kvm",
    ]
    assert f"--bind-fd {PINNED_FD_BASE} /w" in lines


def test_landlock_options_mirror_the_tiers():
    normal = landlock_options(FsView(write=[("/w", True)]))
    assert normal[:2] == ["-r", "/"] and normal[-2:] == ["-w", "/w"]
    strict = landlock_options(FsView(default_deny_read=True, read=[("/usr", True)], execute=[("/opt/t", True)]))
    assert strict[:4] == ["-r", "/usr", "-x", "/opt/t"] and "/" not in strict


def test_runtime_env_repair():
    view = FsView(write=[("/w", True)], protected=["/w/.git/hooks"])
    changes, dirs = repair_runtime_env({"TMPDIR": "/w/tmp", "XDG_RUNTIME_DIR": "/run/user/1"}, view, "abc")
    assert changes == {"XDG_RUNTIME_DIR": "/tmp/fence-runtime-abc"} and dirs == [("/tmp/fence-runtime-abc", "0700")]
    changes, _ = repair_runtime_env({"TMPDIR": "relative", "HOME": "/h"}, view, "abc")
    assert changes == {"TMPDIR": "/tmp"}
    assert not writable_inside(view, "/w/.git/hooks/x") and writable_inside(view, "/tmp/fence")


def test_protection_finds_repository_files(tmp_path):
    work = tmp_path / "w"
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    (work / ".bashrc").write_text("")
    (work / "pkg" / ".vscode").mkdir(parents=True)
    with open(work / ".git" / "config", "a") as f:
        f.write('[core]\n\thooksPath = "hooks-dir"\n')
    (work / "hooks-dir").mkdir()
    p = protected_paths([str(work)], str(work), str(tmp_path / "home"), str(tmp_path / "cfg"))
    for rel in (
        ".bashrc",
        "pkg/.vscode",
        ".git/hooks",
        ".git/config",
        "hooks-dir",
    ):
        assert str(work / rel) in p.readonly, rel
    # .git, and pkg: the parent of a protected name, so it cannot be renamed away with it
    assert p.pinned == [str(work / ".git"), str(work / "pkg")]
    assert str(work / ".mcp.json") in p.watch and str(work / "fence.json") in p.watch
    assert str(work / "pkg" / ".mcp.json") not in p.watch  # a plain nested directory: existing files only


def test_nested_repositories_are_watched_for_new_names(tmp_path):
    work = tmp_path / "w"
    subprocess.run(["git", "init", "-q", str(work / "libs" / "inner")], check=True)
    p = protected_paths([str(work)], str(work), str(tmp_path / "home"), str(tmp_path / "cfg"))
    assert str(work / "libs" / "inner" / ".vscode") in p.watch
    assert str(work / "libs" / ".vscode") not in p.watch


def test_nothing_writable_means_nothing_to_protect(tmp_path):
    p = protected_paths([], str(tmp_path), str(tmp_path), str(tmp_path / "cfg"))
    assert (p.readonly, p.pinned, p.watch) == ([], [], [])


def test_allow_git_config_unprotects_only_config(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    p = protected_paths([str(tmp_path)], str(tmp_path), "/nonexistent", "/nonexistent/cfg", allow_git_config=True)
    assert str(tmp_path / ".git" / "config") not in p.readonly
    assert str(tmp_path / ".git" / "hooks") in p.readonly


def test_hooks_path_reader(tmp_path):
    cfg = tmp_path / "config"
    cfg.write_text('[user]\n hooksPath = no\n[Core]\n  HooksPath = "a b"\n')
    assert _hooks_path(str(cfg)) == "a b"
    assert _hooks_path(str(tmp_path / "missing")) == ""


def test_quarantine_moves_new_paths_and_only_real_hooks(tmp_path):
    (tmp_path / ".mcp.json").write_text("{}")
    (tmp_path / "HEAD").write_text("ref: refs/heads/main\n")  # a git dir: its hooks directory keeps samples
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "pre-commit").write_text("x")
    (hooks / "pre-commit.sample").write_text("x")
    moved = quarantine([str(tmp_path / ".mcp.json"), str(hooks), str(tmp_path / "absent")], "id1")
    assert sorted(os.path.basename(t) for _, t, _ in moved) == [
        ".mcp.json.fence-quarantine-id1",
        "pre-commit.fence-quarantine-id1",
    ]
    assert (hooks / "pre-commit.sample").exists()
