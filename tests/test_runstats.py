"""The executor service's run counting (``fence.executor.runstats``): reported events into metrics, bounded."""

from __future__ import annotations

from fence.executor.runstats import RUNNING_GAUGE, RunStats, outcome
from fence.messages import LifecycleEvent, NetDecisionEvent, PreflightBlockedEvent


class Recorded:
    """A ``fence.metrics.Metrics`` stand-in that keeps what it was told (the counting is under test)."""

    def __init__(self):
        self.runs: list[tuple[str, str]] = []
        self.seconds: list[float] = []
        self.gauges: dict[str, float] = {}

    def count_run(self, phase: str, result: str) -> None:
        self.runs.append((phase, result))

    def observe_run(self, seconds: float) -> None:
        self.seconds.append(seconds)

    def set_gauge(self, name: str, value: float) -> None:
        self.gauges[name] = value


def started(sandbox: str, ts: float) -> LifecycleEvent:
    return LifecycleEvent(sandbox=sandbox, phase="started", ts=ts, pid=10)


def exited(sandbox: str, ts: float, code: int) -> LifecycleEvent:
    return LifecycleEvent(
        sandbox=sandbox, phase="exited", ts=ts, pid=10, exit_code=code, signal=code - 128 if code > 128 else None
    )


def test_outcome_of_an_exit():
    assert [outcome(exited("a", 1, code)) for code in (0, 3, 137)] == ["ok", "failed", "signal"]


def test_runs_are_counted_with_their_duration_and_the_running_gauge():
    metrics = Recorded()
    stats = RunStats(metrics)
    stats.record(started("a", 100.0))
    stats.record(started("b", 101.0))
    assert metrics.gauges[RUNNING_GAUGE] == 2
    stats.record(exited("a", 102.5, 0))
    stats.record(exited("b", 101.25, 137))
    stats.record(PreflightBlockedEvent(sandbox="c", ts=103.0, command="reboot", rule="reboot"))
    stats.record(exited("never-started", 104.0, 1))  # its start was not seen: counted, no duration
    stats.record(NetDecisionEvent(sandbox="a", ts=105.0, proto="http"))  # not a run report: ignored
    assert metrics.runs == [
        ("started", "started"),
        ("started", "started"),
        ("exited", "ok"),
        ("exited", "signal"),
        ("refused", "preflight"),
        ("exited", "failed"),
    ]
    assert metrics.seconds == [2.5, 0.25] and metrics.gauges[RUNNING_GAUGE] == 0


def test_started_sandboxes_are_remembered_within_a_bound():
    metrics = Recorded()
    stats = RunStats(metrics, max_tracked=3)
    for i in range(5):
        stats.record(started(f"s{i}", float(i)))
    assert list(stats.started) == ["s2", "s3", "s4"] and metrics.gauges[RUNNING_GAUGE] == 3
    stats.record(exited("s0", 9.0, 0))  # forgotten: no duration, the gauge is unchanged
    assert metrics.seconds == [] and metrics.gauges[RUNNING_GAUGE] == 3


def test_without_metrics_it_only_keeps_track():
    stats = RunStats(None)
    stats.record(started("a", 1.0))
    stats.record(exited("a", 2.0, 0))
    assert not stats.started
