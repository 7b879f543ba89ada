"""Which policy fields this build enforces, and what to do about the rest.

Fail closed: a field that asks for *more* protection than the sandbox can give
yet refuses the run with an error naming it; a field that *grants* something
not built yet (a writable path, a domain) is left ungranted, which only
restricts more, and ``-d`` says so.  As layers land, fields move out of these
lists; the tests pin both lists.
"""

from __future__ import annotations

from fence.policy import Policy


def refused(policy: Policy) -> list[str]:
    """Fields asking for protection this build cannot apply: the run must not start."""
    return []


def ungranted(policy: Policy) -> list[str]:
    """Fields granting access this build does not provide yet (the sandbox stays stricter)."""
    return []
