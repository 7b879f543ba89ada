"""Which shell runs ``fence -c STRING``: deterministic bash, or the user's validated ``$SHELL``.

bash by default, found on PATH, so the same string means the same thing on
every machine and to the preflight parser (which reads it as POSIX/bash
syntax).  ``--shell user`` runs ``$SHELL`` instead, but only a shell the
system vouches for: an absolute path that exists, is executable and is
listed in ``/etc/shells``.  Anything else is an error naming the problem;
fence never falls back silently.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

MODES = ("bash", "user")


class ShellError(Exception):
    pass


def select_shell(mode: str, env: Mapping[str, str], which, shells_file: str = "/etc/shells") -> str:
    """The shell executable for ``mode``; ``which(name, PATH)`` finds bash."""
    if mode not in MODES:
        raise ShellError(f"invalid --shell {mode!r} (expected one of: {', '.join(MODES)})")
    if mode == "bash":
        found = which("bash", env.get("PATH", ""))
        if not found:
            raise ShellError('shell "bash" not found on PATH')
        return found
    shell = env.get("SHELL", "")
    if not shell:
        raise ShellError("--shell user: $SHELL is not set")
    if not shell.startswith("/"):
        raise ShellError(f"--shell user: $SHELL must be an absolute path, got {shell!r}")
    if not os.path.isfile(shell) or not os.access(shell, os.X_OK):
        raise ShellError(f"--shell user: $SHELL {shell} is not an executable file")
    if shell not in _listed_shells(shells_file):
        raise ShellError(f"--shell user: $SHELL {shell} is not listed in {shells_file}")
    return shell


def _listed_shells(path: str) -> set[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return {line.strip() for line in f if line.strip() and not line.startswith("#")}
    except OSError:
        return set()
