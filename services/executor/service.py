"""The executor service: plans sandboxes on request (``fence.exec.plan``).

Launching stays with whoever owns the terminal (the ``fence run`` process);
this service answers what a sandbox *would* be for a policy and command, so
tools and fleets can inspect plans over the bus.  Detached starts
(``fence.exec.start|signal|stdin``) build on it.
"""

from __future__ import annotations

from fence.bus import ServiceError
from fence.executor.host import host_facts
from fence.executor.plan import plan_sandbox
from fence.messages import ExecPlanReply, ExecPlanRequest
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
        plan = plan_sandbox(req.policy, req.argv, req.cwd, req.env, host_facts())
        return ExecPlanReply(bwrap_argv=plan.argv, env=plan.env, summary=plan.summary,
                             stripped_env=plan.stripped_env)
