"""Turn policy path patterns into existing, canonical host paths.

``~`` is the caller's home, relative paths are against the working directory,
``*`` and ``**`` are globs.  Only paths that exist are returned (a mount needs
a source), canonicalised with ``realpath`` so a symlink can never redirect a
mount somewhere the policy did not name.

Expansion is bounded in entries visited and in time: the Go tool Fence once hung
walking a huge tree for a ``**`` pattern.  When a bound is hit the caller
learns it (``truncated``) and must decide; for masks, ``dir/**`` is handled
without walking at all (the whole directory is masked).
"""

from __future__ import annotations

import os
import time

from fence.globmatch import fnmatch_case

MAX_ENTRIES = 20000
MAX_SECONDS = 0.2


class Expansion:
    __slots__ = ("paths", "truncated")

    def __init__(self) -> None:
        self.paths: list[tuple[str, bool]] = []
        """(canonical path, is a directory)"""
        self.truncated = False


def absolute(pattern: str, cwd: str, home: str) -> str:
    if pattern == "~" or pattern.startswith("~/"):
        pattern = home + pattern[1:]
    return os.path.normpath(os.path.join(cwd, pattern))


def expand(patterns: list[str], cwd: str, home: str, contained: bool = False) -> Expansion:
    """Existing canonical paths matching ``patterns`` (deduplicated, in order).

    ``contained`` (for grants): a glob match that is a symlink leading out of
    the glob's literal base directory is dropped.  A sandbox that could write
    there earlier may have planted ``build/x -> ~/.ssh`` to be granted next
    time by ``build/*``; a path the user wrote out in full is still followed.
    """
    out = Expansion()
    seen: set[str] = set()
    deadline = time.monotonic() + MAX_SECONDS
    budget = [MAX_ENTRIES]
    for pattern in patterns:
        path = absolute(pattern, cwd, home)
        if path.endswith("/**"):  # everything under a directory: the directory itself
            path = path[:-3] or "/"
        base = ""
        if "*" in path or "?" in path or "[" in path:
            matches = _glob(path, deadline, budget)
            if matches is None:
                out.truncated = True
                continue
            if contained:
                literal = path[: min(path.find(c) for c in "*?[" if c in path)].rsplit("/", 1)[0] or "/"
                base = os.path.realpath(literal)
        else:
            matches = [path] if os.path.lexists(path) else []
        for match in matches:
            real = os.path.realpath(match)
            if base and not (real == base or real.startswith(base.rstrip("/") + "/")):
                continue
            if real not in seen and os.path.exists(real):
                seen.add(real)
                out.paths.append((real, os.path.isdir(real)))
    return out


def _glob(pattern: str, deadline: float, budget: list[int]) -> list[str] | None:
    """Match an absolute glob component by component; None when a bound was hit."""
    parts = pattern.strip("/").split("/")
    current = ["/"]
    for i, part in enumerate(parts):
        nxt: list[str] = []
        for base in current:
            if time.monotonic() > deadline or budget[0] <= 0:
                return None
            if part == "**":
                rest_is_last = i == len(parts) - 1
                for root, _dirs, files in _walk(base, deadline, budget):
                    if root is None:
                        return None
                    nxt.append(root)
                    if rest_is_last:
                        nxt.extend(os.path.join(root, f) for f in files)
                continue
            if not any(c in part for c in "*?["):
                candidate = os.path.join(base, part)
                if os.path.lexists(candidate):
                    nxt.append(candidate)
                continue
            try:
                names = os.listdir(base)
            except OSError:
                continue
            budget[0] -= len(names)
            nxt.extend(
                os.path.join(base, n)
                for n in names
                if fnmatch_case(n, part) and (not n.startswith(".") or part.startswith("."))
            )
        current = nxt
    return current


def _walk(base: str, deadline: float, budget: list[int]):
    for root, dirs, files in os.walk(base, followlinks=False):
        budget[0] -= len(dirs) + len(files)
        if time.monotonic() > deadline or budget[0] <= 0:
            yield None, [], []
            return
        yield root, dirs, files
