"""What the parser reports, and the limits past which it gives up.

Every other module of the package builds on these; callers (the command and
SSH policies, the runtime exec policy) see only ``Command`` and ``ParseError``.
"""

from __future__ import annotations

MAX_DEPTH = 64
"""Deepest nesting of substitutions, nested shells, eval and brackets that is parsed."""
MAX_COMMANDS = 10000
"""Most commands one check may produce (brace expansion and nesting multiply them)."""


class ParseError(ValueError):
    """The input is too deeply nested or too large to check."""


class Command:
    """One command the input would run.

    ``argv``: its words (unknown parts keep their source text, e.g. ``$x``);
    ``dynamic``: per word, True when its value is only known at run time;
    ``open_tail``: more arguments arrive at run time (``xargs``);
    ``env``: literal ``NAME=value`` assignments in effect for it (prefix
    assignments, ``env NAME=value``, earlier assignments in the script).
    """

    __slots__ = ("argv", "dynamic", "open_tail", "env")

    def __init__(
        self,
        argv: list[str],
        dynamic: list[bool] | None = None,
        open_tail: bool = False,
        env: dict[str, str] | None = None,
    ):
        self.argv = argv
        self.dynamic = dynamic if dynamic is not None else [False] * len(argv)
        self.open_tail = open_tail
        self.env = env if env is not None else {}

    @property
    def name(self) -> str:
        """The executable's basename (what rules match on); "" when only known at run time.

        ``$HOME/bin/git`` is still ``git``: only its directory is unknown.
        """
        if not self.argv:
            return ""
        base = basename(self.argv[0])
        if self.dynamic[0] and ("$" in base or "`" in base or "(" in base or ")" in base):
            return ""
        return base

    def text(self) -> str:
        return " ".join(self.argv)

    def __repr__(self) -> str:
        flags = (" dyn" if any(self.dynamic) else "") + (" +stdin-args" if self.open_tail else "")
        return f"Command({self.argv!r}{flags})"

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, Command)
            and self.argv == other.argv
            and self.dynamic == other.dynamic
            and self.open_tail == other.open_tail
        )


def basename(path: str) -> str:
    """``/usr/bin/git`` -> ``git``; ``../../bin/rm`` -> ``rm``; ``dir/`` stays ``dir/`` (not a program)."""
    i = path.rfind("/")
    if i < 0 or i == len(path) - 1:
        return path
    return path[i + 1 :]
