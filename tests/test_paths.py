"""Path patterns -> existing canonical host paths, bounded."""

import time

from fence.executor import paths
from fence.executor.mounts import FsView
from fence.executor.plan import HostFacts, RunPlan, render


def test_tilde_relative_glob_and_doublestar(tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("k")
    (home / ".ssh" / "id_ed25519").write_text("k")
    (home / ".ssh" / "known_hosts").write_text("k")
    (home / ".gnupg" / "private").mkdir(parents=True)
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / ".env").write_text("x")
    got = paths.expand(["~/.ssh/id_*", "~/.gnupg/**", ".env", "~/nothing*"], str(tmp_path / "proj"), str(home))
    assert sorted(got.paths) == sorted(
        [
            (str(home / ".ssh" / "id_ed25519"), False),
            (str(home / ".ssh" / "id_rsa"), False),
            (str(home / ".gnupg"), True),
            (str(tmp_path / "proj" / ".env"), False),
        ]
    )
    assert not got.truncated


def test_symlinks_are_canonicalised(tmp_path):
    (tmp_path / "real").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert paths.expand(["link"], str(tmp_path), "/").paths == [(str(tmp_path / "real"), False)]


def test_huge_tree_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "MAX_ENTRIES", 500)
    for i in range(60):
        d = tmp_path / f"d{i}"
        d.mkdir()
        for j in range(20):
            (d / f"f{j}").write_text("")
    start = time.monotonic()
    got = paths.expand([str(tmp_path) + "/**/f1"], "/", "/")
    assert got.truncated and time.monotonic() - start < 1


def test_plan_masks_dirs_with_tmpfs_and_files_with_dev_null():
    host = HostFacts(bwrap="/bwrap", is_root=False)
    view = FsView(deny_read=[("/home/u/.gnupg", True), ("/home/u/.netrc", False), ("/tmp", True)])
    argv = render(RunPlan(command=["true"], cwd="/", host=host, fs=view)).argv
    joined = " ".join(argv)
    assert "--tmpfs /home/u/.gnupg --remount-ro /home/u/.gnupg" in joined
    assert "--ro-bind /dev/null /home/u/.netrc" in joined
    assert joined.count("--tmpfs /tmp") == 1
