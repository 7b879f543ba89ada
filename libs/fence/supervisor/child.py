"""One supervised process: its public ``ComponentInfo`` and the bookkeeping behind restarts.

Pure apart from the clock: the backoff rule (0.2 s doubling to 10 s, reset
once a process had been healthy for 30 s) lives here so it is testable
without starting anything.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fence.runtime import ComponentInfo

if TYPE_CHECKING:
    import asyncio

BACKOFF_START, BACKOFF_MAX, BACKOFF_RESET_AFTER = 0.2, 10.0, 30.0


class Child:
    """A supervised process and its bookkeeping (the public part is ``info``)."""

    def __init__(self, name: str, service: str = ""):
        self.name = name
        self.service = service
        self.proc: asyncio.subprocess.Process | None = None
        self.info = ComponentInfo(name=name, pid=0, started_at=0.0, service=service)
        self.backoff = 0.0
        self.healthy_since = 0.0
        self.proven = False
        """Had a healthy streak of ``BACKOFF_RESET_AFTER`` seconds since it was last started."""
        self.failed_checks = 0
        self.starting = True

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def _note_streak(self, now: float) -> None:
        if self.healthy_since and now - self.healthy_since >= BACKOFF_RESET_AFTER:
            self.proven = True

    def next_backoff(self) -> float:
        """After an exit: 0.2 s doubling to 10 s; back to 0.2 s if it had been healthy for 30 s
        (a service that ran well for a while and then crashed is not in a crash loop)."""
        self._note_streak(time.monotonic())
        if self.backoff == 0.0 or self.proven:
            self.backoff = BACKOFF_START
        else:
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)
        self.healthy_since, self.proven = 0.0, False
        return self.backoff

    def mark_healthy(self, healthy: bool) -> bool:
        """Record a health verdict; True when it changed (``supervisor.json`` needs rewriting)."""
        now = time.monotonic()
        if healthy:
            self.failed_checks = 0
            if not self.healthy_since:
                self.healthy_since = now
        else:
            self._note_streak(now)
            self.healthy_since = 0.0
        changed = self.info.healthy != healthy
        self.info.healthy = healthy
        return changed
