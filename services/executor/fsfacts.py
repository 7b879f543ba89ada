"""Gather the filesystem facts for one run: expand the tiers, find the protections (bounded).

The host-facing half of the filesystem layer: it stats and walks (within
fixed bounds), then hands a plain ``FsView`` to the pure planner
(``fence.executor.mounts``).  Grants that cannot be expanded safely are
dropped with a note (fewer rights); denials that cannot be expanded refuse
the run (``FsError``).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence

import msgspec

from fence.executor.mounts import SYSTEM_READ_PATHS, FsView, repair_runtime_env, under
from fence.executor.paths import absolute, expand
from fence.executor.protect import Protection, agent_config_notes, protected_paths
from fence.executor.reserve import PathSwapped
from fence.messages import SourceRef
from fence.policy import Policy


class FsError(Exception):
    """A filesystem rule that cannot be applied safely: the run must not start."""


class FsFacts:
    """The gathered view (for the plan) and the protection (for the doing: placeholders, quarantine)."""

    __slots__ = ("view", "protection", "env", "notes", "fds")

    def __init__(self, view: FsView, protection: Protection, env: dict[str, str], notes: list[str]):
        self.view, self.protection, self.env, self.notes = view, protection, env, notes
        self.fds: list[int] = []
        """The pinned sources this process holds open (``pin``) until bwrap has its copies."""

    def reserve(self) -> list[str]:
        """Reserve the missing protected paths right before launch; the view follows what could be made.

        Returns the warnings for paths only watched instead (the caller prints
        them and plans again with the updated view).
        """
        try:
            warnings = self.protection.reserve()
        except PathSwapped as e:
            raise FsError(f"{e}; another process is changing it: stop it, or remove the link") from None
        self.view = msgspec.structs.replace(
            self.view, protected=list(self.protection.readonly), pinned=list(self.protection.pinned)
        )
        return warnings

    def pin(self, planned: dict[int, str]) -> dict[int, int]:
        """Open and check each writable source the plan binds by fd: ``{fd bwrap receives: our fd}``."""
        found = pin(list(planned.values()))
        self.fds = list(found.values())
        return {target: found[path] for target, path in planned.items()}

    def close(self) -> None:
        """Close the pinned sources (once bwrap has started, or when the run stops before it)."""
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


PINNED_FD_MIN = 10
"""Pinned sources sit at or above this fd, clear of the fixed numbers bwrap is handed (3-9)."""


def pin(paths: list[str]) -> dict[str, int]:
    """Open each canonical path ``O_PATH`` and check the fd is that very path; FsError when one moved.

    Between ``realpath`` and bwrap's mount another process with write access
    (a second sandbox on the same project) could swap a directory for a
    symlink to somewhere it must not reach.  The fd pins what was checked.
    """
    fds: dict[str, int] = {}
    path = ""  # the one being opened, for the error
    try:
        for path in dict.fromkeys(paths):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, PINNED_FD_MIN)
            finally:
                os.close(fd)
            fds[path] = high
            if os.readlink(f"/proc/self/fd/{high}") != path:
                raise FsError(
                    f"filesystem.allowWrite: {path} changed while fence was checking it (replaced by a "
                    "link?); refusing to bind it writable"
                )
    except OSError as e:
        for fd in fds.values():
            os.close(fd)
        raise FsError(f"filesystem.allowWrite: cannot open {path}: {e.strerror}") from None
    except FsError:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def gather(
    policy: Policy,
    cwd: str,
    env: dict[str, str],
    sandbox: str,
    config_chain: Sequence[SourceRef] = (),
    config_dir: str = "",
    helper_paths: Sequence[str] = (),
) -> FsFacts:
    """Everything the plan (``prepare``) needs about the filesystem for ``policy`` run in ``cwd``.

    ``config_chain`` is where the config came from (``ConfigResolveReply.chain``): its files stay
    read-only, like ``config_dir``, the user config directory."""
    fs = policy.filesystem
    home = env.get("HOME", "/")
    notes: list[str] = []

    def grant(field: str, patterns: list[str]):
        found = expand(patterns, cwd, home, contained=True)
        if found.truncated:
            notes.append(f"filesystem.{field}: a glob matched too much to expand; those matches are not granted")
        return found.paths

    def deny(field: str, patterns: list[str]):
        found = expand(patterns, cwd, home)
        if found.truncated:
            raise FsError(
                f"filesystem.{field}: a glob matched too much to expand safely; make it narrower "
                "(for a whole directory write DIR/**)"
            )
        return found.paths

    write = grant("allowWrite", fs.allow_write)
    deny_read, deny_write = deny("denyRead", fs.deny_read), deny("denyWrite", fs.deny_write)
    default_deny_read = fs.default_deny_read or fs.strict_deny_read
    read: list[tuple[str, bool]] = []
    execute: list[tuple[str, bool]] = []
    symlinks: list[tuple[str, str]] = []
    if default_deny_read:
        # by their real paths, the usrmerge links (/bin -> usr/bin) recreated: a second bind of /usr/bin at
        # /bin would not carry the exec masks laid over /usr/bin/NAME (/bin/NAME would still run)
        system_paths = [] if fs.strict_deny_read else [p for p in SYSTEM_READ_PATHS if os.path.isdir(p)]
        system = list(dict.fromkeys((os.path.realpath(p), True) for p in system_paths))
        helper = [(os.path.realpath(p), os.path.isdir(p)) for p in helper_paths if os.path.exists(p)]
        read = system + helper + grant("allowRead", fs.allow_read)
        execute = grant("allowExecute", fs.allow_execute)
        symlinks = _named_symlinks(system_paths + fs.allow_read + fs.allow_execute + fs.allow_write, cwd, home)
        visible = [p for p, _ in read + execute + write]
        real_cwd = os.path.realpath(cwd)
        if not any(real_cwd == p or p == "/" or real_cwd.startswith(p + "/") for p in visible):
            raise FsError(
                f"filesystem.defaultDenyRead: the working directory {cwd} is not readable in the sandbox; "
                'add it to filesystem.allowRead (e.g. ".") or run from a readable directory'
            )
    elif fs.allow_execute:
        execute = grant("allowExecute", fs.allow_execute)

    devices = "host" if (policy.devices.mode or "auto") == "host" else "minimal"
    devices_allow: list[str] = []
    if devices == "minimal":
        for dev in dict.fromkeys(policy.devices.allow):
            real = os.path.realpath(dev)
            if not real.startswith("/dev/"):  # /dev/stdin -> /proc/self/fd/0, /dev/fd/N: not a device node
                notes.append(f"devices.allow: {dev} leads to {real}, outside /dev: not passed through")
            elif os.path.exists(real):
                devices_allow.append(real)

    opened = [os.path.realpath(absolute(p, cwd, home)) for p in fs.allow_write_protected]
    protection = protected_paths(
        [p for p, _ in write],
        os.path.realpath(cwd),
        home,
        config_dir,
        [s.path for s in config_chain if s.kind == "file"],
        fs.allow_git_config,
        env,
        opened,
        fs.allow_agent_config,
    )
    if protection.truncated:
        notes.append("mandatory protection: the nested-project walk hit its bound; deeper projects are not scanned")
    missing = [ph.path for ph in protection.placeholders if not os.path.lexists(ph.path)]
    if missing:
        notes.append(
            "mandatory protection: reserved for the run (missing, so an inert placeholder is bound "
            f"read-only and removed afterwards): {', '.join(missing)}"
        )
    for path in protection.opened:
        notes.append(f"mandatory protection: {path} is writable (filesystem.allowWriteProtected)")
    if fs.allow_agent_config:
        notes += agent_config_notes(fs.allow_agent_config)
    tmp_size, shm_size = _tmpfs_sizes(policy, devices)
    view = FsView(
        read=read,
        execute=execute,
        write=write,
        deny_read=deny_read,
        deny_write=deny_write,
        protected=list(protection.readonly),
        pinned=list(protection.pinned),
        default_deny_read=default_deny_read,
        devices=devices,
        devices_allow=devices_allow,
        symlinks=symlinks,
        tmp_size=tmp_size,
        shm_size=shm_size,
    )
    hidden, hidden_grants = _hidden_user_runtime_dir(view, policy, cwd, home, notes)
    view = msgspec.structs.replace(view, hidden=hidden, hidden_grants=hidden_grants)
    changes, runtime_dirs = repair_runtime_env(env, view, sandbox)
    view = msgspec.structs.replace(view, runtime_dirs=runtime_dirs)
    return FsFacts(view, protection, changes, notes)


def _tmpfs_sizes(policy: Policy, devices: str) -> tuple[int, int]:
    """Bytes for the private /tmp and (minimal /dev only: the host's is the host's) /dev/shm."""
    from fence.sizes import physical_memory, to_bytes  # lazy: config validation loaded it; runs stopped earlier do not

    fs = policy.filesystem
    memory = physical_memory()
    sizes = []
    for field, value in (("tmpSize", fs.tmp_size), ("shmSize", fs.shm_size)):
        try:
            sizes.append(to_bytes(value, memory))
        except ValueError as e:  # validated by the config service; refused here too, never ignored
            raise FsError(f"filesystem.{field}: {e}") from None
    return sizes[0], sizes[1] if devices == "minimal" else 0


def user_runtime_dir() -> str:
    """The host's per-user runtime directory (systemd-logind's): the session bus, keyrings, agents' sockets."""
    return f"/run/user/{os.getuid()}"


def _hidden_user_runtime_dir(
    view: FsView, policy: Policy, cwd: str, home: str, notes: list[str]
) -> tuple[list[str], list[str]]:
    """``(hidden, hidden_grants)`` for the view: ``/run/user/<uid>`` (an empty read-only tmpfs) unless a
    grant names it, and the grants inside it, which come back.

    Its sockets reach the user's session outside the sandbox (D-Bus can ask
    systemd to start any program), so only what a grant names stays: a
    grant naming the directory itself shows all of it, as before; a grant
    inside it shows that path (readable ones read-only, writable ones as
    the allowWrite bind they already are).
    """
    path = user_runtime_dir()
    if not os.path.isdir(path):
        return [], []
    path = os.path.realpath(path)
    writes = [p for p, _ in view.write]
    readable = [p for p, _ in view.read + view.execute] + _readable_grants_in(policy, path, cwd, home, view)
    sockets = [os.path.realpath(absolute(p, cwd, home)) for p in policy.network.allow_unix_sockets if p]
    named = writes + readable + sockets
    if path in named:
        return [], []
    if view.default_deny_read and not any(under(path, p) for p in readable + writes):
        return [], []  # no readable tier above it: not in the view at all, nothing to hide
    inside = [p for p in readable + [s for s in sockets if os.path.exists(s)] if under(p, path)]
    writable_inside = [w for w in writes if under(w, path)]
    notes.append(f"{path} is hidden (an empty read-only directory): name it, or a path in it, in a grant to show it")
    return [path], [p for p in dict.fromkeys(sorted(inside)) if not any(under(p, w) for w in writable_inside)]


def _readable_grants_in(policy: Policy, directory: str, cwd: str, home: str, view: FsView) -> list[str]:
    """allowRead paths at or inside ``directory`` when the view did not expand allowRead (no defaultDenyRead).

    Only the patterns that can lead there are expanded: a literal path (it may be a link into it) or a
    glob whose literal base directory lies inside it or above it (a glob's links out of its base are never
    granted).
    """
    if view.default_deny_read:
        return []
    candidates = []
    for pattern in policy.filesystem.allow_read:
        path = absolute(pattern, cwd, home)
        if any(c in path for c in "*?["):
            base = path[: min(path.find(c) for c in "*?[" if c in path)].rsplit("/", 1)[0] or "/"
            if not (under(base, directory) or under(directory, base)):
                continue
        candidates.append(pattern)
    return [p for p, _ in expand(candidates, cwd, home, contained=True).paths] if candidates else []


def _named_symlinks(patterns: list[str], cwd: str, home: str) -> list[tuple[str, str]]:
    """Literal grant paths that are symlinks, as (target, path): only targets are bound, so the links
    themselves must be recreated for ``/lib64/ld-linux...`` (usrmerge) and the like to resolve."""

    out = []
    for pattern in patterns:
        path = absolute(pattern, cwd, home)
        if not any(c in path for c in "*?[") and os.path.islink(path):
            try:
                out.append((os.readlink(path), path))
            except OSError:
                pass
    return list(dict.fromkeys(out))


def helper_read_paths(helper: tuple[str, ...]) -> list[str]:
    """What fence's in-sandbox helpers need readable under defaultDenyRead: the interpreter, its
    standard library, and fence's executor package (the init helper, the ProxyCommand)."""
    if not helper:
        return []
    package = os.path.dirname(helper[-1])
    if os.path.basename(package) == "__pycache__":
        package = os.path.dirname(package)
    paths = [os.path.realpath(helper[0]), os.path.dirname(os.__file__), package]
    return list(dict.fromkeys(paths))
