"""Every subject of the bus, and who may use it, in one table.

Request/reply subjects name the service that answers; events are published on
``fence.events.<sandbox>.<kind>`` so a subscriber can pick one sandbox
(``fence.events.<id>.>``) or one kind (``fence.events.*.net``).  Sandbox ids
are lowercase hex, so they are always a single valid subject token.

Why a table: the nats-server permissions of ``fence up`` are generated from it
(``fence.supervisor.permissions``), so a subject or event kind exists on the
bus exactly when a row says who sends it and who receives it.  Spelling
permissions by hand lost events before (``.preflight`` and ``.fs`` were
refused by the server for ``fence run``, and a refused publish is silent).
``event()`` refuses a kind without a row, so a new kind cannot be published
before the table (and so the permissions) know it.

Identities are the NATS users of ``fence up``, one per component, plus
``client``: ``fence run`` (which runs the executor in-process, so the events
of a run are the client's) and tools such as ``fence status``.  Message types
are named, not imported: this module is on the lone run's path and
``fence.messages`` is checked against the names by the tests.
"""

import msgspec

SUPERVISOR, CONFIG, PROXY, EXECUTOR, MONITOR, CLIENT = "supervisor", "config", "proxy", "executor", "monitor", "client"
IDENTITIES = (SUPERVISOR, CONFIG, PROXY, EXECUTOR, MONITOR, CLIENT)
"""Every bus user, in the order the supervisor writes them."""
SERVICES = (CONFIG, PROXY, EXECUTOR, MONITOR)
"""The identities that are service processes (each answers NATS micro discovery)."""

CONFIG_RESOLVE = "fence.config.resolve"
PROXY_SESSION_OPEN = "fence.proxy.session.open"
PROXY_SESSION_CLOSE = "fence.proxy.session.close"
EXEC_PLAN = "fence.exec.plan"
EXEC_START = "fence.exec.start"
EXEC_STDIN = "fence.exec.stdin"
EXEC_SIGNAL = "fence.exec.signal"
EXEC_KILL = "fence.exec.kill"
EXEC_WAIT = "fence.exec.wait"
EXEC_LIST = "fence.exec.list"
EXEC_INFO = "fence.exec.info"
EXEC_OUTPUT = "fence.exec.output"
EXEC_FLEET = (EXEC_START, EXEC_STDIN, EXEC_SIGNAL, EXEC_KILL, EXEC_WAIT, EXEC_LIST, EXEC_INFO, EXEC_OUTPUT)
"""The detached-sandbox API (docs/fleet.md), answered by the executor service."""
MONITOR_RECENT = "fence.monitor.recent"
DISCOVERY = "$SRV.>"
"""NATS micro discovery: ``$SRV.PING|INFO|STATS[.<name>[.<id>]]`` (``fence.service``)."""
EVENTS_ALL = "fence.events.>"

# queue groups: every instance of a service shares one, so a request is
# answered once however many replicas run.
QUEUE = "fence"


class Request(msgspec.Struct, frozen=True, kw_only=True):
    """A request/reply subject (or pattern, for discovery): what is asked, who answers, who may ask."""

    subject: str
    request: str
    """Message type name in ``fence.messages`` ("" for discovery's raw JSON)."""
    reply: str
    answered_by: tuple[str, ...]
    asked_by: tuple[str, ...]


class EventKind(msgspec.Struct, frozen=True, kw_only=True):
    """One event kind, published on ``fence.events.<sandbox>.<kind>``."""

    kind: str
    message: str
    """Message type name in ``fence.messages`` (a member of ``messages.Event``)."""
    published_by: tuple[str, ...]
    watched_by: tuple[str, ...]

    @property
    def subject(self) -> str:
        """The pattern covering this kind for every sandbox."""
        return f"fence.events.*.{self.kind}"


REQUESTS: tuple[Request, ...] = (
    # `fence run` resolves its policy and opens/closes its proxy session, and so does the executor
    # service for the detached sandboxes it starts; tools ask the rest.  The supervisor only checks health.
    Request(
        subject=CONFIG_RESOLVE,
        request="ConfigResolveRequest",
        reply="ConfigResolveReply",
        answered_by=(CONFIG,),
        asked_by=(CLIENT, EXECUTOR),
    ),
    Request(
        subject=PROXY_SESSION_OPEN,
        request="ProxySessionOpen",
        reply="ProxySessionOpened",
        answered_by=(PROXY,),
        asked_by=(CLIENT, EXECUTOR),
    ),
    Request(
        subject=PROXY_SESSION_CLOSE,
        request="ProxySessionClose",
        reply="ProxySessionClosed",
        answered_by=(PROXY,),
        asked_by=(CLIENT, EXECUTOR),
    ),
    Request(
        subject=EXEC_PLAN, request="ExecPlanRequest", reply="ExecPlanReply", answered_by=(EXECUTOR,), asked_by=(CLIENT,)
    ),
    # detached sandboxes (docs/fleet.md): clients start, feed, signal, follow and wait for them
    Request(
        subject=EXEC_START,
        request="ExecStartRequest",
        reply="ExecStartReply",
        answered_by=(EXECUTOR,),
        asked_by=(CLIENT,),
    ),
    Request(
        subject=EXEC_STDIN, request="ExecStdinRequest", reply="ExecAck", answered_by=(EXECUTOR,), asked_by=(CLIENT,)
    ),
    Request(
        subject=EXEC_SIGNAL, request="ExecSignalRequest", reply="ExecAck", answered_by=(EXECUTOR,), asked_by=(CLIENT,)
    ),
    Request(
        subject=EXEC_KILL, request="ExecSandboxRequest", reply="ExecAck", answered_by=(EXECUTOR,), asked_by=(CLIENT,)
    ),
    Request(
        subject=EXEC_WAIT, request="ExecWaitRequest", reply="ExecWaitReply", answered_by=(EXECUTOR,), asked_by=(CLIENT,)
    ),
    Request(
        subject=EXEC_LIST, request="ExecListRequest", reply="ExecListReply", answered_by=(EXECUTOR,), asked_by=(CLIENT,)
    ),
    Request(
        subject=EXEC_INFO,
        request="ExecSandboxRequest",
        reply="SandboxInfo",
        answered_by=(EXECUTOR,),
        asked_by=(CLIENT,),
    ),
    Request(
        subject=EXEC_OUTPUT,
        request="ExecOutputRequest",
        reply="ExecOutputReply",
        answered_by=(EXECUTOR,),
        asked_by=(CLIENT,),
    ),
    Request(
        subject=MONITOR_RECENT,
        request="RecentEventsRequest",
        reply="RecentEventsReply",
        answered_by=(MONITOR,),
        asked_by=(CLIENT,),
    ),
    Request(subject=DISCOVERY, request="", reply="", answered_by=SERVICES, asked_by=(SUPERVISOR, CLIENT)),
)

EVENTS: tuple[EventKind, ...] = (
    # A run's own events come from whoever runs its executor: `fence run` (client) or, for a detached
    # sandbox, the executor service; only the proxy decides network verdicts.
    # The monitor collects them all; `fence run -d/-m` watches its own sandbox's; the executor service
    # counts the runs reported (started, exited, refused by preflight) in its /metrics.
    EventKind(
        kind="lifecycle",
        message="LifecycleEvent",
        published_by=(CLIENT, EXECUTOR),
        watched_by=(MONITOR, CLIENT, EXECUTOR),
    ),
    EventKind(
        kind="preflight",
        message="PreflightBlockedEvent",
        published_by=(CLIENT, EXECUTOR),
        watched_by=(MONITOR, CLIENT, EXECUTOR),
    ),
    EventKind(kind="net", message="NetDecisionEvent", published_by=(PROXY,), watched_by=(MONITOR, CLIENT)),
    EventKind(kind="exec", message="ExecBlockedEvent", published_by=(CLIENT, EXECUTOR), watched_by=(MONITOR, CLIENT)),
    EventKind(kind="fs", message="ProtectedPathEvent", published_by=(CLIENT, EXECUTOR), watched_by=(MONITOR, CLIENT)),
)

EVENT_KINDS = frozenset(e.kind for e in EVENTS)


def event(sandbox: str, kind: str) -> str:
    """The subject of one sandbox's event of ``kind`` (a kind the table declares)."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}: add it to fence.subjects.EVENTS first")
    return f"fence.events.{sandbox}.{kind}"
