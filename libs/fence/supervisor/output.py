"""How the supervisor speaks: ``[fence] ...`` progress lines and ``Error: ...`` on stderr.

One place, so the foreground ``fence up``, its detached log and the
``--detach`` parent (which looks for ``Error: `` lines in that log) agree.
"""

from __future__ import annotations

import sys


class StartFailed(Exception):
    """The supervisor could not bring the bus or a service up; shown as ``Error: ...``."""


def say(message: str) -> None:
    print(f"[fence] {message}", file=sys.stderr, flush=True)


def error(message: str) -> int:
    print(f"Error: {message}", file=sys.stderr, flush=True)
    return 1
