"""The seccomp program, tested by running real sandboxes (``bwrap --seccomp FD``).

Nothing is decoded: a probe inside the sandbox makes each call and reports
the errno.  Two ways of telling the filter's EPERM from the kernel's own:

* every rule, compiled with a marker errno (1000) instead of EPERM, must
  make its call fail with 1000 -- so each listed call really hits a rule;
* the production program against a baseline sandbox that keeps every
  capability of its user namespace (``--cap-add ALL``), where these calls
  succeed: with the program they fail with EPERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import session_dir
from fence.executor import seccomp
from fence.executor.host import find_bwrap
from fence.policy import NetworkConfig, Policy

pytestmark = pytest.mark.sandbox

BWRAP = find_bwrap()
MARKER = 1000
X86_64 = os.uname().machine == "x86_64"
SECCOMP_FD = 63

PROBE = r'''
import ctypes, errno, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def arg(a):
    return ctypes.c_ulong(a) if isinstance(a, int) else a

def raw(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *map(arg, args))
    if r < 0:
        raise OSError(ctypes.get_errno(), "")
    return r

def isolated(fn):
    """Run fn in a child: namespace changes, clones and deaths stay there."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            fn()
            out = "ok"
        except OSError as e:
            out = errno.errorcode.get(e.errno, str(e.errno))
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    out = os.read(r, 100).decode()
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return "signal %d" % os.WTERMSIG(status) if os.WIFSIGNALED(status) else out

def clone(flags):
    if raw(56, flags | 17, 0, 0, 0, 0) == 0:   # SIGCHLD; the clone child leaves at once
        os._exit(0)

def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)

def tty_ioctl(request, hibits=0):
    """An ioctl on our controlling terminal (a fresh pty), as TIOCSTI needs.  The pty becomes it by
    being opened by a session leader (TIOCSCTTY itself is one of the denied requests)."""
    os.setsid()
    master, slave = os.openpty()
    os.close(os.open(os.ttyname(slave), os.O_RDWR))
    raw(16, slave, hibits | request, ctypes.create_string_buffer(b"x", 256))

def int80_getpid():
    """getpid through the 32-bit ABI: mov eax, 20; int 0x80; ret -- in an executable mmap."""
    import mmap
    code = b"\xb8\x14\x00\x00\x00\xcd\x80\xc3"
    m = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    m.write(code)
    fn = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
    if fn() != os.getpid():
        raise OSError(errno.EIO, "int 0x80 getpid returned something else")

def asyncio_loop():
    import asyncio
    asyncio.run(asyncio.sleep(0))

NAMED = {
    "socket_unix": lambda: socket.socket(socket.AF_UNIX).close(),
    "socket_unix_hibits": lambda: os.close(raw(41, 0x100000001, 1, 0)),
    "socketpair_unix": lambda: [s.close() for s in socket.socketpair()],
    "socket_inet": lambda: socket.socket(socket.AF_INET).close(),
    "socket_inet6": lambda: socket.socket(socket.AF_INET6).close(),
    "unshare_user": lambda: raw(272, 0x10000000),
    "unshare_net": lambda: raw(272, 0x40000000),
    "unshare_mnt": lambda: raw(272, 0x00020000),
    "unshare_files": lambda: raw(272, 0x00000400),   # CLONE_FILES: not a namespace, allowed
    "clone_newuser": lambda: clone(0x10000000),
    "clone_plain": lambda: clone(0),
    "fork": fork,
    "clone3": lambda: raw(435, 0, 0),
    "tiocsti": lambda: tty_ioctl(0x5412),
    "tiocsti_hibits": lambda: tty_ioctl(0x5412, 0x100000000),
    "tcgets": lambda: tty_ioctl(0x5401),
    "int80": int80_getpid,
    "asyncio": asyncio_loop,
    "ptrace_traceme": lambda: raw(101, 0, 0, 0, 0),
    "io_uring_setup": lambda: os.close(raw(425, 1, ctypes.create_string_buffer(120))),
    "fsopen": lambda: os.close(raw(430, b"tmpfs", 0)),
    "mount": lambda: raw(165, b"none", b"/tmp", b"tmpfs", 0, 0),
}
req = json.loads(sys.argv[1])
out = {name: isolated(NAMED[name]) for name in req.get("named", [])}
for name, nr in req.get("numbers", {}).items():
    out[name] = isolated(lambda: raw(nr, 0, 0, 0, 0, 0, 0))
print(json.dumps(out))
'''


def run_probe(
    program: bytes | None, request: dict, *, caps: bool = False, user: str | None = None, python: str = sys.executable
) -> dict:
    """Run PROBE in a sandbox shaped like fence's, with ``program`` loaded by bwrap."""
    argv = [BWRAP, "--new-session", "--die-with-parent", "--unshare-pid", "--unshare-net"]
    if caps:
        argv += ["--unshare-user", "--cap-add", "ALL"]
    elif os.geteuid() == 0 and user is None:
        argv += ["--unshare-user", "--cap-drop", "ALL"]
    argv += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    pass_fds: tuple[int, ...] = ()
    with tempfile.TemporaryFile() as f:
        if program is not None:
            f.write(program)
            f.seek(0)
            os.dup2(f.fileno(), SECCOMP_FD)
            argv += ["--seccomp", str(SECCOMP_FD)]
            pass_fds = (SECCOMP_FD,)
        argv += ["--", python, "-I", "-S", "-c", PROBE, json.dumps(request)]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30, pass_fds=pass_fds, user=user)
        finally:
            if pass_fds:
                os.close(SECCOMP_FD)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def default_program(**kw) -> bytes:
    return seccomp.build_program(Policy(), cache_dir="", **kw)


def marker_program(ruleset) -> bytes:
    """The same rules with a recognisable errno instead of EPERM."""
    marked = tuple(seccomp.Rule(name, MARKER if err == seccomp.EPERM else err, *conds) for name, err, conds in ruleset)
    return seccomp.compile_rules(marked)


def syscall_numbers(names) -> dict[str, int]:
    import pyseccomp as sc

    out = {}
    for name in names:
        nr = sc.resolve_syscall(sc.Arch.NATIVE, name)
        if nr < 0:
            nr = seccomp.NEW_SYSCALL_NUMBERS.get(name, -1)
        if nr >= 0:
            out[name] = nr
    return out


# the list -------------------------------------------------------------------------------
def test_reference_list_is_the_27():
    assert len(seccomp.REFERENCE_DENIED) == len(set(seccomp.REFERENCE_DENIED)) == 27
    assert {
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "keyctl",
        "add_key",
        "request_key",
        "personality",
        "userfaultfd",
        "perf_event_open",
        "bpf",
        "kexec_load",
        "kexec_file_load",
        "reboot",
        "syslog",
        "acct",
        "mount",
        "umount2",
        "pivot_root",
        "swapon",
        "swapoff",
        "sethostname",
        "setdomainname",
        "init_module",
        "finit_module",
        "delete_module",
        "ioperm",
        "iopl",
    } == set(seccomp.REFERENCE_DENIED)


def test_unix_sockets_follow_the_policy():
    assert not seccomp.unix_sockets_allowed(Policy())
    assert seccomp.unix_sockets_allowed(Policy(network=NetworkConfig(allow_all_unix_sockets=True)))
    assert seccomp.unix_sockets_allowed(Policy(network=NetworkConfig(allow_unix_sockets=["/run/x.sock"])))
    socket_rules = [r for r in seccomp.rules(deny_unix=False) if r[0] in ("socket", "socketpair")]
    assert socket_rules == [seccomp.Rule("socket", seccomp.EPERM, (0, seccomp.LOW32, seccomp.AF_VSOCK))]


# every rule matches its call ----------------------------------------------------------------
def test_every_unconditional_rule_hits_its_call():
    """Each listed call, made with zero arguments, comes back with the marker errno."""
    ruleset = seccomp.rules(deny_unix=True)
    unconditional = [name for name, err, conds in ruleset if not conds and err == seccomp.EPERM]
    numbers = syscall_numbers(unconditional)
    missing = set(unconditional) - set(numbers)
    assert missing <= ({"ioperm", "iopl"} if not X86_64 else set())
    got = run_probe(marker_program(ruleset), {"numbers": numbers})
    assert got == {name: str(MARKER) for name in numbers}


def test_conditional_rules_hit_only_their_arguments():
    got = run_probe(
        marker_program(seccomp.rules(deny_unix=True)),
        {
            "named": [
                "socket_unix",
                "socket_unix_hibits",
                "socketpair_unix",
                "socket_inet",
                "socket_inet6",
                "unshare_user",
                "unshare_net",
                "unshare_mnt",
                "unshare_files",
                "clone_newuser",
                "clone_plain",
                "fork",
                "tiocsti",
                "tiocsti_hibits",
                "tcgets",
                "clone3",
            ]
        },
    )
    m = str(MARKER)
    assert got == {
        "socket_unix": m,
        "socket_unix_hibits": m,
        "socketpair_unix": m,
        "socket_inet": "ok",
        "socket_inet6": "ok",
        "unshare_user": m,
        "unshare_net": m,
        "unshare_mnt": m,
        "unshare_files": "ok",
        "clone_newuser": m,
        "clone_plain": "ok",
        "fork": "ok",
        "tiocsti": m,
        "tiocsti_hibits": m,
        "tcgets": "ok",
        "clone3": "ENOSYS",
    }


# the production program ---------------------------------------------------------------------
DISTINGUISHABLE = [
    "socket_unix",
    "socket_unix_hibits",
    "socketpair_unix",
    "ptrace_traceme",
    "io_uring_setup",
    "unshare_user",
    "unshare_net",
    "clone_newuser",
    "tiocsti",
    "fsopen",
    "mount",
]


def test_program_denies_with_eperm_what_the_baseline_allows():
    baseline = run_probe(None, {"named": DISTINGUISHABLE + ["clone3"]}, caps=True)
    assert baseline == {**dict.fromkeys(DISTINGUISHABLE, "ok"), "clone3": "EINVAL"}
    got = run_probe(default_program(), {"named": DISTINGUISHABLE + ["clone3"]}, caps=True)
    assert got == {**dict.fromkeys(DISTINGUISHABLE, "EPERM"), "clone3": "ENOSYS"}


@pytest.mark.skipif(not X86_64, reason="int 0x80 is x86")
def test_32bit_abi_is_killed_unless_asked_for():
    assert run_probe(None, {"named": ["int80"]}) == {"int80": "ok"}
    assert run_probe(default_program(), {"named": ["int80"]}) == {"int80": f"signal {int(signal.SIGSYS)}"}
    assert run_probe(default_program(arch_native_only=False), {"named": ["int80"]}) == {"int80": "ok"}


@pytest.mark.skipif(not X86_64, reason="x32 is x86_64's")
def test_x32_numbers_go_to_the_bad_arch_action():
    """x32 calls carry the native arch with bit 30 set; this kernel may lack x32, so check the program."""
    import struct

    program = default_program()
    insns = [struct.unpack("<HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    jge = 0x05 | 0x30  # BPF_JMP | BPF_JGE | BPF_K
    assert any(code == jge and k == 0x40000000 for code, _, _, k in insns)


def test_ordinary_work_still_runs():
    program = default_program()
    with tempfile.TemporaryFile() as f:
        f.write(program)
        f.seek(0)
        os.dup2(f.fileno(), SECCOMP_FD)
        try:
            argv = [BWRAP, "--new-session", "--die-with-parent", "--unshare-pid", "--unshare-net"]
            if os.geteuid() == 0:
                argv += ["--unshare-user", "--cap-drop", "ALL"]
            script = (
                "set -e; git --version >/dev/null; echo hi | tr h H; ls / >/dev/null; "
                "python3 -c 'import socket,threading,subprocess; "
                's=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(); '
                'c=socket.create_connection(s.getsockname()); a,_=s.accept(); c.send(b"x"); '
                'assert a.recv(1)==b"x"; '
                "t=threading.Thread(target=lambda: None); t.start(); t.join(); "
                'print(subprocess.run(["echo","sub"],capture_output=True,text=True).stdout.strip())\''
            )
            argv += [
                "--ro-bind",
                "/",
                "/",
                "--dev",
                "/dev",
                "--proc",
                "/proc",
                "--tmpfs",
                "/tmp",
                "--seccomp",
                str(SECCOMP_FD),
                "--",
                "sh",
                "-c",
                script,
            ]
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30, pass_fds=(SECCOMP_FD,))
        finally:
            os.close(SECCOMP_FD)
    assert (r.returncode, r.stdout) == (0, "Hi\nsub\n"), r.stderr


def test_allow_all_unix_sockets_lets_af_unix_through():
    for network in (NetworkConfig(allow_all_unix_sockets=True), NetworkConfig(allow_unix_sockets=["/x.sock"])):
        program = seccomp.build_program(Policy(network=network), cache_dir="")
        got = run_probe(program, {"named": ["socket_unix", "socketpair_unix", "asyncio", "ptrace_traceme"]})
        assert got == {"socket_unix": "ok", "socketpair_unix": "ok", "asyncio": "ok", "ptrace_traceme": "EPERM"}


def test_socketpair_can_be_left_open():
    """``deny_socketpair=False``: anonymous pairs (asyncio's self-pipe, node's child stdio) work, socket() doesn't."""
    assert run_probe(default_program(), {"named": ["asyncio"]}) == {"asyncio": "EPERM"}
    got = run_probe(default_program(deny_socketpair=False), {"named": ["socket_unix", "socketpair_unix", "asyncio"]})
    assert got == {"socket_unix": "EPERM", "socketpair_unix": "ok", "asyncio": "ok"}


@pytest.mark.skipif(not shutil.which("node"), reason="needs node")
def test_socketpair_denial_breaks_node_child_processes():
    """Evidence for the trade-off in docs/linux-layers.md: libuv makes child stdio pipes with socketpair."""
    script = (
        'const r = require("child_process").spawnSync("echo", ["child ok"]); '
        'console.log(r.error ? "error: " + r.error.code : r.stdout.toString().trim())'
    )
    outputs = []
    for program in (default_program(), default_program(deny_socketpair=False)):
        with tempfile.TemporaryFile() as f:
            f.write(program)
            f.seek(0)
            os.dup2(f.fileno(), SECCOMP_FD)
            try:
                argv = [BWRAP, "--die-with-parent", "--unshare-pid", "--unshare-net"]
                argv += ["--unshare-user", "--cap-drop", "ALL"] if os.geteuid() == 0 else []
                argv += [
                    "--ro-bind",
                    "/",
                    "/",
                    "--dev",
                    "/dev",
                    "--proc",
                    "/proc",
                    "--tmpfs",
                    "/tmp",
                    "--seccomp",
                    str(SECCOMP_FD),
                    "--",
                    "node",
                    "-e",
                    script,
                ]
                r = subprocess.run(argv, capture_output=True, text=True, timeout=30, pass_fds=(SECCOMP_FD,))
            finally:
                os.close(SECCOMP_FD)
        outputs.append(r.stdout)
    assert outputs == ["error: EPERM\n", "child ok\n"]


def test_program_works_for_an_unprivileged_user():
    from conftest import TEST_USER, _ensure_test_user, _interpreter_for_others

    if os.geteuid() != 0:
        pytest.skip("not root: the current user is already unprivileged")
    _ensure_test_user()
    got = run_probe(
        default_program(),
        {"named": ["socket_unix", "ptrace_traceme", "unshare_user", "socket_inet"]},
        user=TEST_USER,
        python=_interpreter_for_others(),
    )
    assert got == {"socket_unix": "EPERM", "ptrace_traceme": "EPERM", "unshare_user": "EPERM", "socket_inet": "ok"}


# the cache ----------------------------------------------------------------------------------
def test_cache_is_written_private_and_reused_without_pyseccomp(tmp_path):
    cache = tmp_path / "cache"
    first = seccomp.build_program(Policy(), cache_dir=str(cache))
    assert first == default_program()
    (entry,) = cache.iterdir()
    assert entry.name.startswith("seccomp-") and entry.suffix == ".bpf"
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600 and stat.S_IMODE(cache.stat().st_mode) == 0o700
    code = (
        "import sys, time; from fence.executor import seccomp; from fence.policy import Policy; "
        f"t = time.perf_counter(); p = seccomp.build_program(Policy(), cache_dir={str(cache)!r}); "
        "print(len(p), 'pyseccomp' in sys.modules, time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == [str(len(first)), "False"]
    assert float(out[2]) < 0.002


def test_cache_keys_differ_by_inputs_and_untrusted_entries_are_ignored(tmp_path):
    deny = seccomp.rules(deny_unix=True)
    allow = seccomp.rules(deny_unix=False)
    names = {seccomp.cache_name(deny, True), seccomp.cache_name(allow, True), seccomp.cache_name(deny, False)}
    assert len(names) == 3
    seccomp.build_program(Policy(), cache_dir=str(tmp_path))
    (entry,) = tmp_path.iterdir()
    entry.write_bytes(b"\0" * 8)
    os.chmod(entry, 0o666)  # writable by others: never trusted
    assert seccomp.build_program(Policy(), cache_dir=str(tmp_path)) == default_program()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600


def test_unwritable_cache_still_builds(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert seccomp.build_program(Policy(), cache_dir=str(blocker / "sub")) == default_program()


def test_build_program_cost_is_small_when_cached(tmp_path):
    seccomp.build_program(Policy(), cache_dir=str(tmp_path))
    t = time.perf_counter()
    for _ in range(100):
        seccomp.build_program(Policy(), cache_dir=str(tmp_path))
    assert (time.perf_counter() - t) / 100 < 0.002


# fence's own sandboxes: each call or write, outside and inside ------------------------------
# ``syscallprobe.c`` makes them; the ``fence`` fixture runs every case as root and as an
# unprivileged user, inside ``fence`` and outside it (the same user, the same probe).

PROBE_SOURCE = Path(__file__).with_name("syscallprobe.c")

KERNEL_INTERFACES = [
    "uselib",
    "quotactl",
    "quotactl_fd",
    "mbind",
    "set_mempolicy",
    "set_mempolicy_home_node",
    "migrate_pages",
    "move_pages",
    "vsock",
    "pidfd_getfd",
    "process_vm_writev",
]
KERNEL_INTERFACES += ["modify_ldt"] if X86_64 else []
ANSWERED_OUTSIDE = {"uselib", "set_mempolicy_home_node", "vsock"}
"""Outside, the kernel may refuse these for its own reasons (no uselib, no bind policy to give a home node,
no vsock transport): what counts is that the kernel answers, not the filter."""


@pytest.fixture(scope="session")
def syscall_probe():
    gcc = shutil.which("gcc")
    if not gcc:
        pytest.skip("needs gcc")
    where = session_dir("fence-syscallprobe-")
    os.chmod(where, 0o755)  # the unprivileged user runs it too
    exe = where / "syscallprobe"
    subprocess.run([gcc, "-O1", "-Wall", "-o", str(exe), str(PROBE_SOURCE)], check=True, capture_output=True)
    os.chmod(exe, 0o755)
    yield str(exe)
    shutil.rmtree(where, ignore_errors=True)


def outside(fence, probe: str, checks: list[str]) -> dict:
    r = subprocess.run(
        [probe, *checks], user=fence.user, env=fence.env(), cwd=fence.home, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def inside(fence, probe: str, checks: list[str], config: dict | None = None) -> dict:
    work = fence.workdir()
    (work / "fence.json").write_text(json.dumps(config or {}))
    fence.own(work)
    r = fence.run("-s", str(work / "fence.json"), "--", probe, *checks, cwd=str(work))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


LANDLOCKED = {"filesystem": {"allowWrite": ["."]}}
"""A writable project: the init helper runs first and applies Landlock (the other way a sandbox starts)."""


@pytest.mark.parametrize("config", [None, LANDLOCKED], ids=["plain", "landlocked"])
def test_kernel_interfaces_fail_inside_and_work_outside(fence, syscall_probe, config):
    out = outside(fence, syscall_probe, KERNEL_INTERFACES)
    assert {name: value for name, value in out.items() if name not in ANSWERED_OUTSIDE} == {
        name: "ok" for name in KERNEL_INTERFACES if name not in ANSWERED_OUTSIDE
    }
    assert all(out[name] != "EPERM" for name in ANSWERED_OUTSIDE), out
    assert inside(fence, syscall_probe, KERNEL_INTERFACES, config) == dict.fromkeys(KERNEL_INTERFACES, "EPERM")


PROC_WRITES = ["proc_mem_write", "proc_self_mem_write", "proc_sys_write", "proc_sys_mount"]


@pytest.mark.parametrize("config", [None, LANDLOCKED], ids=["plain", "landlocked"])
def test_writes_through_proc_fail_inside(fence, syscall_probe, config):
    """/proc is read-only inside: another process's memory (a child's, here: same user, nothing else stops
    it), the process's own, and /proc/sys (which root could write outside)."""
    root = fence.user is None and os.geteuid() == 0
    assert outside(fence, syscall_probe, PROC_WRITES) == {
        "proc_mem_write": "ok",
        "proc_self_mem_write": "ok",
        "proc_sys_mount": "ok",
        "proc_sys_write": "ok" if root else "EACCES",
    }
    assert inside(fence, syscall_probe, PROC_WRITES, config) == {
        "proc_mem_write": "EROFS",
        "proc_self_mem_write": "EROFS",
        "proc_sys_mount": "EROFS",
        "proc_sys_write": "EROFS" if root else "EACCES",
    }  # the file's own permission is checked first


TTY_CONTROL = [
    "tiocsctty",
    "tiocsctty_steal",
    "tiocsetd",
    "tioccons_badfd",
    "tiocsctty_badfd",
    "tiocsetd_badfd",
    "tcgets",
]


def test_tty_control_ioctls_fail_inside(fence, syscall_probe):
    """TIOCSETD and TIOCCONS fail inside on any fd (on a closed one EPERM, not EBADF: the filter answers
    first); TIOCSCTTY in its steal form too, while taking a terminal the command opened itself still works
    (forkpty: tmux, pexpect)."""
    assert outside(fence, syscall_probe, TTY_CONTROL) == {
        "tiocsctty": "ok",
        "tiocsctty_steal": "ok",
        "tiocsetd": "ok",
        "tioccons_badfd": "EBADF",
        "tiocsctty_badfd": "EBADF",
        "tiocsetd_badfd": "EBADF",
        "tcgets": "ok",
    }
    assert inside(fence, syscall_probe, TTY_CONTROL) == {
        "tiocsctty": "ok",
        "tiocsctty_steal": "EPERM",
        "tiocsetd": "EPERM",
        "tioccons_badfd": "EPERM",
        "tiocsctty_badfd": "EBADF",
        "tiocsetd_badfd": "EPERM",
        "tcgets": "ok",
    }


def test_a_terminal_program_gives_its_child_a_terminal(fence):
    """forkpty inside works (Python's pty.fork: what pexpect, script and tmux do)."""
    r = fence.run(
        "--",
        "python3",
        "-c",
        "import os, pty\npid, fd = pty.fork()\nif pid == 0:\n    os.execvp('tty', ['tty'])\n"
        "print(os.read(fd, 100).decode().strip().startswith('/dev/pts/'))\nos.waitpid(pid, 0)",
    )
    assert (r.returncode, r.stdout) == (0, "True\n"), r.stderr


def test_a_pty_run_keeps_its_terminal_without_tiocsctty(fence, syscall_probe):
    """allowPty: the init helper makes the PTY the command's controlling terminal, and TIOCSCTTY is still
    refused to the command."""
    work = fence.workdir()
    (work / "fence.json").write_text('{"allowPty": true}')
    fence.own(work)
    with fence.terminal(
        "-s", str(work / "fence.json"), "--", syscall_probe, "controlling_terminal", "tiocsctty_stdin", cwd=str(work)
    ) as term:
        term.expect("}")
        assert term.wait() == 0, term.text
    assert json.loads(term.text[term.text.index("{") : term.text.index("}") + 1]) == {
        "controlling_terminal": "ok",
        "tiocsctty_stdin": "EPERM",
    }
    assert "Warning" not in term.text, term.text
