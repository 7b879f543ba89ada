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

import msgspec

from fence.policy import Policy

DANGEROUS_ENV_PREFIXES = ("LD_",)
"""Dynamic-loader variables never reach the sandbox (write-a-.so-then-LD_PRELOAD)."""

INFO_FD = 3
"""bwrap writes the sandbox's init pid here (``--info-fd``), for signal forwarding."""

BLOCK_FD = 4
"""bwrap waits for a byte here (``--block-fd``) when bridges must exist before the command runs."""

SECCOMP_FD = 5
"""bwrap reads the seccomp BPF program from here (``--seccomp``)."""


class HostFacts(msgspec.Struct, frozen=True):
    """What the planner needs to know about the machine; gathered once by the caller."""

    bwrap: str
    is_root: bool
    masked_dirs: tuple[str, ...] = ()
    """Host directories the sandbox must never see (fence's runtime dir: bus credentials)."""
    python: str = ""
    """This interpreter (``sys.executable``): runs fence's small helpers inside the sandbox (the PTY shim)."""


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
    pty: bool = False
    """The launcher gives the command a fresh pseudo-terminal and relays it (``fence.executor.ptyrelay``)."""

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
                 listen_inside: list[tuple[str, int]] = (), deny_read: list[tuple[str, bool]] = (), seccomp: tuple[bytes, str] = (b"", ""),
                 share_net: bool = False, extra_env: dict[str, str] | None = None,
                 new_session: bool = True, pty: bool = False) -> SandboxPlan:
    """Build the bwrap invocation for ``command`` under ``policy``.

    Foundation layers: read-only root, private /tmp, fresh /dev and /proc, new
    PID and network namespaces (no network at all), ``--new-session`` (the
    TIOCSTI defence; see ``session_mode`` for when a PTY run drops it),
    ``--die-with-parent``, and ``--cap-drop ALL`` when run as root (a root
    bwrap otherwise keeps every capability inside and could remount a
    read-only bind writable).

    With ``pty`` the command is started through fence's PTY shim (the host's
    interpreter, ``host.python``), which makes the PTY the command's
    controlling terminal in a session of its own (``fence.executor.ptyrelay``).
    """
    if not command:
        raise ValueError("empty command")
    if pty and not host.python:
        raise ValueError("a PTY run needs host.python for its shim")
    args = [host.bwrap] + (["--new-session"] if new_session else []) + ["--die-with-parent", "--unshare-pid"]
    if not share_net:  # only relaxed "*" mode shares the host network (documented as weaker)
        args.append("--unshare-net")
    if host.is_root:
        # A non-root bwrap always creates a user namespace; a root one must be
        # asked to.  Inside it capabilities are namespaced and the bounding set
        # is emptied; without it root keeps the host's bounding set.
        args += ["--unshare-user", "--cap-drop", "ALL"]
    args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for path, is_dir in deny_read:  # existing canonical paths (fence.executor.paths)
        if path == "/tmp" or path.startswith("/tmp/"):
            continue  # the sandbox's /tmp is already its own
        # a directory appears empty, a file reads as empty (reference §6.2 step 9)
        args += ["--tmpfs", path] if is_dir else ["--ro-bind", "/dev/null", path]
    for path in host.masked_dirs:
        args += ["--tmpfs", path]
    args += ["--chdir", cwd, "--info-fd", str(INFO_FD)]
    if listen_inside:
        args += ["--block-fd", str(BLOCK_FD)]
    program, seccomp_label = seccomp
    if program:
        args += ["--seccomp", str(SECCOMP_FD)]
    args.append("--")
    if pty:
        from fence.executor.ptyrelay import shim_command

        args += shim_command(host.python)
    args += command

    clean, stripped = sanitize_env(env)
    clean.update(extra_env or {})
    clean["FENCE_SANDBOX"] = "1"
    layers = ["bwrap(pid,fs)" if share_net else "bwrap(network,pid,fs)"]
    if listen_inside:
        layers.append("netns-bridges")
    if deny_read:
        layers.append(f"denyRead({len(deny_read)})")
    if program:
        layers.append(seccomp_label or "seccomp")
    if host.is_root:
        layers.append("userns+cap-drop(ALL)")
    if pty:
        layers.append("pty" if not new_session else "pty(new-session)")
    return SandboxPlan(argv=args, env=clean, command=list(command), stripped_env=stripped, layers=layers,
                       block_fd=BLOCK_FD if listen_inside else 0, listen_inside=list(listen_inside),
                       seccomp_program=program, pty=pty)
