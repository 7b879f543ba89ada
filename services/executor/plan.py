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

from fence.policy import Policy

DANGEROUS_ENV_PREFIXES = ("LD_",)
"""Dynamic-loader variables never reach the sandbox (write-a-.so-then-LD_PRELOAD)."""

INFO_FD = 3
"""bwrap writes the sandbox's init pid here (``--info-fd``), for signal forwarding."""

BLOCK_FD = 4
"""bwrap waits for a byte here (``--block-fd``) when bridges must exist before the command runs."""

SECCOMP_FD = 5
"""bwrap reads the seccomp BPF program from here (``--seccomp``)."""
"""bwrap waits for a byte here (``--block-fd``) when bridges must exist before the command runs."""


class HostFacts(msgspec.Struct, frozen=True):
    """What the planner needs to know about the machine; gathered once by the caller."""

    bwrap: str
    is_root: bool
    masked_dirs: tuple[str, ...] = ()
    """Host directories the sandbox must never see (fence's runtime dir: bus credentials)."""


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
    exec_denied: list[str] = []
    """Files masked by the runtime exec policy (``--ro-bind /dev/null``): no Landlock rule may grant
    EXECUTE on them (Landlock only allows, so the rules granting EXECUTE must leave these out)."""
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


def plan_sandbox(policy: Policy, command: list[str], cwd: str, env: dict[str, str], host: HostFacts,
                 listen_inside: list[tuple[str, int]] = (), deny_read: list[tuple[str, bool]] = (), seccomp: tuple[bytes, str] = (b"", ""),
                 share_net: bool = False, extra_env: dict[str, str] | None = None,
                 exec_masks: Sequence[str] = (), exec_notify: int = 0) -> SandboxPlan:
    """Build the bwrap invocation for ``command`` under ``policy``.

    Foundation layers: read-only root, private /tmp, fresh /dev and /proc, new
    PID and network namespaces (no network at all), ``--new-session`` (the
    TIOCSTI defence), ``--die-with-parent``, and ``--cap-drop ALL`` when run as
    root (a root bwrap otherwise keeps every capability inside and could remount
    a read-only bind writable).

    ``exec_masks``: files no process in the sandbox may execute
    (``fence.executor.execdeny``), covered with /dev/null after every other
    filesystem mount (reference §6.2 step 12); those under a directory the
    sandbox sees as an empty tmpfs are already out of reach and skipped.
    ``exec_notify``: the fd of the exec supervisor's socket (runtimeExecPolicy
    "argv", ``fence.executor.execsupervisor``); the command starts through the
    init helper with ``--exec-notify`` that fd.
    """
    if not command:
        raise ValueError("empty command")
    args = [host.bwrap, "--new-session", "--die-with-parent", "--unshare-pid"]
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
    exec_denied = _exec_masks(exec_masks, ["/tmp", *host.masked_dirs, *(p for p, is_dir in deny_read if is_dir)])
    for path in exec_denied:
        args += ["--ro-bind", "/dev/null", path]
    args += ["--chdir", cwd, "--info-fd", str(INFO_FD)]
    if listen_inside:
        args += ["--block-fd", str(BLOCK_FD)]
    program, seccomp_label = seccomp
    if program:
        args += ["--seccomp", str(SECCOMP_FD)]
    args.append("--")
    if exec_notify:
        args += _init_helper() + ["--exec-notify", str(exec_notify), "--no-landlock", "--"]
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
    if exec_denied:
        layers.append(f"exec-deny({len(exec_denied)} files)")
    if exec_notify:
        layers.append("exec-argv(seccomp-unotify)")
    if host.is_root:
        layers.append("userns+cap-drop(ALL)")
    return SandboxPlan(argv=args, env=clean, command=list(command), stripped_env=stripped, layers=layers,
                       block_fd=BLOCK_FD if listen_inside else 0, listen_inside=list(listen_inside),
                       seccomp_program=program, exec_denied=exec_denied,
                       exec_notify_fd=exec_notify)


def _exec_masks(paths: Sequence[str], hidden: list[str]) -> list[str]:
    """``paths`` minus those inside a directory the sandbox sees as an empty tmpfs."""
    out = []
    for path in paths:
        if not any(path == d or path.startswith(d.rstrip("/") + "/") for d in hidden) and path not in out:
            out.append(path)
    return out


def _init_helper() -> list[str]:
    """``python -I -S .../landlock.py``: the in-sandbox init helper (reads no more than a .pyc header)."""
    from fence.executor.landlock import helper_command

    return helper_command()
