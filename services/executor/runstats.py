"""What the executor service can truthfully count about runs: the ones clients report on the bus.

A run executes in the ``fence run`` process (it owns the terminal), so the
executor service never sees its sandbox; before, its ``/metrics`` stayed empty
however many runs there were.  Every run publishes its lifecycle
(``fence.events.<sandbox>.lifecycle``: started, exited with a code or signal)
and a preflight refusal (``.preflight``: the run never started), so the
service subscribes to those and counts them: ``fence_sandbox_runs_total{phase,
outcome}``, the running ones (``fence_service_gauge{name="fence_sandboxes_running"}``)
and how long each ran (``fence_sandbox_run_seconds``).  These are reports,
not observations: a client that dies before its exited event leaves its run
counted as running until ``MAX_TRACKED`` newer starts push it out.

``outcome`` and the bookkeeping are pure; metrics calls are the only I/O.
"""

from __future__ import annotations

from collections import OrderedDict

from fence.messages import LifecycleEvent, PreflightBlockedEvent

MAX_TRACKED = 10000
"""Started sandboxes remembered for their duration (oldest forgotten first): memory stays bounded."""
RUNNING_GAUGE = "fence_sandboxes_running"


def outcome(event: LifecycleEvent) -> str:
    """``ok`` (exit 0), ``failed`` (another code) or ``signal`` (killed by one) for an exited event."""
    if event.signal:
        return "signal"
    return "ok" if event.exit_code == 0 else "failed"


class RunStats:
    """Counts reported runs into ``metrics`` (a ``fence.metrics.Metrics``, or None: counted, not exported)."""

    def __init__(self, metrics=None, max_tracked: int = MAX_TRACKED):
        self.metrics = metrics
        self.max_tracked = max_tracked
        self.started: OrderedDict[str, float] = OrderedDict()
        """Sandbox id -> started ts, for the sandboxes not yet reported exited."""

    def record(self, event) -> None:
        if isinstance(event, PreflightBlockedEvent):
            self._count("refused", "preflight")
        elif isinstance(event, LifecycleEvent) and event.phase == "started":
            self.started[event.sandbox] = event.ts
            self.started.move_to_end(event.sandbox)
            while len(self.started) > self.max_tracked:
                self.started.popitem(last=False)
            self._count("started", "started")
        elif isinstance(event, LifecycleEvent) and event.phase == "exited":
            began = self.started.pop(event.sandbox, None)
            self._count("exited", outcome(event))
            if began is not None and self.metrics is not None and event.ts >= began:
                self.metrics.observe_run(event.ts - began)
        else:
            return
        if self.metrics is not None:
            self.metrics.set_gauge(RUNNING_GAUGE, len(self.started))

    def _count(self, phase: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.count_run(phase, result)
