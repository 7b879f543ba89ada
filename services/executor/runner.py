"""One ``fence run``: resolve, open a proxy session, plan, launch, report, clean up.

Written once as a coroutine over the ``Bus`` so it runs unchanged in both
modes: driven without an event loop over the in-process bus (a lone run,
``fence.bus.run_sync``) or on uvloop over NATS when a supervisor runs.  Only
``wait`` differs: a blocking ``waitpid`` in a lone run, a thread under a loop.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Awaitable, Callable

import msgspec

from fence.bus import Bus, BusError
from fence.executor.coverage import refused, ungranted
from fence.executor.launch import Sandbox
from fence.executor import network
from fence.executor.paths import expand
from fence.executor.preflight import RuleSources, check_command
from fence.executor.plan import HostFacts, SandboxPlan, plan_sandbox
from fence.messages import (ConfigResolveReply, ConfigResolveRequest, LifecycleEvent, ProxySessionClose,
                            ProxySessionClosed, ProxySessionOpen, ProxySessionOpened)
from fence.subjects import CONFIG_RESOLVE, PROXY_SESSION_CLOSE, PROXY_SESSION_OPEN, event


class RunRequest(msgspec.Struct):
    """What the CLI asks for: the command and where its policy comes from."""

    command: list[str]
    cwd: str
    env: dict[str, str]
    sandbox: str
    command_string: str = ""
    """Set for ``fence -c``: preflight parses this rather than ``command`` (``[bash, -c, it]``)."""
    settings: str = ""
    template: str = ""
    debug: bool = False
    ports: list[tuple[str, int]] = []
    """``-p [ADDR:]PORT``: the host's ADDR:PORT reaches the sandbox's 127.0.0.1:PORT."""


class FenceError(Exception):
    """A fence-level failure: printed as ``Error: ...``, exit 1."""


def new_sandbox_id() -> str:
    return os.urandom(6).hex()


async def blocking_wait(sandbox: Sandbox) -> int:
    return sandbox.wait()


async def run(bus: Bus, req: RunRequest, host: HostFacts,
              wait: Callable[[Sandbox], Awaitable[int]] = blocking_wait, relay_signals: bool = True,
              attach: Callable[..., None] | None = None) -> int:
    """Run ``req`` to completion and return its exit code.

    ``attach(sandbox, *listeners)`` hands the sockets made inside the sandbox's
    netns to a proxy in this process (a lone run's ProxyService.attach).
    """
    sandbox_id = req.sandbox
    try:
        resolved = await bus.request(CONFIG_RESOLVE, ConfigResolveRequest(
            cwd=req.cwd, settings=req.settings, template=req.template, home=req.env.get("HOME", ""),
            env_xdg_config_home=req.env.get("XDG_CONFIG_HOME", "")),
            ConfigResolveReply)
    except BusError as e:
        raise FenceError(f"failed to load config: {getattr(e, 'message', e)}") from None
    if req.debug:
        for source in resolved.sources:
            print(f"[fence] Config: {source}", file=sys.stderr)

    policy = resolved.policy
    masks = await admit(bus, req, resolved)
    net_mode = network.mode(policy.network)
    if net_mode == "filtered" and attach is None:
        raise FenceError("network.allowedDomains needs this run's own proxy, and handing sandbox sockets to a "
                         "supervisor's proxy is not built yet: stop the supervisor (fence down) for this run")
    proxy_listen = network.listeners(net_mode)
    out_ports = network.outbound_ports(net_mode, policy.network)
    clash = sorted({port for _, port in proxy_listen} & set(out_ports))
    if clash:
        raise FenceError(f"network.allowLocalOutboundPorts: port {clash[0]} is the sandbox's own proxy port "
                         "when allowedDomains is set; it cannot also be relayed to the host")
    warning = network.outbound_warning(net_mode, policy.network)
    if warning:
        print(warning, file=sys.stderr)
    published = req.ports if net_mode != "relaxed" else []
    if req.debug and req.ports:
        print(f"[fence] Exposing ports: [{' '.join(str(p) for _, p in req.ports)}]", file=sys.stderr)
        if not published:
            print("[fence] Skipping reverse bridge (no network namespace, ports accessible directly)",
                  file=sys.stderr)
    opened = await bus.request(PROXY_SESSION_OPEN, ProxySessionOpen(sandbox=sandbox_id, network=policy.network),
                               ProxySessionOpened)
    lifecycle = event(sandbox_id, "lifecycle")
    finish_attach = None
    forwarder = None
    runtime = None
    try:
        from fence.executor import runtimeexec

        runtime = runtimeexec.prepare(policy, req.env, req.cwd, sandbox_id, bus, RuleSources.from_reply(resolved),
                                      debug=req.debug)
        host_listeners = []
        if out_ports or published:
            from fence.executor import portfwd

            forwarder = portfwd.Forwarder(debug=req.debug)
            try:
                host_listeners = portfwd.bind_published(published)
            except portfwd.PortError as e:
                raise FenceError(str(e)) from None
        plan = plan_sandbox(policy, req.command, req.cwd, req.env, host, deny_read=masks.paths,
                            seccomp=seccomp_for(policy),
                            listen_inside=proxy_listen + network.outbound_listeners(out_ports),
                            share_net=net_mode == "relaxed", extra_env=network.proxy_env(net_mode, opened),
                            **runtime.plan_args())
        if req.debug:
            debug_plan(plan)
            for name in ungranted(policy):
                print(f"[fence] Note: {name} is not granted by this build yet; the sandbox stays stricter",
                      file=sys.stderr)
        try:
            sandbox = Sandbox(plan, relay_signals, inherit=runtime.inherit()).start()
        except BaseException:
            for sock in host_listeners:
                sock.close()
            raise
        finally:
            runtime.spawned()
        proxy_socks = sandbox.listeners[:len(proxy_listen)]
        if proxy_socks:  # connections queue in the backlog until the proxy serves them
            finish_attach = network.attach_on_first_connection(attach, sandbox_id, proxy_socks)
        if forwarder is not None:  # local ports: relayed by this process, no proxy (works supervised too)
            _forward(forwarder, sandbox, network.outbound_listeners(out_ports),
                     sandbox.listeners[len(proxy_listen):], list(zip(published, host_listeners)))
        await bus.publish(lifecycle, LifecycleEvent(sandbox=sandbox_id, phase="started", ts=time.time(),
                                                    pid=sandbox.init_pid or sandbox.pid, argv=req.command))
        code = await wait(sandbox)
        signum = code - 128 if code > 128 else None
        await bus.publish(lifecycle, LifecycleEvent(sandbox=sandbox_id, phase="exited", ts=time.time(),
                                                    pid=sandbox.init_pid or sandbox.pid, exit_code=code,
                                                    signal=signum))
        return code
    finally:
        if runtime is not None:
            runtime.close()
        if finish_attach is not None:
            finish_attach()
        if forwarder is not None:
            forwarder.close()
        try:
            await bus.request(PROXY_SESSION_CLOSE, ProxySessionClose(sandbox=sandbox_id), ProxySessionClosed)
        except BusError as e:
            print(f"[fence] Warning: closing proxy session {sandbox_id} failed: {e}", file=sys.stderr)


def _forward(forwarder, sandbox: Sandbox, inside: list[tuple[str, int]], inside_socks: list,
             published: list) -> None:
    """Start the local-port relays; a -p helper that cannot enter the sandbox is a warning."""
    from fence.executor.bridge import BridgeError

    for (host, port), sock in zip(inside, inside_socks):
        if sock is not None:  # None: the sandbox's netns has no IPv6 ([::1] skipped)
            forwarder.outbound(sock, (host, port))
    for (_addr, port), sock in published:
        try:
            forwarder.inbound(sock, sandbox.init_pid, port)
        except BridgeError as e:  # the command already ended, most likely
            sock.close()
            print(f"[fence] Warning: --port {port} is not forwarded: {e}", file=sys.stderr)



async def admit(bus: Bus, req: RunRequest, resolved: ConfigResolveReply):
    """Every check that must pass before anything starts; returns the denyRead masks.

    Refuses fields this build cannot enforce, runs the command/SSH preflight
    (a block is published on ``fence.events.<sandbox>.preflight``) and expands
    ``denyRead`` within its bounds.
    """
    policy = resolved.policy
    missing = refused(policy)
    if missing:
        raise FenceError(f"this fence cannot enforce {', '.join(missing)} yet; refusing to run with less "
                         "protection than the config asks for (remove the field or pick another template)")
    blocked = check_command(None if req.command_string else req.command, req.command_string or None, policy,
                            RuleSources.from_reply(resolved), env=req.env)
    if blocked is not None:  # nothing starts; the block is an event like any other
        await bus.publish(event(req.sandbox, "preflight"), blocked.event(req.sandbox))
        raise FenceError(blocked.message)
    masks = expand(policy.filesystem.deny_read, req.cwd, req.env.get("HOME", "/"))
    if masks.truncated:
        raise FenceError("filesystem.denyRead: a glob matched too much to expand safely; make it narrower "
                         "(for a whole directory write DIR/**)")
    return masks

def seccomp_for(policy) -> tuple[bytes, str]:
    """The seccomp program and its label; a warning and no filter when it cannot be built.

    socketpair(AF_UNIX) stays allowed: an anonymous connected pair reaches
    nothing outside the sandbox, and denying it breaks asyncio and Node's child
    processes.  socket(AF_UNIX), which can connect to host sockets, is denied.
    """
    from fence.executor import seccomp

    try:
        return seccomp.build_program(policy, deny_socketpair=False), seccomp.summary(policy)
    except Exception as e:  # libseccomp missing or broken: degrade as documented, loudly
        print(f"[fence:linux] Warning: seccomp filter unavailable ({type(e).__name__}: {e}): "
              "running without syscall filtering", file=sys.stderr)
        return b"", ""


def debug_plan(plan: SandboxPlan) -> None:
    import shlex

    print(f"[fence] Command: {shlex.join(plan.command)}", file=sys.stderr)
    if plan.stripped_env:
        print(f"[fence] Stripped dangerous env vars: [{' '.join(plan.stripped_env)}]", file=sys.stderr)
    print(f"[fence] Sandboxed command: {shlex.join(plan.argv)}", file=sys.stderr)
    print(plan.summary, file=sys.stderr)
