"""The monitor service: collects every event, prints -m/-d lines, answers queries.

It subscribes to ``fence.events.>``, keeps the last events in a bounded ring
(memory never grows with traffic), counts them by kind in metrics, and, when
a console is attached (a lone ``fence run -d``), prints them on stderr
(``fence.eventlines``, the lines a supervised run prints too).
The durable audit stream (JetStream) builds on this subscription.
"""

from __future__ import annotations

from collections import deque
from typing import TextIO

from fence.bus import Bus
from fence.eventlines import console_lines
from fence.messages import Event, RecentEventsReply, RecentEventsRequest
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
        return RecentEventsReply(events=events[-max(0, req.limit) :] if req.limit else [])
