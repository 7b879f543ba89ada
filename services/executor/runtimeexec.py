"""The runtime exec layers of one run (``command.runtimeExecPolicy``), ready for the runner.

``"path"`` (the default): single-token deny rules mask their programs
(``execdeny``).  ``"argv"``: the same masks, plus the exec supervisor
(``execsupervisor``) checking every exec against every rule; the masks stay
because they hold even when the argv check is raced (see execsupervisor's
docstring).  ``prepare`` does what can fail or warn before anything starts;
the runner then threads the result through planning and launching.
"""

from __future__ import annotations

import os
import sys

from fence.executor.execdeny import ExecDeny


class RuntimeExec:
    """What one run needs from the runtime exec layers."""

    def __init__(self, masks: ExecDeny, supervisor=None):
        self.masks = masks
        self.supervisor = supervisor

    def plan_args(self) -> dict:
        """Keyword arguments for ``plan.plan_sandbox``."""
        return {"exec_masks": self.masks.masks,
                "exec_notify": self.supervisor.sandbox_fd() if self.supervisor is not None else 0}

    def inherit(self) -> dict[int, int]:
        """Fds bwrap must get (``launch.Sandbox(inherit=...)``): the supervisor's socket, under its own number."""
        if self.supervisor is None:
            return {}
        fd = self.supervisor.sandbox_fd()
        return {fd: fd}

    def spawned(self) -> None:
        if self.supervisor is not None:
            self.supervisor.spawned()

    def close(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()


def prepare(policy, env: dict[str, str], cwd: str, sandbox: str, bus, sources=None,
            debug: bool = False) -> RuntimeExec:
    """Plan the masks (warnings printed), and for ``"argv"`` start the supervisor thread.

    Raises ``FenceError`` when ``"argv"`` is asked for and this kernel cannot
    do it: the run must not start with less than the policy asks.
    """
    from fence.executor import execdeny

    mode = policy.command.runtime_exec_policy or "path"
    masks = execdeny.plan_for(policy, env.get("PATH", os.defpath), cwd)
    for shared in masks.shared:
        print(shared.warning(), file=sys.stderr)
    if debug:
        for line in execdeny.debug_lines(masks):
            print(line, file=sys.stderr)
    if mode != "argv":
        return RuntimeExec(masks)

    from fence.executor import execsupervisor

    why = execsupervisor.supported()
    if why:
        from fence.executor.runner import FenceError

        raise FenceError(f'command.runtimeExecPolicy "argv" cannot be enforced here: {why}; refusing to run '
                         '(use "path", the default, on this machine)')
    fs = execdeny.HostFS()
    dirs = execdeny.path_dirs(env.get("PATH", os.defpath), cwd, fs)
    identities = execdeny.identities(execdeny.rule_heads(policy), dirs, fs, exclude=masks.shared_keys)
    check = execsupervisor.ExecPolicy(policy, sources, identities)
    supervisor = execsupervisor.Supervisor(check, report=_reporter(bus, sandbox))
    if debug:
        print("[fence:linux] Runtime exec policy argv: every exec is checked by fence (seccomp user notification)",
              file=sys.stderr)
    return RuntimeExec(masks, supervisor.start())


def _reporter(bus, sandbox: str):
    """``report(verdict, call)`` for the supervisor thread: publish an ``ExecBlockedEvent``.

    Over NATS the bus belongs to the main thread's event loop, so the event
    is handed to that loop; a lone run's in-process bus has no loop and
    delivers inline on the calling thread.
    """
    from fence.bus import _running_loop, run_sync
    from fence.executor.execsupervisor import event_for
    from fence.subjects import event

    subject = event(sandbox, "exec")
    loop = _running_loop()

    def report(verdict, call) -> None:
        ev = event_for(sandbox, verdict, call)
        if loop is None:
            run_sync(bus.publish(subject, ev))
        else:
            import asyncio

            asyncio.run_coroutine_threadsafe(bus.publish(subject, ev), loop)

    return report
