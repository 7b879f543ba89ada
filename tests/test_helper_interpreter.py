"""fence never breaks itself: denying the interpreter fence runs on keeps its init helper working.

``command.deny: ["python3"]`` masks every file the name resolves to on PATH (``--ro-bind /dev/null``),
and the init helper is that interpreter: bwrap could not start it (``bwrap: execvp ...: Permission
denied``) on any run that needs the helper.  Now bwrap starts it from an fd it inherits
(``/proc/self/fd/N``) and the helper closes that fd before anything else; the command still cannot
run the interpreter, by name, absolute path, ``env`` or a symlink it makes.  Runs as root and as the
unprivileged user, each with the interpreter its fence runs on (docs/command-policy.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fence.executor import execsupervisor

pytestmark = pytest.mark.sandbox

DUTIES = {
    "allowWrite": {"filesystem": {"allowWrite": ["."]}},
    "defaultDenyRead": {"filesystem": {"defaultDenyRead": True, "allowRead": ["."]}},
    "argv": {"command": {"runtimeExecPolicy": "argv"}},
}
"""Configs that make the init helper run (Landlock on a writable path, under defaultDenyRead, the
argv policy's listener)."""


def interpreter(fence) -> str:
    """The real interpreter this runner's fence runs on (and so starts its init helper with)."""
    return os.path.realpath(fence.argv_prefix[0])


def setup(fence, names: list[str], duty: str) -> tuple[Path, Path, dict]:
    """A workdir with a config denying ``names``, a bin dir putting ``python`` and ``python3`` on PATH as
    links to the interpreter (as python-is-python3 does), and the environment that puts it first."""
    if duty == "argv" and execsupervisor.supported():
        pytest.skip("no seccomp user notification")
    work = fence.workdir()
    real = interpreter(fence)
    bindir = work / "bin"
    bindir.mkdir()
    for name in ("python", "python3"):
        (bindir / name).symlink_to(real)
    config = json.loads(json.dumps(DUTIES[duty]))
    config.setdefault("command", {})["deny"] = names
    cfg = work / "fence.json"
    cfg.write_text(json.dumps(config))
    fence.own(work)
    env = fence.env(PATH=f"{bindir}:{os.path.dirname(real)}:{fence.env()['PATH']}")
    return work, cfg, env


PROBE = """\
real={real}
$real -c 'print("ESCAPED abs")'; echo "abs=$?"
env {name} -c 'print("ESCAPED env")'; echo "env=$?"
ln -s $real /tmp/p && /tmp/p -c 'print("ESCAPED link")'; echo "link=$?"
for f in /proc/[0-9]*/fd/* /proc/[0-9]*/exe /proc/[0-9]*/map_files/*; do
  [ "$(readlink "$f" 2>/dev/null)" = "$real" ] && echo "ESCAPED reachable: $f"
done
echo done
"""


@pytest.mark.parametrize("duty", sorted(DUTIES))
@pytest.mark.parametrize("deny", ["python3", "python", "basename"])
def test_denying_the_interpreter_keeps_the_helper_and_keeps_it_from_the_command(fence, deny, duty):
    real = interpreter(fence)
    name = os.path.basename(real) if deny == "basename" else deny
    work, cfg, env = setup(fence, [name], duty)
    r = fence.run("-s", str(cfg), "-d", "--", "true", env=env, cwd=str(work))
    assert r.returncode == 0, r.stderr
    assert f"--ro-bind /dev/null {real}" in r.stderr  # the interpreter is masked for the command...
    assert " -- /proc/self/fd/" in r.stderr and "--close-fd" in r.stderr  # ...and the helper starts from an fd

    probe = work / "probe.sh"
    probe.write_text(PROBE.format(real=real, name=name))
    fence.own(probe)
    r = fence.run("-s", str(cfg), "--", "sh", str(probe), env=env, cwd=str(work))
    assert r.returncode == 0, r.stderr
    assert "ESCAPED" not in r.stdout, r.stdout
    assert r.stdout.splitlines() == ["abs=126", "env=126", "link=126", "done"], r.stdout


@pytest.mark.parametrize("duty", ["allowWrite"])
def test_running_the_denied_interpreter_is_refused_by_preflight(fence, duty):
    work, cfg, env = setup(fence, ["python3"], duty)
    r = fence.run("-s", str(cfg), "--", "python3", "-c", "print('RAN')", env=env, cwd=str(work))
    assert r.returncode == 1 and "RAN" not in r.stdout
    assert "python3" in r.stderr and "blocked" in r.stderr.lower(), r.stderr


def test_an_undenied_interpreter_starts_the_helper_by_its_path(fence):
    """Nothing changes when the interpreter is not masked: no fd, the usual argv."""
    work, cfg, env = setup(fence, ["chroot"], "allowWrite")
    r = fence.run("-s", str(cfg), "-d", "--", "true", env=env, cwd=str(work))
    assert r.returncode == 0, r.stderr
    assert f" -- {interpreter(fence)} -I -S " in r.stderr and "--close-fd" not in r.stderr


@pytest.mark.skipif(not os.path.islink("/sbin"), reason="not a usrmerge host (/sbin is a directory)")
def test_masks_hold_through_the_usrmerge_links_under_default_deny_read(fence):
    """Under defaultDenyRead only the system tiers are bound; /sbin must be the host's link to usr/sbin, not a
    second bind of /usr/sbin, or /sbin/chroot would run while /usr/sbin/chroot is masked."""
    work = fence.workdir()
    cfg = work / "fence.json"
    cfg.write_text(
        json.dumps(
            {
                "filesystem": {"defaultDenyRead": True, "allowRead": ["."]},
                "command": {"deny": ["chroot"], "useDefaults": False},
            }
        )
    )
    probe = work / "probe.sh"
    probe.write_text(
        "c=$(echo chr)oot\nfor d in /sbin /usr/sbin; do $d/$c --version >/dev/null 2>&1; "
        'echo "$d=$?"; done\n[ -L /sbin ] && echo link\n'
    )
    fence.own(work)
    r = fence.run("-s", str(cfg), "--", "sh", str(probe), cwd=str(work))
    assert (r.returncode, r.stdout) == (0, "/sbin=126\n/usr/sbin=126\nlink\n"), r.stderr


def test_the_plan_starts_a_masked_interpreter_from_the_fd_after_the_pinned_sources():
    from fence.executor.plan import FsView, HostFacts, RunPlan, render

    host = HostFacts(bwrap="/b", is_root=False, python="/py", landlock_abi=7, helper=("/py", "-I", "-S", "/h.pyc"))
    view = FsView(write=[("/w", True), ("/v", True)])
    rendered = render(RunPlan(command=["true"], cwd="/w", host=host, fs=view, exec_masks=["/py", "/usr/sbin/chroot"]))
    assert rendered.pinned == {11: "/v", 12: "/w"}
    assert (rendered.interpreter_fd, rendered.interpreter) == (13, "/py")
    tail = rendered.argv[rendered.argv.index("--") + 1 :]
    assert tail[:6] == ["/proc/self/fd/13", "-I", "-S", "/h.pyc", "--close-fd", "13"] and tail[-1] == "true"
    assert "--ro-bind /dev/null /py" in " ".join(rendered.argv)

    rendered = render(RunPlan(command=["true"], cwd="/w", host=host, fs=view, exec_masks=["/usr/sbin/chroot"]))
    assert (rendered.interpreter_fd, rendered.interpreter) == (0, "")
    assert rendered.argv[rendered.argv.index("--") + 1 :][:4] == ["/py", "-I", "-S", "/h.pyc"]
