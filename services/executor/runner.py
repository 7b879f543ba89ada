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
from fence.executor.fsfacts import FsError
from fence.executor.launch import LaunchError, Sandbox
from fence.executor import network
from fence.executor.preflight import RuleSources, check_command
from fence.executor.plan import HostFacts, SandboxPlan, plan_sandbox, session_mode
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
    force_new_session: bool = False
    """``--force-new-session``: keep bwrap's ``--new-session`` even for a PTY run (as ``forceNewSession``)."""


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
    netns to a proxy in this process (a lone run's ProxyService.attach),
    lazily, on the sandbox's first connection.  Without it (a supervisor's
    proxy) they are handed to the proxy process over its hand-off socket
    (``handoff.py``) before the command starts.
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
    await admit(bus, req, resolved)
    facts, host = filesystem(policy, req, resolved, host)
    net_mode = network.mode(policy.network)
    shared, host = _shared_network(net_mode, host, req.env)
    proxy_listen = network.listeners(net_mode, shared)
    out_ports = network.outbound_ports(shared, policy.network)
    clash = sorted({port for _, port in proxy_listen} & set(out_ports))
    if clash:
        raise FenceError(f"network.allowLocalOutboundPorts: port {clash[0]} is the sandbox's own proxy port "
                         "when allowedDomains is set; it cannot also be relayed to the host")
    warning = network.outbound_warning(shared, policy.network)
    if warning:
        print(warning, file=sys.stderr)
    published = req.ports if not shared else []
    if req.debug and req.ports:
        print(f"[fence] Exposing ports: [{' '.join(str(p) for _, p in req.ports)}]", file=sys.stderr)
        if not published:
            print("[fence] Skipping reverse bridge (no network namespace, ports accessible directly)",
                  file=sys.stderr)
    # No allowed domain: nothing to proxy, so no session (two bus round trips saved on every such run)
    opened = ProxySessionOpened(sandbox=sandbox_id) if net_mode == "none" else await bus.request(PROXY_SESSION_OPEN, ProxySessionOpen(
        sandbox=sandbox_id, network=policy.network, loopback=shared), ProxySessionOpened)
    lifecycle = event(sandbox_id, "lifecycle")
    finish_attach = None
    forwarder = None
    handed: list = []  # the open hand-off connection to a supervisor's proxy (kept for the sandbox's life)
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
        extra_env = {**facts.env, **network.proxy_env(net_mode, opened, shared)}
        files: list[tuple[str, bytes]] = []
        if net_mode == "filtered" and not shared:  # ssh/scp/sftp/rsync/git go through the SOCKS proxy
            from fence.executor import sshproxy

            ssh_route = sshproxy.route(req.env, facts.view.deny_read)
            files += ssh_route.files
            extra_env.update(ssh_route.env)
        net_connect = None
        if shared and net_mode != "relaxed":  # no netns: Landlock keeps TCP to the proxies (and listed ports)
            local = list(policy.network.allow_local_outbound_ports) if network.local_outbound(policy.network) else []
            net_connect = [p for p in (opened.http_port, opened.socks_port) if p] + local
        try:
            facts.pin_sources()
        except FsError as e:
            raise FenceError(str(e)) from None
        pty, new_session = terminal_mode(policy, req, host)
        plan = plan_sandbox(policy, req.command, req.cwd, req.env, host, fs=facts.view,
                            seccomp=seccomp_for(policy),
                            listen_inside=proxy_listen + network.outbound_listeners(out_ports),
                            share_net=shared, extra_env=extra_env, files=files, debug=req.debug,
                            new_session=new_session, pty=pty, net_connect=net_connect, **runtime.plan_args())
        if req.debug:
            debug_plan(plan)
            for name, value in facts.env.items():
                print(f"[fence] {name} is not usable inside the sandbox: set to {value}", file=sys.stderr)
            for note in facts.notes:
                print(f"[fence] Note: {note}", file=sys.stderr)
            for name in ungranted(policy):
                print(f"[fence] Note: {name} is not granted by this build yet; the sandbox stays stricter",
                      file=sys.stderr)
        prepare = None
        if proxy_listen and attach is None:
            prepare = _hand_over_to(opened, len(proxy_listen), handed)
        try:
            sandbox = Sandbox(plan, relay_signals, inherit=runtime.inherit()).start(prepare)
        except BaseException as e:
            for sock in host_listeners:
                sock.close()
            if isinstance(e, LaunchError):
                raise FenceError(str(e)) from None
            raise
        finally:
            runtime.spawned()
            facts.close()  # bwrap has its own copies (and closes them once mounted)
        proxy_socks = sandbox.listeners[:len(proxy_listen)]
        if proxy_socks and attach is not None:  # connections queue in the backlog until the proxy serves them
            finish_attach = network.attach_on_first_connection(attach, sandbox_id, proxy_socks)
        if forwarder is not None:  # local ports: relayed by this process, no proxy (works supervised too)
            _forward(forwarder, sandbox, network.outbound_listeners(out_ports),
                     sandbox.listeners[len(proxy_listen):], list(zip(published, host_listeners, strict=True)))
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
        facts.protection.release()
        if facts.protection.watch or facts.protection.links:
            await _quarantine(bus, facts.protection, sandbox_id)
        if finish_attach is not None:
            finish_attach()
        if forwarder is not None:
            forwarder.close()
        try:
            if net_mode != "none":
                await bus.request(PROXY_SESSION_CLOSE, ProxySessionClose(sandbox=sandbox_id), ProxySessionClosed)
        except BusError as e:
            print(f"[fence] Warning: closing proxy session {sandbox_id} failed: {e}", file=sys.stderr)
        for conn in handed:  # the proxy also ends the session when this closes (if the request above failed)
            conn.close()


def _hand_over_to(opened: ProxySessionOpened, count: int, handed: list):
    """``Sandbox.start``'s ``prepare``: the first ``count`` listeners go to the supervisor's proxy process."""
    def prepare(listeners: list) -> None:
        from fence.executor.handoff import HandoffError, hand_over

        try:
            handed.append(hand_over(opened, listeners[:count]))
        except HandoffError as e:
            raise LaunchError(f"network.allowedDomains: {e}; the sandbox was stopped before its command ran") \
                from None

    return prepare


def _shared_network(net_mode: str, host: HostFacts, env: dict[str, str]) -> tuple[bool, HostFacts]:
    """Whether the sandbox runs on the host's network: relaxed mode, or no netns can be made here.

    The latter is known from ``netns.py``'s per-boot cache (probed on the
    first run of a boot).  Proxy-only is announced on every run; a policy
    allowing no network is refused unless the user opted in.  Without a
    netns, Landlock (ABI 4+) is what keeps TCP to the proxies, so the host
    facts come back with Landlock's filled in.
    """
    if net_mode == "relaxed":
        return True, host
    from fence.executor import netns

    found = netns.state(host.bwrap)
    if not found.proxy_only:
        return False, host  # available, or bwrap fails without a netns too: nothing to weaken, bwrap says why
    refusal = network.shared_network_refusal(net_mode, found.detail, env)
    if refusal:
        raise FenceError(refusal)
    host = with_landlock(host, without="direct TCP connections are not blocked either")
    print(network.no_netns_warning(found.detail, tcp_blocked=host.landlock_abi >= 4), file=sys.stderr)
    return True, host


def _forward(forwarder, sandbox: Sandbox, inside: list[tuple[str, int]], inside_socks: list,
             published: list) -> None:
    """Start the local-port relays; a -p helper that cannot enter the sandbox is a warning."""
    from fence.executor.bridge import BridgeError

    for (host, port), sock in zip(inside, inside_socks, strict=True):
        if sock is not None:  # None: the sandbox's netns has no IPv6 ([::1] skipped)
            forwarder.outbound(sock, (host, port))
    for (_addr, port), sock in published:
        try:
            forwarder.inbound(sock, sandbox.init_pid, port)
        except BridgeError as e:  # the command already ended, most likely
            sock.close()
            print(f"[fence] Warning: --port {port} is not forwarded: {e}", file=sys.stderr)



async def admit(bus: Bus, req: RunRequest, resolved: ConfigResolveReply) -> None:
    """Every check that must pass before anything starts.

    Refuses fields this build cannot enforce and runs the command/SSH
    preflight (a block is published on ``fence.events.<sandbox>.preflight``).
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


def filesystem(policy, req: RunRequest, resolved: ConfigResolveReply, host: HostFacts):
    """The run's filesystem facts, and the host facts completed with Landlock's when it will be used."""
    from fence.executor import fsfacts
    from fence.executor.plan import wants_landlock

    helper: tuple[str, ...] = ()
    if policy.filesystem.default_deny_read or policy.filesystem.strict_deny_read:
        helper = _helper()
    try:
        facts = fsfacts.gather(policy, req.cwd, req.env, req.sandbox, resolved.sources,
                               config_dir=_user_config_dir(req.env), helper_paths=fsfacts.helper_read_paths(helper))
    except fsfacts.FsError as e:
        raise FenceError(str(e)) from None
    if wants_landlock(facts.view):
        host = with_landlock(host, helper, "filesystem enforcement is bubblewrap-only")
    return facts, host


def with_landlock(host: HostFacts, helper: tuple[str, ...] = (), without: str = "") -> HostFacts:
    """``host`` with the kernel's Landlock ABI and the init helper filled in (once per run)."""
    if host.helper:
        return host
    from fence.executor import landlock

    try:
        abi = landlock.abi_version()
    except OSError as e:
        abi = 0
        print(f"[fence:linux] Warning: Landlock unavailable ({e.strerror}): {without}", file=sys.stderr)
    return msgspec.structs.replace(host, landlock_abi=abi, helper=helper or _helper())


def _helper() -> tuple[str, ...]:
    from fence.executor.landlock import helper_command

    # the real interpreter, not a venv's symlink: -I -S needs no venv, and under
    # defaultDenyRead only the interpreter's own tree is made readable
    python, *rest = helper_command()
    return (os.path.realpath(python), *rest)


def _user_config_dir(env: dict[str, str]) -> str:
    from fence.config.discover import user_config_dir

    return user_config_dir(env.get("HOME", "/"), env.get("XDG_CONFIG_HOME", ""))


async def _quarantine(bus: Bus, protection, sandbox_id: str) -> None:
    """Protected names the sandbox created (or protected symlinks it replaced) are moved aside (see
    fence.executor.protect), said on stderr and published as ``ProtectedPathEvent`` on ``.fs``."""
    from fence.executor.protect import quarantine, restore_links
    from fence.messages import ProtectedPathEvent

    found = quarantine(protection.watch, sandbox_id) + restore_links(protection.links, sandbox_id)
    for path, target, error in found:
        if error:
            print(f"[fence] Warning: the sandbox created protected path {path}, and it could not be moved "
                  f"aside ({error}): remove it before using this directory", file=sys.stderr)
        else:
            print(f"[fence] Warning: the sandbox created protected path {path}: moved to {target}",
                  file=sys.stderr)
        try:
            await bus.publish(event(sandbox_id, "fs"), ProtectedPathEvent(
                sandbox=sandbox_id, ts=time.time(), path=path, moved_to=target, error=error))
        except BusError as e:
            print(f"[fence] Warning: cannot publish the quarantine event: {e}", file=sys.stderr)

def terminal_mode(policy, req: RunRequest, host: HostFacts) -> tuple[bool, bool]:
    """``(pty, new_session)``: ``plan.session_mode`` fed with this process's terminals."""
    force = req.force_new_session or bool(policy.force_new_session)
    return session_mode(policy.allow_pty and bool(host.python), _isatty(0), _isatty(1), force)


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


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
