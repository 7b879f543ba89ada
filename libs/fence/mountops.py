"""The sandbox's setup operations as typed values, rendered to bwrap arguments only at the edge.

bubblewrap itself parses its command line into a list of typed setup ops
and then runs them in order; fence plans the same list.  ``fence -d``, the
executor service's plan endpoint and the tests all work on these values
(which op, which path, writable or not) rather than on string positions in
an argv, and ``render`` is the one place that knows bwrap's spelling.

Every op is a tagged msgspec Struct, so a plan crosses the bus as
``{"op": "bind", ...}`` records.
"""

from __future__ import annotations

import msgspec


class Op(msgspec.Struct, frozen=True, kw_only=True, tag_field="op"):
    """Base of every setup op; ``dest`` is the path inside the sandbox (keywords only: no src/dest mix-ups)."""

    dest: str


class Bind(Op, tag="bind", frozen=True):
    """``src`` shown at ``dest``: read-only unless ``writable``; ``device`` keeps device nodes usable."""

    src: str
    writable: bool = False
    device: bool = False


class BindFd(Op, tag="bind-fd", frozen=True):
    """A writable bind of a source fence opened and checked (``fd`` is the number bwrap receives):
    a path swapped for a symlink after the check cannot redirect it."""

    fd: int


class DevFs(Op, tag="dev", frozen=True):
    """bwrap's own minimal /dev (null, zero, full, random, urandom, tty, pts, shm)."""


class ProcFs(Op, tag="proc", frozen=True):
    """A fresh /proc for the sandbox's pid namespace; ``readonly`` remounts it read-only (no write through
    /proc reaches another process's memory, /proc/<pid>/mem, or the kernel's settings, /proc/sys)."""

    readonly: bool = False


class Tmpfs(Op, tag="tmpfs", frozen=True):
    """An empty tmpfs; ``readonly`` remounts it read-only (how a denied directory looks empty); ``size``: the
    most it may hold, in bytes (0: the kernel's default, half of RAM)."""

    readonly: bool = False
    size: int = 0


class RemountRo(Op, tag="remount-ro", frozen=True):
    """``dest``'s mount made read-only, not its submounts: for a tmpfs that must stay writable until the
    mount points of what is bound inside it have been made (a hidden directory's granted paths)."""


class Dir(Op, tag="dir", frozen=True):
    """A directory created inside (in a tmpfs); ``perms`` an octal mode, "" for bwrap's default."""

    perms: str = ""


class Symlink(Op, tag="symlink", frozen=True):
    target: str


class DataFile(Op, tag="data", frozen=True):
    """A generated read-only file whose content bwrap reads from ``fd`` (nothing is written on the host)."""

    fd: int
    perms: str = "0644"


Mount = Bind | BindFd | DevFs | ProcFs | Tmpfs | RemountRo | Dir | Symlink | DataFile


def render(op: Mount) -> list[str]:
    """The bwrap arguments for one op."""
    if isinstance(op, Bind):
        flag = "--dev-bind" if op.device else "--bind" if op.writable else "--ro-bind"
        return [flag, op.src, op.dest]
    if isinstance(op, BindFd):
        return ["--bind-fd", str(op.fd), op.dest]
    if isinstance(op, DevFs):
        return ["--dev", op.dest]
    if isinstance(op, ProcFs):
        return ["--proc", op.dest, *(["--remount-ro", op.dest] if op.readonly else [])]
    if isinstance(op, Tmpfs):
        size = ["--size", str(op.size)] if op.size else []
        return [*size, "--tmpfs", op.dest, *(["--remount-ro", op.dest] if op.readonly else [])]
    if isinstance(op, RemountRo):
        return ["--remount-ro", op.dest]
    if isinstance(op, Dir):
        return [*(["--perms", op.perms] if op.perms else []), "--dir", op.dest]
    if isinstance(op, Symlink):
        return ["--symlink", op.target, op.dest]
    if isinstance(op, DataFile):
        return ["--perms", op.perms, "--ro-bind-data", str(op.fd), op.dest]
    raise TypeError(f"not a setup op: {op!r}")


def render_all(ops: list[Mount]) -> list[str]:
    args: list[str] = []
    for op in ops:
        args += render(op)
    return args
