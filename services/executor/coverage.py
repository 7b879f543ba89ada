"""Which policy fields this build enforces, and what to do about the rest.

Fail closed: a field that asks for *more* protection than the sandbox can give
yet refuses the run with an error naming it; a field that *grants* something
not built yet (a writable path, a domain) is left ungranted, which only
restricts more, and ``-d`` says so.  As layers land, fields move out of these
lists; the tests pin both lists (and ``tests/test_policy_fields.py`` that
every field is decided somewhere).

``filesystem.wslInterop`` is the one field left here.  On WSL a Windows
program (any ``MZ`` file, through binfmt_misc, or ``/init`` started under
another name) runs outside every Linux layer, so fence never grants it:
``true`` is ungranted.  Unset or ``false`` it must stay blocked, and it is
as long as ``/init`` cannot reach the interop server's unix socket in
``/run/WSL``: the seccomp filter refuses unix sockets unless the network
policy lets them through, and defaultDenyRead hides ``/run``.  When neither
holds on a host with WSL interop, the run is refused until ``/run/WSL`` is
in denyRead.
"""

from __future__ import annotations

import os

from fence.policy import Policy

WSL_INTEROP_SERVERS = "/run/WSL"
"""Where WSL's interop servers listen (``$WSL_INTEROP`` names one); ``/init`` connects there."""
WSL_INTEROP_REGISTRATIONS = ("/proc/sys/fs/binfmt_misc/WSLInterop", "/proc/sys/fs/binfmt_misc/WSLInterop-late")


def refused(policy: Policy, wsl_interop: bool | None = None) -> list[str]:
    """Fields asking for protection this build cannot apply: the run must not start.

    ``wsl_interop``: whether this host has WSL interop (None: look, only when it matters).
    """
    if policy.filesystem.wsl_interop is not True and _interop_open(policy, wsl_interop):
        return [
            f"filesystem.wslInterop (unset or false, yet Windows programs could start: the WSL interop "
            f"server in {WSL_INTEROP_SERVERS} is reachable because network.allowUnixSockets or "
            f'allowAllUnixSockets lets unix sockets through; add "{WSL_INTEROP_SERVERS}" to '
            "filesystem.denyRead)"
        ]
    return []


def ungranted(policy: Policy, wsl_interop: bool | None = None) -> list[str]:
    """Fields granting access this build does not provide yet (the sandbox stays stricter).

    ``wslInterop: true`` is, unless the interop server is reachable anyway on a WSL host (then
    Windows programs do start, and a note saying otherwise would be false).
    """
    if policy.filesystem.wsl_interop is True and not _interop_open(policy, wsl_interop):
        return ["filesystem.wslInterop"]
    return []


def _interop_open(policy: Policy, wsl_interop: bool | None) -> bool:
    """Could the sandbox start a Windows program?  The host is looked at only when the policy leaves a way."""
    if not interop_server_reachable(policy):
        return False
    return wsl_interop_present() if wsl_interop is None else wsl_interop


def interop_server_reachable(policy: Policy) -> bool:
    """Could a process in the sandbox connect to a socket in ``/run/WSL``?  (Pure; when unsure: yes.)

    Only when unix sockets pass the seccomp filter and ``/run/WSL`` is in the
    view: not hidden by a denyRead entry that names it or a parent plainly
    (a glob might not match), and, under defaultDenyRead, granted by an
    absolute allow entry that covers it.
    """
    net, fs = policy.network, policy.filesystem
    if not (net.allow_all_unix_sockets or net.allow_unix_sockets):
        return False
    if any(_names_parent(entry, WSL_INTEROP_SERVERS) for entry in fs.deny_read):
        return False
    if fs.default_deny_read or fs.strict_deny_read:
        grants = fs.allow_read + fs.allow_execute + fs.allow_write
        return any(_may_cover(entry, WSL_INTEROP_SERVERS) for entry in grants)
    return True


def wsl_interop_present() -> bool:
    """This host is WSL with interop: its servers' directory exists or its binfmt_misc entry is registered."""
    return os.path.isdir(WSL_INTEROP_SERVERS) or any(os.path.exists(p) for p in WSL_INTEROP_REGISTRATIONS)


_GLOB = "*?["


def _names_parent(entry: str, path: str) -> bool:
    """``entry`` is ``path`` or a parent of it, written without globs (``DIR/**`` counts as ``DIR``)."""
    if entry.endswith("/**"):
        entry = entry[:-3] or "/"
    if not entry.startswith("/") or any(c in entry for c in _GLOB):
        return False
    entry = os.path.normpath(entry)
    return entry == "/" or path == entry or path.startswith(entry + "/")


def _may_cover(entry: str, path: str) -> bool:
    """An absolute allow entry that could grant ``path``: its literal part (up to a glob) is a parent of it
    or lies under it.  ``~`` and relative entries are not considered: they name the home or the project."""
    if not entry.startswith("/"):
        return False
    cut = min((entry.index(c) for c in _GLOB if c in entry), default=len(entry))
    literal = os.path.normpath(entry if cut == len(entry) else entry[:cut].rsplit("/", 1)[0] or "/")
    return literal == "/" or path == literal or path.startswith(literal + "/") or literal.startswith(path + "/")
