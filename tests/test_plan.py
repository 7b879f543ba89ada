"""The planner is pure: these run nothing."""

from fence.executor.mounts import FsView
from fence.executor.plan import HostFacts, plan_sandbox, sanitize_env
from fence.policy import Policy


def plan(is_root=False, masked=(), env=None, command=("echo", "hi")):
    host = HostFacts(bwrap="/usr/bin/bwrap", is_root=is_root, masked_dirs=tuple(masked))
    return plan_sandbox(Policy(), list(command), "/work", env or {"PATH": "/bin"}, host)


def test_namespaces_and_session():
    argv = plan().argv
    assert argv[0] == "/usr/bin/bwrap"
    for flag in ("--new-session", "--die-with-parent", "--unshare-pid", "--unshare-net"):
        assert flag in argv
    assert argv[argv.index("--") + 1:] == ["echo", "hi"]


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
    view = argv[argv.index("--ro-bind"):argv.index("--chdir")]
    assert view == ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
                    "--dir", "/tmp/fence", "--tmpfs", "/run/user/1/fence"]
    assert argv[argv.index("--chdir") + 1] == "/work"


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
    p = plan_sandbox(Policy(), ["ssh", "h"], "/work", {}, host, fs=FsView(deny_read=[("/etc/ssh", True)]),
                     files=[("/etc/ssh/ssh_config", b"ProxyCommand x %h %p\n")])
    argv = p.argv
    i = argv.index("--ro-bind-data")
    assert argv[i - 2:i + 3] == ["--perms", "0644", "--ro-bind-data", "6", "/etc/ssh/ssh_config"]
    assert argv.index("--tmpfs", argv.index("/tmp")) < argv.index("/etc/ssh") < i  # masks first: ours wins
    assert argv.index("/run/user/1/fence") < i < argv.index("--chdir")
    assert p.data_files == [(6, b"ProxyCommand x %h %p\n")]
    assert "files(/etc/ssh/ssh_config)" in p.summary


def test_no_generated_files_by_default():
    p = plan()
    assert "--ro-bind-data" not in p.argv and p.data_files == []
