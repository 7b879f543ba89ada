"""``python -m fence.serve <component>``: one fence service as its own process.

The supervisor (``fence up``) starts one of these per component.  The process
reads its bus credentials from the file named by ``$FENCE_BUS_CREDS`` (0600
JSON, ``fence.runtime.Credentials``: url, user, password, inbox_prefix), so no
secret ever appears in argv or the environment of other processes; it
connects a ``NatsBus`` on uvloop, serves Prometheus ``/metrics`` on a random
loopback port and advertises that URL (and its pid) in the service metadata,
so ``$SRV.INFO`` tells the supervisor where to scrape.  It runs until
SIGTERM/SIGINT, then stops the service and closes the bus within about a
second.  It also exits when the supervisor that started it is gone
(``$FENCE_SUPERVISOR_PID``), so a SIGKILLed supervisor leaves no orphans.

Any failure to start prints one ``Error: ...`` line on stderr and exits 1.
The module is importable cheaply (the supervisor reads ``COMPONENTS``):
prometheus-client is imported only when serving, nats only on connecting.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys

import uvloop

from fence.bus import BusError
from fence.natsbus import NatsBus
from fence.runtime import read_credentials
from fence.textsafe import printable

COMPONENTS: dict[str, tuple[str, str, str]] = {
    # component: (module, class, NATS micro service name)
    "config": ("fence.config.service", "ConfigService", "fence-config"),
    "proxy": ("fence.proxy.service", "ProxyService", "fence-proxy"),
    "executor": ("fence.executor.service", "ExecutorService", "fence-executor"),
    "monitor": ("fence.monitor.service", "MonitorService", "fence-monitor"),
}
"""The service processes, in start order.  Classes are imported by name, lazily:
each process imports only its own service."""

STOP_GRACE = 0.4
"""Seconds each of ``service.stop()`` and ``bus.close()`` may take at shutdown."""


class StartError(Exception):
    """A service process could not start; the message is shown as ``Error: ...``."""


def load_service_class(component: str):
    try:
        module_name, class_name, _ = COMPONENTS[component]
    except KeyError:
        raise StartError(f"unknown component {component!r} (expected one of: {', '.join(COMPONENTS)})") from None
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as e:
        raise StartError(f"cannot load {module_name}:{class_name}: {type(e).__name__}: {e}") from None


def _credentials():
    path = os.environ.get("FENCE_BUS_CREDS", "")
    if not path:
        raise StartError("FENCE_BUS_CREDS is not set (the path of this service's bus credentials file)")
    try:
        return read_credentials(path)
    except (OSError, ValueError) as e:
        raise StartError(f"cannot read bus credentials: {e}") from None


async def _serve(component: str, service_cls, creds) -> int:
    # lazy: prometheus-client (~35 ms): the supervisor imports this module only for COMPONENTS
    from fence.metrics import Metrics

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    metrics = Metrics()
    try:
        port = metrics.serve("127.0.0.1", 0)
    except OSError as e:
        raise StartError(f"cannot serve metrics on 127.0.0.1: {e}") from None
    service = service_cls(metrics=metrics, **_options(component))
    service.metadata["metrics_url"] = f"http://127.0.0.1:{port}/metrics"
    service.metadata["pid"] = str(os.getpid())
    service.metadata["component"] = component
    try:
        bus = await NatsBus.connect(
            creds.url,
            user=creds.user,
            password=creds.password,
            inbox_prefix=creds.inbox_prefix,
            name=f"fence-{component}-{os.getpid()}",
        )
    except (BusError, OSError) as e:
        raise StartError(f"cannot connect to the bus at {creds.url} as {creds.user}: {e}") from None
    except Exception as e:  # nats-py raises its own errors (no servers, auth): report them all the same
        raise StartError(f"cannot connect to the bus at {creds.url} as {creds.user}: {type(e).__name__}: {e}") from None
    try:
        try:
            await service.start(bus)
        except Exception as e:
            raise StartError(f"{service_cls.__name__} failed to start: {type(e).__name__}: {e}") from None

        supervisor_pid = int(os.environ.get("FENCE_SUPERVISOR_PID", "0") or 0)

        async def watch_parent() -> None:
            while os.getppid() == supervisor_pid:
                await asyncio.sleep(1.0)
            print(f"[fence:{component}] supervisor {supervisor_pid} is gone; stopping", file=sys.stderr)
            stop.set()

        watcher = loop.create_task(watch_parent()) if supervisor_pid else None
        await stop.wait()
        if watcher is not None:
            watcher.cancel()
        await _bounded(service.stop(), STOP_GRACE)
    finally:
        await _bounded(bus.close(), STOP_GRACE)
    return 0


def _options(component: str) -> dict:
    """Per-component constructor options from the environment the supervisor set."""
    if component == "proxy" and os.environ.get("FENCE_PROXY_HANDOFF"):
        return {"handoff": os.environ["FENCE_PROXY_HANDOFF"]}
    return {}


async def _bounded(coro, seconds: float) -> None:
    """Best-effort shutdown step: at most ``seconds``, then abandoned (``wait_for`` would wait
    for a cancelled ``close()`` that is stuck on a dead connection)."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
    elif not task.cancelled():
        task.exception()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(f"usage: python -m fence.serve {{{','.join(COMPONENTS)}}}", file=sys.stderr)
        return 2
    component = args[0]
    try:
        service_cls = load_service_class(component)
        creds = _credentials()
        return uvloop.run(_serve(component, service_cls, creds))
    except StartError as e:
        print(printable(f"Error: fence {component} service: {e}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
