"""Runtime exec policy "path": which files get masked (pure planning over a fake filesystem), the
plan's binds, and the cache of plans on a real directory tree.  Sandbox runs: test_runtime_exec.py."""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from fence.executor import execdeny
from fence.executor.execdeny import CRITICAL_COMMANDS, Entry, FileId, SharedBinary, deny_names, plan_masks
from fence.executor.mounts import FsView
from fence.executor.plan import EXEC_NOTIFY_FD, HostFacts, RunPlan, render
from fence.policy import CommandConfig, Policy
from fence.runtime import read_cache

EXE = stat.S_IFREG | 0o755


class FakeFS:
    """Files by path: ``files[path] = (dev, ino)``, ``links[path] = target`` (symlinks, absolute)."""

    def __init__(
        self,
        files: dict[str, tuple[int, int]],
        links: dict[str, str] | None = None,
        modes: dict[str, int] | None = None,
    ):
        self.files, self.links, self.modes = files, dict(links or {}), dict(modes or {})
        self.stats = 0

    def realpath(self, path: str) -> str:
        parts = path.strip("/").split("/")
        out = ""
        for part in parts:
            out = f"{out}/{part}"
            hops = 0
            while out in self.links and hops < 40:
                out = self.links[out]
                hops += 1
        return out or "/"

    def stat(self, path: str):
        self.stats += 1
        real = self.realpath(path)
        if real not in self.files:
            return None
        dev, ino = self.files[real]
        nlink = sum(1 for v in self.files.values() if v == (dev, ino))
        return FileId(dev, ino, self.modes.get(real, EXE), nlink)

    def entries(self, directory: str):
        out = []
        prefix = directory.rstrip("/") + "/"
        for path, (_dev, ino) in self.files.items():
            if path.startswith(prefix) and "/" not in path[len(prefix) :]:
                out.append(Entry(path[len(prefix) :], ino, False))
        for path in self.links:
            if path.startswith(prefix) and "/" not in path[len(prefix) :]:
                out.append(Entry(path[len(prefix) :], 999999, True))
        return out


def policy(**command) -> Policy:
    return Policy(command=CommandConfig(**command))


# --------------------------------------------------------------------------- which rules


def test_single_token_rules_from_deny_and_defaults_in_order():
    names = deny_names(policy(deny=["git push", "chroot", "python3", "/usr/bin/perl", "chroot"]))
    assert names[:3] == ["chroot", "python3", "perl"]  # multi-token skipped, path reduced, deduplicated
    assert "shutdown" in names and "nsenter" in names and "init" not in names and "dd" not in names


def test_use_defaults_false_and_allow_overrides():
    assert deny_names(policy(deny=["chroot"], use_defaults=False)) == ["chroot"]
    # an allow rule for the same program means some invocations are allowed: no mask
    assert deny_names(policy(deny=["git", "chroot"], allow=["git status"], use_defaults=False)) == ["chroot"]
    assert "nsenter" not in deny_names(policy(allow=["nsenter --help"]))


def test_glob_heads_are_not_resolved():
    assert deny_names(policy(deny=["mkfs.*", "x?z"], use_defaults=False)) == []


# --------------------------------------------------------------------------- planning


def test_one_file_masked_once_through_usrmerge_and_symlinks():
    fs = FakeFS(
        {"/usr/sbin/chroot": (1, 10), "/usr/bin/cat": (1, 11)},
        links={"/sbin": "/usr/sbin", "/bin": "/usr/bin", "/usr/local/bin/chroot": "/usr/sbin/chroot"},
    )
    dirs = execdeny.path_dirs("/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "/w", fs)
    assert dirs == ["/usr/local/bin", "/usr/bin", "/usr/sbin"]
    result = plan_masks(["chroot"], dirs, fs)
    # the realpath's mount covers /sbin/chroot and the symlink in /usr/local/bin (mounts follow symlinks)
    assert result.masks == ("/usr/sbin/chroot",)
    assert result.by_command == {"chroot": ("/usr/sbin/chroot",)}
    assert not result.shared and not result.not_found
    assert ("/usr/local/bin/chroot", 1, 10) in result.hits


def test_every_hard_link_in_a_path_directory_is_masked():
    fs = FakeFS(
        {"/usr/bin/bzip2": (1, 20), "/usr/bin/bunzip2": (1, 20), "/opt/bin/bz": (1, 20), "/usr/bin/other": (2, 20)}
    )  # same inode number, other device: not a link
    result = plan_masks(["bzip2"], ["/usr/bin", "/opt/bin"], fs)
    assert set(result.masks) == {"/usr/bin/bzip2", "/usr/bin/bunzip2", "/opt/bin/bz"}


def test_names_not_on_path_and_non_executables_are_reported_not_masked():
    fs = FakeFS({"/usr/bin/notes": (1, 1)}, modes={"/usr/bin/notes": stat.S_IFREG | 0o644})
    result = plan_masks(["notes", "nsenter"], ["/usr/bin"], fs)
    assert result.masks == () and result.not_found == ("notes", "nsenter")


def multicall(names_hard=("cat", "head", "chroot"), names_soft=("tail", "ls", "unshare", "frob")):
    files = {"/m/bin/multi": (3, 7)}
    files.update({f"/m/bin/{n}": (3, 7) for n in names_hard})
    files["/usr/bin/cat"] = (1, 50)  # later on PATH: the multicall one wins
    links = {f"/m/bin/{n}": "/m/bin/multi" for n in names_soft}
    return FakeFS(files, links)


def test_shared_binary_is_masked_with_the_reference_warning():
    fs = multicall()
    result = plan_masks(["chroot"], ["/m/bin", "/usr/bin"], fs)
    assert set(result.masks) == {"/m/bin/chroot", "/m/bin/multi", "/m/bin/cat", "/m/bin/head"}
    (shared,) = result.shared
    assert shared.critical == ("cat", "head", "ls", "tail")
    assert shared.aliases == ("cat", "frob", "head", "ls", "multi", "tail", "unshare")
    assert shared.warning() == (
        "runtime exec deny warning for /m/bin/chroot (requested: chroot): shared binary also implements critical "
        "commands [cat head ls +4 more detected aliases, use --debug for expanded details], which will be "
        'collaterally blocked. To skip runtime blocking of "chroot" and silence this warning, add it to '
        '"acceptSharedBinaryCannotRuntimeDeny" in your command config.'
    )
    assert result.shared_keys == ((3, 7),)
    lines = execdeny.debug_lines(result)
    assert "[fence:linux] Runtime exec deny: /m/bin/chroot is also: cat frob head ls multi tail unshare" in lines


def test_accepted_shared_binary_is_skipped_silently():
    result = plan_masks(["chroot", "nsenter"], ["/m/bin", "/usr/bin"], multicall(), accept=["chroot"])
    assert result.masks == () and result.shared == () and result.accepted == ("chroot",)
    assert result.shared_keys == ((3, 7),)


def test_a_critical_name_found_earlier_on_path_as_another_file_is_no_collision():
    fs = FakeFS(
        {"/m/bin/multi": (3, 7), "/usr/bin/cat": (1, 50), "/usr/bin/ls": (1, 51)},
        links={"/m/bin/chroot": "/m/bin/multi", "/m/bin/cat": "/m/bin/multi"},
    )
    result = plan_masks(["chroot"], ["/usr/bin", "/m/bin"], fs)  # cat resolves to /usr/bin/cat first
    assert result.masks == ("/m/bin/multi",) and result.shared == ()


def test_warning_without_more_aliases():
    item = SharedBinary(command="x", path="/b/busybox", critical=("cat",), aliases=("cat",))
    assert "[cat]" in item.warning()


def test_plain_files_cost_no_critical_lookups():
    fs = FakeFS({"/usr/sbin/chroot": (1, 10)})
    plan_masks(["chroot"], ["/usr/local/bin", "/usr/bin", "/usr/sbin"], fs)
    assert fs.stats == 3  # one per directory; CRITICAL_COMMANDS only resolved for a suspect file
    assert len(CRITICAL_COMMANDS) > 20


def test_identities_skip_shared_and_hard_linked_files():
    fs = FakeFS(
        {"/usr/bin/git": (1, 5), "/m/bin/multi": (3, 7), "/usr/bin/bzip2": (1, 20), "/usr/bin/bunzip2": (1, 20)},
        links={"/m/bin/chroot": "/m/bin/multi"},
    )
    ids = execdeny.identities(["git", "chroot", "bzip2", "nothere"], ["/usr/bin", "/m/bin"], fs, exclude=[(3, 7)])
    assert ids == {(1, 5): ("git",)}


# --------------------------------------------------------------------------- the plan

HOST = HostFacts(bwrap="/usr/bin/bwrap", is_root=False, masked_dirs=("/run/user/1/fence",))


def test_plan_binds_dev_null_after_the_filesystem_mounts():
    plan = render(
        RunPlan(
            command=["true"],
            cwd="/w",
            host=HOST,
            fs=FsView(deny_read=[("/srv/secret", True)]),
            exec_masks=[
                "/usr/sbin/chroot",
                "/tmp/x/chroot",
                "/srv/secret/bin/y",
                "/run/user/1/fence/z",
                "/usr/sbin/chroot",
            ],
        )
    )
    argv = plan.argv
    i = argv.index("/usr/sbin/chroot")
    assert argv[i - 2 : i] == ["--ro-bind", "/dev/null"]
    assert i > argv.index("/run/user/1/fence") and i > argv.index("/srv/secret")
    assert argv.count("/usr/sbin/chroot") == 1
    for hidden in ("/tmp/x/chroot", "/srv/secret/bin/y", "/run/user/1/fence/z"):
        assert hidden not in argv  # already inside an empty tmpfs
    assert plan.exec_denied == ["/usr/sbin/chroot"]
    assert "exec-deny(1 files)" in plan.layers
    assert plan.exec_notify_fd == 0 and argv[argv.index("--") + 1 :] == ["true"]


def test_plan_with_exec_notify_starts_the_command_through_the_helper():
    plan = render(RunPlan(command=["git", "status"], cwd="/w", host=HOST, exec_notify=True))
    tail = plan.argv[plan.argv.index("--") + 1 :]
    assert tail[1:3] == ["-I", "-S"] and "inithelper" in tail[3]
    assert tail[4:] == ["--no-landlock", "--exec-notify", str(EXEC_NOTIFY_FD), "--", "git", "status"]
    assert plan.exec_notify_fd == EXEC_NOTIFY_FD and "exec-argv(seccomp-unotify)" in plan.layers


# --------------------------------------------------------------------------- cache (real files)


@pytest.fixture
def tree(tmp_path):
    bin_a, bin_b = tmp_path / "a", tmp_path / "b"
    bin_a.mkdir()
    bin_b.mkdir()
    tool = bin_b / "frob"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    (tmp_path / "cache").mkdir(mode=0o700)
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_cached_plan_is_reused_and_invalidated_by_changes(tree):
    pol = policy(deny=["frob"], use_defaults=False)
    path = f"{tree}/a:{tree}/b"
    cache = str(tree / "cache")
    first = execdeny.plan_for(pol, path, "/", cache_dir=cache)
    assert first.masks == (f"{tree}/b/frob",)
    (_entry,) = os.listdir(cache)  # exactly one cache file
    assert execdeny.plan_for(pol, path, "/", cache_dir=cache) == first
    # a new program earlier on PATH changes that directory's mtime: planned again
    other = tree / "a" / "frob"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    second = execdeny.plan_for(pol, path, "/", cache_dir=cache)
    assert set(second.masks) == {f"{tree}/a/frob", f"{tree}/b/frob"}
    # a found file replaced through a symlink elsewhere: the hit's identity changed
    other.unlink()
    (tree / "elsewhere").mkdir()
    real = tree / "elsewhere" / "frob2"
    real.write_text("#!/bin/sh\n")
    real.chmod(0o755)
    execdeny.plan_for(pol, f"{tree}/b", "/", cache_dir=cache)
    before = os.stat(tree / "b")
    (tree / "b" / "frob").unlink()
    os.symlink(real, tree / "b" / "frob")
    os.utime(tree / "b", ns=(before.st_atime_ns, before.st_mtime_ns))  # even if the directory looks unchanged...
    third = execdeny.plan_for(pol, f"{tree}/b", "/", cache_dir=cache)
    assert third.masks == (str(real),)  # ...the hit's (dev, ino) differs


def test_cache_entry_not_ours_or_writable_by_others_is_ignored(tree):
    pol = policy(deny=["frob"], use_defaults=False)
    cache = str(tree / "cache")
    execdeny.plan_for(pol, f"{tree}/b", "/", cache_dir=cache)
    (entry,) = os.listdir(cache)
    path = os.path.join(cache, entry)
    os.chmod(path, 0o666)
    assert read_cache(path, execdeny._Cached) is None
    assert execdeny.plan_for(pol, f"{tree}/b", "/", cache_dir=cache).masks == (f"{tree}/b/frob",)
