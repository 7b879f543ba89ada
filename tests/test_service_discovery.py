"""Every real service answers NATS micro discovery ($SRV.PING/INFO/STATS) for itself.

The bus contract suite checks discovery on a test service; this runs the four
services fence ships, because a subclass can break what the base class
serves: the proxy service once kept its metrics object in ``_stats``, the
name of the base class's ``$SRV.STATS`` handler, so its STATS requests failed.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable

import msgspec
import pytest

from fence.bus import InProcessBus
from fence.config.service import ConfigService
from fence.executor.service import ExecutorService
from fence.monitor.service import MonitorService
from fence.proxy.service import ProxyService
from fence.service import Service

SERVICES: dict[str, Callable[[], Service]] = {
    "config": ConfigService,
    "executor": ExecutorService,
    "monitor": lambda: MonitorService(console=io.StringIO()),
    "proxy": ProxyService,
}


@pytest.mark.parametrize("kind", sorted(SERVICES))
def test_service_answers_ping_info_and_stats(kind):
    async def main():
        bus = InProcessBus()
        svc = SERVICES[kind]()
        await svc.start(bus)
        try:
            for verb in ("PING", "INFO", "STATS"):
                reply = msgspec.json.decode(await bus.request_raw(f"$SRV.{verb}.{svc.name}", b"", timeout=2))
                assert (reply["type"], reply["name"], reply["id"]) == (
                    f"io.nats.micro.v1.{verb.lower()}_response",
                    svc.name,
                    svc.id,
                )
        finally:
            await svc.stop()
            await bus.close()

    asyncio.run(main())
