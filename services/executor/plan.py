"""Planning is pure: policy + command + host facts -> the exact sandbox to launch.

``plan_sandbox`` has no side effects (no filesystem writes, no processes), so
every rule is testable without running anything and ``fence -d`` can print
precisely what will run.  The launcher (``fence.executor.launch``) only
executes a ``SandboxPlan``.

The bwrap argument list is built flat and in a fixed order, bubblewrap style:
process/namespaces, then the filesystem view (later mounts win over earlier
ones), then the command.
"""

from __future__ import annotations

from typing import Sequence

import msgspec

from fence.executor.mounts import FsView, filesystem_args, landlock_options
from fence.policy import Policy

DANGEROUS_ENV_PREFIXES = ("LD_",)
"""Dynamic-loader variables never reach the sandbox (write-a-.so-then-LD_PRELOAD)."""

INFO_FD = 3
"""bwrap writes the sandbox's init pid here (``--info-fd``), for signal forwarding."""

BLOCK_FD = 4
"""bwrap waits for a byte here (``--block-fd``) when bridges must exist before the command runs."""

SECCOMP_FD = 5
"""bwrap reads the seccomp BPF program from here (``--seccomp``)."""

DATA_FD = 6
"""The first fd bwrap copies a generated file from (``--ro-bind-data``); one fd per file, below 10."""
MAX_DATA_FILES = 4


class HostFacts(msgspec.Struct, frozen=True):
    """What the planner needs to know about the machine; gathered once by the caller."""

    bwrap: str
    is_root: bool
    masked_dirs: tuple[str, ...] = ()
    """Host directories the sandbox must never see (fence's runtime dir: bus credentials)."""
    landlock_abi: int = 0
    """The kernel's Landlock ABI (0: unavailable)."""
    helper: tuple[str, ...] = ()
    """The init helper's command prefix (``python -I -S landlock.py``), run first inside when Landlock is used."""
    python: str = ""
    """This interpreter (``sys.executable``): runs fence's init helper inside the sandbox (PTY and argv-policy runs)."""


class SandboxPlan(msgspec.Struct):
    """Everything needed to start one sandbox, and nothing that needs doing first."""

    argv: list[str]
    """Full argv to execute: bwrap, its options, ``--``, the command."""
    env: dict[str, str]
    command: list[str]
    stripped_env: list[str]
    layers: list[str]
    info_fd: int = INFO_FD
    block_fd: int = 0
    """Non-zero when the launcher must prepare ``listen_inside`` and then release bwrap."""
    listen_inside: list[tuple[str, int]] = []
    """Loopback addresses to listen on inside the sandbox's netns (proxies, local ports)."""
    seccomp_program: bytes = b""
    """The BPF program bwrap loads from ``SECCOMP_FD`` (empty: no filter)."""
    data_files: list[tuple[int, bytes]] = []
    """(fd, content) the launcher hands to bwrap for each ``--ro-bind-data FD DEST``."""
    pty: bool = False
    """The launcher gives the command a fresh pseudo-terminal and relays it (``fence.executor.ptyrelay``)."""
    exec_denied: list[str] = []
    """Files masked by the runtime exec policy (``--ro-bind /dev/null``): no Landlock rule may grant
    EXECUTE on them (Landlock only allows, so the rules granting EXECUTE must leave these out)."""
    keep_fds: list[int] = []
    """Our fds bwrap must receive under their own numbers (pinned ``--bind-fd`` sources; bwrap closes them)."""
    exec_notify_fd: int = 0
    """Non-zero: the exec supervisor's socket, which bwrap must inherit under this same number (the init
    helper is told it with ``--exec-notify``; above 10, clear of every fixed fd bwrap is given)."""

    @property
    def summary(self) -> str:
        return "[fence:linux] Sandbox: " + ", ".join(self.layers)


def sanitize_env(env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Drop every ``LD_*`` variable (case-sensitive, as the reference) and return what went."""
    kept, stripped = {}, []
    for name, value in env.items():
        if name.startswith(DANGEROUS_ENV_PREFIXES):
            stripped.append(name)
        else:
            kept[name] = value
    return kept, sorted(stripped)


def wants_landlock(view: FsView) -> bool:
    """Landlock adds protection when something is writable or execute-only; otherwise it is skipped.

    With nothing writable the read-only root already refuses every write and
    the helper's interpreter start (~10 ms) would buy nothing; the summary
    line says ``landlock(not needed)``.
    """
    return bool(view.write or view.execute or view.default_deny_read)


def session_mode(allow_pty: bool, stdin_tty: bool, stdout_tty: bool, force_new_session: bool) -> tuple[bool, bool]:
    """``(pty, new_session)`` for a run: the one decision behind ``allowPty`` and ``forceNewSession``.

    A PTY only with ``allowPty`` and a terminal on both stdin and stdout (a
    pipe on either side means a program, not a person, is on the other end).
    bwrap's ``--new-session`` (the TIOCSTI defence: the sandbox must not share
    a session with the user's terminal) is dropped only for a PTY run, as the
    reference does, and kept when forced.  Dropping it is safe here because a
    PTY run never hands the user's terminal to the sandbox at all: bwrap
    starts in a fresh session of its own whose only terminal is the new PTY.
    """
    pty = allow_pty and stdin_tty and stdout_tty
    return pty, not pty or force_new_session


def plan_sandbox(policy: Policy, command: list[str], cwd: str, env: dict[str, str], host: HostFacts,
                 listen_inside: Sequence[tuple[str, int]] = (), fs: FsView | None = None,
                 seccomp: tuple[bytes, str] = (b"", ""), share_net: bool = False,
                 extra_env: dict[str, str] | None = None, files: Sequence[tuple[str, bytes]] = (),
                 debug: bool = False, new_session: bool = True, pty: bool = False,
                 exec_masks: Sequence[str] = (), exec_notify: int = 0,
                 net_connect: Sequence[int] | None = None) -> SandboxPlan:
    """Build the bwrap invocation for ``command`` under ``policy``.

    Layers: the filesystem view of ``fs`` (``fence.executor.mounts``; default:
    read-only root, private /tmp, minimal /dev, fresh /proc), new PID and
    network namespaces, ``--new-session`` (the TIOCSTI defence; see
    ``session_mode`` for when a PTY run drops it), ``--die-with-parent``,
    ``--cap-drop ALL`` when run as root (a root bwrap otherwise keeps every
    capability inside and could remount a read-only bind writable), the
    seccomp program, and Landlock through the init helper.

    ``files``: (path, content) placed read-only in the sandbox after the masks
    (the generated ssh_config of filtered runs, ``sshproxy.py``); bwrap reads
    each from a pipe, so nothing is written on the host.

    With ``pty`` the init helper (``--pty``) makes the PTY the command's
    controlling terminal in a session of its own (``fence.executor.ptyrelay``).

    ``exec_masks``: files no process in the sandbox may execute
    (``fence.executor.execdeny``), covered with /dev/null after every other
    filesystem mount (reference §6.2 step 12); those under a directory the
    sandbox sees as an empty tmpfs are already out of reach and skipped, and
    Landlock grants them no EXECUTE.
    ``exec_notify``: the fd of the exec supervisor's socket (runtimeExecPolicy
    "argv", ``fence.executor.execsupervisor``); the command starts through the
    init helper with ``--exec-notify`` that fd.

    ``net_connect`` (a shared network without a netns, proxy-only): the only
    TCP ports the sandbox may connect to, enforced by Landlock (ABI 4+), so the
    proxies are not just advice to proxy-aware clients.  A shared network also
    gets Landlock scoping (ABI 6+): no abstract unix sockets of the host.
    """
    if not command:
        raise ValueError("empty command")
    view = fs if fs is not None else FsView()
    args = [host.bwrap] + (["--new-session"] if new_session else []) + ["--die-with-parent", "--unshare-pid"]
    if not share_net:  # only relaxed "*" mode shares the host network (documented as weaker)
        args.append("--unshare-net")
    # A non-root bwrap always creates a user namespace; a root one must be asked
    # to.  --disable-userns then stops anything inside from making another one
    # (a fresh user namespace regains every capability over its own mounts);
    # seccomp refuses the namespace flags too.
    args += ["--unshare-user", "--disable-userns"]
    if host.is_root:
        # inside, capabilities are namespaced and the bounding set is emptied;
        # without this root keeps the host's bounding set
        args += ["--cap-drop", "ALL"]
    args += filesystem_args(view, host.masked_dirs)
    if len(files) > MAX_DATA_FILES:
        raise ValueError(f"at most {MAX_DATA_FILES} generated files")
    data_files = []
    for i, (path, content) in enumerate(files):
        fd = DATA_FD + i
        args += ["--perms", "0644", "--ro-bind-data", str(fd), path]
        data_files.append((fd, bytes(content)))
    hidden = ["/tmp", *host.masked_dirs, *(p for p, is_dir in view.deny_read if is_dir)]
    exec_denied = _exec_masks(exec_masks, hidden)
    for path in exec_denied:
        args += ["--ro-bind", "/dev/null", path]
    args += ["--chdir", cwd, "--info-fd", str(INFO_FD)]
    if listen_inside:
        args += ["--block-fd", str(BLOCK_FD)]
    program, seccomp_label = seccomp
    if program:
        args += ["--seccomp", str(SECCOMP_FD)]
    args.append("--")
    # One init helper, one interpreter start, for every duty inside: Landlock,
    # the argv policy's listener, taking the PTY as controlling terminal.
    landlock = (wants_landlock(view) or net_connect is not None) and host.landlock_abi > 0 and bool(host.helper)
    duties = landlock_options(view) if landlock else ["--no-landlock"]
    if landlock and net_connect is not None and host.landlock_abi >= 4:
        duties += ["--restrict-net", "--connect-only"]
        for port in dict.fromkeys(net_connect):
            duties += ["--connect", str(port)]
    if landlock and share_net and host.landlock_abi >= 6:
        duties.append("--scope")
    if exec_notify:
        duties += ["--exec-notify", str(exec_notify)]
    if pty:
        duties.append("--pty")
    if landlock or exec_notify or pty:
        args += [*(host.helper or _init_helper(host.python)), *duties, *(["--debug"] if debug and landlock else []), "--"]
    args += command

    clean, stripped = sanitize_env(env)
    clean.update(extra_env or {})
    clean["FENCE_SANDBOX"] = "1"
    layers = ["bwrap(pid,fs)" if share_net else "bwrap(network,pid,fs)"]
    if listen_inside:
        layers.append("netns-bridges")
    if view.write:
        layers.append(f"allowWrite({len(view.write)})")
    if view.protected or view.pinned:
        layers.append(f"protected({len(view.protected) + len(view.pinned)})")
    if view.deny_read:
        layers.append(f"denyRead({len(view.deny_read)})")
    if view.default_deny_read:
        layers.append("defaultDenyRead")
    if program:
        layers.append(seccomp_label or "seccomp")
    if files:
        layers.append("files(" + ",".join(path for path, _ in files) + ")")
    if landlock:
        tcp = "(tcp-connect)" if net_connect is not None and host.landlock_abi >= 4 else ""
        layers.append(f"landlock-v{host.landlock_abi}{tcp}")
    elif wants_landlock(view) or net_connect is not None:
        layers.append("landlock(unavailable)")
    else:
        layers.append("landlock(not needed)")
    layers.append("userns(no-nesting)+cap-drop(ALL)" if host.is_root else "userns(no-nesting)")
    if exec_denied:
        layers.append(f"exec-deny({len(exec_denied)} files)")
    if exec_notify:
        layers.append("exec-argv(seccomp-unotify)")
    if pty:
        layers.append("pty" if not new_session else "pty(new-session)")
    return SandboxPlan(argv=args, env=clean, command=list(command), stripped_env=stripped, layers=layers,
                       block_fd=BLOCK_FD if listen_inside else 0, listen_inside=list(listen_inside),
                       seccomp_program=program, data_files=data_files, pty=pty,
                       exec_denied=exec_denied, exec_notify_fd=exec_notify, keep_fds=list(view.write_fds.values()))
def _exec_masks(paths: Sequence[str], hidden: list[str]) -> list[str]:
    """``paths`` minus those inside a directory the sandbox sees as an empty tmpfs."""
    out = []
    for path in paths:
        if not any(path == d or path.startswith(d.rstrip("/") + "/") for d in hidden) and path not in out:
            out.append(path)
    return out


def _init_helper(python: str = "") -> list[str]:
    """``python -I -S .../landlock.py``: the in-sandbox init helper (reads no more than a .pyc header),
    run by the real interpreter (``host.python``) when known: a venv's symlink need not be visible inside."""
    from fence.executor.landlock import helper_command

    command = helper_command()
    if python:
        command[0] = python
    return command

