"""The executor service: plans sandboxes on request (``fence.exec.plan``).

Launching stays with whoever owns the terminal (the ``fence run`` process);
this service answers what a sandbox *would* be for a policy and command, so
tools and fleets can inspect plans over the bus.  The answer comes from the
same two steps a run takes (``prepare.gather`` then ``prepare.prepare``), so
it is the sandbox ``fence -d`` prints for the same inputs.  Detached starts
(``fence.exec.start|signal|stdin``) build on it.
"""

from __future__ import annotations

import os

from fence.bus import ServiceError
from fence.executor.errors import FenceError
from fence.executor.host import HostError, host_facts
from fence.executor.plan import render
from fence.executor.prepare import gather, prepare
from fence.messages import ExecPlanReply, ExecPlanRequest, ProxySessionOpened
from fence.runtime import masked_path, runtime_dir
from fence.service import Endpoint, Service
from fence.subjects import EXEC_PLAN


class ExecutorService(Service):
    name = "fence-executor"
    description = "Plans and launches bubblewrap sandboxes"

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("plan", EXEC_PLAN, ExecPlanRequest, self.plan)]

    async def plan(self, req: ExecPlanRequest) -> ExecPlanReply:
        if not req.argv:
            raise ServiceError("argv is empty: nothing to plan", "bad_request")
        if not os.path.isabs(req.cwd):
            raise ServiceError(f"cwd must be an absolute path, got {req.cwd!r}", "bad_request")
        try:
            host = host_facts(masked_dirs=_runtime_dirs(req.env))
            facts = gather(req.policy, req.argv, req.cwd, req.env, req.sandbox, host, req.chain, req.config_dir,
                           debug=req.debug)
            session = req.session or ProxySessionOpened(sandbox=req.sandbox)
            plan = prepare(req.policy, req.argv, req.cwd, req.env, req.sandbox, facts, session, ports=req.ports,
                           debug=req.debug)
        except (FenceError, HostError) as e:
            raise ServiceError(str(e), "refused") from None
        rendered = render(plan)
        return ExecPlanReply(bwrap_argv=rendered.argv, env=rendered.env, summary=rendered.summary,
                             stripped_env=rendered.stripped_env, plan=plan, rendered=rendered)


def _runtime_dirs(env: dict[str, str]) -> tuple[str, ...]:
    """fence's runtime dir of the requester (what ``fence run`` masks), from its environment."""
    return (masked_path(runtime_dir(env)),)
