"""Subject names of the bus, in one place.

Request/reply subjects name the service that answers; events are published on
``fence.events.<sandbox>.<kind>`` so a subscriber can pick one sandbox
(``fence.events.<id>.>``) or one kind (``fence.events.*.net``).  Sandbox ids
are lowercase hex, so they are always a single valid subject token.
"""

CONFIG_RESOLVE = "fence.config.resolve"
PROXY_SESSION_OPEN = "fence.proxy.session.open"
PROXY_SESSION_CLOSE = "fence.proxy.session.close"
EXEC_PLAN = "fence.exec.plan"
MONITOR_RECENT = "fence.monitor.recent"
EVENTS_ALL = "fence.events.>"

# queue groups: every instance of a service shares one, so a request is
# answered once however many replicas run.
QUEUE = "fence"


def event(sandbox: str, kind: str) -> str:
    return f"fence.events.{sandbox}.{kind}"
