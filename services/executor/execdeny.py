"""Runtime exec policy "path": denied programs become unexecutable files inside the sandbox.

Preflight reads the command line; what the command starts later (a script,
``make``, ``python -c 'subprocess...'``) it never sees.  So every
single-token deny rule (``chroot``, ``shutdown``; from ``command.deny`` and,
unless ``useDefaults`` is false, the default list) is also enforced on the
files: each executable the sandbox's PATH resolves the name to is covered by
``--ro-bind /dev/null <file>``.  /dev/null is a character device, so any
``execve`` of that path fails with EACCES ("Permission denied", exit 126)
whoever calls it and however it was spelled (``/usr/sbin/chroot``,
``/sbin/chroot`` through the usrmerge symlink, a symlink elsewhere): a bind
mount covers the file's dentry, and every path resolving to it lands on
the mount.  Hard links are other dentries of the same inode, so each hard
link found in a PATH directory is masked too.  Multi-token rules (``git
push``) cannot be enforced on files; the ``argv`` policy does that.

A name with an allow rule of its own (``command.allow: ["git status"]`` next
to ``command.deny: ["git"]``) is not masked: some invocations are allowed,
and a mask would break them.  Glob heads (``mkfs.*``) are not resolved.

**Shared (multicall) binaries.**  busybox or Nix's coreutils are one file
under many names; masking it for ``chroot`` would also take ``cat`` and
``ls``.  A masked file that some critical command (``CRITICAL_COMMANDS``,
resolved as the shell would: first hit on PATH) shares is still masked, with
Fence's warning (docs/compatibility.md#messages); a denied name listed in
``command.acceptSharedBinaryCannotRuntimeDeny`` is skipped silently instead.

Planning is pure: ``plan_masks(names, dirs, fs)`` takes the filesystem as an
object (``HostFS`` on the host, a fake in tests), so the rules are testable
without a machine layout.  Cost on a normal PATH: a stat per name and PATH
directory (directories are deduplicated by their real path first, so
``/bin`` and ``/usr/bin`` count once); a directory scan only for files with
hard links (``st_nlink > 1``) or when a warning has to count aliases.
"""

import os
import stat as stat_mod
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeGuard

import msgspec

from fence.defaults import DEFAULT_DENIED_COMMANDS
from fence.executor.commandrules import rule_tokens, use_defaults
from fence.runtime import cache_dir as default_cache_dir
from fence.runtime import read_cache, write_cache

CRITICAL_COMMANDS = (
    "awk",
    "basename",
    "bash",
    "cat",
    "chmod",
    "cp",
    "cut",
    "date",
    "dirname",
    "echo",
    "env",
    "find",
    "grep",
    "head",
    "id",
    "ln",
    "ls",
    "mkdir",
    "mv",
    "printf",
    "pwd",
    "readlink",
    "rm",
    "sed",
    "sh",
    "sleep",
    "sort",
    "tail",
    "tee",
    "test",
    "touch",
    "tr",
    "true",
    "uname",
    "wc",
    "xargs",
)
"""Commands so basic that losing them breaks ordinary scripts: sharing a file with one of them is a
shared binary."""

SHOWN_CRITICAL = 3
"""How many critical aliases the warning names before "+N more"."""


class FileId:
    """What planning needs from ``stat`` (symlinks followed).  (Plain classes, not NamedTuples: this
    module is imported on every run and a NamedTuple costs ~0.1 ms to define.)"""

    __slots__ = ("dev", "ino", "mode", "nlink")

    def __init__(self, dev: int, ino: int, mode: int, nlink: int):
        self.dev, self.ino, self.mode, self.nlink = dev, ino, mode, nlink

    @property
    def key(self) -> tuple[int, int]:
        return self.dev, self.ino


class Entry:
    """One directory entry, as ``scandir`` gives it without a stat call."""

    __slots__ = ("name", "ino", "is_symlink")

    def __init__(self, name: str, ino: int, is_symlink: bool):
        self.name, self.ino, self.is_symlink = name, ino, is_symlink


class FS(Protocol):
    """The filesystem questions planning asks."""

    def stat(self, path: str) -> FileId | None: ...
    def realpath(self, path: str) -> str: ...
    def entries(self, directory: str) -> Iterable[Entry]: ...


class HostFS:
    """The real filesystem (as the host sees it: the sandbox's root is a read-only bind of it)."""

    def stat(self, path: str) -> FileId | None:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        return FileId(st.st_dev, st.st_ino, st.st_mode, st.st_nlink)

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)

    def entries(self, directory: str) -> Iterable[Entry]:
        try:
            with os.scandir(directory) as it:
                return [Entry(e.name, e.inode(), e.is_symlink()) for e in it]
        except OSError:
            return []


class SharedBinary(msgspec.Struct, frozen=True):
    """A masked file that other commands are also names of."""

    command: str
    """The denied name that asked for the mask."""
    path: str
    """The file (canonical path)."""
    critical: tuple[str, ...]
    """Critical commands the file also implements (sorted)."""
    aliases: tuple[str, ...]
    """Every other name on PATH for the file (sorted; symlinks and hard links)."""

    def warning(self) -> str:
        """The Go tool Fence's warning text, word for word (docs/compatibility.md#messages)."""
        shown = list(self.critical[:SHOWN_CRITICAL])
        more = len(set(self.aliases) - set(shown))
        listed = " ".join(shown)
        if more:
            listed += f" +{more} more detected aliases, use --debug for expanded details"
        return (
            f"runtime exec deny warning for {self.path} (requested: {self.command}): shared binary also "
            f"implements critical commands [{listed}], which will be collaterally blocked. To skip runtime "
            f'blocking of "{self.command}" and silence this warning, add it to '
            f'"acceptSharedBinaryCannotRuntimeDeny" in your command config.'
        )


class ExecDeny(msgspec.Struct, frozen=True):
    """The plan for one run: what to mask and what to say about it."""

    masks: tuple[str, ...] = ()
    """Paths to cover with ``--ro-bind /dev/null`` (canonical, each once, in rule order)."""
    by_command: dict[str, tuple[str, ...]] = {}
    """Denied name -> the paths masked for it (for ``-d``)."""
    shared: tuple[SharedBinary, ...] = ()
    """Masked shared binaries: one warning each."""
    accepted: tuple[str, ...] = ()
    """Denied names skipped because ``acceptSharedBinaryCannotRuntimeDeny`` lists them."""
    not_found: tuple[str, ...] = ()
    """Denied names no PATH directory has (nothing to mask)."""
    shared_keys: tuple[tuple[int, int], ...] = ()
    """(dev, ino) of every shared file found, masked or accepted (the argv layer must not treat it as one
    command)."""
    hits: tuple[tuple[str, int, int], ...] = ()
    """Every (PATH directory/name, dev, ino) a denied name resolved to: what a cached plan re-checks."""


# --------------------------------------------------------------------------- rules


def deny_names(policy) -> list[str]:
    """The single-token deny rules that apply to ``policy``, as executable names, in rule order.

    From ``command.deny`` and (unless ``useDefaults`` is false) the default
    list; a name that any ``command.allow`` rule starts with is left out, and
    so are glob heads.
    """
    rules = list(policy.command.deny)
    if use_defaults(policy):
        rules += DEFAULT_DENIED_COMMANDS
    allowed = {tokens[0] for tokens in map(rule_tokens, policy.command.allow) if tokens}
    out: list[str] = []
    for rule in rules:
        tokens = rule_tokens(rule)
        if len(tokens) != 1:
            continue
        name = tokens[0]
        if not name or name in allowed or name in out or any(c in name for c in "*?["):
            continue
        out.append(name)
    return out


def rule_heads(policy) -> list[str]:
    """The executable name of every deny rule (multi-token ones too), for the argv layer's file identities."""
    rules = list(policy.command.deny) + (list(DEFAULT_DENIED_COMMANDS) if use_defaults(policy) else [])
    out: list[str] = []
    for rule in rules:
        tokens = rule_tokens(rule)
        if tokens and tokens[0] and tokens[0] not in out and not any(c in tokens[0] for c in "*?["):
            out.append(tokens[0])
    return out


def path_dirs(path: str, cwd: str, fs: FS) -> list[str]:
    """The sandbox's PATH as canonical directories, each once, in order ("" and relative: against cwd)."""
    out: list[str] = []
    for entry in path.split(":"):
        if not entry.startswith("/"):
            entry = os.path.join(cwd, entry) if entry else cwd
        real = fs.realpath(entry)
        if real not in out:
            out.append(real)
    return out


# --------------------------------------------------------------------------- planning


class _Target:
    __slots__ = ("names", "paths", "nlink", "critical")

    def __init__(self, nlink: int):
        self.names: list[str] = []
        self.paths: list[str] = []
        self.nlink = nlink
        self.critical: set[str] = set()


def _executable_file(st: FileId | None) -> TypeGuard[FileId]:
    return st is not None and stat_mod.S_ISREG(st.mode) and bool(st.mode & 0o111)


def first_on_path(name: str, dirs: Sequence[str], fs: FS) -> FileId | None:
    """What the shell would run for ``name``: the first executable regular file on PATH."""
    for d in dirs:
        st = fs.stat(f"{d}/{name}")
        if _executable_file(st):
            return st
    return None


def plan_masks(names: Sequence[str], dirs: Sequence[str], fs: FS, accept: Sequence[str] = ()) -> ExecDeny:
    """Which paths to mask so that no name in ``names`` can be executed from PATH ``dirs``.

    ``dirs``: canonical PATH directories (``path_dirs``).  ``accept``: names
    whose shared binaries are skipped silently.
    """
    targets: dict[tuple[int, int], _Target] = {}
    found: set[str] = set()
    hits: list[tuple[str, int, int]] = []
    for name in names:
        for d in dirs:
            path = f"{d}/{name}"
            st = fs.stat(path)
            if not _executable_file(st):
                continue
            found.add(name)
            hits.append((path, st.dev, st.ino))
            target = targets.get(st.key)
            if target is None:
                target = targets[st.key] = _Target(st.nlink)
            if name not in target.names:
                target.names.append(name)
            real = fs.realpath(path)
            if real not in target.paths:
                target.paths.append(real)
    if not targets:
        return ExecDeny(not_found=tuple(n for n in names if n not in found))

    # Only a file known under another name (a symlink to it, a hard link) can be shared; the
    # critical commands are resolved only when such a file is about to be masked.
    suspects = {
        key for key, t in targets.items() if t.nlink > 1 or any(p.rsplit("/", 1)[-1] not in t.names for p in t.paths)
    }
    if suspects:
        for name in CRITICAL_COMMANDS:
            st = first_on_path(name, dirs, fs)
            if st is not None and st.key in suspects:
                targets[st.key].critical.add(name)

    masks: list[str] = []
    by_command: dict[str, list[str]] = {}
    shared: list[SharedBinary] = []
    accepted: list[str] = []
    shared_keys: list[tuple[int, int]] = []
    for key, target in targets.items():
        collateral = target.critical - set(target.names)
        if collateral:
            shared_keys.append(key)
            kept = [n for n in target.names if n not in accept]
            accepted += [n for n in target.names if n in accept]
            if not kept:
                continue
            aliases = _aliases(key, dirs, fs)
            for name in kept:
                shared.append(
                    SharedBinary(
                        command=name,
                        path=target.paths[0],
                        critical=tuple(sorted(collateral)),
                        aliases=tuple(a for a in aliases if a != name),
                    )
                )
        if target.nlink > 1:
            for path in _hard_links(key, dirs, fs):
                if path not in target.paths:
                    target.paths.append(path)
        for path in target.paths:
            if path not in masks:
                masks.append(path)
        for name in target.names:
            if name not in accept or not collateral:
                by_command.setdefault(name, []).extend(target.paths)
    return ExecDeny(
        masks=tuple(masks),
        by_command={k: tuple(v) for k, v in by_command.items()},
        shared=tuple(shared),
        accepted=tuple(accepted),
        not_found=tuple(n for n in names if n not in found),
        shared_keys=tuple(shared_keys),
        hits=tuple(hits),
    )


def _hard_links(key: tuple[int, int], dirs: Sequence[str], fs: FS) -> list[str]:
    """Every regular entry of a PATH directory that is the file ``key`` (d_ino from the scan, dev confirmed)."""
    out = []
    _dev, ino = key
    for d in dirs:
        for entry in fs.entries(d):
            if entry.ino == ino and not entry.is_symlink:
                path = f"{d}/{entry.name}"
                st = fs.stat(path)
                if st is not None and st.key == key:
                    out.append(fs.realpath(path))
    return out


def _aliases(key: tuple[int, int], dirs: Sequence[str], fs: FS) -> list[str]:
    """Every name on PATH for the file ``key``: hard links and symlinks (resolved), sorted, each once."""
    names = set()
    for d in dirs:
        for entry in fs.entries(d):
            if entry.is_symlink or entry.ino == key[1]:
                st = fs.stat(f"{d}/{entry.name}")
                if st is not None and st.key == key:
                    names.add(entry.name)
    return sorted(names)


def identities(
    heads: Sequence[str], dirs: Sequence[str], fs: FS, exclude: Iterable[tuple[int, int]] = ()
) -> dict[tuple[int, int], tuple[str, ...]]:
    """(dev, ino) -> rule heads that name that file on PATH; for the argv layer.

    An exec of the file under another name (a symlink or hard link:
    ``ln -s /usr/bin/git /tmp/g; /tmp/g push``) is checked as each of these
    names too.  Shared binaries (``exclude``) and files with several hard
    links are left out: there the name it was run under picks the program.
    """
    skip = set(exclude)
    out: dict[tuple[int, int], list[str]] = {}
    for name in heads:
        for d in dirs:
            st = fs.stat(f"{d}/{name}")
            if not _executable_file(st) or st.key in skip or st.nlink > 1:
                continue
            names = out.setdefault(st.key, [])
            if name not in names:
                names.append(name)
    return {k: tuple(v) for k, v in out.items()}


# --------------------------------------------------------------------------- for the runner


def plan_for(policy, path: str, cwd: str, fs: FS | None = None, cache_dir: str | None = None) -> ExecDeny:
    """The masks for one run: ``policy``'s single-token deny rules on the sandbox's ``PATH``.

    Cached (``cache_dir``, default ``cache/`` in the runtime dir; "" for no
    cache) when ``fs`` is the host's: see ``_cached``.
    """
    names = deny_names(policy)
    if not names:
        return ExecDeny()
    accept = tuple(policy.command.accept_shared_binary_cannot_runtime_deny)
    if fs is not None:
        return plan_masks(names, path_dirs(path, cwd, fs), fs, accept)
    return _cached(names, accept, path, cwd, cache_dir)


# --------------------------------------------------------------------------- cache
# Planning costs ~1 ms on a 5-directory PATH and ~2.5 ms on a 12-directory one (a stat per name
# and directory); checking that a previous plan still holds costs a stat per PATH directory and
# per file found, ~0.1 ms.  A plan still holds when every PATH directory is the same directory,
# unmodified (an entry added, removed or renamed changes its mtime: a new program, a package
# upgrade), and every file found is still the same file through the same path (an alternatives
# symlink repointed elsewhere changes that).  The cache lives in fence's runtime directory, which
# every sandbox sees as an empty tmpfs, so no sandbox can shape a later run's masks.

FORMAT = 1


class _Cached(msgspec.Struct):
    """One cached plan.  (This module has no ``from __future__ import annotations``: msgspec would then
    evaluate every annotation string on its first decode, ~0.8 ms on each run.)"""

    key: str
    dirs: list[tuple[str, int, int, int]]
    """Each PATH entry (absolute) and its (dev, ino, mtime_ns) when planned; (0, 0, 0): missing."""
    result: ExecDeny


def _dir_state(path: str) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return 0, 0, 0
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _still_valid(entry: _Cached) -> bool:
    for path, dev, ino, mtime in entry.dirs:
        if _dir_state(path) != (dev, ino, mtime):
            return False
    for path, dev, ino in entry.result.hits:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return False
        if (st.st_dev, st.st_ino) != (dev, ino):
            return False
    return True


def _cached(names: list[str], accept: tuple[str, ...], path: str, cwd: str, cache_dir: str | None) -> ExecDeny:
    import zlib  # lazy: a run refused before planning never needs it (seccomp loads it for the others; ~0.35 ms)

    entries = []
    for entry in path.split(":"):
        entry = entry if entry.startswith("/") else os.path.join(cwd, entry) if entry else cwd
        if entry not in entries:
            entries.append(entry)
    key = repr((FORMAT, entries, names, accept))

    if cache_dir is None:
        cache_dir = default_cache_dir()
    file = os.path.join(cache_dir, f"execdeny-{zlib.crc32(key.encode()):08x}.json") if cache_dir else ""
    cached = read_cache(file, _Cached)
    if cached is not None and cached.key == key and _still_valid(cached):
        return cached.result
    states = [(e, *_dir_state(e)) for e in entries]
    fs = HostFS()
    result = plan_masks(names, path_dirs(path, cwd, fs), fs, accept)
    if file and [(e, *_dir_state(e)) for e in entries] == states:  # nothing moved while planning
        write_cache(file, _Cached(key=key, dirs=states, result=result))
    return result


def debug_lines(result: ExecDeny) -> list[str]:
    """``-d`` lines: each masked name, each accepted shared binary, and every alias of a warned one."""
    lines = [
        f"[fence:linux] Runtime exec deny: {name} -> {' '.join(paths)}" for name, paths in result.by_command.items()
    ]
    for name in result.accepted:
        lines.append(f"[fence:linux] Runtime exec deny: {name} skipped (acceptSharedBinaryCannotRuntimeDeny)")
    for item in result.shared:
        lines.append(f"[fence:linux] Runtime exec deny: {item.path} is also: {' '.join(item.aliases)}")
    return lines
