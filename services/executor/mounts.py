"""The sandbox's filesystem view, planned purely: tiers -> bwrap mounts and Landlock rules.

Input is ``FsView``: every policy path already expanded by the caller to
existing canonical host paths (``fence.executor.paths``) and the mandatory
protections found by ``fence.executor.protect``.  Output is a flat bwrap
argument list in the reference's phase order (§6.2), where a later mount wins
over an earlier one:

1. base view: ``--ro-bind / /`` (read-mostly), ``--bind / /`` (allowWrite "/"),
   or under defaultDenyRead only the readable paths bound read-only;
2. devices, ``/proc``, a private ``/tmp`` with ``/tmp/fence``;
3. allowWrite binds (read/write/exec);
4. pinned directories, in path order with the allowWrite binds: every ``.git``
   and every directory between a writable root and a protected path, bound onto
   themselves (a mount point cannot be renamed or removed, so neither the
   repository nor the protected file's parent can be swapped for another);
5. mandatory protections, then denyWrite: read-only binds;
6. denyRead last, so it wins over everything: directories become empty
   read-only tmpfs, files read as empty (``/dev/null``);
7. fence's runtime directory hidden.

The same tiers become the Landlock rules the init helper applies inside
(``landlock_options``): read everything (or only the readable tiers), execute
without listing for allowExecute, every right on writable paths.
"""

from __future__ import annotations

import msgspec

SYSTEM_READ_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
"""Readable under defaultDenyRead unless strictDenyRead (the reference's essential system paths)."""

SANDBOX_TMP = "/tmp/fence"
"""Always present and writable inside (a directory in the private /tmp)."""

DEV_RIGHTS = "read_file,read_dir,execute,write_file,truncate,ioctl_dev"
PROC_RIGHTS = "read_file,read_dir,write_file,truncate"

Paths = list[tuple[str, bool]]
"""(canonical existing path, is a directory)"""


class FsView(msgspec.Struct):
    """The filesystem facts the planner needs, gathered (and bounded) by the caller."""

    read: Paths = []
    """allowRead (plus system and helper paths under defaultDenyRead)."""
    execute: Paths = []
    write: Paths = []
    deny_read: Paths = []
    deny_write: Paths = []
    protected: list[str] = []
    """Mandatory read-only paths (existing, under a writable path)."""
    pinned: list[str] = []
    """Directories under a writable root to bind onto themselves (``.git``, parents of protected paths)."""
    default_deny_read: bool = False
    devices: str = "minimal"
    """"minimal" (bwrap's own /dev) or "host" (the host's /dev)."""
    devices_allow: list[str] = []
    """Existing host device paths passed through in minimal mode."""
    symlinks: list[tuple[str, str]] = []
    """(target, path): symlinks the user named under defaultDenyRead (``/lib64 -> usr/lib64``), recreated
    inside because only their canonical targets are bound."""
    runtime_dirs: list[tuple[str, str]] = []
    """(path, octal mode) directories to create inside the private /tmp (XDG_RUNTIME_DIR repair)."""
    write_fds: dict[str, int] = {}
    """Writable sources opened (``O_PATH``) and checked by the caller: bound with ``--bind-fd`` so a path
    swapped for a symlink after the check (another sandbox writing the same project) cannot redirect
    the bind; bwrap verifies the mount and closes each fd before the command runs."""

    def writable_roots(self) -> list[str]:
        return [p for p, _ in self.write]


def under(path: str, root: str) -> bool:
    return path == root or root == "/" or path.startswith(root + "/")


def filesystem_args(view: FsView, masked_dirs: tuple[str, ...] = ()) -> list[str]:
    """bwrap mount arguments for ``view`` (phases 1-7 above)."""
    args: list[str] = []
    writes = sorted(p for p, _ in view.write)
    root_writable = "/" in writes
    if view.default_deny_read:
        for path in _outermost(sorted({p for p, _ in view.read + view.execute})):
            args += ["--ro-bind", path, path]
        for target, path in view.symlinks:
            args += ["--symlink", target, path]
    else:
        args += ["--bind" if root_writable else "--ro-bind", "/", "/"]

    if view.devices == "host":
        args += ["--dev-bind", "/dev", "/dev"]
    else:
        args += ["--dev", "/dev"]
        for dev in view.devices_allow:
            args += ["--dev-bind", dev, dev]
    args += ["--proc", "/proc", "--tmpfs", "/tmp", "--dir", SANDBOX_TMP]
    for path, mode in view.runtime_dirs:
        args += ["--perms", mode, "--dir", path]

    # pinned directories lie inside writable roots and writable roots may lie inside pinned
    # directories: one sorted list binds every parent before what is inside it
    for path in sorted({w for w in writes if w != "/"} | set(view.pinned)):
        fd = view.write_fds.get(path)
        args += ["--bind-fd", str(fd), path] if fd is not None else ["--bind", path, path]
    readonly = list(dict.fromkeys(view.protected + [p for p, _ in view.deny_write
                                                     if any(under(p, w) for w in writes)]))
    for path in readonly:
        args += ["--ro-bind", path, path]
    for path, is_dir in view.deny_read:
        if path == "/tmp":
            continue  # the sandbox's /tmp is already its own
        # a directory appears empty, a file reads as empty (reference §6.2 step 9)
        args += ["--tmpfs", path, "--remount-ro", path] if is_dir else ["--ro-bind", "/dev/null", path]
    for path in masked_dirs:
        args += ["--tmpfs", path]
    return args


def _outermost(paths: list[str]) -> list[str]:
    """Drop paths inside another listed path (their parent's bind already shows them)."""
    out: list[str] = []
    for path in paths:  # sorted: a parent comes before its children
        if not any(under(path, kept) for kept in out):
            out.append(path)
    return out


def landlock_options(view: FsView, exec_denied: tuple[str, ...] = ()) -> list[str]:
    """The init helper's options for ``view``: the same tiers, enforced by the kernel a second time.

    Landlock only grants, so denyRead/denyWrite/protections stay the mounts'
    job (a read-only mount refuses writes whatever Landlock allows).  What it
    adds: allowExecute means execute without listing; writes are confined to
    the writable tiers even where a mount is writable (``/tmp``, ``/dev``).
    """
    opts: list[str] = []
    if view.default_deny_read:
        for path, _ in view.read:
            opts += ["-r", path]
        for path, _ in view.execute:
            opts += ["-x", path]
    else:
        opts += ["-r", "/"]
    opts += ["--rights", DEV_RIGHTS, "/dev", "--rights", PROC_RIGHTS, "/proc", "-w", "/tmp", "-w", "/dev/shm"]
    for path, _ in view.write:
        opts += ["-w", path]
    return opts


def repair_runtime_env(env: dict[str, str], view: FsView, sandbox: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """TMPDIR and XDG_RUNTIME_DIR that would not work inside get working values (reference §6.8).

    Returns the variables to override and the private directories to create:
    an unusable TMPDIR becomes ``/tmp``; an unusable XDG_RUNTIME_DIR becomes a
    fresh ``/tmp/fence-runtime-<sandbox>`` (mode 0700) that vanishes with the
    sandbox's /tmp.  Writable inherited values are kept.
    """
    changes: dict[str, str] = {}
    dirs: list[tuple[str, str]] = []
    tmpdir = env.get("TMPDIR")
    if tmpdir is not None and not (tmpdir.startswith("/") and writable_inside(view, tmpdir.rstrip("/") or "/")):
        changes["TMPDIR"] = "/tmp"
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg is not None and not (xdg.startswith("/") and writable_inside(view, xdg.rstrip("/") or "/")):
        path = f"/tmp/fence-runtime-{sandbox}"
        changes["XDG_RUNTIME_DIR"] = path
        dirs.append((path, "0700"))
    return changes, dirs


def writable_inside(view: FsView, path: str) -> bool:
    """Whether ``path`` can be written inside the sandbox (for TMPDIR / XDG_RUNTIME_DIR repair)."""
    if any(under(path, p) for p, _ in view.deny_read):
        return False
    if any(under(path, p) for p in view.protected) or any(under(path, p) for p, _ in view.deny_write):
        return False
    if path in ("/tmp", SANDBOX_TMP) or any(under(path, d) for d, _ in view.runtime_dirs):
        return True
    return any(under(path, p) for p, _ in view.write)
