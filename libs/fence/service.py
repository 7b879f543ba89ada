"""What every fence service shares: endpoints, discovery/health, and metrics.

A service is a class with async handlers for typed requests.  ``start(bus)``
serves its endpoints on any ``Bus`` (in-process or NATS), so the same code runs
inside a lone ``fence run`` and as its own process under ``fence up``.

Discovery and health follow the NATS micro protocol (ADR-32): every instance
answers ``$SRV.PING|INFO|STATS`` (also ``.<name>`` and ``.<name>.<id>``) with
``io.nats.micro.v1.*`` JSON, so ``nats micro ls`` and our supervisor see the
same thing.  It is implemented here on the ``Bus`` rather than with
``nats.micro`` because that module only runs on a NATS connection, and the
in-process transport must behave identically.

Metrics are optional (``metrics=None`` in a lone run, where importing
prometheus-client alone would cost ~60 ms): see ``fence.metrics``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from fence import __version__
from fence.bus import MAX_REQUEST, Bus, Handler
from fence.subjects import QUEUE


class Endpoint(msgspec.Struct):
    """One request/reply endpoint of a service."""

    name: str
    subject: str
    request_type: Any
    handler: Handler
    max_request: int = MAX_REQUEST
    num_requests: int = 0
    num_errors: int = 0
    last_error: str = ""
    processing_ns: int = 0


class Service:
    """Base class: subclasses set ``name``/``description`` and list ``endpoints()``."""

    name = "fence-service"
    description = ""

    def __init__(self, metrics: Any = None):
        self.id = os.urandom(8).hex()
        self.metrics = metrics
        self.metadata: dict[str, str] = {}
        self.bus: Bus | None = None
        """The bus ``start`` serves on; None before."""
        self.started = ""
        self._subs: list = []
        self._endpoints: list[Endpoint] = []

    # subclasses -------------------------------------------------------------
    def endpoints(self) -> list[Endpoint]:
        return []

    async def on_start(self, bus: Bus) -> None:
        """Hook for subscriptions beyond request/reply endpoints."""

    async def on_stop(self) -> None:
        """Hook to release what the service holds (sessions, sockets)."""

    # lifecycle ----------------------------------------------------------------
    async def start(self, bus: Bus) -> None:
        self.bus = bus
        self.started = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        self._endpoints = self.endpoints()
        for ep in self._endpoints:
            sub = await bus.serve(
                ep.subject,
                ep.request_type,
                ep.handler,
                queue=QUEUE,
                max_request=ep.max_request,
                observe=self._observer(ep),
            )
            self._subs.append(sub)
        for verb, answer in (("PING", self._ping), ("INFO", self._info), ("STATS", self._stats)):
            for subject in (f"$SRV.{verb}", f"$SRV.{verb}.{self.name}", f"$SRV.{verb}.{self.name}.{self.id}"):
                self._subs.append(await bus.serve_raw(subject, answer))
        await self.on_start(bus)

    async def stop(self) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        self._subs.clear()
        await self.on_stop()

    def _observer(self, ep: Endpoint) -> Callable[[str, str, float], None]:
        def observe(subject: str, outcome: str, seconds: float) -> None:
            ep.num_requests += 1
            ep.processing_ns += int(seconds * 1e9)
            if outcome != "ok":
                ep.num_errors += 1
                ep.last_error = outcome
            if self.metrics is not None:
                self.metrics.observe(self.name, ep.name, outcome, seconds)

        return observe

    # NATS micro discovery ----------------------------------------------------------
    def _identity(self, kind: str) -> dict:
        return {
            "type": f"io.nats.micro.v1.{kind}_response",
            "name": self.name,
            "id": self.id,
            "version": __version__,
            "metadata": self.metadata,
        }

    async def _ping(self, _: bytes) -> bytes:
        return msgspec.json.encode(self._identity("ping"))

    async def _info(self, _: bytes) -> bytes:
        info = self._identity("info")
        info["description"] = self.description
        info["endpoints"] = [
            {"name": ep.name, "subject": ep.subject, "queue_group": QUEUE, "metadata": None} for ep in self._endpoints
        ]
        return msgspec.json.encode(info)

    async def _stats(self, _: bytes) -> bytes:
        stats = self._identity("stats")
        stats["started"] = self.started
        stats["endpoints"] = [
            {
                "name": ep.name,
                "subject": ep.subject,
                "queue_group": QUEUE,
                "num_requests": ep.num_requests,
                "num_errors": ep.num_errors,
                "last_error": ep.last_error,
                "processing_time": ep.processing_ns,
                "average_processing_time": ep.processing_ns // ep.num_requests if ep.num_requests else 0,
            }
            for ep in self._endpoints
        ]
        return msgspec.json.encode(stats)


def now() -> float:
    return time.time()
