"""The planner is pure: these run nothing."""

import msgspec
import pytest

from fence.executor.coverage import ungranted
from fence.executor.mounts import FsView
from fence.executor.plan import EXEC_NOTIFY_FD, HostFacts, NetPlan, RunPlan, render, sanitize_env, session_mode
from fence.policy import Policy


def plan(is_root=False, masked=(), env=None, command=("echo", "hi")):
    host = HostFacts(bwrap="/usr/bin/bwrap", is_root=is_root, masked_dirs=tuple(masked))
    return render(RunPlan(command=list(command), cwd="/work", env=env or {"PATH": "/bin"}, host=host))


def test_namespaces_and_session():
    argv = plan().argv
    assert argv[0] == "/usr/bin/bwrap"
    for flag in ("--new-session", "--die-with-parent", "--unshare-pid", "--unshare-net"):
        assert flag in argv
    assert argv[argv.index("--") + 1 :] == ["echo", "hi"]


def test_cap_drop_only_as_root():
    assert "--cap-drop" not in plan(is_root=False).argv
    argv = plan(is_root=True).argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert "userns(no-nesting)+cap-drop(ALL)" in plan(is_root=True).summary


def test_nested_user_namespaces_disabled_for_everyone():
    for is_root in (True, False):
        argv = plan(is_root=is_root).argv
        assert "--unshare-user" in argv and "--disable-userns" in argv


def test_filesystem_view_order():
    argv = plan(masked=["/run/user/1/fence"]).argv
    view = argv[argv.index("--ro-bind") : argv.index("--chdir")]
    assert view == [
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--remount-ro",
        "/proc",
        "--tmpfs",
        "/tmp",
        "--dir",
        "/tmp/fence",
        "--tmpfs",
        "/run/user/1/fence",
    ]
    assert argv[argv.index("--chdir") + 1] == "/work"


def test_hidden_directories_are_sealed_after_every_other_mount():
    """Exec masks inside a hidden directory's grants need their mount points first: the remount comes last."""
    host = HostFacts(bwrap="/usr/bin/bwrap", is_root=False)
    view = FsView(hidden=["/run/user/1"], hidden_grants=["/run/user/1/bin"])
    argv = render(RunPlan(command=["true"], cwd="/work", host=host, fs=view, exec_masks=["/run/user/1/bin/tool"])).argv
    mounts = argv[: argv.index("--chdir")]
    assert mounts[-4:] == ["/dev/null", "/run/user/1/bin/tool", "--remount-ro", "/run/user/1"]


def test_argv_with_metacharacters_is_not_reinterpreted():
    argv = plan(command=["printf", "%s\\n", "a b", "$(rm -rf /)", "'"]).argv
    assert argv[-4:] == ["%s\\n", "a b", "$(rm -rf /)", "'"]


def test_env_sanitized():
    kept, stripped = sanitize_env({"LD_PRELOAD": "x", "LD_AUDIT": "y", "ld_preload": "z", "PATH": "/bin"})
    assert stripped == ["LD_AUDIT", "LD_PRELOAD"]
    assert kept == {"ld_preload": "z", "PATH": "/bin"}
    p = plan(env={"LD_PRELOAD": "x", "HOME": "/h"})
    assert p.env == {"HOME": "/h", "FENCE_SANDBOX": "1"}
    assert p.stripped_env == ["LD_PRELOAD"]


def test_summary_line():
    assert plan().summary == "[fence:linux] Sandbox: bwrap(network,pid,fs), landlock(not needed), userns(no-nesting)"


def test_generated_files_are_bound_read_only_after_the_masks():
    host = HostFacts(bwrap="/usr/bin/bwrap", is_root=False, masked_dirs=("/run/user/1/fence",))
    p = render(
        RunPlan(
            command=["ssh", "h"],
            cwd="/work",
            host=host,
            fs=FsView(deny_read=[("/etc/ssh", True)]),
            files=[("/etc/ssh/ssh_config", b"ProxyCommand x %h %p\n")],
        )
    )
    argv = p.argv
    i = argv.index("--ro-bind-data")
    assert argv[i - 2 : i + 3] == ["--perms", "0644", "--ro-bind-data", "6", "/etc/ssh/ssh_config"]
    assert argv.index("--tmpfs", argv.index("/tmp")) < argv.index("/etc/ssh") < i  # masks first: ours wins
    assert argv.index("/run/user/1/fence") < i < argv.index("--chdir")
    assert p.data_files == [(6, b"ProxyCommand x %h %p\n")]
    assert "files(/etc/ssh/ssh_config)" in p.summary


def test_no_generated_files_by_default():
    p = plan()
    assert "--ro-bind-data" not in p.argv and p.data_files == []


# --- terminals: allowPty, forceNewSession -------------------------------------------------


@pytest.mark.parametrize(
    "allow, tty_in, tty_out, force, expected",
    [
        (False, True, True, False, (False, True)),  # no allowPty: always --new-session
        (True, True, True, False, (True, False)),  # a person at a terminal: PTY, bwrap's session is fresh anyway
        (True, True, True, True, (True, True)),  # forced: keep --new-session
        (True, False, True, False, (False, True)),  # piped input: no PTY
        (True, True, False, False, (False, True)),  # piped output: no PTY
        (True, False, False, True, (False, True)),
        (False, True, True, True, (False, True)),
    ],
)
def test_session_mode(allow, tty_in, tty_out, force, expected):
    assert session_mode(allow, tty_in, tty_out, force) == expected


def pty_plan(new_session):
    host = HostFacts(bwrap="/usr/bin/bwrap", is_root=False, python="/usr/bin/python3")
    return render(
        RunPlan(command=["vim", "x"], cwd="/work", env={"PATH": "/bin"}, host=host, new_session=new_session, pty=True)
    )


def test_pty_plan_runs_the_command_through_the_init_helper():
    p = pty_plan(new_session=False)
    assert p.pty and "--new-session" not in p.argv
    tail = p.argv[p.argv.index("--") + 1 :]
    assert tail[:3] == ["/usr/bin/python3", "-I", "-S"] and "inithelper" in tail[3]
    assert tail[4:] == ["--no-landlock", "--pty", "--", "vim", "x"] and p.command == ["vim", "x"]
    assert p.summary.endswith(", pty")
    forced = pty_plan(new_session=True)
    assert forced.argv[1] == "--new-session" and forced.summary.endswith(", pty(new-session)")


def test_no_pty_plan_is_unchanged():
    p = plan()
    assert not p.pty and p.argv[1] == "--new-session" and "pty" not in p.summary
    assert "--pty" not in p.argv and "-I" not in p.argv


def test_one_helper_carries_landlock_exec_notify_and_pty():
    host = HostFacts(bwrap="/b", is_root=False, python="/py", landlock_abi=7, helper=("/py", "-I", "-S", "/h.pyc"))
    p = render(
        RunPlan(command=["sh"], cwd="/w", host=host, fs=FsView(write=[("/w", True)]), exec_notify=True, pty=True)
    )
    tail = p.argv[p.argv.index("--") + 1 :]
    assert tail[:4] == ["/py", "-I", "-S", "/h.pyc"] and tail.count("/py") == 1
    assert tail[-7:] == ["-w", "/w", "--exec-notify", str(EXEC_NOTIFY_FD), "--pty", "--", "sh"]


def test_allow_pty_is_granted_now():
    assert ungranted(Policy(allow_pty=True)) == []


def test_shared_network_gets_landlock_tcp_connect_rules_and_scope():
    host = HostFacts(bwrap="/b", is_root=False, python="/py", landlock_abi=7, helper=("/py", "-I", "-S", "/h.pyc"))
    p = render(
        RunPlan(command=["curl"], cwd="/w", host=host, network=NetPlan(shared=True, connect_only=(40001, 40002)))
    )
    tail = p.argv[p.argv.index("--") + 1 :]
    for part in (["--restrict-net", "--connect-only"], ["--connect", "40001"], ["--connect", "40002"], ["--scope"]):
        assert any(tail[i : i + len(part)] == part for i in range(len(tail))), part
    assert "landlock-v7(tcp-connect)" in p.summary
    old = render(
        RunPlan(
            command=["curl"],
            cwd="/w",
            host=msgspec.structs.replace(host, landlock_abi=3),
            network=NetPlan(shared=True, connect_only=()),
        )
    )
    assert "--restrict-net" not in old.argv and "landlock-v3" in old.summary
