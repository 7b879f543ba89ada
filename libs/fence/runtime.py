"""Where a running supervisor is found: the runtime directory and its files.

``fence run`` imports this on its hot path to decide between a lone run and
the supervisor's bus, so it stays small: stdlib (os, time) and msgspec only,
no asyncio, nats or subprocess.

Layout of the runtime directory (mode 0700, every file 0600)::

    <runtime_dir>/
      supervisor.json          SupervisorInfo; written once every component is healthy
      supervisor.lock          held (flock) by the running supervisor
      nats.conf                the generated nats-server config (passwords inside)
      nats-server_<pid>.ports  written by nats-server (ports_file_dir): its real port
      creds/<user>.json        Credentials of each bus user (supervisor, services, client)
      proxy.sock               the proxy service's hand-off socket (0600): sandboxes' listening
                               sockets reach the proxy process here (fence.proxy.handoff)

Every file is written atomically (temporary file + rename) so a reader never
sees half a file.  The supervisor removes all of them when it stops.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Mapping
from typing import TypeVar, cast

import msgspec

INFO_FILE = "supervisor.json"
LOCK_FILE = "supervisor.lock"
NATS_CONF = "nats.conf"
CREDS_DIR = "creds"
PROXY_HANDOFF = "proxy.sock"
CLIENT_USER = "client"
CACHE_DIR = "cache"

T = TypeVar("T")


class Credentials(msgspec.Struct, kw_only=True):
    """How one bus user connects: the only secret a component holds."""

    url: str
    user: str
    password: str
    inbox_prefix: str
    """Replies come to ``<inbox_prefix>.*``; the user may subscribe nowhere else for replies."""


class ComponentInfo(msgspec.Struct, kw_only=True):
    """One supervised process (nats-server or a service) as last seen by the supervisor."""

    name: str
    pid: int
    started_at: float
    """Unix time the current process was started (restarts reset it)."""
    restarts: int = 0
    metrics_url: str = ""
    """Prometheus ``/metrics`` of the process ("" for nats-server)."""
    healthy: bool = False
    """Answered its last ``$SRV.PING`` (nats-server: accepts connections)."""
    service: str = ""
    """NATS micro service name (``fence-config``...), "" for nats-server."""


class SupervisorInfo(msgspec.Struct, kw_only=True):
    """The runtime file ``supervisor.json``: what ``fence run`` and ``fence status`` read."""

    pid: int
    started_at: float
    nats_url: str
    components: list[ComponentInfo] = []
    log: str = ""
    """Log file of a detached supervisor ("" when it runs in the foreground)."""
    version: int = 1


def runtime_dir(env: Mapping[str, str] | None = None) -> str:
    """``$XDG_RUNTIME_DIR/fence`` when that is a usable directory, else ``~/.local/state/fence``.

    ``XDG_RUNTIME_DIR`` (a per-user tmpfs on systemd hosts) is preferred: it
    vanishes at logout and is private to the user.  An unset, relative or
    unwritable one (su, containers, cron) falls back to the state directory.
    ``env``: another process's environment (the executor service planning for
    a client); default this process's.
    """
    env = os.environ if env is None else env
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        return os.path.join(xdg, "fence")
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".local", "state", "fence")


def info_path() -> str:
    return os.path.join(runtime_dir(), INFO_FILE)


def creds_path(user: str) -> str:
    return os.path.join(runtime_dir(), CREDS_DIR, f"{user}.json")


class UnsafeDir(OSError):
    """A directory fence keeps private (runtime, cache, credentials) is not one: a link, not a directory,
    or another user's.  fence never follows or uses it; the message names the path and what to do."""


def ensure_private_dir(path: str) -> str:
    """Create ``path`` (and parents) with mode 0700, and tighten it if it already existed.

    ``path`` itself is never followed: a symlink there (planted to steer fence's
    credentials or caches somewhere else, or to make bwrap's tmpfs over the
    runtime dir fail), something that is not a directory, or a directory of
    another user raises ``UnsafeDir`` naming it.  The parents are the user's
    layout (a dotfiles symlink for ``~/.local`` is theirs) and are followed.
    Other failures (a read-only home) raise the ``OSError`` they are.
    """
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    try:  # O_PATH: another user's directory is told apart even when it cannot be read
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise _unsafe(path, e) from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise UnsafeDir(
                f"{path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}): fence keeps "
                "its private files only in a directory of yours; remove it and fence makes it again"
            )
        if st.st_mode & 0o077:
            os.chmod(f"/proc/self/fd/{fd}", 0o700)  # the directory checked, not whatever the name is by now
    finally:
        os.close(fd)
    return path


def _unsafe(path: str, error: OSError) -> OSError:
    """Why ``path`` could not be opened as a directory without following a link: ``UnsafeDir`` for a
    planted entry, else ``error`` itself."""
    try:
        st = os.lstat(path)
    except OSError:
        return error
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return UnsafeDir(
            f"{path} is a symlink (to {target}): fence never follows a link in place of its private "
            "directory; remove it and fence makes the directory again"
        )
    if not stat.S_ISDIR(st.st_mode):
        return UnsafeDir(
            f"{path} is not a directory ({_kind(st.st_mode)}): fence keeps its private files there; "
            "remove it and fence makes the directory again"
        )
    return error


def _kind(mode: int) -> str:
    return (
        "a regular file"
        if stat.S_ISREG(mode)
        else "a FIFO"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "not a directory"
    )


def masked_path(path: str) -> str:
    """``path`` with its parents canonical: how bwrap must be told to hide it.

    bwrap resolves a ``--tmpfs`` destination inside the new root, where an
    absolute symlink among the parents (``~/.local -> /data/dotfiles/local``)
    leads nowhere and fails the run with a raw mount error; the canonical
    parents lead where the host's path does.  The last component is fence's
    own directory, checked by ``ensure_private_dir`` never to be a link.
    """
    parent, name = os.path.split(path)
    return os.path.join(os.path.realpath(parent), name) if parent else path


def private_runtime_dirs() -> tuple[str, ...]:
    """The runtime dir (with its ``cache/``) made or checked private, as bwrap must mask it; () when it
    cannot be made at all (a read-only home: nothing of fence's can be there either).

    ``UnsafeDir`` when something was planted at either: the run must stop rather
    than follow it or leave it visible.
    """
    path = runtime_dir()
    try:
        ensure_private_dir(path)
    except UnsafeDir:
        raise
    except OSError:
        return ()
    try:
        ensure_private_dir(os.path.join(path, CACHE_DIR))
    except UnsafeDir:
        raise
    except OSError:
        pass
    return (masked_path(path),)


def cache_dir() -> str:
    """``cache/`` in the runtime dir: answers worth keeping between runs (seccomp programs, exec masks,
    probes), where no sandbox can see or plant them (the runtime dir is masked in every sandbox)."""
    return os.path.join(runtime_dir(), CACHE_DIR)


def read_cache(path: str, type: type[T], max_size: int = 1 << 20) -> T | None:
    """The cache file at ``path`` decoded as ``type``, or None when there is nothing to trust.

    None when ``path`` is "", the file is missing, unreadable, bigger than
    ``max_size``, not a regular file of this user's that nobody else may
    write (a link is not followed), or does not decode as ``type``: the
    directory is fence's own, but a stale or planted file must never steer a
    sandbox, and a cache that cannot be used only costs the work again.
    JSON (msgspec) for every type but ``bytes``, which is the file as it is
    (a seccomp program is stored as BPF).
    """
    data = _read_private(path, max_size)
    if data is None:
        return None
    if type is bytes:
        return cast(T, data)  # T is bytes here, which mypy cannot infer from the identity check
    try:
        return msgspec.json.decode(data, type=type)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _read_private(path: str, max_size: int) -> bytes | None:
    """The bytes of a regular file of ours in a directory of ours, opened without following a link (the
    file or its directory: a planted ``cache -> elsewhere``) or blocking (a planted FIFO)."""
    data, _ = _read_checked(path, max_size)
    return data


def _read_checked(path: str, max_size: int) -> tuple[bytes | None, str]:
    """``_read_private`` with the reason when there is nothing to trust (for errors that must name it)."""
    if not path:
        return None, "no path"
    directory, name = os.path.split(path)
    try:
        dir_fd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        return None, f"its directory {directory}: {_why(e)}"
    try:
        st = os.fstat(dir_fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None, f"its directory {directory} is not private to you"
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as e:
        return None, _why(e)
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, f"not a regular file ({_kind(st.st_mode)})"
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None, "not private to you (another owner, or writable by others)"
        if st.st_size > max_size:
            return None, f"bigger than {max_size} bytes"
        data = os.read(fd, st.st_size)
    except OSError as e:
        return None, _why(e)
    finally:
        os.close(fd)
    return (data, "") if len(data) == st.st_size else (None, "changed while read")


def _why(error: OSError) -> str:
    if error.errno in (errno.ELOOP, errno.ENOTDIR):
        return "a symlink (fence never follows one there)" if error.errno == errno.ELOOP else "not a directory"
    return error.strerror or str(error)


def write_cache(path: str, value: object) -> None:
    """Store ``value`` as ``read_cache`` reads it back (``bytes`` as they are, anything else as JSON).

    Best effort (0600, atomic, in a 0700 directory): a cache not written only
    costs work next time.
    """
    try:
        data = value if isinstance(value, bytes) else msgspec.json.encode(value)
        ensure_private_dir(os.path.dirname(path))
        write_private(path, data)
    except OSError:
        pass


def write_private(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600 (tmp + fsync-free rename).

    The file is created 0600 from the start (``O_EXCL`` on the temporary name),
    so a secret is never readable by others, not even for an instant.
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_struct(path: str, value: msgspec.Struct) -> None:
    write_private(path, msgspec.json.format(msgspec.json.encode(value), indent=2) + b"\n")


def pid_alive(pid: int) -> bool:
    """True when ``pid`` names a live (non-zombie) process."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 :][:1] not in (b"Z", b"X")
    except (OSError, ValueError):
        return True  # no /proc (macOS): kill(0) is all we know


def _looks_like_fence(pid: int) -> bool:
    """Guard against a recycled pid: the supervisor's command line mentions fence."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"fence" in f.read()
    except FileNotFoundError:
        return not os.path.isdir("/proc/self")  # no /proc at all: cannot tell, trust the pid
    except OSError:
        return True


def read_info(path: str | None = None) -> SupervisorInfo | None:
    """The runtime file as written, whether or not its supervisor still lives.

    Only a private regular file of ours is read (never through a link): a
    planted ``supervisor.json`` would send every run to a bus of its choosing.
    """
    data = _read_private(path or info_path(), 1 << 20)
    if data is None:
        return None
    try:
        return msgspec.json.decode(data, type=SupervisorInfo)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def find_supervisor() -> SupervisorInfo | None:
    """The running supervisor, or None (no file, unreadable file, or its process is gone)."""
    info = read_info()
    if info is None or not pid_alive(info.pid) or not _looks_like_fence(info.pid):
        return None
    return info


def read_credentials(path: str) -> Credentials:
    """Credentials from a 0600 JSON file; raises ``OSError``/``ValueError`` with the path in it.

    Never through a link, and only a private file of ours in a private directory.
    """
    if not os.path.lexists(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    data, why = _read_checked(path, 1 << 16)
    if data is None:
        raise ValueError(f"{path}: not used as bus credentials: {why}")
    try:
        return msgspec.json.decode(data, type=Credentials)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ValueError(f"{path}: {e}") from None


def client_credentials() -> Credentials:
    """The ``client`` user's credentials (``fence run`` and tools), from the runtime dir."""
    return read_credentials(creds_path(CLIENT_USER))


def bus_credentials() -> Credentials:
    """What a client connects with: the file ``$FENCE_BUS_CREDS`` names, else the ``client`` user's.

    Both read as private files only (``read_credentials``); raises ``OSError``/``ValueError``.
    """
    path = os.environ.get("FENCE_BUS_CREDS")
    return read_credentials(path) if path else client_credentials()


def uptime(since: float, now: float | None = None) -> str:
    """``3d4h``, ``2h05m``, ``4m12s``, ``9s``: a compact age for ``fence status``."""
    s = max(0, int((time.time() if now is None else now) - since))
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
