"""The runtime exec layers of one run (``command.runtimeExecPolicy``), ready for the runner.

``"path"`` (the default): single-token deny rules mask their programs
(``execdeny``).  ``"argv"``: the same masks, plus the exec supervisor
(``execsupervisor``) checking every exec against every rule; the masks stay
because they hold even when the argv check is raced (see execsupervisor's
docstring).  The masks are planned in ``prepare``; this module is the doing:
the supervisor thread and the socket bwrap inherits.
"""

from __future__ import annotations

import os

from fence.bus import _running_loop, run_sync
from fence.executor import execdeny
from fence.executor.execdeny import ExecDeny
from fence.executor.plan import EXEC_NOTIFY_FD
from fence.subjects import event


class RuntimeExec:
    """The exec supervisor of one ``"argv"`` run (None for ``"path"``: the masks need no process)."""

    def __init__(self, supervisor=None):
        self.supervisor = supervisor

    def inherit(self) -> dict[int, int]:
        """Fds bwrap must get (``launch.Sandbox(inherit=...)``): the supervisor's socket, under the number
        the plan gave it (``plan.EXEC_NOTIFY_FD``)."""
        if self.supervisor is None:
            return {}
        return {EXEC_NOTIFY_FD: self.supervisor.sandbox_fd()}

    def spawned(self) -> None:
        if self.supervisor is not None:
            self.supervisor.spawned()

    def close(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()


def start(policy, env: dict[str, str], cwd: str, sandbox: str, bus, masks: ExecDeny, sources=None) -> RuntimeExec:
    """For ``"argv"``, start the supervisor thread checking every exec (``prepare.gather`` already refused
    a kernel that cannot do it); nothing for ``"path"``."""
    if (policy.command.runtime_exec_policy or "path") != "argv":
        return RuntimeExec()
    from fence.executor import execsupervisor  # lazy: only "argv" runs start the exec supervisor (~2 ms)

    fs = execdeny.HostFS()
    dirs = execdeny.path_dirs(env.get("PATH", os.defpath), cwd, fs)
    identities = execdeny.identities(execdeny.rule_heads(policy), dirs, fs, exclude=masks.shared_keys)
    check = execsupervisor.ExecPolicy(policy, sources, identities)
    supervisor = execsupervisor.Supervisor(check, report=_reporter(bus, sandbox))
    return RuntimeExec(supervisor.start())


def _reporter(bus, sandbox: str):
    """``report(verdict, call)`` for the supervisor thread: publish an ``ExecBlockedEvent``.

    Over NATS the bus belongs to the main thread's event loop, so the event
    is handed to that loop; a lone run's in-process bus has no loop and
    delivers inline on the calling thread.
    """
    # lazy: only "argv" runs report (start() loaded execsupervisor then; ~2 ms otherwise)
    from fence.executor.execsupervisor import event_for

    subject = event(sandbox, "exec")
    loop = _running_loop()

    def report(verdict, call) -> None:
        ev = event_for(sandbox, verdict, call)
        if loop is None:
            run_sync(bus.publish(subject, ev))
        else:
            import asyncio  # lazy: only over NATS (a running loop); a lone run never loads asyncio (~35 ms)

            asyncio.run_coroutine_threadsafe(bus.publish(subject, ev), loop)

    return report
