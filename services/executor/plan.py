"""Planning is pure: a run's decisions (``RunPlan``) -> the exact sandbox to launch (``SandboxPlan``).

``render`` has no side effects (no filesystem writes, no processes), so
every rule is testable without running anything and ``fence -d`` can print
precisely what will run.  ``fence.executor.prepare`` makes the decisions;
the launcher (``fence.executor.launch``) only executes a ``SandboxPlan``.

The bwrap argument list is built flat and in a fixed order, bubblewrap style:
process/namespaces, then the filesystem view (later mounts win over earlier
ones), then the command.
"""

from __future__ import annotations

from collections.abc import Sequence

from fence.executor.mounts import PINNED_FD_BASE, filesystem_mounts, landlock_options, pinned_sources, sealing
from fence.mountops import Bind, DataFile, render_all
from fence.runplan import INFO_FD, FsView, HostFacts, NetPlan, RunPlan, SandboxPlan

__all__ = [
    "BLOCK_FD",
    "DATA_FD",
    "EXEC_NOTIFY_FD",
    "INFO_FD",
    "SECCOMP_FD",
    "FsView",
    "HostFacts",
    "NetPlan",
    "RunPlan",
    "SandboxPlan",
    "render",
    "sanitize_env",
    "session_mode",
    "wants_landlock",
]

DANGEROUS_ENV_PREFIXES = ("LD_",)
"""Dynamic-loader variables never reach the sandbox (write-a-.so-then-LD_PRELOAD)."""

BLOCK_FD = 4
"""bwrap waits for a byte here (``--block-fd``) when bridges must exist before the command runs."""

SECCOMP_FD = 5
"""bwrap reads the seccomp BPF program from here (``--seccomp``)."""

DATA_FD = 6
"""The first fd bwrap copies a generated file from (``--ro-bind-data``); one fd per file, below 10."""
MAX_DATA_FILES = 4


EXEC_NOTIFY_FD = 10
"""The exec supervisor's socket inside (``--exec-notify``): above bwrap's fixed fds, below the pinned sources."""


def sanitize_env(env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Drop every ``LD_*`` variable (case-sensitive, as Fence) and return what went."""
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
    a session with the user's terminal) is dropped only for a PTY run, as
    Fence does, and kept when forced.  Dropping it is safe here because a
    PTY run never hands the user's terminal to the sandbox at all: bwrap
    starts in a fresh session of its own whose only terminal is the new PTY.
    """
    pty = allow_pty and stdin_tty and stdout_tty
    return pty, not pty or force_new_session


def render(plan: RunPlan) -> SandboxPlan:
    """The bwrap invocation for ``plan``: the one place decisions become bwrap's argv.

    Layers: the filesystem view of ``plan.fs`` (``fence.executor.mounts``;
    default: read-only root, private /tmp, minimal /dev, fresh /proc), new PID
    and network namespaces, ``--new-session`` (the TIOCSTI defence; see
    ``session_mode`` for when a PTY run drops it), ``--die-with-parent``,
    ``--cap-drop ALL`` when run as root (a root bwrap otherwise keeps every
    capability inside and could remount a read-only bind writable), the
    seccomp program, and Landlock through the init helper.

    ``files`` are read by bwrap from pipes, so nothing is written on the host.
    With ``pty`` the init helper (``--pty``) makes the PTY the command's
    controlling terminal in a session of its own (``fence.executor.ptyrelay``).
    ``exec_masks`` are covered with /dev/null after every other filesystem
    mount (last, as in Fence: docs/compatibility.md#the-sandbox); those under a directory the sandbox sees as
    an empty tmpfs are already out of reach and skipped, and Landlock grants
    them no EXECUTE.  ``network.connect_only`` (a shared network without a
    netns, proxy-only): the only TCP ports the sandbox may connect to,
    enforced by Landlock (ABI 4+), so the proxies are not just advice to
    proxy-aware clients.  A shared network also gets Landlock scoping (ABI
    6+): no abstract unix sockets of the host.
    """
    command, host, view, net = plan.command, plan.host, plan.fs, plan.network
    if not command:
        raise ValueError("empty command")
    args = [host.bwrap] + (["--new-session"] if plan.new_session else []) + ["--die-with-parent", "--unshare-pid"]
    if not net.shared:  # only relaxed "*" mode (or no netns, announced) shares the host network
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
    mounts = filesystem_mounts(view, host.masked_dirs)
    if len(plan.files) > MAX_DATA_FILES:
        raise ValueError(f"at most {MAX_DATA_FILES} generated files")
    data_files = []
    for i, (path, content) in enumerate(plan.files):
        mounts.append(DataFile(dest=path, fd=DATA_FD + i))
        data_files.append((DATA_FD + i, bytes(content)))
    hidden = ["/tmp", *host.masked_dirs, *(p for p, is_dir in view.deny_read if is_dir)]
    exec_denied = _exec_masks(plan.exec_masks, hidden)
    mounts += [Bind(src="/dev/null", dest=path) for path in exec_denied]
    mounts += sealing(view)
    args += render_all(mounts)
    listen_inside = net.listen_inside
    args += ["--chdir", plan.cwd, "--info-fd", str(INFO_FD)]
    if listen_inside:
        args += ["--block-fd", str(BLOCK_FD)]
    if plan.seccomp_program:
        args += ["--seccomp", str(SECCOMP_FD)]
    args.append("--")
    pinned = {PINNED_FD_BASE + i: p for i, p in enumerate(pinned_sources(view))}
    helper, interpreter_fd = _init_helper_argv(plan, exec_denied, PINNED_FD_BASE + len(pinned))
    args += helper
    args += command

    clean, stripped = sanitize_env(plan.env)
    clean.update(plan.extra_env)
    clean["FENCE_SANDBOX"] = "1"
    return SandboxPlan(
        argv=args,
        env=clean,
        command=list(command),
        stripped_env=stripped,
        layers=layers(plan, exec_denied),
        mounts=mounts,
        block_fd=BLOCK_FD if listen_inside else 0,
        listen_inside=listen_inside,
        seccomp_program=plan.seccomp_program,
        data_files=data_files,
        pty=plan.pty,
        exec_denied=exec_denied,
        exec_notify_fd=EXEC_NOTIFY_FD if plan.exec_notify else 0,
        pinned=pinned,
        interpreter_fd=interpreter_fd,
        interpreter=_interpreter(plan) if interpreter_fd else "",
    )


def uses_landlock(plan: RunPlan) -> bool:
    """Whether the init helper applies Landlock: something to confine, and a kernel and helper to do it."""
    wanted = wants_landlock(plan.fs) or plan.network.connect_only is not None
    return wanted and plan.host.landlock_abi > 0 and bool(plan.host.helper)


def _init_helper_argv(plan: RunPlan, exec_denied: list[str], free_fd: int) -> tuple[list[str], int]:
    """One init helper, one interpreter start, for every duty inside: Landlock, the argv policy's
    listener, taking the PTY as controlling terminal; nothing when it has no duty.

    Returns the helper's argv and the fd it starts from (0: its interpreter's path).  When the
    runtime exec masks cover the interpreter (``command.deny: ["python3"]``), bwrap could not
    exec it by its path, and unmasking it would hand it to the command.  So the launcher opens
    the interpreter on the host and bwrap inherits it as ``free_fd``; bwrap execs
    ``/proc/self/fd/<free_fd>``, a path that reaches the file without its masked name, and the
    helper closes that fd (``--close-fd``) before anything else, so nothing the command can do
    reaches it again (docs/command-policy.md, "`path`: masking the programs").
    """
    host, net = plan.host, plan.network
    landlock = uses_landlock(plan)
    duties = landlock_options(plan.fs) if landlock else ["--no-landlock"]
    if landlock and net.connect_only is not None and host.landlock_abi >= 4:
        duties += ["--restrict-net", "--connect-only"]
        for port in dict.fromkeys(net.connect_only):
            duties += ["--connect", str(port)]
    if landlock and net.shared and host.landlock_abi >= 6:
        duties.append("--scope")
    if plan.exec_notify:
        duties += ["--exec-notify", str(EXEC_NOTIFY_FD)]
    if plan.pty:
        duties.append("--pty")
    if not (landlock or plan.exec_notify or plan.pty):
        return [], 0
    python, *start = _interpreter_argv(plan)
    fd = 0
    if python in exec_denied:
        fd = free_fd
        python = f"/proc/self/fd/{fd}"
        duties = ["--close-fd", str(fd), *duties]
    debug = ["--debug"] if plan.debug and landlock else []
    return [python, *start, *duties, *debug, "--"], fd


def _interpreter_argv(plan: RunPlan) -> list[str]:
    """``[python, -I, -S, helper]`` as the host starts it (the interpreter by its real path)."""
    return list(plan.host.helper or _init_helper(plan.host.python))


def _interpreter(plan: RunPlan) -> str:
    return _interpreter_argv(plan)[0]


def layers(plan: RunPlan, exec_denied: list[str]) -> list[str]:
    """The summary line's layers (``[fence:linux] Sandbox: ...``), in a fixed order."""
    view, net, host = plan.fs, plan.network, plan.host
    out = ["bwrap(pid,fs)" if net.shared else "bwrap(network,pid,fs)"]
    if net.listen_inside:
        out.append("netns-bridges")
    if view.write:
        out.append(f"allowWrite({len(view.write)})")
    if view.protected or view.pinned:
        out.append(f"protected({len(view.protected) + len(view.pinned)})")
    if view.deny_read:
        out.append(f"denyRead({len(view.deny_read)})")
    if view.default_deny_read:
        out.append("defaultDenyRead")
    if plan.seccomp_program:
        out.append(plan.seccomp_label or "seccomp")
    if plan.files:
        out.append("files(" + ",".join(path for path, _ in plan.files) + ")")
    if uses_landlock(plan):
        tcp = "(tcp-connect)" if net.connect_only is not None and host.landlock_abi >= 4 else ""
        out.append(f"landlock-v{host.landlock_abi}{tcp}")
    elif wants_landlock(view) or net.connect_only is not None:
        out.append("landlock(unavailable)")
    else:
        out.append("landlock(not needed)")
    out.append("userns(no-nesting)+cap-drop(ALL)" if host.is_root else "userns(no-nesting)")
    if exec_denied:
        out.append(f"exec-deny({len(exec_denied)} files)")
    if plan.exec_notify:
        out.append("exec-argv(seccomp-unotify)")
    if plan.pty:
        out.append("pty" if not plan.new_session else "pty(new-session)")
    return out


def _exec_masks(paths: Sequence[str], hidden: list[str]) -> list[str]:
    """``paths`` minus those inside a directory the sandbox sees as an empty tmpfs."""
    out = []
    for path in paths:
        if not any(path == d or path.startswith(d.rstrip("/") + "/") for d in hidden) and path not in out:
            out.append(path)
    return out


def _init_helper(python: str = "") -> list[str]:
    """``python -I -S .../inithelper.py``: the in-sandbox init helper (reads no more than a .pyc header),
    run by the real interpreter (``host.python``) when known: a venv's symlink need not be visible inside."""
    # lazy: only runs with the init helper need it (Landlock, argv policy, PTY; ~0.3 ms)
    from fence.executor.inithelper import helper_command

    command = helper_command()
    if python:
        command[0] = python
    return command
