"""The monitor service: collects every event, prints -m/-d lines, answers queries.

It subscribes to ``fence.events.>``, keeps the last events in a bounded ring
(memory never grows with traffic), counts them by kind in metrics, and, when
a console is attached (a lone ``fence run -d``), prints them on stderr.
The durable audit stream (JetStream) builds on this subscription.
"""

from __future__ import annotations

from collections import deque
from typing import TextIO

from fence.bus import Bus
from fence.messages import (Event, ExecBlockedEvent, LifecycleEvent, NetDecisionEvent, ProtectedPathEvent,
                            RecentEventsReply, RecentEventsRequest)
from fence.service import Endpoint, Service
from fence.subjects import EVENTS_ALL, MONITOR_RECENT

RING_SIZE = 1000


class MonitorService(Service):
    name = "fence-monitor"
    description = "Collects sandbox events: console lines, recent-event queries, metrics"

    def __init__(self, metrics=None, console: TextIO | None = None, debug: bool = False, monitor: bool = False):
        super().__init__(metrics)
        self.recent: deque = deque(maxlen=RING_SIZE)
        self.console = console
        self.debug = debug
        self.monitor = monitor

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("recent", MONITOR_RECENT, RecentEventsRequest, self.query)]

    async def on_start(self, bus: Bus) -> None:
        self._subs.append(await bus.subscribe(EVENTS_ALL, Event, self.on_event))

    async def on_event(self, event: Event) -> None:
        self.recent.append(event)
        if self.metrics is not None:
            self.metrics.count_event(type(event).__name__)
        if self.console is not None:
            for line in console_lines(event, self.debug, self.monitor):
                print(line, file=self.console, flush=True)

    async def query(self, req: RecentEventsRequest) -> RecentEventsReply:
        events = [e for e in self.recent if not req.sandbox or e.sandbox == req.sandbox]
        return RecentEventsReply(events=events[-max(0, req.limit):] if req.limit else [])


def console_lines(event: Event, debug: bool, monitor: bool = False) -> list[str]:
    """Every stderr line for an event at this verbosity (-d: all, -m: blocks only)."""
    if isinstance(event, NetDecisionEvent):
        from fence.proxy.lines import net_lines

        return net_lines(event, debug, monitor)
    if isinstance(event, ExecBlockedEvent):
        return [exec_line(event)] if (debug or monitor) else []
    if isinstance(event, ProtectedPathEvent):
        return []  # the run itself always warns on stderr (fence.executor.runner._quarantine)
    line = console_line(event, debug)
    return [line] if line else []


def exec_line(event: ExecBlockedEvent) -> str:
    """``[fence:exec] 12:00:01 ✗ exec "git push origin main" (pid 4242) matches "git push"``."""
    import time

    from fence.executor.preflight import go_quote

    clock = time.strftime("%H:%M:%S", time.localtime(event.ts))
    shown = " ".join(event.argv) or event.path
    why = f"matches {go_quote(event.rule)}" if event.rule else f"unchecked: {event.reason}"
    return f"[fence:exec] {clock} ✗ exec {go_quote(shown[:200])} (pid {event.pid}) {why}"


def console_line(event: Event, debug: bool) -> str:
    """The stderr line for an event, or "" when the verbosity hides it."""
    if isinstance(event, LifecycleEvent) and debug:
        if event.phase == "started":
            return f"[fence] Sandbox {event.sandbox} started (pid {event.pid})"
        if event.phase == "exited":
            how = f"signal {event.signal}" if event.signal else f"code {event.exit_code}"
            return f"[fence] Sandbox {event.sandbox} exited with {how}"
        return f"[fence] Sandbox {event.sandbox} {event.phase}: {event.detail}"
    return ""
