"""Timing helpers shared by the benches in this folder (stdlib only).

Benches here are measurements, never tests: nothing is asserted, a row that
cannot run is reported as failed and the others still get timed.

The pieces, each small enough to reuse from the later proxy/config/policy
benches:

* ``Row``: one thing to time, a command line plus the environment it runs in.
* ``spawn_wait_ns``: one timed run (``posix_spawn`` + ``waitpid``, all three
  standard streams on /dev/null) -- no ``subprocess`` machinery in the timed
  path, so the harness adds as little as possible and the same to every row.
* ``interleaved``: warm-ups, then N rounds that each run every row once,
  rotating which row goes first, so machine noise (another job, a CPU
  frequency change, a cold cache after a heavy row) lands on all rows alike
  instead of on whichever row happened to run during it.
* ``median`` / ``percentile`` and ``print_table`` / ``print_ratios``.
* ``machine_info``: what the numbers were measured on.
"""

from __future__ import annotations

import gc
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field


@dataclass
class Row:
    """One benchmark row: what to run, how, and what happened."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: str | None = None
    times_ns: list[int] = field(default_factory=list)
    failure: str = ""
    """Why the row was not (fully) timed; empty while it is healthy."""

    @property
    def ok(self) -> bool:
        return not self.failure and bool(self.times_ns)

    def ms(self) -> list[float]:
        return [t / 1e6 for t in self.times_ns]


def spawn_wait_ns(argv: Sequence[str], env: dict[str, str], cwd: str | None = None) -> tuple[int, int]:
    """Run ``argv`` once with stdio on /dev/null; return (exit code, wall time in ns).

    The clock covers exactly what a caller of the tool waits for: from just
    before the spawn to the reaping of the process.  ``cwd`` is applied by
    changing this process's directory around the spawn, outside the timed
    span (Python's ``posix_spawn`` has no chdir action).
    """
    actions = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    old_cwd = None
    if cwd is not None:
        old_cwd = os.getcwd()
        os.chdir(cwd)
    try:
        start = time.perf_counter_ns()
        pid = os.posix_spawnp(argv[0], list(argv), env, file_actions=actions)
        _, status = os.waitpid(pid, 0)
        elapsed = time.perf_counter_ns() - start
    finally:
        if old_cwd is not None:
            os.chdir(old_cwd)
    return os.waitstatus_to_exitcode(status), elapsed


def interleaved(
    rows: Sequence[Row], rounds: int, warmups: int = 3, progress: Callable[[int, int], None] | None = None
) -> None:
    """Time every healthy row ``rounds`` times, round-robin, after ``warmups`` untimed rounds.

    Round ``r`` starts at row ``r % len(rows)`` so no row always runs right
    after the same neighbour (a heavy row can leave caches cold or the CPU
    clocked down for the next one).  A row that exits non-zero is marked
    failed and dropped from the remaining rounds: a failing command's time
    says nothing about start-up.  The garbage collector is off meanwhile so
    the harness itself does not pause at random points.
    """
    live = [row for row in rows if not row.failure]
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(warmups + rounds):
            timed = r >= warmups
            order = live[r % len(live) :] + live[: r % len(live)] if live else []
            for row in order:
                if row.failure:
                    continue
                code, ns = spawn_wait_ns(row.argv, row.env, row.cwd)
                if code != 0:
                    row.failure = f"exit code {code} in round {r + 1}"
                    row.times_ns.clear()
                elif timed:
                    row.times_ns.append(ns)
            if progress:
                progress(r + 1, warmups + rounds)
    finally:
        if gc_was_enabled:
            gc.enable()


# statistics ---------------------------------------------------------------------------
def percentile(values: Iterable[float], p: float) -> float:
    """The ``p``-th percentile (0..100), linear between closest ranks (NumPy's default)."""
    data = sorted(values)
    if not data:
        return float("nan")
    k = (len(data) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def median(values: Iterable[float]) -> float:
    return percentile(values, 50)


# output -------------------------------------------------------------------------------
def print_table(rows: Sequence[Row], title: str = "") -> None:
    """median / p90 / min in ms per row; failed or skipped rows say why instead of a number."""
    width = max([len(r.name) for r in rows] + [20])
    if title:
        print(title)
    print(f"  {'row':<{width}}  {'median ms':>10}  {'p90 ms':>8}  {'min ms':>8}  {'n':>4}")
    for row in rows:
        if row.ok:
            ms = row.ms()
            print(
                f"  {row.name:<{width}}  {median(ms):>10.1f}  {percentile(ms, 90):>8.1f}  {min(ms):>8.1f}  {len(ms):>4}"
            )
        else:
            why = row.failure or "not run"
            print(f"  {row.name:<{width}}  {why if why.startswith('skipped') else 'failed: ' + why}")


def ratio(a: Row | None, b: Row | None) -> float | None:
    """median(a) / median(b), or None when either row has no timings."""
    if a is None or b is None or not a.ok or not b.ok:
        return None
    return median(a.ms()) / median(b.ms())


def difference(a: Row | None, *bs: Row | None) -> float | None:
    """median(a) - sum(median(b) for b in bs) in ms, or None when any row has no timings."""
    timed = [b for b in bs if b is not None and b.ok]
    if a is None or not a.ok or len(timed) != len(bs):
        return None
    return median(a.ms()) - sum(median(b.ms()) for b in timed)


def print_ratios(lines: Sequence[tuple[str, float | None, str, str]], title: str = "") -> None:
    """Print ``(label, value, format, note)`` lines; a None value prints as n/a."""
    width = max([len(label) for label, _, _, _ in lines] + [20])
    if title:
        print(title)
    for label, value, fmt, note in lines:
        shown = "n/a" if value is None else format(value, fmt)
        print(f"  {label:<{width}}  {shown:>9}  {note}".rstrip())


def machine_info() -> str:
    """CPUs usable by this process, kernel, arch, Python, CPU model: enough to compare runs."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 0
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    uname = os.uname()
    parts = [
        f"nproc={cpus}",
        f"{uname.sysname} {uname.release}",
        uname.machine,
        f"Python {platform.python_version()} (harness)",
    ]
    if model:
        parts.append(model)
    return ", ".join(parts)
