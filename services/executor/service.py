"""The executor service: plans sandboxes (``fence.exec.plan``), runs detached ones, counts reported runs.

``fence run`` launches its own sandbox (it owns the terminal); this service
answers what a sandbox *would* be for a policy and command, from the same two
steps a run takes (``prepare.gather`` then ``prepare.prepare``), so it is the
sandbox ``fence -d`` prints for the same inputs.  It also starts and holds
*detached* sandboxes for clients that may come and go (``fence.exec.start``,
``stdin``, ``signal``, ``kill``, ``wait``, ``list``, ``info``, ``output``:
``fence.executor.fleet``, docs/fleet.md).

Since most runs execute in ``fence run``, its ``/metrics`` counts what runs
report on the bus, their lifecycle and preflight events, detached ones
included (``fence.executor.runstats``).
"""

from __future__ import annotations

import os

from fence.bus import ServiceError
from fence.executor.errors import FenceError
from fence.executor.fleet import Fleet
from fence.executor.host import HostError, host_facts
from fence.executor.plan import render
from fence.executor.prepare import gather, prepare
from fence.executor.runstats import RunStats
from fence.messages import (
    Event,
    ExecListRequest,
    ExecOutputRequest,
    ExecPlanReply,
    ExecPlanRequest,
    ExecSandboxRequest,
    ExecSignalRequest,
    ExecStartRequest,
    ExecStdinRequest,
    ExecWaitRequest,
    ProxySessionOpened,
)
from fence.runtime import masked_path, runtime_dir
from fence.service import Endpoint, Service
from fence.subjects import (
    EVENTS,
    EXEC_INFO,
    EXEC_KILL,
    EXEC_LIST,
    EXEC_OUTPUT,
    EXEC_PLAN,
    EXEC_SIGNAL,
    EXEC_START,
    EXEC_STDIN,
    EXEC_WAIT,
    EXECUTOR,
)


class ExecutorService(Service):
    name = "fence-executor"
    description = "Plans and launches bubblewrap sandboxes"

    def __init__(self, metrics=None):
        super().__init__(metrics)
        self.runs = RunStats(metrics)
        self._fleet = None

    @property
    def fleet(self):
        """The detached sandboxes (made on first use: a lone run's executor never starts one)."""
        if self._fleet is None:
            self._fleet = Fleet()
        return self._fleet

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("plan", EXEC_PLAN, ExecPlanRequest, self.plan),
            Endpoint("start", EXEC_START, ExecStartRequest, self.start_detached),
            Endpoint("stdin", EXEC_STDIN, ExecStdinRequest, self.stdin),
            Endpoint("signal", EXEC_SIGNAL, ExecSignalRequest, self.signal),
            Endpoint("kill", EXEC_KILL, ExecSandboxRequest, self.kill),
            Endpoint("wait", EXEC_WAIT, ExecWaitRequest, self.wait),
            Endpoint("list", EXEC_LIST, ExecListRequest, self.list),
            Endpoint("info", EXEC_INFO, ExecSandboxRequest, self.info),
            Endpoint("output", EXEC_OUTPUT, ExecOutputRequest, self.output),
        ]

    async def on_stop(self) -> None:
        if self._fleet is not None:
            await self._fleet.stop()

    async def start_detached(self, req: ExecStartRequest):
        assert self.bus is not None
        return await self.fleet.start(self.bus, req)

    async def stdin(self, req: ExecStdinRequest):
        return self.fleet.stdin(req)

    async def signal(self, req: ExecSignalRequest):
        return self.fleet.signal(req)

    async def kill(self, req: ExecSandboxRequest):
        return self.fleet.kill(req)

    async def wait(self, req: ExecWaitRequest):
        return await self.fleet.wait(req)

    async def list(self, req: ExecListRequest):
        return self.fleet.list(req)

    async def info(self, req: ExecSandboxRequest):
        return self.fleet.info(req)

    async def output(self, req: ExecOutputRequest):
        return await self.fleet.output(req)

    async def on_start(self, bus) -> None:
        """Watch the event kinds the subject table gives this service (lifecycle, preflight) for ``runs``."""
        for kind in EVENTS:
            if EXECUTOR in kind.watched_by:
                self._subs.append(await bus.subscribe(kind.subject, Event, self.on_event))

    async def on_event(self, event) -> None:
        self.runs.record(event)

    async def plan(self, req: ExecPlanRequest) -> ExecPlanReply:
        if not req.argv:
            raise ServiceError("argv is empty: nothing to plan", "bad_request")
        if not os.path.isabs(req.cwd):
            raise ServiceError(f"cwd must be an absolute path, got {req.cwd!r}", "bad_request")
        try:
            host = host_facts(masked_dirs=_runtime_dirs(req.env))
            facts = gather(
                req.policy, req.argv, req.cwd, req.env, req.sandbox, host, req.chain, req.config_dir, debug=req.debug
            )
            session = req.session or ProxySessionOpened(sandbox=req.sandbox)
            plan = prepare(
                req.policy, req.argv, req.cwd, req.env, req.sandbox, facts, session, ports=req.ports, debug=req.debug
            )
        except (FenceError, HostError) as e:
            raise ServiceError(str(e), "refused") from None
        rendered = render(plan)
        return ExecPlanReply(
            bwrap_argv=rendered.argv,
            env=rendered.env,
            summary=rendered.summary,
            stripped_env=rendered.stripped_env,
            plan=plan,
            rendered=rendered,
        )


def _runtime_dirs(env: dict[str, str]) -> tuple[str, ...]:
    """fence's runtime dir of the requester (what ``fence run`` masks), from its environment."""
    return (masked_path(runtime_dir(env)),)
