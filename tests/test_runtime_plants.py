"""Planted symlinks and files where fence keeps its own state are never followed.

fence's runtime directory (``$XDG_RUNTIME_DIR/fence``, else ``~/.local/state/fence``) holds bus
credentials and the caches that shape later sandboxes (seccomp programs, exec masks), and bwrap
hides it with a tmpfs in every sandbox.  A symlink planted there used to be followed (the caches
written wherever it pointed) or to fail the run with bwrap's raw mount error; now the run stops
with a message naming the path, or works without following anything.  Each case as root and as the
unprivileged user, each with a home (so a runtime directory) of its own.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.sandbox


def home_of(fence) -> tuple[Path, Path, dict]:
    """A work directory with a home of its own inside, and the env that uses it (no XDG_RUNTIME_DIR)."""
    work = fence.workdir()
    home = work / "home"
    (home / ".local" / "state").mkdir(parents=True)
    (work / "fence.json").write_text(json.dumps({"filesystem": {"allowWrite": ["."]}}))
    fence.own(work)
    return work, home, fence.env(HOME=str(home))


def decoy(fence, work: Path) -> Path:
    """A directory of the runner's user that a planted link points at: it must stay empty."""
    target = work / "decoy"
    target.mkdir(mode=0o700)
    fence.own(target)
    return target


def run(fence, work: Path, env: dict, *command: str):
    return fence.run("-s", str(work / "fence.json"), "--", *(command or ("true",)), env=env, cwd=str(work))


def stopped_naming(r, path: Path, what: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.startswith(f"Error: fence's runtime directory: {path} {what}"), r.stderr
    assert "bwrap:" not in r.stderr


@pytest.mark.parametrize("points_at", ["a directory", "nothing"])
def test_a_symlink_at_the_runtime_dir_stops_the_run_naming_it(fence, points_at):
    work, home, env = home_of(fence)
    target = decoy(fence, work) if points_at == "a directory" else work / "missing"
    runtime = home / ".local" / "state" / "fence"
    runtime.symlink_to(target)
    os.lchown(runtime, *_ids(fence))
    r = run(fence, work, env)
    stopped_naming(r, runtime, f"is a symlink (to {target})")
    assert "remove it" in r.stderr
    assert not target.exists() or os.listdir(target) == []  # nothing written where the link points


def test_a_file_at_the_runtime_dir_stops_the_run_naming_it(fence):
    work, home, env = home_of(fence)
    runtime = home / ".local" / "state" / "fence"
    runtime.write_text("planted\n")
    fence.own(runtime)
    stopped_naming(run(fence, work, env), runtime, "is not a directory (a regular file)")
    assert runtime.read_text() == "planted\n"


def test_another_users_runtime_dir_stops_the_run_naming_it(fence):
    work, home, env = home_of(fence)
    runtime = home / ".local" / "state" / "fence"
    runtime.mkdir(mode=0o700)
    other = 0 if fence.user else pwd.getpwnam("fence-test").pw_uid  # root's for the user, the user's for root
    os.chown(runtime, other, other)
    stopped_naming(run(fence, work, env), runtime, f"belongs to uid {other}")
    assert os.listdir(runtime) == []


def test_a_symlink_at_the_cache_dir_stops_the_run_naming_it(fence):
    work, home, env = home_of(fence)
    assert run(fence, work, env).returncode == 0  # the runtime dir and its cache exist now
    cache = home / ".local" / "state" / "fence" / "cache"
    for entry in cache.iterdir():
        entry.unlink()
    cache.rmdir()
    target = decoy(fence, work)
    cache.symlink_to(target)
    os.lchown(cache, *_ids(fence))
    stopped_naming(run(fence, work, env), cache, f"is a symlink (to {target})")
    assert os.listdir(target) == []


def test_planted_cache_entries_are_ignored_and_replaced_never_followed(fence):
    work, home, env = home_of(fence)
    assert run(fence, work, env).returncode == 0
    cache = home / ".local" / "state" / "fence" / "cache"
    entries = sorted(cache.iterdir())
    assert entries, "the first run cached nothing"
    target = decoy(fence, work) / "victim"
    target.write_text("the user's file\n")
    fence.own(target)
    for i, entry in enumerate(entries):
        entry.unlink()
        if i % 2:
            os.mkfifo(entry, 0o600)  # a reader that blocked on it would hang the run
        else:
            entry.symlink_to(target)
        os.lchown(entry, *_ids(fence))
    r = run(fence, work, env, "sh", "-c", "echo ran")
    assert (r.returncode, r.stdout) == (0, "ran\n"), r.stderr
    assert target.read_text() == "the user's file\n"


def test_symlinked_parents_of_the_runtime_dir_are_the_users_layout_and_work(fence):
    """``~/.local -> /elsewhere`` (absolute, as dotfile managers make it): bwrap is told the canonical path,
    so the tmpfs lands where the host's path leads and the sandbox sees the runtime dir empty."""
    work, home, env = home_of(fence)
    elsewhere = work / "dotfiles-local"
    (home / ".local").rename(elsewhere)
    (home / ".local").symlink_to(elsewhere)
    os.lchown(home / ".local", *_ids(fence))
    r = run(fence, work, env, "sh", "-c", 'ls -A "$HOME/.local/state/fence"; echo listed')
    assert (r.returncode, r.stdout) == (0, "listed\n"), r.stderr
    assert (elsewhere / "state" / "fence" / "cache").is_dir()  # the host side is fence's real directory


def test_plants_in_tmpdir_are_never_followed(fence):
    """fence keeps nothing in the host's ``$TMPDIR`` (the sandbox's /tmp, with ``/tmp/fence`` and a repaired
    ``XDG_RUNTIME_DIR``, is a tmpfs of its own): ``$TMPDIR/fence*`` entries change nothing and are not
    followed, even when that TMPDIR is writable inside; as ``XDG_RUNTIME_DIR`` it is the runtime dir and stops
    the run naming it."""
    work, _home, env = home_of(fence)
    tmpdir = work / "tmp"
    tmpdir.mkdir(mode=0o700)
    target = decoy(fence, work)
    for name in ("fence", "fence-runtime-0", "fence-sandbox"):
        (tmpdir / name).symlink_to(target)
    os.mkfifo(tmpdir / "fence.sock", 0o600)
    fence.own(tmpdir)
    (work / "fence.json").write_text(json.dumps({"filesystem": {"allowWrite": [".", str(tmpdir)]}}))
    script = 'echo "$TMPDIR"; ls -d /tmp/fence; touch "$TMPDIR/mine"; echo ok'
    for tmp in (str(tmpdir), "/tmp"):
        r = run(fence, work, {**env, "TMPDIR": tmp}, "sh", "-c", script)
        assert (r.returncode, r.stdout) == (0, f"{tmp}\n/tmp/fence\nok\n"), r.stderr
    assert os.listdir(target) == []
    r = run(fence, work, {**env, "XDG_RUNTIME_DIR": str(tmpdir)}, "true")
    stopped_naming(r, tmpdir / "fence", f"is a symlink (to {target})")
    assert os.listdir(target) == []


def _ids(fence) -> tuple[int, int]:
    if not fence.user:
        return os.getuid(), os.getgid()
    pw = pwd.getpwnam(fence.user)
    return pw.pw_uid, pw.pw_gid


def test_runtime_files_are_read_only_as_private_files_never_through_a_link():
    """``supervisor.json`` names the bus every run uses and ``creds/*.json`` its passwords: a planted link (or a
    file others may write) is not read."""
    from conftest import session_dir

    rdir = session_dir("fence-plants-")
    try:
        _check_runtime_files(rdir)
    finally:
        shutil.rmtree(rdir)


def _check_runtime_files(rdir: Path) -> None:
    import msgspec

    from fence.runtime import Credentials, SupervisorInfo, read_credentials, read_info, write_private

    rdir.chmod(0o700)
    elsewhere = rdir / "elsewhere.json"
    write_private(str(elsewhere), msgspec.json.encode(SupervisorInfo(pid=1, started_at=0, nats_url="nats://x:1")))
    assert read_info(str(elsewhere)) is not None
    (rdir / "supervisor.json").symlink_to(elsewhere)
    assert read_info(str(rdir / "supervisor.json")) is None
    creds = rdir / "creds.json"
    write_private(str(creds), msgspec.json.encode(Credentials(url="u", user="client", password="p", inbox_prefix="i")))
    assert read_credentials(str(creds)).password == "p"
    (rdir / "client.json").symlink_to(creds)
    with pytest.raises(ValueError, match=f"{rdir}/client.json: not used as bus credentials: a symlink"):
        read_credentials(str(rdir / "client.json"))
    creds.chmod(0o666)
    with pytest.raises(ValueError, match="not private to you"):
        read_credentials(str(creds))
    with pytest.raises(FileNotFoundError):
        read_credentials(str(rdir / "absent.json"))
