"""``allowPty``: fence on a real terminal gives the command a PTY of its own and relays it.

The test is the terminal emulator (``conftest.Terminal``: a pty whose slave is
fence's stdin/stdout/stderr and controlling terminal): it types, reads the
screen and resizes the window, as a person would.  Every case runs as the
current user and as an unprivileged one.
"""

from __future__ import annotations

import os
import signal
import termios
import time

import pytest

pytestmark = pytest.mark.sandbox

PTY = '{"allowPty": true}'

TERMINAL_FACTS = r"""
import os, fcntl, termios
print("tty-in", os.isatty(0), "tty-out", os.isatty(1))
print("pty-major", os.major(os.fstat(0).st_rdev) in range(136, 144))
try:
    foreground = os.tcgetpgrp(0) == os.getpgrp()
except OSError:  # not our controlling terminal
    foreground = None
print("session-leader", os.getsid(0) == os.getpid(), "foreground", foreground)
try:
    with open("/dev/tty", "w") as t:
        t.write("via-dev-tty\n")
except OSError as e:
    print("no /dev/tty", e.errno)
m, s = os.openpty()
print("inner-pty", os.ttyname(s))
try:
    fcntl.ioctl(0, termios.TIOCSTI, b"x")
    print("tiocsti allowed")
except OSError as e:
    print("tiocsti", e.errno)
"""

RESIZE = r"""
import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGWINCH, signal.SIGINT})
def show():
    c, r = os.get_terminal_size(0)
    print(f"size {r}x{c}", flush=True)
sys.stdout.write("\x1b[?1049h")  # the alternate screen, as full-screen programs use
show()
print("ready", flush=True)
while signal.sigwait({signal.SIGWINCH, signal.SIGINT}) == signal.SIGWINCH:
    show()
print("bye")
"""

CTRL_C = r"""
import time
try:
    print("ready", flush=True)
    time.sleep(20)
except KeyboardInterrupt:
    print("got KeyboardInterrupt", flush=True)
time.sleep(0.3)
print("still alive", flush=True)
"""


def config(fence, text: str = PTY):
    work = fence.workdir()
    cfg = work / "fence.json"
    cfg.write_text(text)
    return str(cfg), str(work)


def test_command_owns_a_fresh_terminal(fence):
    cfg, work = config(fence)
    with fence.terminal(
        "-d", "-s", cfg, "--", "sh", "-c", 'tty; exec python3 -c "$1"', "sh", TERMINAL_FACTS, cwd=work
    ) as term:
        assert term.wait() == 0
    screen = term.text.replace("\r\n", "\n")
    assert "tty-in True tty-out True" in screen
    assert "pty-major True" in screen  # a pseudo-terminal slave, not the user's terminal
    assert "session-leader True foreground True" in screen  # job control: the PTY is its controlling tty
    assert "via-dev-tty" in screen
    assert "inner-pty /dev/pts/" in screen  # the sandbox's own /dev/pts + /dev/ptmx work
    assert "tiocsti 1" in screen  # EPERM: the seccomp filter still refuses TIOCSTI
    tty_line = screen.split("started (pid")[1].splitlines()[1]
    assert tty_line.startswith("/dev/") and tty_line != "not a tty"
    sandboxed = next(line for line in screen.splitlines() if line.startswith("[fence] Sandboxed command:"))
    assert "--new-session" not in sandboxed and "--pty -- sh -c" in sandboxed
    assert "[fence:linux] Sandbox: " in screen and ", pty\n" in screen
    assert "is not granted" not in screen


def test_full_screen_program_sees_a_resize(fence):
    cfg, work = config(fence)
    with fence.terminal("-s", cfg, "--", "python3", "-c", RESIZE, cwd=work, rows=24, cols=80) as term:
        term.expect("ready")
        assert "size 24x80" in term.text  # the window size is the user's from the start
        term.resize(40, 120)  # the kernel sends SIGWINCH to fence, fence resizes the PTY, the command sees it
        term.expect("size 40x120")
        term.resize(30, 100)
        term.expect("size 30x100")
        term.send(b"\x03")
        assert term.wait() == 0 and "bye" in term.text
    assert term.text.count("size 40x120") == 1  # one SIGWINCH per resize: fence does not deliver it again


def test_ctrl_c_reaches_the_command_and_not_bwrap(fence):
    cfg, work = config(fence)
    with fence.terminal("-s", cfg, "--", "python3", "-c", CTRL_C, cwd=work) as term:
        term.expect("ready")
        term.send(b"\x03")  # raw mode: the byte travels to the PTY, whose line discipline makes SIGINT
        term.expect("still alive")
        assert term.wait() == 0


def test_ctrl_z_on_a_program_without_job_control_is_harmless(fence):
    cfg, work = config(fence)
    with fence.terminal("-s", cfg, "--", "sh", "-c", "echo ready; sleep 1; echo finished", cwd=work) as term:
        term.expect("ready")
        term.send(b"\x1a")  # nothing could resume a stopped command: the kernel discards the stop
        term.expect("finished")
        assert term.wait() == 0


def test_job_control_in_an_interactive_shell(fence):
    cfg, work = config(fence)
    env = fence.env(PS1="sandbox$ ")
    with fence.terminal("-s", cfg, "--", "bash", "--norc", "--noprofile", "-i", env=env, cwd=work) as term:
        term.expect("sandbox$ ")
        term.send(b"sleep 30\r")
        time.sleep(0.5)
        term.send(b"\x1a")  # stops the foreground job, the shell takes the terminal back
        term.expect("Stopped")
        term.send(b"jobs -l; fg\r")
        term.expect("sleep 30\r\n", timeout=5)
        time.sleep(0.3)
        term.send(b"\x03")  # to the job in the foreground again, not to the shell
        term.send(b"echo done-$((6*7)) $?; exit 4\r")
        term.expect("done-42 130")
        assert term.wait() == 4


def test_exit_codes_are_unchanged(fence):
    cfg, work = config(fence)
    with fence.terminal("-s", cfg, "--", "sh", "-c", "kill -USR1 $$", cwd=work) as term:
        assert term.wait() == 128 + signal.SIGUSR1


def test_signals_sent_to_fence(fence):
    script = r"""
import os, signal, sys, time
# os.write, not print: the signal may land inside the loop's print (a reentrant buffered write fails)
signal.signal(signal.SIGTERM, lambda *_: (os.write(1, b"got TERM\n"), sys.exit(5)))
print("ready", flush=True)
for _ in range(40):
    time.sleep(0.5)
    print("tick", flush=True)
"""
    cfg, work = config(fence)
    with fence.terminal("-s", cfg, "--", "python3", "-c", script, cwd=work) as term:
        term.expect("ready")
        assert not term.modes()[3] & termios.ICANON  # relaying: the user's terminal is raw
        os.kill(term.proc.pid, signal.SIGTSTP)  # fence stops itself, giving the terminal back first
        _, status = os.waitpid(term.proc.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        assert term.modes()[3] & termios.ICANON and term.modes()[3] & termios.ECHO
        os.kill(term.proc.pid, signal.SIGCONT)
        term.expect("tick")
        deadline = time.monotonic() + 10
        while term.modes()[3] & termios.ICANON and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not term.modes()[3] & termios.ICANON  # raw again
        term.proc.send_signal(signal.SIGTERM)  # to the PTY's foreground group: the command
        term.expect("got TERM")
        assert term.wait() == 5
        modes = term.modes()
        assert modes[3] & termios.ICANON and modes[3] & termios.ECHO and modes[1] & termios.OPOST  # restored


def test_hangup_reaches_the_command(fence):
    script = r"""
import signal, sys, time
signal.signal(signal.SIGHUP, lambda *_: sys.exit(9))
print("ready", flush=True)
time.sleep(20)
"""
    cfg, work = config(fence)
    with fence.terminal("-s", cfg, "--", "python3", "-c", script, cwd=work) as term:
        term.expect("ready")
        term.proc.send_signal(signal.SIGHUP)  # the user's terminal went away: fence hangs the PTY up
        assert term.wait() == 9


def test_without_allow_pty_the_terminal_is_the_users_and_new_session_stays(fence):
    cfg, work = config(fence, "{}")
    with fence.terminal("-d", "-s", cfg, "--", "python3", "-c", TERMINAL_FACTS, cwd=work) as term:
        assert term.wait() == 0
    screen = term.text.replace("\r\n", "\n")
    sandboxed = next(line for line in screen.splitlines() if line.startswith("[fence] Sandboxed command:"))
    assert "--new-session" in sandboxed and "--pty" not in sandboxed
    assert ", pty" not in screen
    assert "tty-in True" in screen  # the user's terminal itself, in a new session: no controlling tty
    assert "session-leader False foreground None" in screen and "no /dev/tty" in screen
    assert "tiocsti 1" in screen  # and TIOCSTI refused


@pytest.mark.parametrize("how", ["flag", "config"])
def test_force_new_session_keeps_new_session(fence, how):
    text = '{"allowPty": true, "forceNewSession": true}' if how == "config" else PTY
    cfg, work = config(fence, text)
    flag = ["--force-new-session"] if how == "flag" else []
    with fence.terminal("-d", *flag, "-s", cfg, "--", "python3", "-c", TERMINAL_FACTS, cwd=work) as term:
        assert term.wait() == 0
    screen = term.text.replace("\r\n", "\n")
    sandboxed = next(line for line in screen.splitlines() if line.startswith("[fence] Sandboxed command:"))
    assert "--new-session" in sandboxed and "--pty --" in sandboxed
    assert ", pty(new-session)\n" in screen
    # the PTY still works in full: the command takes it as its controlling terminal in its own session
    assert "session-leader True foreground True" in screen


def test_allow_pty_without_a_terminal_changes_nothing(fence):
    cfg, work = config(fence)
    r = fence.run("-d", "-s", cfg, "--", "sh", "-c", "test -t 0 || echo no-tty", cwd=work)
    assert r.returncode == 0 and r.stdout == "no-tty\n"
    assert "--new-session" in r.stderr and "--pty" not in r.stderr and ", pty" not in r.stderr
