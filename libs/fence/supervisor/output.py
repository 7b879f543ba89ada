"""How the supervisor speaks: ``[fence] ...`` progress lines and ``Error: ...`` on stderr.

One place, so the foreground ``fence up``, its detached log and the
``--detach`` parent (which looks for ``Error: `` lines in that log) agree.
Both are escaped (``fence.textsafe``): messages carry paths and error text.
"""

from __future__ import annotations

import sys

from fence.textsafe import printable, printable_message


class StartFailed(Exception):
    """The supervisor could not bring the bus or a service up; shown as ``Error: ...``."""


def say(message: str) -> None:
    print(f"[fence] {printable(message)}", file=sys.stderr, flush=True)


def error(message: str) -> int:
    print(f"Error: {printable_message(message)}", file=sys.stderr, flush=True)
    return 1
