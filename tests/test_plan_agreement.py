"""``fence -d`` and the executor service's plan endpoint describe the same sandbox (issue 10).

Both come from ``prepare.gather`` + ``prepare.prepare`` + ``plan.render``; these
tests hold them to it with real runs: for every built-in template and for
network- and filesystem-heavy configs, the bwrap argv ``fence -d`` prints (and
then runs) equals the one ``fence.exec.plan`` answers for the same policy,
command, directory and environment.
"""

from __future__ import annotations

import json
import re
import shlex

import pytest

from fence.bus import InProcessBus, RemoteError, run_sync
from fence.config import templates
from fence.config.resolve import resolve
from fence.executor.service import ExecutorService
from fence.messages import ConfigResolveRequest, ExecPlanReply, ExecPlanRequest
from fence.mountops import BindFd
from fence.subjects import EXEC_PLAN

pytestmark = pytest.mark.sandbox

COMMAND = ["true"]

CONFIGS = {
    "filtered-network-and-fs": {
        "network": {
            "allowedDomains": ["example.com", "*.example.org"],
            "deniedDomains": ["bad.example.com"],
            "allowLocalOutbound": True,
            "allowLocalOutboundPorts": [5432],
        },
        "filesystem": {
            "allowWrite": [".", "./build/**", "~/cache"],
            "denyRead": ["./secret", "~/.ssh"],
            "denyWrite": ["./locked"],
        },
    },
    "default-deny-read": {
        "filesystem": {
            "defaultDenyRead": True,
            "allowRead": [".", "/usr"],
            "allowExecute": ["/bin/true"],
            "allowWrite": ["./out"],
        },
    },
    "relaxed-network": {"network": {"allowedDomains": ["*"]}, "filesystem": {"allowWrite": ["."]}},
    "argv-exec-policy": {
        "command": {"deny": ["git push"], "runtimeExecPolicy": "argv"},
        "filesystem": {"allowWrite": ["."]},
    },
    "pty-and-devices": {"allowPty": True, "devices": {"allow": ["/dev/null"]}},
}


def _printed_argv(stderr: str) -> list[str]:
    for line in stderr.splitlines():
        if line.startswith("[fence] Sandboxed command: "):
            return shlex.split(line[len("[fence] Sandboxed command: ") :])
    raise AssertionError(f"no sandboxed command in:\n{stderr}")


def _service_plan(runner, work, env, template: str = "") -> ExecPlanReply:
    """What the executor service answers for the run ``fence -d`` just made, with the same inputs."""
    home = env["HOME"]
    resolved = resolve(ConfigResolveRequest(cwd=str(work), template=template, home=home))
    bus = InProcessBus()
    run_sync(ExecutorService().start(bus))
    return run_sync(
        bus.request(
            EXEC_PLAN,
            ExecPlanRequest(
                policy=resolved.policy,
                argv=COMMAND,
                cwd=str(work),
                env=env,
                sandbox=runner.sandbox,
                chain=resolved.chain,
                config_dir=resolved.user_config_dir,
                debug=True,
            ),
            ExecPlanReply,
        )
    )


class _Run:
    def __init__(self, stderr: str):
        self.argv = _printed_argv(stderr)
        ids = set(re.findall(r"Sandbox ([0-9a-f]{12}) started", stderr))
        assert len(ids) == 1, stderr
        self.sandbox = ids.pop()


def _fence_debug(self_runner, work, *flags: str) -> _Run:
    r = self_runner.run("-d", *flags, "--", *COMMAND, cwd=str(work))
    assert r.returncode == 0, r.stderr
    return _Run(r.stderr)


@pytest.mark.parametrize("name", templates.names())
def test_every_template_agrees(self_runner, name):
    work = self_runner.workdir()
    ran = _fence_debug(self_runner, work, "-t", name)
    reply = _service_plan(ran, work, self_runner.env(), template=name)
    assert reply.bwrap_argv == ran.argv
    assert reply.rendered is not None and reply.rendered.argv == ran.argv and reply.summary == reply.rendered.summary


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_heavy_configs_agree(self_runner, name):
    work = self_runner.workdir()
    for sub in ("build/x", "secret", "locked", "out"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    (work / "fence.json").write_text(json.dumps(CONFIGS[name]))
    ran = _fence_debug(self_runner, work)
    reply = _service_plan(ran, work, self_runner.env())
    assert reply.bwrap_argv == ran.argv
    plan = reply.plan
    assert plan is not None and plan.command == COMMAND and plan.cwd == str(work)
    if name == "filtered-network-and-fs":  # the decisions are there as structure, not only as argv
        assert plan.network.intent == "filtered" and plan.network.outbound_ports == (5432,)
        assert reply.rendered is not None
        assert any(isinstance(op, BindFd) and op.dest == str(work) for op in reply.rendered.mounts)
    if name == "relaxed-network":
        assert plan.network.intent == "relaxed" and plan.network.shared and "--unshare-net" not in ran.argv


def test_a_plan_that_must_not_run_is_refused_with_the_run_s_reason(self_runner):
    """The service refuses what ``fence run`` refuses, with the same words (here: a denyRead glob too wide)."""
    work = self_runner.workdir()
    bus = InProcessBus()
    run_sync(ExecutorService().start(bus))
    from fence.policy import Policy

    policy = Policy()
    policy.filesystem.default_deny_read = True  # the working directory is then not readable
    with pytest.raises(RemoteError) as e:
        run_sync(
            bus.request(
                EXEC_PLAN,
                ExecPlanRequest(policy=policy, argv=COMMAND, cwd=str(work), env=self_runner.env()),
                ExecPlanReply,
            )
        )
    assert e.value.code == "refused" and "filesystem.defaultDenyRead" in e.value.message
    with pytest.raises(RemoteError, match="cwd must be an absolute path"):
        run_sync(bus.request(EXEC_PLAN, ExecPlanRequest(policy=Policy(), argv=COMMAND, cwd="rel"), ExecPlanReply))
