"""The records of a run's plan, as data: what the executor decided, shared by everyone who reads it.

``fence.executor.prepare`` fills a ``RunPlan``; ``fence.executor.plan.render``
turns it into a ``SandboxPlan`` (bwrap's argv and what the launcher hands
it).  They live in the core, apart from the code that makes them, because
they cross the bus: the executor service's plan endpoint answers with them
(``fence.messages.ExecPlanReply``), and a client decodes them without
importing the executor.
"""

from __future__ import annotations

import msgspec

from fence.mountops import Mount
from fence.policy import Policy

INFO_FD = 3
"""bwrap writes the sandbox's init pid here (``--info-fd``), for signal forwarding."""

Paths = list[tuple[str, bool]]
"""(canonical existing path, is a directory)"""


class HostFacts(msgspec.Struct, frozen=True):
    """What the planner needs to know about the machine; gathered once by the caller."""

    bwrap: str
    is_root: bool
    masked_dirs: tuple[str, ...] = ()
    """Host directories the sandbox must never see (fence's runtime dir: bus credentials)."""
    landlock_abi: int = 0
    """The kernel's Landlock ABI (0: unavailable)."""
    helper: tuple[str, ...] = ()
    """The init helper's command prefix (``python -I -S inithelper.py``), run first inside when Landlock is used."""
    python: str = ""
    """This interpreter (``sys.executable``): runs fence's init helper inside the sandbox (PTY and argv-policy runs)."""


class FsView(msgspec.Struct, frozen=True):
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
    tmp_size: int = 0
    """Bytes the private /tmp may hold (``filesystem.tmpSize``, resolved; 0: the kernel's default, half of RAM)."""
    shm_size: int = 0
    """Bytes the private /dev/shm may hold (``filesystem.shmSize``; minimal /dev only; 0: no tmpfs of its own)."""
    hidden: list[str] = []
    """Host directories the sandbox sees as an empty read-only tmpfs: the user's ``/run/user/<uid>`` (the
    session bus, keyring and desktop sockets), unless a grant names the directory itself."""
    hidden_grants: list[str] = []
    """Readable grants (allowRead, allowExecute, allowUnixSockets) inside a hidden directory, bound back
    read-only over it (writable ones are allowWrite binds already)."""

    def writable_roots(self) -> list[str]:
        return [p for p, _ in self.write]


class NetPlan(msgspec.Struct, frozen=True):
    """The network decisions of one run (``prepare.network_plan``)."""

    intent: str = "none"
    """"none" (nothing allowed), "filtered" (proxied) or "relaxed" (``"*"``)."""
    shared: bool = False
    """On the host's network (no ``--unshare-net``): relaxed, or no netns can be made here."""
    proxy_listen: tuple[tuple[str, int], ...] = ()
    """The proxies' listeners inside the sandbox's netns (filtered, with a netns)."""
    outbound_ports: tuple[int, ...] = ()
    """Host loopback ports relayed from the sandbox's own loopback (``allowLocalOutboundPorts``)."""
    published: tuple[tuple[str, int], ...] = ()
    """``-p [ADDR:]PORT``: the host's ADDR:PORT reaches the sandbox's 127.0.0.1:PORT (with a netns)."""
    connect_only: tuple[int, ...] | None = None
    """A shared network that is not relaxed: the only TCP ports the sandbox may connect to (Landlock ABI 4+)."""

    @property
    def listen_inside(self) -> list[tuple[str, int]]:
        """Every listener made inside the netns, in order: the proxies', then the local ports'."""
        return list(self.proxy_listen) + [(h, p) for p in self.outbound_ports for h in ("127.0.0.1", "::1")]


class RunPlan(msgspec.Struct, frozen=True, kw_only=True):
    """Every decision for one run, made before anything is done (``fence.executor.prepare``).

    ``render`` turns it into the exact bwrap invocation; ``fence -d`` prints
    that and the executor service's plan endpoint returns this same record,
    so both answer from one place.  Nothing here is an open fd or a process:
    numbers bwrap will receive (pinned sources, the exec supervisor's
    socket) are decided here and the launcher moves its fds onto them.
    """

    command: list[str]
    cwd: str
    host: HostFacts
    env: dict[str, str] = {}
    """The environment fence runs with; ``render`` strips ``LD_*`` and adds ``extra_env``."""
    extra_env: dict[str, str] = {}
    """Set for the sandbox: proxy variables, repaired TMPDIR/XDG_RUNTIME_DIR, the SSH route."""
    sandbox: str = ""
    policy: Policy = msgspec.field(default_factory=Policy)
    """The resolved policy the decisions were made from."""
    fs: FsView = msgspec.field(default_factory=FsView)
    """The filesystem view after pinning decisions (``fsfacts.gather``)."""
    network: NetPlan = NetPlan()
    files: list[tuple[str, bytes]] = []
    """(path, content) placed read-only after the masks (the generated ssh_config of filtered runs)."""
    seccomp_program: bytes = b""
    seccomp_label: str = ""
    exec_masks: list[str] = []
    """Files no process in the sandbox may execute (``execdeny``), before hidden ones are skipped."""
    exec_notify: bool = False
    """runtimeExecPolicy "argv": the command starts through the init helper with ``--exec-notify``."""
    pty: bool = False
    new_session: bool = True
    debug: bool = False
    warnings: list[str] = []
    """Printed on stderr on every run, in order (``[fence...] Warning: ...``)."""
    trace: list[str] = []
    """Printed with ``-d`` only, before the command lines (exposed ports, exec masks)."""
    notes: list[str] = []
    """Printed with ``-d`` only, after the sandbox's summary (repaired variables, filesystem notes)."""
    watch: list[str] = []
    """Protected names that do not exist: quarantined after the run if they appear."""
    reserve: list[str] = []
    """Missing protected paths fence makes inert placeholders for, bound read-only for the run."""


class SandboxPlan(msgspec.Struct):
    """A ``RunPlan`` rendered: everything the launcher needs, and nothing that needs deciding."""

    argv: list[str]
    """Full argv to execute: bwrap, its options, ``--``, the command."""
    env: dict[str, str]
    command: list[str]
    stripped_env: list[str]
    layers: list[str]
    mounts: list[Mount] = []
    """The filesystem setup ops, typed, in order (``mountops``): what ``argv`` renders."""
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
    pinned: dict[int, str] = {}
    """fd bwrap receives -> the writable source the launcher must open, check and move onto it."""
    exec_notify_fd: int = 0
    """Non-zero: the exec supervisor's socket, which bwrap must inherit under this number."""
    interpreter_fd: int = 0
    """Non-zero: the exec masks cover the init helper's interpreter, so bwrap starts it as
    ``/proc/self/fd/<this>``; the launcher opens ``interpreter`` and moves it onto this number."""
    interpreter: str = ""
    """The host path of that interpreter (its real path)."""

    @property
    def summary(self) -> str:
        return "[fence:linux] Sandbox: " + ", ".join(self.layers)
