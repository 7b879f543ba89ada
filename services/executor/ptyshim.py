"""Runs inside the sandbox, first, in a PTY run: make the PTY the command's terminal, then exec it.

``python -I -S ptyshim.py CMD ARGS...`` with the PTY's slave on stdin.
``setsid()`` gives the command a session of its own and ``TIOCSCTTY`` makes
the PTY its controlling terminal, so the PTY's foreground group is the
command's (or its shell's foreground job's) and never bwrap's: see
``fence.executor.ptyrelay`` for why that matters.

The command gets the environment this process was started with, read back
from ``/proc/self/environ``: Python's start-up may have added ``LC_CTYPE``
(C locale coercion) to ``os.environ``, and the command must see exactly the
planned environment.  Stdlib only; nothing here may import fence.
"""

import fcntl
import os
import sys
import termios


def main(argv):
    if not argv:
        sys.stderr.write("[fence] Error: ptyshim: no command\n")
        return 2
    try:
        os.setsid()  # bwrap's pid 2 leads no process group, so this succeeds
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    except OSError as e:  # the command still runs on the PTY, only without job control
        sys.stderr.write(f"[fence] Warning: the PTY is not the command's controlling terminal: {e.strerror}\n")
    with open("/proc/self/environ", "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        sys.stderr.write(f"[fence] Error: cannot execute {argv[0]}: {e.strerror}\n")
        return 127 if isinstance(e, FileNotFoundError) else 126


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
