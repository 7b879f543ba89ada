"""Every message that crosses the bus, as msgspec Structs.

Wire format: JSON (readable with ``nats sub``), one Struct per message.  Each
message carries its class name in ``"type"`` (a msgspec tag), so a reply can be
decoded as ``ExpectedReply | ErrorReply`` in one pass, and a version ``"v"``.

Versioning rule: adding a field with a default is compatible and keeps ``v``;
renaming, removing or changing the meaning of a field bumps ``v`` of that
message, and receivers reject versions they do not know with ``bad_request``.

Subjects (see ``fence.subjects``) name who answers; the Struct names what
is said.  Keep this module free of logic: it is imported on every run.
"""

from __future__ import annotations

from typing import Any

import msgspec

from fence.policy import NetworkConfig, Policy
from fence.runplan import RunPlan, SandboxPlan

PROTOCOL_VERSION = 1


class Message(msgspec.Struct, kw_only=True, tag=True, tag_field="type", omit_defaults=True):
    """Base of every bus message: tagged with its class name, versioned."""

    v: int = PROTOCOL_VERSION


# --- errors -----------------------------------------------------------------


class ErrorReply(Message):
    """A typed failure in place of a reply.

    ``code`` is one of: ``bad_request`` (undecodable, wrong type, unknown
    version), ``too_large`` (payload over the handler's limit), ``internal``
    (the handler raised), ``unavailable`` (service cannot serve now).
    ``message`` is for humans and names what was wrong.
    """

    code: str
    message: str
    field: str = ""
    """The request field that was wrong (``argv``, ``cwd``, ``env``, ``template``...), "" when none is."""


# --- config service ----------------------------------------------------------


class ConfigResolveRequest(Message):
    """Resolve the policy for a run: explicit file or template, else discovery."""

    cwd: str
    settings: str = ""
    template: str = ""
    home: str = ""
    env_xdg_config_home: str = ""
    """The caller's ``XDG_CONFIG_HOME`` (the service may run with another environment)."""


class SourceRef(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One link of the chain a policy was resolved from: what it is and how the run reached it.

    Consumers decide on these fields and only display ``label``; nobody parses it back.

    ``kind``: ``file`` (a config file), ``template`` (a built-in one) or ``defaults`` (no
    file: the built-in defaults).  ``via``: how it was found -- ``cli`` (``--settings`` or
    ``--template``), ``project``, ``user`` or ``legacy`` (discovery, or what ``extends: "@base"``
    found), ``extends`` (named by the previous link's ``extends``), "" (nothing was: defaults).
    ``extends``: the ``extends`` value that pulled it in ("" for the config the run asked for).
    ``path``: the file (kind ``file`` only; absolute, perhaps missing).  ``name``: the
    template's canonical name (kind ``template``).  ``empty``: a file that is missing (only the
    first link may be) or blank, so it stood for the built-in defaults.  ``label``: how
    messages name it, e.g. ``project config: /src/app/fence.json``, ``template: code``.
    """

    kind: str
    via: str = ""
    extends: str = ""
    path: str = ""
    name: str = ""
    empty: bool = False
    label: str = ""


class FieldSource(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Which links of the chain set one field of the resolved policy (``ConfigResolveReply.fields``).

    ``sources``: indices into ``ConfigResolveReply.chain``, in the order the merge applied them
    (innermost base first): every contributor of a list, the first source of a true plain bool
    (a child cannot undo it), the last one of any other value.  ``owners``: for a list more
    than one source contributed to, each entry (as text) -> the sources that list it themselves;
    empty when one source set the whole list.
    """

    sources: list[int]
    owners: dict[str, list[int]] = {}


class ConfigResolveReply(Message):
    """The resolved policy and where it came from.

    ``chain``: the sources, nearest first (the config asked for, then what it extends).
    ``fields``: the dotted JSON path of every field the policy sets (``network.allowedDomains``)
    -> the sources that set it.  ``user_config_dir``: the user config directory this resolve
    looked in (``$XDG_CONFIG_HOME/fence`` or ``~/.config/fence``), which every sandbox protects.

    ``sources`` and ``provenance`` are the same facts rendered for people (``fence -d``'s
    ``[fence] Config:`` lines, ``fence config show``), e.g. ``template: code + project config:
    /src/app/fence.json``; they are kept for display and for older readers, never to be parsed.
    """

    policy: Policy
    sources: list[str] = []
    provenance: dict[str, str] = {}
    chain: list[SourceRef] = []
    fields: dict[str, FieldSource] = {}
    user_config_dir: str = ""


# --- proxy service -----------------------------------------------------------


class ProxySessionOpen(Message):
    """Ask the proxy service to serve one sandbox with this network policy.

    ``loopback``: whether the session gets its own listeners on the host's
    127.0.0.1 (needed when the sandbox shares the host network: relaxed
    ``"*"`` mode or no network namespace available).  ``None`` leaves it to
    the service's default; ``false`` is for sandboxes whose listeners are
    made inside their own netns and handed over (no host port then exists
    that any local process could use).
    """

    sandbox: str
    network: NetworkConfig
    loopback: bool | None = None


class ProxySessionOpened(Message):
    """Where the sandbox's proxies listen; 0 means no listener (network fully off).

    ``address`` is the host the ports are on (``127.0.0.1``; "" without
    listeners).  ``relaxed`` is true for ``allowedDomains: ["*"]`` (the
    sandbox shares the host's network; only proxy-aware clients are filtered).

    ``handoff`` is the path of the unix socket where the process holding this
    session accepts the sandbox's own listening sockets (``ProxyHandoff``),
    "" when it accepts none (a lone run's in-process proxy); ``token`` is the
    one-time secret that hand-off must carry.
    """

    sandbox: str
    http_port: int = 0
    socks_port: int = 0
    address: str = ""
    relaxed: bool = False
    handoff: str = ""
    token: str = ""


class ProxyHandoff(Message):
    """Sent over the proxy's hand-off unix socket (not the bus) with listening sockets attached (SCM_RIGHTS).

    ``listeners`` names each passed descriptor in order: ``"http"`` or
    ``"socks"``.  Answered with ``ProxyHandoffDone`` or ``ErrorReply``; the
    connection then stays open for the sandbox's life and its end closes the
    session (a ``fence run`` that dies leaves nothing behind).
    """

    sandbox: str
    token: str
    listeners: list[str]


class ProxyHandoffDone(Message):
    sandbox: str


class ProxySessionClose(Message):
    sandbox: str


class ProxySessionClosed(Message):
    sandbox: str
    existed: bool = True


# --- executor service ----------------------------------------------------------


class ExecPlanRequest(Message):
    """Plan (without running) the sandbox for ``argv`` under ``policy``, as ``fence run`` would.

    The executor gathers the same facts and makes the same decisions as a run
    (``fence.executor.prepare``) but does nothing: no placeholder, no fd, no
    session.  ``chain`` and ``config_dir`` are the resolve reply's
    (protections cover the files a config came from); ``session`` the proxy session's reply when one
    is open (its host ports matter only on a shared network).
    """

    policy: Policy
    argv: list[str]
    cwd: str
    env: dict[str, str] = {}
    sandbox: str = ""
    chain: list[SourceRef] = []
    config_dir: str = ""
    """The user's fence config directory (protected like every config source)."""
    ports: list[tuple[str, int]] = []
    session: ProxySessionOpened | None = None
    debug: bool = False
    """Plan as ``fence -d`` runs (the init helper then reports what it applies)."""


class ExecPlanReply(Message):
    """The run's decisions (``plan``) and the bwrap invocation they render to (``rendered``)."""

    bwrap_argv: list[str]
    env: dict[str, str]
    summary: str
    stripped_env: list[str] = []
    plan: RunPlan | None = None
    rendered: SandboxPlan | None = None


# --- executor service: detached sandboxes (docs/fleet.md) -------------------------
# Every request names the sandbox by id and carries ``tenant`` ("" until tenants exist):
# a sandbox of another tenant is answered exactly like an unknown id (no oracle).


class ExecStartRequest(Message):
    """Start a detached sandbox: the executor service owns it, its client may leave and come back.

    The policy comes from ``template``, ``settings`` (a config file, absolute
    or relative to ``cwd``) or ``config`` (a config object, as a file would hold
    it; its ``extends`` names a template or an absolute path), else from
    discovery in ``cwd`` as for ``fence run``.
    ``env``: variables added over the executor's own environment (a client's
    whole environment for ``fence run --detach``).  ``stdin``: give the command
    a pipe fed by ``fence.exec.stdin`` (else ``/dev/null``).  ``tty``: a PTY as its
    stdin, stdout and stderr instead (its output is one stream, ``stdout``; with
    ``allowPty`` the command owns it as its controlling terminal).  ``tail_bytes``:
    how much output the sandbox retains for late readers (0: the default).
    """

    argv: list[str]
    cwd: str
    env: dict[str, str] = {}
    template: str = ""
    settings: str = ""
    config: dict[str, Any] | None = None
    command_string: str = ""
    """``fence run --detach -c``: what preflight parses (argv is then ``[shell, -c, it]``)."""
    stdin: bool = False
    tty: bool = False
    labels: dict[str, str] = {}
    tail_bytes: int = 0
    tenant: str = ""


class ExecStartReply(Message):
    """The sandbox runs: its id, the host pid of its init, and the warnings of its start."""

    sandbox: str
    pid: int
    warnings: list[str] = []


class ExecSandboxRequest(Message):
    """Names one sandbox: ``fence.exec.info`` and ``fence.exec.kill`` (SIGKILL to the whole sandbox)."""

    sandbox: str
    tenant: str = ""


class ExecStdinRequest(Message):
    """Bytes for the command's stdin (in order), and/or its end (``eof``)."""

    sandbox: str
    data: bytes = b""
    eof: bool = False
    tenant: str = ""


class ExecSignalRequest(Message):
    """A signal (number or name: ``15``, ``TERM``, ``SIGTERM``) for the command's process group."""

    sandbox: str
    signal: str
    tenant: str = ""


class ExecWaitRequest(Message):
    """Wait up to ``timeout`` seconds (at most ``fence.executor.fleet.MAX_WAIT``) for the sandbox to end."""

    sandbox: str
    timeout: float = 0.0
    tenant: str = ""


class ExecListRequest(Message):
    """Every sandbox the executor holds (running, and the most recent ended ones)."""

    tenant: str = ""
    labels: dict[str, str] = {}
    """Only sandboxes carrying all these labels."""


class ExecOutputRequest(Message):
    """The sandbox's output after chunk ``after`` (0: from the start of what is retained).

    With ``wait`` > 0 the reply waits up to that many seconds for new output
    (or the end) when there is none yet: a client follows a sandbox by asking
    again from the last ``seq`` it got.
    """

    sandbox: str
    after: int = 0
    wait: float = 0.0
    max_bytes: int = 0
    tenant: str = ""


class OutputChunk(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One piece of output.  ``seq`` numbers a sandbox's chunks 1, 2, ... across stdout and stderr.

    ``stream`` is ``stdout``, ``stderr`` or ``dropped``: a marker standing for
    ``count`` chunks (up to and including ``seq``) that were no longer retained
    when this reader asked (it read too slowly, or attached late).
    """

    seq: int
    stream: str
    data: bytes = b""
    count: int = 0


class SandboxInfo(Message):
    """One detached sandbox as ``fence ps`` shows it.  ``state``: ``running`` or ``exited``."""

    sandbox: str
    argv: list[str]
    cwd: str
    state: str
    started: float
    pid: int = 0
    tenant: str = ""
    labels: dict[str, str] = {}
    ended: float = 0.0
    exit_code: int | None = None
    signal: int | None = None
    output_chunks: int = 0
    output_bytes: int = 0
    stdin: bool = False
    tty: bool = False


class ExecOutputReply(Message):
    """Chunks after the asked ``seq``, in order (a ``dropped`` marker first when some were lost);
    ``ended``: nothing more will come (``info`` has the exit)."""

    sandbox: str
    chunks: list[OutputChunk] = []
    ended: bool = False
    info: SandboxInfo | None = None


class ExecWaitReply(Message):
    """The sandbox after the wait: ``info.state`` is ``running`` when the timeout came first."""

    info: SandboxInfo


class ExecListReply(Message):
    sandboxes: list[SandboxInfo] = []


class ExecAck(Message):
    """Done (stdin written or queued, signal sent, kill sent)."""

    sandbox: str


# --- monitor service -----------------------------------------------------------


class LifecycleEvent(Message):
    """A sandbox started or ended.  Published on ``fence.events.<sandbox>.lifecycle``."""

    sandbox: str
    phase: str  # "started" | "exited" | "failed"
    ts: float
    pid: int = 0
    argv: list[str] = []
    exit_code: int | None = None
    signal: int | None = None
    detail: str = ""


class NetDecisionEvent(Message):
    """One proxy decision.  Published on ``fence.events.<sandbox>.net`` by the proxy service.

    ``proto`` is ``http`` or ``socks``; ``host`` the canonical host (as
    written when it did not canonicalise, then ``reason`` is ``invalid``);
    ``decision`` what the filter said (``allow``/``deny``/``proxy``),
    ``reason`` why (``allowed``, ``denied``, ``nomatch``, ``noconfig``,
    ``invalid``, ``resolved-denied``, ``unsupported``) and ``rule`` the pattern that matched;
    ``status`` the HTTP status (or SOCKS5 reply code) the client got and
    ``outcome`` ``allowed``, ``blocked`` or ``error``.  Console lines:
    ``fence.eventlines.net_lines``.
    """

    sandbox: str
    ts: float
    proto: str
    method: str = "CONNECT"
    host: str = ""
    port: int = 0
    url: str = ""
    decision: str = ""
    reason: str = ""
    rule: str = ""
    status: int = 0
    outcome: str = ""
    duration_ms: float = 0.0
    detail: str = ""


class PreflightBlockedEvent(Message):
    """A command was refused before anything started (command or SSH policy).

    Published on ``fence.events.<sandbox>.preflight`` by the executor.
    ``command`` is the offending (sub)command, ``rule`` the rule that matched
    ("" when none did, e.g. a host not in ``ssh.allowedHosts``), ``source``
    the config file or template it came from, ``default_rule`` whether it is
    one of the built-in default deny rules, ``kind`` ``"command"`` or ``"ssh"``.
    """

    sandbox: str
    ts: float
    command: str
    rule: str = ""
    source: str = ""
    default_rule: bool = False
    kind: str = "command"


class ExecBlockedEvent(Message):
    """A process in the sandbox was refused an exec at run time (``runtimeExecPolicy: "argv"``).

    Published on ``fence.events.<sandbox>.exec`` by the executor's exec
    supervisor.  ``pid`` is the host pid of the process that called
    execve/execveat, ``path`` the file it asked for (as it wrote it),
    ``argv`` its arguments (at most ``ARGV_SHOWN`` of them, each cut at 256
    characters), ``rule``/``source``/``default_rule`` as in
    ``PreflightBlockedEvent``.  ``reason`` is "" when a rule matched, else
    why the exec could not be checked (and so was refused).
    """

    sandbox: str
    ts: float
    pid: int = 0
    path: str = ""
    argv: list[str] = []
    rule: str = ""
    source: str = ""
    default_rule: bool = False
    reason: str = ""


class ProtectedPathEvent(Message):
    """The sandbox created a path that mandatory protection covers; fence moved it aside after the run.

    Published on ``fence.events.<sandbox>.fs`` once the sandbox has ended
    (``fence.executor.protect``).  ``moved_to`` is the quarantine name, or ""
    with ``error`` set when the rename failed (the path is then still there:
    the warning on stderr says so too).
    """

    sandbox: str
    ts: float
    path: str
    moved_to: str = ""
    error: str = ""


Event = LifecycleEvent | NetDecisionEvent | PreflightBlockedEvent | ExecBlockedEvent | ProtectedPathEvent
"""Every event kind a monitor may receive (a tagged union as kinds are added)."""


class RecentEventsRequest(Message):
    """Ask the monitor for the last ``limit`` events it kept, newest last."""

    limit: int = 100
    sandbox: str = ""


class RecentEventsReply(Message):
    events: list[Event] = []
