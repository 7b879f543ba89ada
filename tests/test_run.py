"""``fence run``: a real bubblewrap sandbox, as root and as an unprivileged user.

Every check looks at the host afterwards where it can (a refused write must
leave no file), not only at exit codes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid

import pytest

from conftest import removed_afterwards

pytestmark = pytest.mark.sandbox


def test_argv_is_preserved_exactly(fence):
    r = fence.run("--", "printf", "%s\\n", "a b", "c")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "a b\nc\n"


def test_run_subcommand_and_dash_c(fence):
    r = fence.run("run", "--", "echo", "via run")
    assert (r.returncode, r.stdout) == (0, "via run\n")
    r = fence.run("-c", "echo $((6*7)) | tr 4 X")
    assert (r.returncode, r.stdout) == (0, "X2\n")


def test_exit_code_is_propagated(fence):
    assert fence.run("-c", "exit 7").returncode == 7
    assert fence.run("--", "false").returncode == 1


def test_death_by_signal_is_128_plus_n(fence):
    r = fence.run("--", "sh", "-c", "kill -USR1 $$")
    assert r.returncode == 128 + signal.SIGUSR1


def test_stdio_passes_through_and_fence_prints_nothing_on_stdout(fence):
    r = fence.run("--", "cat", input="hello from stdin\n")
    assert (r.returncode, r.stdout) == (0, "hello from stdin\n")
    r = fence.run("--", "true")
    assert r.stdout == "" and r.returncode == 0
    r = fence.run("--", "sh", "-c", "echo to-stderr >&2")
    assert r.stderr == "to-stderr\n" and r.stdout == ""


def test_root_filesystem_is_read_only(fence):
    work = fence.workdir()
    target = work / "should-not-exist"
    r = fence.run("--", "sh", "-c", f"echo data > {target}")
    assert r.returncode != 0
    assert "Read-only file system" in r.stderr
    assert not target.exists()
    existing = work / "existing"
    existing.write_text("original\n")
    r = fence.run("--", "sh", "-c", f"echo more >> {existing}; rm -f {existing}; mv {existing} {existing}.moved")
    assert r.returncode != 0
    assert existing.read_text() == "original\n" and not (work / "existing.moved").exists()


def test_tmp_is_private(fence):
    name = f"/tmp/fence-private-{uuid.uuid4().hex}"
    with removed_afterwards(name):
        r = fence.run("--", "sh", "-c", f"echo inside > {name} && cat {name} && ls /tmp")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["inside", "fence", name[5:]]  # /tmp/fence is always there
        assert not os.path.exists(name)


def test_environment(fence):
    env = fence.env(LD_PRELOAD="/nonexistent/evil.so", LD_LIBRARY_PATH="/evil", ld_lower="kept", SECRET_TOKEN="passes")
    r = fence.run("--", "env", env=env)
    assert r.returncode == 0
    names = {line.split("=", 1)[0] for line in r.stdout.splitlines()}
    assert "FENCE_SANDBOX=1" in r.stdout.splitlines()
    assert not any(n.startswith("LD_") for n in names)
    assert "ld_lower" in names and "SECRET_TOKEN" in names


def test_debug_lists_stripped_variables_and_layers(fence):
    r = fence.run("-d", "--", "true", env=fence.env(LD_PRELOAD="/x.so", LD_AUDIT="/y.so"))
    assert r.returncode == 0
    assert "[fence] Stripped dangerous env vars: [LD_AUDIT LD_PRELOAD]" in r.stderr
    assert "[fence:linux] Sandbox: bwrap(network,pid,fs)" in r.stderr
    assert "--unshare-net" in r.stderr and "--new-session" in r.stderr
    assert r.stdout == ""


def test_no_network_at_all(fence):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        script = (
            "import socket,sys\n"
            f"s=socket.socket(); s.settimeout(2)\n"
            f"try:\n s.connect(('127.0.0.1',{port})); print('CONNECTED')\n"
            "except OSError as e: print('REFUSED', e.errno)\n"
        )
        r = fence.run("--", "python3", "-c", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("REFUSED")
    r = fence.run("--", "cat", "/proc/net/dev")
    interfaces = [line.split(":")[0].strip() for line in r.stdout.splitlines()[2:]]
    assert interfaces == ["lo"]


def test_new_pid_namespace_and_session(fence):
    r = fence.run("--", "sh", "-c", "echo $$; cut -d' ' -f6,7 /proc/$$/stat")
    pid, sid, tty = r.stdout.split()
    assert int(pid) < 10  # pid 1 is bwrap's init, the command comes right after
    assert sid == "1"  # a session made inside the sandbox (--new-session) ...
    assert tty == "0"  # ... with no controlling terminal (the TIOCSTI defence)


def test_capabilities_dropped(fence):
    r = fence.run("--", "sh", "-c", "grep -E '^Cap(Eff|Prm|Bnd):' /proc/self/status")
    assert r.returncode == 0
    for line in r.stdout.splitlines():
        assert line.split()[1] == "0000000000000000", r.stdout


def test_remount_writable_is_refused(fence):
    work = fence.workdir()
    target = work / "escape"
    r = fence.run("--", "sh", "-c", f"mount -o remount,rw / ; mount -o remount,rw,bind {work}; touch {target}")
    assert r.returncode != 0
    assert not target.exists()


def test_runtime_dir_is_masked(fence):
    # fence's runtime dir holds the bus credentials; a sandbox must see it empty.
    runtime = os.path.join(fence.home, ".local", "state", "fence")
    os.makedirs(runtime, exist_ok=True)
    secret = os.path.join(runtime, "creds-probe")
    with open(secret, "w") as f:
        f.write("secret")
    try:
        r = fence.run("--", "sh", "-c", f"ls -A {runtime}; cat {secret}")
        assert "secret" not in r.stdout
        assert r.stdout.strip() == ""
    finally:
        os.unlink(secret)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signals_reach_the_command(fence, sig):
    name = signal.Signals(sig).name[3:]
    script = f'trap "echo got {name}; exit 42" {name}; echo ready; while :; do sleep 0.05; done'
    proc = fence.popen("--", "sh", "-c", script, stdout=__import__("subprocess").PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out == f"got {name}\n"
    assert proc.returncode == 42


def test_signal_kills_uncooperative_command_with_128_plus_n(fence):
    proc = fence.popen("--", "sh", "-c", "echo ready; exec sleep 30", stdout=__import__("subprocess").PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM


# --- fence's own errors -----------------------------------------------------------


def test_no_command(fence):
    r = fence.run()
    assert r.returncode == 1
    assert r.stderr == "Error: no command specified. Use -c <command> or provide command arguments\n"
    assert r.stdout == ""


def test_missing_settings_file_is_refused(fence):
    """``-s`` naming no file is an error, never the built-in defaults (issue 10); ``config show`` agrees."""
    for args in (["-s", "missing.json", "--", "true"], ["config", "show", "-s", "missing.json"]):
        r = fence.run(*args)
        assert (r.returncode, r.stderr, r.stdout) == (1, "Error: settings file missing.json does not exist\n", "")


def test_argv_that_is_not_utf8_runs_and_is_reported(fence):
    """Such bytes reach the command unchanged; the lifecycle event carries them escaped (it used to crash the run
    with a traceback after bwrap had started)."""
    r = subprocess.run(
        fence.argv("-d", "--", "sh", "-c", 'printf "%s" "$1" | od -An -c', "sh", os.fsdecode(b"x\xff")),
        env=fence.env(),
        cwd=fence.home,
        user=fence.user,
        capture_output=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert b"x 377" in r.stdout and b"Traceback" not in r.stderr
    assert b"exited with code 0" in r.stderr


def test_descriptors_fence_inherits_do_not_reach_the_sandbox(fence):
    """Only stdio goes in: an open file of the caller (an agent's socket, say) is not the command's."""
    marker = os.open("/dev/null", os.O_RDONLY)
    try:
        os.set_inheritable(marker, True)
        r = subprocess.run(
            fence.argv("--", "sh", "-c", f"test -e /proc/self/fd/{marker} && echo LEAKED || echo ok"),
            env=fence.env(),
            cwd=fence.home,
            user=fence.user,
            capture_output=True,
            text=True,
            timeout=30,
            pass_fds=(marker,),
        )
    finally:
        os.close(marker)
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr


def test_unknown_flag(fence):
    r = fence.run("--no-such-flag", "--", "true")
    assert r.returncode == 1 and r.stderr.startswith("Error: unknown flag: --no-such-flag")


def test_missing_bwrap(fence):
    r = fence.run("--", "true", env=fence.env(FENCE_BWRAP="/nonexistent/bwrap"))
    assert r.returncode == 1
    assert r.stderr.startswith("Error: bubblewrap (bwrap) is required on Linux but not found")


def test_command_not_found(fence):
    r = fence.run("--", "no-such-command-xyz")
    assert r.returncode == 127 and "command not found: no-such-command-xyz" in r.stderr


def test_version(fence):
    for flag in ("-v", "--version"):
        r = fence.run(flag)
        assert r.returncode == 0
        assert "  Version: " in r.stdout


def test_bad_settings_file(fence):
    work = fence.workdir()
    bad = work / "fence.json"
    bad.write_text('{"network": {"allowedDomains": [}')
    r = fence.run("--settings", str(bad), "--", "true")
    assert r.returncode == 1
    assert r.stderr.startswith("Error: failed to load config: invalid JSON")
    assert str(bad) in r.stderr
    wrong = work / "wrong.json"
    wrong.write_text('{"network": {"allowedDomains": "github.com"}}')
    r = fence.run("--settings", str(wrong), "--", "true")
    assert r.returncode == 1 and "Error: failed to load config:" in r.stderr
    assert "$.network.allowedDomains" in r.stderr


def test_signal_reaches_the_whole_process_group(fence):
    # Like Ctrl-C in a terminal: every process of the command's group sees it.
    inner = 'trap "echo inner got INT; exit 0" INT; echo ready; while :; do sleep 0.05; done'
    outer = f"trap 'echo outer got INT' INT; sh -c '{inner}'; wait; echo outer done"
    proc = fence.popen("--", "sh", "-c", outer, stdout=__import__("subprocess").PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "inner got INT" in out and "outer got INT" in out and "outer done" in out


# --- policy fields that the foundation already honours ------------------------------


def _write_config(fence, work, text):
    cfg = work / "fence.json"
    cfg.write_text(text)
    return str(cfg)


def test_deny_read_masks_files_dirs_and_globs(fence):
    work = fence.workdir()
    (work / "secret-dir").mkdir()
    (work / "secret-dir" / "key").write_text("TOP SECRET\n")
    (work / "token.txt").write_text("TOKEN\n")
    (work / "id_rsa").write_text("PRIVATE\n")
    (work / "visible.txt").write_text("fine\n")
    link = work / "link-to-token"
    link.symlink_to(work / "token.txt")
    cfg = _write_config(fence, work, '{"filesystem": {"denyRead": ["secret-dir", "token.txt", "id_*", "missing"]}}')
    r = fence.run(
        "-s",
        cfg,
        "--",
        "sh",
        "-c",
        "ls -A secret-dir; cat secret-dir/key token.txt id_rsa link-to-token; cat visible.txt",
        cwd=str(work),
    )
    assert "SECRET" not in r.stdout and "TOKEN" not in r.stdout and "PRIVATE" not in r.stdout
    assert "fine" in r.stdout
    assert (work / "secret-dir" / "key").read_text() == "TOP SECRET\n"  # host untouched


def test_default_deny_read_needs_a_readable_working_directory(fence):
    work = fence.workdir()
    cfg = _write_config(fence, work, '{"filesystem": {"defaultDenyRead": true}}')
    marker = work / "ran"
    r = fence.run("-s", cfg, "--", "sh", "-c", f"echo > {marker}", cwd=str(work))
    assert r.returncode == 1
    assert r.stderr.startswith("Error: filesystem.defaultDenyRead: the working directory"), r.stderr
    assert "allowRead" in r.stderr
    assert not marker.exists()


SYSCALL_PROBE = """
import ctypes, errno, socket
libc = ctypes.CDLL(None, use_errno=True)
r = libc.ptrace(0, 0, 0, 0)
print("ptrace", "EPERM" if r == -1 and ctypes.get_errno() == errno.EPERM else r)
try:
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); print("unix ok")
except PermissionError: print("unix EPERM")
a, b = socket.socketpair(); print("socketpair ok")
"""


def test_seccomp_filter_is_applied(fence):
    r = fence.run("-d", "--", "python3", "-c", SYSCALL_PROBE)
    assert r.stdout.split("\n")[:3] == ["ptrace EPERM", "unix EPERM", "socketpair ok"], r.stderr
    assert "seccomp(" in r.stderr and "--seccomp 5" in r.stderr


def test_allow_all_unix_sockets(fence):
    work = fence.workdir()
    cfg = _write_config(fence, work, '{"network": {"allowAllUnixSockets": true}}')
    r = fence.run("-s", cfg, "--", "python3", "-c", SYSCALL_PROBE, cwd=str(work))
    assert r.stdout.split("\n")[:3] == ["ptrace EPERM", "unix ok", "socketpair ok"], r.stderr


def test_debug_says_the_run_is_lone(fence):
    r = fence.run("-d", "--", "true", cwd=str(fence.workdir()))
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[0] == (
        "[fence] Lone run: no supervisor; the config, proxy and monitor services run in this process"
    ), r.stderr
    assert "Supervised run" not in r.stderr
    assert "Lone run" not in fence.run("--", "true", cwd=str(fence.workdir())).stderr  # -d only


def test_linux_features_report(fence):
    r = fence.run("--linux-features")
    assert r.returncode == 0 and r.stdout.startswith("Linux Sandbox Features:")
    assert "Minimum requirements met (bwrap)" in r.stdout and "Socat" not in r.stdout
    # only what fence does on this host: it has no eBPF monitor and reads no seccomp log (as root too)
    assert "✓ eBPF" not in r.stdout and "Violation monitoring available" not in r.stdout, r.stdout
    assert "  ○ eBPF monitoring: not implemented by fence\n" in r.stdout


def test_no_new_user_namespaces_inside(fence):
    r = fence.run(
        "-c",
        "python3 -c 'import os; os.unshare(os.CLONE_NEWUSER)' && echo CREATED; "
        "python3 -c 'import os; os.unshare(os.CLONE_NEWUSER | os.CLONE_NEWNS)' && echo CREATED; "
        "echo end",
    )
    assert "CREATED" not in r.stdout and r.stdout.strip().endswith("end"), r.stderr
