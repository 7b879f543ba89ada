"""The sandbox's filesystem view, planned purely: tiers -> bwrap mounts and Landlock rules.

Input is ``FsView``: every policy path already expanded by the caller to
existing canonical host paths (``fence.executor.paths``) and the mandatory
protections found by ``fence.executor.protect``.  Output is a flat bwrap
argument list in Fence's phase order (docs/compatibility.md#the-sandbox), where a later mount wins
over an earlier one:

1. base view: ``--ro-bind / /`` (read-mostly), ``--bind / /`` (allowWrite "/"),
   or under defaultDenyRead only the readable paths bound read-only;
2. devices (a private, sized ``/dev/shm`` with the minimal ``/dev``), ``/proc``
   read-only, a private sized ``/tmp`` with ``/tmp/fence``;
3. allowWrite binds (read/write/exec);
4. pinned directories, in path order with the allowWrite binds: every ``.git``
   and every directory between a writable root and a protected path, bound onto
   themselves (a mount point cannot be renamed or removed, so neither the
   repository nor the protected file's parent can be swapped for another);
   hidden directories (``/run/user/<uid>``) in the same path order, so a write
   grant above one cannot uncover it and the grants inside it are bound back
   over it (readable ones read-only);
5. mandatory protections, then denyWrite: read-only binds;
6. denyRead last, so it wins over everything: directories become empty
   read-only tmpfs, files read as empty (``/dev/null``);
7. fence's runtime directory hidden; last of all (``sealing``, after the exec
   masks and generated files the plan adds) the hidden directories' tmpfs made
   read-only, once everything inside them is mounted.

The same tiers become the Landlock rules the init helper applies inside
(``landlock_options``): read everything (or only the readable tiers), execute
without listing for allowExecute, every right on writable paths.
"""

from __future__ import annotations

from fence.mountops import Bind, BindFd, DevFs, Dir, Mount, ProcFs, RemountRo, Symlink, Tmpfs, render_all
from fence.runplan import FsView, Paths

__all__ = [
    "FsView",
    "Paths",
    "filesystem_args",
    "filesystem_mounts",
    "landlock_options",
    "pinned_sources",
    "repair_runtime_env",
    "sealing",
    "under",
    "writable_inside",
]

SYSTEM_READ_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
"""Readable under defaultDenyRead unless strictDenyRead (Fence's essential system paths)."""

SANDBOX_TMP = "/tmp/fence"
"""Always present and writable inside (a directory in the private /tmp)."""

DEV_RIGHTS = "read_file,read_dir,execute,write_file,truncate,ioctl_dev"
PROC_RIGHTS = "read_file,read_dir,write_file,truncate"

PINNED_FD_BASE = 11
"""Writable sources reach bwrap as fds ``PINNED_FD_BASE + i`` (the i-th of ``pinned_sources``): numbers the
plan decides, so a plan is the same wherever it is made; the launcher moves the fds it opened onto them
(10 is the exec supervisor's socket, 3-9 bwrap's fixed inputs)."""


def under(path: str, root: str) -> bool:
    return path == root or root == "/" or path.startswith(root + "/")


def pinned_sources(view: FsView) -> list[str]:
    """The writable sources bound by fd, in the order they are mounted (and numbered from ``PINNED_FD_BASE``).

    Pinned directories lie inside writable roots and writable roots may lie
    inside pinned directories: one sorted list binds every parent before what
    is inside it.  A writable "/" is the base view itself, not a bind.
    """
    return sorted({p for p, _ in view.write if p != "/"} | set(view.pinned))


def filesystem_mounts(view: FsView, masked_dirs: tuple[str, ...] = ()) -> list[Mount]:
    """The setup ops for ``view`` (phases 1-7 above; the caller ends with ``sealing``)."""
    ops: list[Mount] = []
    writes = sorted(p for p, _ in view.write)
    if view.default_deny_read:
        ops += [Bind(src=path, dest=path) for path in _outermost(sorted({p for p, _ in view.read + view.execute}))]
        ops += [Symlink(target=target, dest=path) for target, path in view.symlinks]
    else:
        ops.append(Bind(src="/", dest="/", writable="/" in writes))

    if view.devices == "host":
        ops.append(Bind(src="/dev", dest="/dev", device=True))
    else:
        ops.append(DevFs(dest="/dev"))
        ops += [Bind(src=dev, dest=dev, device=True) for dev in view.devices_allow]
        if view.shm_size:
            ops.append(Tmpfs(dest="/dev/shm", size=view.shm_size))
    ops += [ProcFs(dest="/proc", readonly=True), Tmpfs(dest="/tmp", size=view.tmp_size), Dir(dest=SANDBOX_TMP)]
    ops += [Dir(dest=path, perms=mode) for path, mode in view.runtime_dirs]
    ops += _in_path_order(view)
    readonly = dict.fromkeys(view.protected + [p for p, _ in view.deny_write if any(under(p, w) for w in writes)])
    ops += [Bind(src=path, dest=path) for path in readonly]
    for path, is_dir in view.deny_read:
        if path == "/tmp":
            continue  # the sandbox's /tmp is already its own
        # a directory appears empty, a file reads as empty (as in Fence: docs/compatibility.md#the-sandbox)
        ops.append(Tmpfs(dest=path, readonly=True) if is_dir else Bind(src="/dev/null", dest=path))
    ops += [Tmpfs(dest=path) for path in masked_dirs]
    return ops


def _in_path_order(view: FsView) -> list[Mount]:
    """Phases 3-4: writable binds, pinned directories, hidden directories and the grants inside them.

    One sort by path puts a parent before what lies inside it, so a write
    grant above a hidden directory is bound first and the hidden tmpfs over
    it, and the grants inside come back over the tmpfs.  A hidden tmpfs stays
    writable here (bwrap makes those mount points in it) until ``RemountRo``.
    """
    ops: list[tuple[str, Mount]] = [
        (path, BindFd(dest=path, fd=PINNED_FD_BASE + i)) for i, path in enumerate(pinned_sources(view))
    ]
    ops += [(path, Tmpfs(dest=path)) for path in view.hidden]
    ops += [(path, Bind(src=path, dest=path)) for path in view.hidden_grants]
    return [op for _, op in sorted(ops, key=lambda item: item[0])]


def sealing(view: FsView) -> list[Mount]:
    """The hidden directories' tmpfs made read-only: the sandbox's very last mounts, after exec masks and
    generated files too, because every mount inside a hidden directory needs its mount point made first."""
    return [RemountRo(dest=path) for path in view.hidden]


def filesystem_args(view: FsView, masked_dirs: tuple[str, ...] = ()) -> list[str]:
    """bwrap mount arguments for ``view``: ``filesystem_mounts`` and ``sealing`` rendered."""
    return render_all(filesystem_mounts(view, masked_dirs) + sealing(view))


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
    """TMPDIR and XDG_RUNTIME_DIR that would not work inside get working values (docs/compatibility.md#environment).

    Returns the variables to override and the private directories to create:
    an unusable TMPDIR becomes ``/tmp``; an unusable XDG_RUNTIME_DIR becomes a
    fresh ``/tmp/fence-runtime-<sandbox>`` (mode 0700) that vanishes with the
    sandbox's /tmp (the usual ``/run/user/<uid>`` is hidden, so it is repaired
    too).  Writable inherited values are kept.
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
    hidden = [h for h in view.hidden if under(path, h)]
    if hidden and not any(under(path, w) and any(under(w, h) and w != h for h in hidden) for w, _ in view.write):
        return False  # a hidden directory's tmpfs is read-only: only a write grant inside it is writable
    if any(under(path, p) for p in view.protected) or any(under(path, p) for p, _ in view.deny_write):
        return False
    if path in ("/tmp", SANDBOX_TMP) or any(under(path, d) for d, _ in view.runtime_dirs):
        return True
    return any(under(path, p) for p, _ in view.write)
