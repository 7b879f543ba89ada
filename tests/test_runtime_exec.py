"""Runtime exec policy in real sandboxes (docs/command-policy.md): what preflight cannot see is still refused.

Commands hide the denied name from preflight (a script file, ``$(echo chr)oot``), as a build script or
an agent's generated code would; preflight itself is tested in test_preflight_cli.py.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from fence.executor import execsupervisor

pytestmark = pytest.mark.sandbox

needs_usernotif = pytest.mark.skipif(execsupervisor.supported() != "", reason="no seccomp user notification")


def settings(workdir: Path, config: dict) -> Path:
    path = workdir / "fence-test.json"
    path.write_text(json.dumps(config))
    path.chmod(0o644)
    return path


def script(workdir: Path, text: str, name: str = "run.sh") -> str:
    path = workdir / name
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def give(fence, path: Path) -> None:
    """Hand a tree the test made to the runner's user (git refuses repositories of other users)."""
    if fence.user:
        pw = pwd.getpwnam(fence.user)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)
        os.lchown(path, pw.pw_uid, pw.pw_gid)


# --------------------------------------------------------------------------- path (the default)

CHROOT_SCRIPT = """\
echo 'sandbox ok'
c=$(echo chr)oot
$c --version; echo "rc=$?"
/usr/sbin/$c --version; echo "abs=$?"
/sbin/$c --version; echo "usrmerge=$?"
ln -s /usr/sbin/$c /tmp/link && /tmp/link --version; echo "symlink=$?"
bash -c "$c --version"; echo "nested=$?"
python3 -c "import subprocess; subprocess.run(['$c', '--version'])" 2>/dev/null; echo "python=$?"
"""


def test_path_policy_masks_a_denied_program_for_every_descendant(fence):
    work = fence.workdir()
    cfg = settings(work, {"command": {"deny": ["chroot"], "useDefaults": False}})
    r = fence.run("--settings", str(cfg), "-d", "--", "bash", script(work, CHROOT_SCRIPT), cwd=str(work))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "sandbox ok",
        "rc=126",
        "abs=126",
        "usrmerge=126",
        "symlink=126",
        "nested=126",
        "python=1",
    ]
    assert "Permission denied" in r.stderr
    chroot = shutil.which("chroot", path="/usr/sbin:/sbin")
    assert chroot is not None
    real = os.path.realpath(chroot)
    assert f"--ro-bind /dev/null {real}" in r.stderr
    assert "[fence:linux] Runtime exec deny: chroot -> " in r.stderr


def test_default_list_is_masked_unless_use_defaults_is_false(fence):
    work = fence.workdir()
    probe = script(work, "c=$(echo chr)oot; $c --version >/dev/null 2>&1; echo $?\n")
    assert fence.run("--", "bash", probe, cwd=str(work)).stdout == "126\n"
    cfg = settings(work, {"command": {"useDefaults": False}})
    assert fence.run("--settings", str(cfg), "--", "bash", probe, cwd=str(work)).stdout == "0\n"
    cfg = settings(work, {"command": {"allow": ["chroot --version"]}})  # an allow rule for it: not masked
    assert fence.run("--settings", str(cfg), "--", "bash", probe, cwd=str(work)).stdout == "0\n"


MULTI = '#!/bin/sh\necho "multi as $(basename "$0")"\n'


def multicall_dir(work: Path) -> Path:
    """One program under many names, as busybox installs itself: hard links and symlinks."""
    bindir = work / "multibin"
    bindir.mkdir()
    multi = bindir / "multi"
    multi.write_text(MULTI)
    multi.chmod(0o755)
    for name in ("cat", "head", "chroot"):
        os.link(multi, bindir / name)
    for name in ("tail", "ls", "frob"):
        os.symlink("multi", bindir / name)
    os.chmod(work, 0o755)
    return bindir


def test_shared_binary_is_masked_with_a_warning(fence):
    work = fence.workdir()
    bindir = multicall_dir(work)
    env = fence.env(PATH=f"{bindir}:{fence.env()['PATH']}")
    cfg = settings(work, {"command": {"deny": ["chroot"], "useDefaults": False}})
    r = fence.run(
        "--settings",
        str(cfg),
        "-d",
        "--",
        "sh",
        "-c",
        f"frob; echo rc=$?; {bindir}/head; echo rc=$?",
        env=env,
        cwd=str(work),
    )
    # (a PATH search skips the masked file, a device, and may find another one further on: hence frob;
    # dash then says 127, "Permission denied")
    assert r.stdout.splitlines()[1] == "rc=126" and "frob: Permission denied" in r.stderr, r.stderr
    assert (
        f"runtime exec deny warning for {bindir}/chroot (requested: chroot): shared binary also implements "
        "critical commands [cat head ls +3 more detected aliases, use --debug for expanded details], which will "
        'be collaterally blocked. To skip runtime blocking of "chroot" and silence this warning, add it to '
        '"acceptSharedBinaryCannotRuntimeDeny" in your command config.'
    ) in r.stderr
    for name in ("multi", "cat", "head", "chroot"):  # every hard link: each is its own dentry
        assert f"--ro-bind /dev/null {bindir}/{name}" in r.stderr
    assert f"--ro-bind /dev/null {bindir}/tail" not in r.stderr  # symlinks land on the masked file
    assert f"{bindir}/chroot is also: cat frob head ls multi tail" in r.stderr


def test_accepted_shared_binary_is_left_alone(fence):
    work = fence.workdir()
    bindir = multicall_dir(work)
    env = fence.env(PATH=f"{bindir}:{fence.env()['PATH']}")
    cfg = settings(
        work, {"command": {"deny": ["chroot"], "useDefaults": False, "acceptSharedBinaryCannotRuntimeDeny": ["chroot"]}}
    )
    r = fence.run("--settings", str(cfg), "--", "sh", "-c", "head; c=$(echo chr)oot; $c", env=env, cwd=str(work))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "multi as head\nmulti as chroot\n"
    assert "runtime exec deny warning" not in r.stderr


# --------------------------------------------------------------------------- argv


def argv_settings(work: Path, deny: list[str], **extra) -> Path:
    return settings(work, {"command": {"deny": deny, "useDefaults": False, "runtimeExecPolicy": "argv", **extra}})


@needs_usernotif
def test_argv_policy_blocks_a_multi_token_rule_at_run_time(fence):
    """As in Fence's own test: deny ``git push``; a script's ``git --version`` works, its ``git push`` does not."""
    work = fence.workdir()
    cfg = argv_settings(work, ["git push"])
    run = script(work, "git --version >/dev/null && echo STATUS_OK\ngit push origin main && echo PUSH_UNEXPECTED\n")
    r = fence.run("--settings", str(cfg), "--", "bash", run, cwd=str(work))
    assert r.returncode != 0
    assert "STATUS_OK" in r.stdout and "PUSH_UNEXPECTED" not in r.stdout
    assert "Runtime exec policy blocked" in r.stderr
    assert "blocked by sandbox command policy" not in r.stderr
    assert (
        f'Runtime exec policy blocked: "git push origin main" matches "git push" (rule from settings: {cfg})'
        in r.stderr
    )


@needs_usernotif
def test_argv_policy_lets_other_subcommands_run(fence):
    work = fence.workdir()
    repo = work / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    give(fence, repo)
    cfg = argv_settings(work, ["git log"])
    r = fence.run("--settings", str(cfg), "--", "git", "status", "--short", cwd=str(repo))
    assert r.returncode == 0, r.stderr
    assert "Runtime exec policy blocked" not in r.stderr


NESTED = """\
bash -c 'git push'; echo "nested=$?"
python3 -c 'import subprocess; subprocess.run(["git", "push"])' 2>/dev/null; echo "python=$?"
python3 -c 'import os; fd = os.open("/usr/bin/git", os.O_RDONLY); os.execve(fd, ["git", "push"], {})' 2>/dev/null
echo "fexecve=$?"
(exec -a ls git push); echo "renamed=$?"
ln -s /usr/bin/git /tmp/g && /tmp/g push; echo "symlink=$?"
git --version >/dev/null; echo "version=$?"
"""


@needs_usernotif
def test_argv_policy_sees_nested_shells_python_fexecve_and_renamed_programs(fence):
    work = fence.workdir()
    cfg = argv_settings(work, ["git push"])
    r = fence.run("--settings", str(cfg), "-m", "--", "bash", script(work, NESTED), cwd=str(work))
    lines = dict(line.split("=") for line in r.stdout.splitlines())
    assert lines == {
        "nested": "126",
        "python": "1",
        "fexecve": "1",
        "renamed": "126",
        "symlink": "126",
        "version": "0",
    }, r.stderr
    blocked = [line for line in r.stderr.splitlines() if line.startswith("Runtime exec policy blocked")]
    assert len(blocked) == 5, r.stderr
    assert '"ls push" (/usr/bin/git is git) matches "git push"' in r.stderr
    assert '"/tmp/g push" (/tmp/g is git) matches "git push"' in r.stderr
    assert r.stderr.count("[fence:exec] ") == 5  # -m: the events, through the monitor
    assert "Operation not permitted" in r.stderr


@needs_usernotif
def test_argv_policy_fails_closed_on_unreadable_arguments(fence):
    work = fence.workdir()
    cfg = argv_settings(work, ["git push"])
    code = (
        "import ctypes, ctypes.util\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.execve(b'/bin/true', ctypes.c_void_p(8), None)\n"
        "print('errno', ctypes.get_errno())\n"
    )
    r = fence.run("--settings", str(cfg), "--", "python3", script(work, code, "bad.py"), cwd=str(work))
    assert r.stdout == "errno 1\n", r.stderr  # EPERM, not EFAULT: refused without being checked
    assert "Runtime exec policy blocked: cannot check an exec by pid" in r.stderr


@needs_usernotif
def test_the_sandbox_cannot_install_a_listener_of_its_own(fence):
    """A second listener would let the sandbox answer its own execs; the kernel refuses it (EBUSY)."""
    work = fence.workdir()
    cfg = argv_settings(work, ["git push"])
    code = (
        "import ctypes, os, struct\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "prog = ctypes.create_string_buffer(struct.pack('HBBI', 0x06, 0, 0, 0x7fff0000))\n"
        "fprog = struct.pack('HxxxxxxQ', 1, ctypes.addressof(prog))\n"
        "nr = {'x86_64': 317, 'aarch64': 277}[os.uname().machine]\n"
        "libc.syscall.restype = ctypes.c_long\n"
        "print(libc.syscall(ctypes.c_long(nr), ctypes.c_long(1), ctypes.c_long(8), fprog), ctypes.get_errno())\n"
    )
    r = fence.run("--settings", str(cfg), "--", "python3", script(work, code, "listen.py"), cwd=str(work))
    assert r.stdout == "-1 16\n", r.stderr


@needs_usernotif
def test_argv_policy_also_keeps_the_path_masks(fence):
    work = fence.workdir()
    cfg = argv_settings(work, ["chroot"])
    r = fence.run("--settings", str(cfg), "-d", "--", "bash", script(work, CHROOT_SCRIPT), cwd=str(work))
    assert r.stdout.splitlines() == [
        "sandbox ok",
        "rc=126",
        "abs=126",
        "usrmerge=126",
        "symlink=126",
        "nested=126",
        "python=1",
    ], r.stderr
    assert "--ro-bind /dev/null /usr/sbin/chroot" in r.stderr and "--exec-notify " in r.stderr
    assert 'Runtime exec policy blocked: "chroot --version" matches "chroot"' in r.stderr


@needs_usernotif
def test_a_blocked_exec_is_an_event_on_the_bus(tmp_path_factory):
    """In-process, as a lone run: the supervisor thread publishes on ``fence.events.<sandbox>.exec``."""
    from conftest import lone_bus
    from fence.bus import run_sync
    from fence.executor.host import host_facts
    from fence.executor.runner import RunRequest, new_sandbox_id, run
    from fence.messages import ExecBlockedEvent
    from fence.monitor.service import console_lines

    work = Path(tmp_path_factory.mktemp("exec", numbered=True))
    cfg = argv_settings(work, ["git push"])
    bus, seen, attach = lone_bus("fence.events.*.exec")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8"}
    req = RunRequest(
        command=["sh", "-c", "g=$(echo gi)t; $g push origin; exit 0"],
        cwd="/",
        env=env,
        sandbox=new_sandbox_id(),
        settings=str(cfg),
    )
    assert run_sync(run(bus, req, host_facts(), attach=attach)) == 0
    (event,) = seen
    assert isinstance(event, ExecBlockedEvent) and event.sandbox == req.sandbox
    assert event.argv == ["git", "push", "origin"] and event.rule == "git push" and not event.default_rule
    assert event.path.endswith("/git") and event.pid > 0 and event.source == f"settings: {cfg}"
    (line,) = console_lines(event, debug=False, monitor=True)
    assert line.startswith("[fence:exec] ") and line.endswith(
        f'✗ exec "git push origin" (pid {event.pid}) matches "git push"'
    )
    assert console_lines(event, debug=False, monitor=False) == []
