"""One ``fence run``: resolve, admit, gather, open a proxy session, decide, launch, report, clean up.

Written once as a coroutine over the ``Bus`` so it runs unchanged in both
modes: driven without an event loop over the in-process bus (a lone run,
``fence.bus.run_sync``) or on uvloop over NATS when a supervisor runs.  Only
``wait`` differs: a blocking ``waitpid`` in a lone run, a thread under a loop.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec

from fence.bus import Bus, BusError
from fence.executor import network
from fence.executor.commandrules import RuleSources
from fence.executor.coverage import refused
from fence.executor.errors import FenceError
from fence.executor.fsfacts import FsError
from fence.executor.launch import LaunchError, Sandbox
from fence.executor.plan import HostFacts, RunPlan, SandboxPlan, render
from fence.executor.preflight import check_command
from fence.executor.prepare import RunFacts, gather, prepare
from fence.executor.protect import quarantine, restore_links
from fence.messages import (
    ConfigResolveReply,
    ConfigResolveRequest,
    LifecycleEvent,
    ProtectedPathEvent,
    ProxySessionClose,
    ProxySessionClosed,
    ProxySessionOpen,
    ProxySessionOpened,
)
from fence.subjects import CONFIG_RESOLVE, PROXY_SESSION_CLOSE, PROXY_SESSION_OPEN, event
from fence.textsafe import printable

if TYPE_CHECKING:  # imported when a run needs them
    from fence.executor.portfwd import Forwarder
    from fence.executor.runtimeexec import RuntimeExec


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
    terminal: bool | None = None
    """Whether the sandbox's stdio is a terminal; None: look at this process's stdin and stdout (``fence run``)."""


class StartRefused(FenceError):
    """A start refused because of one part of its request: ``field`` is ``policy`` (the config could not
    be loaded, or asks for what this fence cannot enforce) or ``argv`` (the command or SSH policy blocks
    it).  ``fence run`` prints it like any ``FenceError``; the executor service names the field."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def new_sandbox_id() -> str:
    return os.urandom(6).hex()


async def blocking_wait(sandbox: Sandbox) -> int:
    return sandbox.wait()


async def run(
    bus: Bus,
    req: RunRequest,
    host: HostFacts,
    wait: Callable[[Sandbox], Awaitable[int]] = blocking_wait,
    relay_signals: bool = True,
    attach: Callable[..., None] | None = None,
) -> int:
    """Run ``req`` to completion and return its exit code: ``start``, wait, ``exited``, ``close``.

    ``attach(sandbox, *listeners)`` hands the sockets made inside the
    sandbox's netns to a proxy in this process (a lone run's
    ProxyService.attach), lazily, on the sandbox's first connection.  Without
    it (a supervisor's proxy) they are handed to the proxy process over its
    hand-off socket (``handoff.py``) before the command starts.
    """
    running = await start(bus, req, host, relay_signals=relay_signals, attach=attach)
    try:
        assert running.sandbox is not None  # start returns only once it runs
        _collect_from_now_on()
        code = await wait(running.sandbox)
        await running.exited(code)
        return code
    finally:
        await running.close()  # placeholders, quarantine, relays, session


async def start(
    bus: Bus,
    req: RunRequest,
    host: HostFacts,
    relay_signals: bool = True,
    attach: Callable[..., None] | None = None,
    stdio: tuple[int, int, int] | None = None,
    report: Callable[[list[str]], None] | None = None,
) -> Running:
    """Every step up to a running command, one line per layer; the ``Running`` it returns must be closed.

    The one start sequence of both ``fence run`` (``run``) and a detached
    start in the executor service (``fence.executor.fleet``), which passes
    ``stdio`` (bwrap's fds 0, 1, 2) and ``report`` (where warnings go; default
    stderr).  Whatever fails on the way is undone before the error leaves.
    """
    report = report or say
    resolved = await resolve(bus, req)  # config service: policy + provenance
    await admit(bus, req, resolved)  # refused fields, command/SSH preflight
    facts = gather_facts(req, resolved, host)  # filesystem, netns, Landlock, exec masks, seccomp
    report(facts.warnings)
    opened = await open_session(bus, req, resolved.policy, facts)  # proxy session (denying all without network)
    running = Running(bus, req, resolved, facts, opened, report)
    try:
        plan = decide(req, resolved, facts, opened)  # every decision, pure: the RunPlan
        report(plan.warnings[len(facts.warnings) :])  # the plan holds them all; the facts' were said above
        plan = running.reserve_placeholders(plan)  # missing protected paths made inert, bound ro
        rendered = render(plan)  # the bwrap invocation
        if req.debug:
            debug_plan(plan, rendered)
        running.launch(plan, rendered, relay_signals, attach, stdio)  # exec supervisor, pinned fds, bwrap, bridges
        await running.started()
    except BaseException:
        running.stop_sandbox()
        await running.close()
        raise
    return running


def _collect_from_now_on() -> None:
    """The command runs: what start-up made stays (frozen: never scanned again), and the garbage
    collector, off during start-up (``cli.run_command``), is on for the rest of the sandbox's life."""
    gc.freeze()
    gc.enable()


async def resolve(bus: Bus, req: RunRequest) -> ConfigResolveReply:
    """The policy for ``req`` from the config service (``-d``: where it came from)."""
    try:
        resolved = await bus.request(
            CONFIG_RESOLVE,
            ConfigResolveRequest(
                cwd=req.cwd,
                settings=req.settings,
                template=req.template,
                home=req.env.get("HOME", ""),
                env_xdg_config_home=req.env.get("XDG_CONFIG_HOME", ""),
            ),
            ConfigResolveReply,
        )
    except BusError as e:
        if getattr(e, "code", "") == "settings_missing":  # nothing was loaded: the message says it all
            raise StartRefused(getattr(e, "message", str(e)), "policy") from None
        raise StartRefused(f"failed to load config: {getattr(e, 'message', e)}", "policy") from None
    if req.debug:
        say([f"[fence] Config: {source}" for source in resolved.sources])
    return resolved


def gather_facts(req: RunRequest, resolved: ConfigResolveReply, host: HostFacts) -> RunFacts:
    return gather(
        resolved.policy,
        req.command,
        req.cwd,
        req.env,
        req.sandbox,
        host,
        resolved.chain,
        _user_config_dir(resolved),
        debug=req.debug,
    )


def decide(req: RunRequest, resolved: ConfigResolveReply, facts: RunFacts, opened: ProxySessionOpened) -> RunPlan:
    terminal = (_isatty(0), _isatty(1)) if req.terminal is None else (req.terminal, req.terminal)
    return prepare(
        resolved.policy,
        req.command,
        req.cwd,
        req.env,
        req.sandbox,
        facts,
        opened,
        ports=req.ports,
        terminal=terminal,
        force_new_session=req.force_new_session,
        debug=req.debug,
    )


async def open_session(bus: Bus, req: RunRequest, policy, facts: RunFacts) -> ProxySessionOpened:
    """The proxy session for the sandbox, for every run: without allowed domains its filter denies
    everything, so a blocked request is answered (403) and reported like any other.  In a lone run
    it is a name until the sandbox first connects (``network.attach_on_first_connection``)."""
    return await bus.request(
        PROXY_SESSION_OPEN,
        ProxySessionOpen(sandbox=req.sandbox, network=policy.network, loopback=facts.shared),
        ProxySessionOpened,
    )


def say(lines: list[str]) -> None:
    """Lines on stderr, each escaped (``fence.textsafe``): the paths, names and argv in them may be the
    sandbox's or the agent's, and must not forge a line or move the cursor."""
    for line in lines:
        print(printable(line), file=sys.stderr)


class Running:
    """The side effects of one run, and their undoing in ``close`` (whatever stage the run reached)."""

    def __init__(
        self,
        bus: Bus,
        req: RunRequest,
        resolved: ConfigResolveReply,
        facts: RunFacts,
        opened: ProxySessionOpened,
        report: Callable[[list[str]], None] = say,
    ):
        self.bus, self.req, self.facts, self.opened, self.report = bus, req, facts, opened, report
        self.sandbox: Sandbox | None = None
        """The launched sandbox (set by ``launch``)."""
        self.closed = False
        self.sources = RuleSources.from_reply(resolved)
        self.lifecycle = event(req.sandbox, "lifecycle")
        self.runtime: RuntimeExec | None = None
        self.forwarder: Forwarder | None = None
        self.finish_attach = None
        self.handed: list = []  # the open hand-off connection to a supervisor's proxy (kept for the sandbox's life)

    def reserve_placeholders(self, plan: RunPlan) -> RunPlan:
        """Make the reserved placeholders; a path that could not be made is watched instead (said, replanned)."""
        try:
            warnings = self.facts.fs.reserve()
        except FsError as e:
            raise FenceError(str(e)) from None
        if not warnings:
            return plan
        self.report([f"[fence] Warning: {w}" for w in warnings])
        protection = self.facts.fs.protection
        return msgspec.structs.replace(
            plan,
            fs=self.facts.fs.view,
            watch=list(protection.watch),
            reserve=[p for p in plan.reserve if p in protection.readonly],
        )

    def launch(
        self, plan: RunPlan, rendered, relay_signals: bool, attach, stdio: tuple[int, int, int] | None = None
    ) -> Sandbox:
        """Start the exec supervisor and the local-port relays, pin the writable sources, start bwrap,
        then hand the proxy listeners over and start the relays."""
        from fence.executor import runtimeexec  # lazy: a run refused before launch never loads it (~0.1 ms)

        req, net = self.req, plan.network
        runtime = self.runtime = runtimeexec.start(
            plan.policy, req.env, req.cwd, req.sandbox, self.bus, self.facts.masks, self.sources
        )
        host_listeners = []
        if net.outbound_ports or net.published:
            from fence.executor import portfwd  # lazy: only runs with local ports relay them (socket, threads, ~4 ms)

            self.forwarder = portfwd.Forwarder(debug=req.debug)
            try:
                host_listeners = portfwd.bind_published(list(net.published))
            except portfwd.PortError as e:
                raise FenceError(str(e)) from None
        prepare_listeners = None
        if net.proxy_listen and attach is None:
            field = "network.allowedDomains" if net.intent == "filtered" else "network"  # none: its proxies
            prepare_listeners = _hand_over_to(self.opened, len(net.proxy_listen), self.handed, field)
        try:
            inherit = {**runtime.inherit(), **self.facts.fs.pin(rendered.pinned)}
            sandbox = Sandbox(rendered, relay_signals, inherit=inherit, stdio=stdio).start(prepare_listeners)
        except BaseException as e:
            for sock in host_listeners:
                sock.close()
            if isinstance(e, FsError | LaunchError):
                raise FenceError(str(e)) from None
            raise
        finally:
            runtime.spawned()
            self.facts.fs.close()  # bwrap has its own copies (and closes them once mounted)
        proxy_socks = sandbox.listeners[: len(net.proxy_listen)]
        if proxy_socks and attach is not None:  # connections queue in the backlog until the proxy serves them
            self.finish_attach = network.attach_on_first_connection(attach, req.sandbox, proxy_socks)
        if self.forwarder is not None:  # local ports: relayed by this process, no proxy (works supervised too)
            _forward(
                self.forwarder,
                sandbox,
                network.outbound_listeners(list(net.outbound_ports)),
                sandbox.listeners[len(net.proxy_listen) :],
                list(zip(net.published, host_listeners, strict=True)),
            )
        self.sandbox = sandbox
        return sandbox

    @property
    def pid(self) -> int:
        """The sandbox's pid as events report it: its init (bwrap's child), else bwrap."""
        return (self.sandbox.init_pid or self.sandbox.pid) if self.sandbox is not None else 0

    def stop_sandbox(self) -> None:
        """Kill a launched sandbox and reap bwrap (a start that failed after launching must leave nothing)."""
        if self.sandbox is not None and self.sandbox.pid:
            self.sandbox.kill()

    async def started(self) -> None:
        await self.bus.publish(
            self.lifecycle,
            LifecycleEvent(
                sandbox=self.req.sandbox, phase="started", ts=time.time(), pid=self.pid, argv=self.req.command
            ),
        )

    async def exited(self, code: int) -> None:
        await self.bus.publish(
            self.lifecycle,
            LifecycleEvent(
                sandbox=self.req.sandbox,
                phase="exited",
                ts=time.time(),
                pid=self.pid,
                exit_code=code,
                signal=code - 128 if code > 128 else None,
            ),
        )

    async def close(self) -> None:
        """Undo what the run did; a second call does nothing."""
        if self.closed:
            return
        self.closed = True
        if self.runtime is not None:
            self.runtime.close()
        protection = self.facts.fs.protection
        protection.release()
        if protection.watch or protection.links:
            await _quarantine(self.bus, protection, self.req.sandbox)
        if self.finish_attach is not None:
            self.finish_attach()
        if self.forwarder is not None:
            self.forwarder.close()
        try:
            await self.bus.request(PROXY_SESSION_CLOSE, ProxySessionClose(sandbox=self.req.sandbox), ProxySessionClosed)
        except BusError as e:
            say([f"[fence] Warning: closing proxy session {self.req.sandbox} failed: {e}"])
        for conn in self.handed:  # the proxy also ends the session when this closes (if the request above failed)
            conn.close()


def _hand_over_to(opened: ProxySessionOpened, count: int, handed: list, field: str):
    """``Sandbox.start``'s ``prepare``: the first ``count`` listeners go to the supervisor's proxy process
    (``field`` names the setting that asked for them in the error)."""

    def prepare(listeners: list) -> None:
        # lazy: only a supervised run with a netns hands listeners over (~3 ms)
        from fence.executor.handoff import HandoffError, hand_over

        try:
            handed.append(hand_over(opened, listeners[:count]))
        except HandoffError as e:
            raise LaunchError(f"{field}: {e}; the sandbox was stopped before its command ran") from None

    return prepare


def _forward(forwarder, sandbox: Sandbox, inside: list[tuple[str, int]], inside_socks: list, published: list) -> None:
    """Start the local-port relays; a -p helper that cannot enter the sandbox is a warning."""
    # lazy: only port relays get here (portfwd has loaded bridge then)
    from fence.executor.bridge import BridgeError, as_socket

    for (host, port), sock in zip(inside, inside_socks, strict=True):
        if sock is not None:  # None: the sandbox's netns has no IPv6 ([::1] skipped)
            forwarder.outbound(as_socket(sock), (host, port))
    for (_addr, port), sock in published:
        try:
            forwarder.inbound(sock, sandbox.init_pid, port)
        except BridgeError as e:  # the command already ended, most likely
            sock.close()
            say([f"[fence] Warning: --port {port} is not forwarded: {e}"])


async def admit(bus: Bus, req: RunRequest, resolved: ConfigResolveReply) -> None:
    """Every check that must pass before anything starts.

    Refuses fields this build cannot enforce and runs the command/SSH
    preflight (a block is published on ``fence.events.<sandbox>.preflight``).
    """
    policy = resolved.policy
    missing = refused(policy)
    if missing:
        raise StartRefused(
            f"this fence cannot enforce {', '.join(missing)} yet; refusing to run with less "
            "protection than the config asks for (remove the field or pick another template)",
            "policy",
        )
    blocked = check_command(
        None if req.command_string else req.command,
        req.command_string or None,
        policy,
        RuleSources.from_reply(resolved),
        env=req.env,
    )
    if blocked is not None:  # nothing starts; the block is an event like any other
        await bus.publish(event(req.sandbox, "preflight"), blocked.event(req.sandbox))
        raise StartRefused(blocked.message, "argv")


def _user_config_dir(resolved: ConfigResolveReply) -> str:
    """The user config directory every sandbox protects, as the config service looked for it."""
    if not resolved.user_config_dir:  # an older config service: it sends neither this nor the chain's files
        raise FenceError(
            "the config service did not say where the config came from (it is older than this "
            "fence); restart it: fence down, then fence up"
        )
    return resolved.user_config_dir


async def _quarantine(bus: Bus, protection, sandbox_id: str) -> None:
    """Protected names the sandbox created (or protected symlinks it replaced) are moved aside (see
    fence.executor.protect), said on stderr and published as ``ProtectedPathEvent`` on ``.fs``."""
    found = quarantine(protection.watch, sandbox_id) + restore_links(protection.links, sandbox_id)
    for path, target, error in found:
        if error:  # the path's name may be the sandbox's choice (a file in a new .git/hooks): say() escapes it
            say(
                [
                    f"[fence] Warning: the sandbox created protected path {path}, and it could not be moved "
                    f"aside ({error}): remove it before using this directory"
                ]
            )
        else:
            say([f"[fence] Warning: the sandbox created protected path {path}: moved to {target}"])
        try:
            await bus.publish(
                event(sandbox_id, "fs"),
                ProtectedPathEvent(sandbox=sandbox_id, ts=time.time(), path=path, moved_to=target, error=error),
            )
        except BusError as e:
            say([f"[fence] Warning: cannot publish the quarantine event: {e}"])


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def debug_plan(plan: RunPlan, rendered: SandboxPlan) -> None:
    """``-d``: what will run, exactly (``render``'s argv), and what fence noticed on the way."""
    import shlex  # lazy: only -d prints the argv (shlex, ~0.3 ms)

    say(plan.trace)
    say([f"[fence] Command: {shlex.join(rendered.command)}"])  # shlex quotes, but leaves LF and ESC inside
    if rendered.stripped_env:
        say([f"[fence] Stripped dangerous env vars: [{' '.join(rendered.stripped_env)}]"])
    say([f"[fence] Sandboxed command: {shlex.join(rendered.argv)}", rendered.summary])
    say(plan.notes)
