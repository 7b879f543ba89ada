"""The argv supervisor's pieces on real processes, outside bwrap: the init helper's listener hand-over,
the argv reader on a child stopped in execve/execveat, the decision, failing closed.

Whole sandboxes: test_runtime_exec.py.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import subprocess
import sys

import pytest

from fence.executor import execsupervisor as es
from fence.executor.execsupervisor import ExecCall, ExecPolicy, Supervisor
from fence.executor.inithelper import EXEC_SYSCALLS
from fence.executor.inithelper import __file__ as HELPER
from fence.policy import CommandConfig, Policy

pytestmark = pytest.mark.skipif(es.supported() != "", reason=f"no seccomp user notification: {es.supported()}")

EXECVEAT = EXEC_SYSCALLS[os.uname().machine][2]
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def helper_argv(*command: str, fd: int = 6) -> list[str]:
    return [sys.executable, "-I", "-S", HELPER, "--exec-notify", str(fd), "--no-landlock", "--", *command]


class Child:
    """The helper under a listener this test holds: each exec waits for ``next()`` and ``answer()``."""

    def __init__(self, *command: str):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            helper_argv(*command, fd=theirs.fileno()),
            pass_fds=(theirs.fileno(),),
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        theirs.close()
        _msg, fds, _flags, _addr = socket.recv_fds(ours, 1, 1)
        ours.close()
        assert len(fds) == 1, self.proc.communicate()
        self.listener = fds[0]
        assert os.readlink(f"/proc/self/fd/{self.listener}") == "anon_inode:seccomp notify"

    def next(self, timeout: float = 10):
        ready = select.select([self.listener], [], [], timeout)[0]
        assert ready, "no exec notification"
        buf = bytearray(es.NOTIF.size)
        fcntl.ioctl(self.listener, es.NOTIF_RECV, buf, True)
        nid, pid, _flags, nr, _arch, _ip, *args = es.NOTIF.unpack(buf)
        return nid, pid, nr, tuple(args)

    def read(self, timeout: float = 10) -> tuple[int, ExecCall]:
        nid, pid, nr, args = self.next(timeout)
        return nid, es.read_call(pid, nr, args, EXECVEAT, es._id_check(self.listener, nid))

    def answer(self, nid: int, allow: bool = True, error: int = errno.EPERM) -> None:
        es._respond(self.listener, nid, 0 if allow else -error, es.FLAG_CONTINUE if allow else 0)

    def finish(self, timeout: float = 20):
        out, err = self.proc.communicate(timeout=timeout)
        os.close(self.listener)
        return self.proc.returncode, out.decode(), err.decode()


def test_reads_path_and_argv_of_the_helpers_own_exec():
    child = Child("/bin/echo", "a", "b c", "", "é")
    nid, call = child.read()
    assert call.path == "/bin/echo" and call.argv == ["/bin/echo", "a", "b c", "", "é"]
    assert call.pid == child.proc.pid and call.program() == "echo"
    assert call.target() == f"/proc/{child.proc.pid}/root/bin/echo"
    child.answer(nid)
    code, out, _ = child.finish()
    assert code == 0 and out == "a b c  é\n"


def test_denied_exec_gets_eperm_and_the_helper_exits_126():
    child = Child("/bin/true")
    nid, _call = child.read()
    child.answer(nid, allow=False)
    code, _out, err = child.finish()
    assert code == 126 and "Operation not permitted" in err


def test_execveat_of_an_fd_and_relative_paths():
    script = (
        "import os\n"
        "os.chdir('/usr/bin')\n"
        "if os.fork() == 0:\n"
        "    os.execv('./true', ['rel', 'x'])\n"
        "os.wait()\n"
        "fd = os.open('/usr/bin/true', os.O_RDONLY)\n"
        "os.execve(fd, ['viafd', 'y'], {})\n"
    )
    child = Child(sys.executable, "-I", "-S", "-c", script)
    nid, first = child.read()
    assert first.argv[0] == sys.executable
    child.answer(nid)
    nid, rel = child.read()
    assert rel.path == "./true" and rel.argv == ["rel", "x"] and rel.program() == "true"
    assert os.path.samefile(rel.target(), "/usr/bin/true")
    child.answer(nid)
    nid, viafd = child.read()
    assert viafd.path == "" and viafd.flags & es.AT_EMPTY_PATH and viafd.dirfd >= 0
    assert viafd.argv == ["viafd", "y"] and viafd.program() == "true"
    child.answer(nid)
    code, _out, err = child.finish()
    assert code == 0, err


def test_many_and_long_arguments_are_read_whole():
    args = [f"arg{i}-" + "x" * (i % 300) for i in range(5000)] + ["y" * 100_000]
    child = Child("/bin/true", *args)
    nid, call = child.read()
    assert call.argv == ["/bin/true", *args]
    child.answer(nid)
    assert child.finish()[0] == 0


def test_unreadable_argv_is_unreadable_not_empty():
    script = "import ctypes; ctypes.CDLL(None).execve(b'/bin/true', ctypes.c_void_p(8), None)"
    child = Child(sys.executable, "-I", "-S", "-c", script)
    nid, _ = child.read()
    child.answer(nid)
    nid, pid, nr, args = child.next()
    with pytest.raises(es.Unreadable):
        es.read_call(pid, nr, args, EXECVEAT, es._id_check(child.listener, nid))
    child.answer(nid, allow=False)
    child.finish()


def test_a_finished_notification_is_gone():
    child = Child("/bin/true")
    nid, pid, nr, args = child.next()
    child.proc.kill()
    child.proc.wait()
    with pytest.raises(es.Gone):
        es.read_call(pid, nr, args, EXECVEAT, es._id_check(child.listener, nid))
    os.close(child.listener)


# --------------------------------------------------------------------------- the decision


def policy(**command) -> Policy:
    return Policy(command=CommandConfig(**command))


def test_policy_checks_every_name_an_exec_goes_by(tmp_path):
    check = ExecPolicy(policy(deny=["git push"], use_defaults=False))
    me = os.getpid()
    assert check.check(ExecCall(me, "/usr/bin/git", ["git", "status"])) is None
    blocked = check.check(ExecCall(me, "/usr/bin/git", ["git", "-C", "x", "push", "origin"]))
    assert blocked is not None
    assert blocked.message == 'Runtime exec policy blocked: "git -C x push origin" matches "git push"'
    assert blocked.rule == "git push" and not blocked.default_rule
    # argv[0] says ls, the file is git (exec -a)
    renamed = check.check(ExecCall(me, "/usr/bin/git", ["ls", "push"]))
    assert renamed is not None
    assert renamed.message == 'Runtime exec policy blocked: "ls push" (/usr/bin/git is git) matches "git push"'
    # a symlink with another name: known through the file's identity
    link = tmp_path / "g"
    link.symlink_to("/usr/bin/git")
    ids = {(os.stat("/usr/bin/git").st_dev, os.stat("/usr/bin/git").st_ino): ("git",)}
    assert ExecPolicy(check.policy, identities=ids).check(ExecCall(me, str(link), ["g", "push"])) is not None
    assert check.check(ExecCall(me, str(link), ["g", "push"])) is None


def test_allow_rules_and_the_default_list_apply_as_in_preflight():
    check = ExecPolicy(policy(deny=["git push"], allow=["git push --dry-run"]))
    me = os.getpid()
    assert check.check(ExecCall(me, "/usr/bin/git", ["git", "push", "--dry-run"])) is None
    default = check.check(ExecCall(me, "/usr/sbin/chroot", ["chroot", "/"]))
    assert default is not None
    assert default.default_rule and default.message.endswith("(rule from built-in default deny list)")


def test_a_denied_exec_of_a_missing_file_is_refused_all_the_same():
    """No ENOENT shortcut: whether the file exists is resolved on the host, where a sandbox could use the
    answer to learn about paths it cannot see."""
    check = ExecPolicy(policy(deny=["git push"], use_defaults=False))
    verdict = check.check(ExecCall(os.getpid(), "/nonexistent/git", ["git", "push"]))
    assert verdict is not None and verdict.rule == "git push"


# --------------------------------------------------------------------------- the supervisor thread


def run_supervised(check, *command: str, timeout: float = 30, kind=Supervisor):
    said: list[str] = []
    reported: list[tuple] = []
    sup = kind(check, report=lambda v, c: reported.append((v, c)), say=said.append).start()
    fd = sup.sandbox_fd()
    proc = subprocess.Popen(
        helper_argv(*command, fd=fd), pass_fds=(fd,), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    sup.spawned()
    out, err = proc.communicate(timeout=timeout)
    sup.stop()
    return proc.returncode, out.decode(), err.decode(), said, reported, sup


def test_supervisor_allows_and_refuses_with_a_message_and_a_report():
    check = ExecPolicy(policy(deny=["git push"], use_defaults=False))
    code, out, _err, said, reported, sup = run_supervised(
        check,
        "sh",
        "-c",
        "git --version >/dev/null && echo STATUS_OK; git push origin main && echo PUSH_UNEXPECTED; exit 3",
    )
    assert code == 3 and "STATUS_OK" in out and "PUSH_UNEXPECTED" not in out
    assert said == ['Runtime exec policy blocked: "git push origin main" matches "git push"']
    ((verdict, call),) = reported
    assert verdict.rule == "git push" and call.argv == ["git", "push", "origin", "main"]
    event = es.event_for("abc", verdict, call)
    assert event.pid == call.pid and event.argv == call.argv and event.rule == "git push"
    assert sup.served >= 3 and sup.refused >= 1


def test_a_checker_bug_refuses_that_exec():
    class Broken(ExecPolicy):
        def check(self, call):
            raise RuntimeError("boom")

    code, out, err, said, _reported, _sup = run_supervised(Broken(Policy()), "/bin/echo", "never")
    assert code == 126 and "never" not in out and "Operation not permitted" in err
    assert said == [
        "Runtime exec policy blocked: cannot check an exec by pid "
        f"{_reported[0][1].pid} (internal error in the checker: RuntimeError: boom); refused"
    ]


def test_supervisor_that_dies_leaves_every_exec_failing():
    class Dying(Supervisor):
        def _one(self, listener, buf):
            raise RuntimeError("boom")

    code, out, err, said, _reported, _sup = run_supervised(ExecPolicy(Policy()), "/bin/echo", "never", kind=Dying)
    assert code == 126 and "never" not in out
    assert "Function not implemented" in err  # ENOSYS: the listener is closed
    assert said and "exec supervisor stopped (RuntimeError: boom)" in said[0]


def test_helper_refuses_when_the_socket_is_not_a_socket(tmp_path):
    r, w = os.pipe()
    proc = subprocess.run(
        helper_argv("/bin/echo", "never", fd=r), pass_fds=(r,), env=ENV, capture_output=True, text=True, timeout=20
    )
    os.close(r)
    os.close(w)
    assert proc.returncode == 126 and "never" not in proc.stdout
    assert 'runtime exec policy "argv": the exec listener could not be handed to fence' in proc.stderr


def test_supervisor_ends_when_bwrap_never_sends():
    sup = Supervisor(ExecPolicy(Policy()), say=lambda line: None).start()
    sup.spawned()  # nobody else holds the socket: EOF
    thread = sup._thread
    assert thread is not None
    thread.join(5)
    assert not thread.is_alive() and not sup.listener_received.is_set()
    sup.stop()


def test_unsupported_kernel_refuses_the_run(monkeypatch):
    from fence.executor.host import host_facts
    from fence.executor.prepare import gather
    from fence.executor.runner import FenceError

    monkeypatch.setattr(es, "supported", lambda machine=None: "this kernel has no seccomp user notification")
    with pytest.raises(
        FenceError,
        match=r"seccomp user notification unavailable here .* To run with less protection: "
        r'set command.runtimeExecPolicy to "path"',
    ):
        gather(policy(runtime_exec_policy="argv"), ["true"], "/", ENV, "abc", host_facts(), [], "")


def test_exec_notify_program_shape():
    from fence.executor.inithelper import exec_notify_program

    for machine in ("x86_64", "aarch64"):
        program = exec_notify_program(machine)
        assert len(program) % 8 == 0 and len(program) // 8 <= 10
    assert len(exec_notify_program("x86_64")) > len(exec_notify_program("aarch64"))  # the x32 check
