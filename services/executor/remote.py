"""``fence run`` when a supervisor runs: the shared services over NATS.

The config, proxy and monitor services are the supervisor's; only the
executor stays in this process, because it owns the terminal.  The flow is
``fence.executor.runner.run`` unchanged, on uvloop; waiting for bwrap (and,
in a PTY run, relaying the terminal) moves to a worker thread so the loop
keeps serving the bus, and signals are routed through the loop's handlers to
the sandbox.

Everything imported here (asyncio, uvloop, nats) is off the lone-run path.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

from fence.bus import BusError
from fence.eventlines import console_lines
from fence.executor.launch import FORWARDED_SIGNALS, Sandbox, exit_code
from fence.executor.plan import HostFacts
from fence.executor.runner import FenceError, RunRequest, run
from fence.messages import Event, LifecycleEvent
from fence.natsbus import NatsBus
from fence.runtime import bus_credentials

EVENT_ECHO_WAIT = 1.0
"""How long a supervised run with -d/-m waits for its own "exited" event to come back before it leaves."""


def run_over_nats(url: str, supervisor, req: RunRequest, host: HostFacts, monitor: bool = False) -> int:
    creds = _credentials()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        try:
            bus = await NatsBus.connect_as(url, creds, f"fence-run-{req.sandbox}")
        except BusError as e:
            raise FenceError(f"cannot reach the supervisor's bus at {url}: {e}") from None
        current: list[Sandbox] = []

        async def wait(sandbox: Sandbox) -> int:
            current.append(sandbox)
            extra = [sig for sig in sandbox.signals if sig not in FORWARDED_SIGNALS]  # a PTY run: TSTP, CONT
            for sig in extra:
                loop.add_signal_handler(sig, on_signal, sig)
            try:  # a PTY run relays the terminal in this worker thread, beside the loop
                return exit_code(await loop.run_in_executor(None, sandbox.waitpid))
            finally:
                for sig in extra:
                    loop.remove_signal_handler(sig)

        def on_signal(signum: int) -> None:
            if current:
                current[0].on_signal(signum)

        for sig in FORWARDED_SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
        started, ended = asyncio.Event(), asyncio.Event()
        try:
            if req.debug or monitor:

                async def show(event: Event) -> None:
                    for line in console_lines(event, req.debug, monitor):
                        print(line, file=sys.stderr, flush=True)
                    if isinstance(event, LifecycleEvent):
                        (ended if event.phase == "exited" else started).set()

                await bus.subscribe(f"fence.events.{req.sandbox}.>", Event, show)
            code = await run(bus, req, host, wait=wait, relay_signals=False)
            if started.is_set():  # our own events come back over NATS: show the last ones before leaving
                try:
                    await asyncio.wait_for(ended.wait(), EVENT_ECHO_WAIT)
                except TimeoutError:
                    pass
            return code
        except BusError as e:
            raise FenceError(f"supervisor bus: {e}") from None
        finally:
            for sig in FORWARDED_SIGNALS:
                loop.remove_signal_handler(sig)
            await bus.close()

    return uvloop.run(main())


def _credentials():
    """The ``client`` user's credentials: ``$FENCE_BUS_CREDS`` or the supervisor's runtime dir."""
    try:
        return bus_credentials()
    except (OSError, ValueError) as e:
        raise FenceError(f"cannot read the supervisor's client credentials: {e}") from None
