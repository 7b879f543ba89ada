"""A run's facts (read) and its decisions (pure): ``gather`` then ``prepare`` -> ``RunPlan``.

``gather`` reads what the decisions depend on and changes nothing on the
host: the filesystem tiers expanded and the protections found
(``fsfacts``), whether a netns can be made (``netns``, cached per boot), the
kernel's Landlock ABI, the runtime exec masks (``execdeny``, cached), the
seccomp program (cached).  ``prepare`` then decides everything else from
those facts, the request and the proxy session, and returns one frozen
``RunPlan``.  ``fence run`` (``runner``) and the executor service's plan
endpoint (``service``) both call these two, so ``fence -d`` and the service
print the same sandbox for the same inputs (a test holds them to it).

Doing is the runner's: placeholders, pinned fds, the exec supervisor thread,
the proxy session, bwrap.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import msgspec

from fence.executor import execdeny, fsfacts, network
from fence.executor.coverage import ungranted
from fence.executor.errors import FenceError
from fence.executor.execdeny import ExecDeny
from fence.executor.fsfacts import FsFacts
from fence.executor.plan import HostFacts, NetPlan, RunPlan, session_mode, wants_landlock
from fence.messages import ProxySessionOpened, SourceRef
from fence.policy import Policy


class RunFacts:
    """What one run's decisions depend on, read once (``gather``)."""

    __slots__ = ("fs", "host", "net_mode", "shared", "masks", "seccomp", "warnings", "trace")

    def __init__(
        self,
        fs: FsFacts,
        host: HostFacts,
        net_mode: str,
        shared: bool,
        masks: ExecDeny,
        seccomp: tuple[bytes, str],
        warnings: list[str],
        trace: list[str],
    ):
        self.fs, self.host, self.net_mode, self.shared = fs, host, net_mode, shared
        self.masks, self.seccomp, self.warnings, self.trace = masks, seccomp, warnings, trace


def gather(
    policy: Policy,
    command: list[str],
    cwd: str,
    env: dict[str, str],
    sandbox: str,
    host: HostFacts,
    chain: Sequence[SourceRef],
    config_dir: str,
    debug: bool = False,
) -> RunFacts:
    """Read every fact the plan needs; raises ``FenceError`` for a run that must not start.

    ``chain``: the config's sources (its files stay read-only in the sandbox),
    ``config_dir``: the user's fence config directory, both from the config
    service's reply.  Warnings are collected, not printed (the service answers
    with them, the runner prints them): ``warnings`` on every run, ``trace``
    with ``-d``.
    """
    warnings: list[str] = []
    helper: tuple[str, ...] = ()
    if policy.filesystem.default_deny_read or policy.filesystem.strict_deny_read:
        helper = _helper()
    try:
        fs = fsfacts.gather(
            policy, cwd, env, sandbox, chain, config_dir=config_dir, helper_paths=fsfacts.helper_read_paths(helper)
        )
    except fsfacts.FsError as e:
        raise FenceError(str(e)) from None
    if wants_landlock(fs.view):
        host = with_landlock(host, warnings, helper, "filesystem enforcement is bubblewrap-only")
    net_mode = network.mode(policy.network)
    shared, host = _shared_network(net_mode, host, env, warnings)
    masks = execdeny.plan_for(policy, env.get("PATH", os.defpath), cwd)
    warnings += [shared_binary.warning() for shared_binary in masks.shared]
    trace = execdeny.debug_lines(masks) if debug else []
    if (policy.command.runtime_exec_policy or "path") == "argv":
        from fence.executor import execsupervisor  # lazy: only "argv" runs need the exec supervisor (~2 ms)

        why = execsupervisor.supported()
        if why:
            from fence.executor.refusal import argv_unavailable  # lazy: only a refusal needs the wording (~0.1 ms)

            raise FenceError(argv_unavailable(why))
        if debug:
            trace.append(
                "[fence:linux] Runtime exec policy argv: every exec is checked by fence (seccomp user notification)"
            )
    return RunFacts(fs, host, net_mode, shared, masks, seccomp_for(policy, warnings), warnings, trace)


def prepare(
    policy: Policy,
    command: list[str],
    cwd: str,
    env: dict[str, str],
    sandbox: str,
    facts: RunFacts,
    session: ProxySessionOpened,
    ports: Sequence[tuple[str, int]] = (),
    terminal: tuple[bool, bool] = (False, False),
    force_new_session: bool = False,
    debug: bool = False,
) -> RunPlan:
    """Every decision for the run, from its facts: pure (reads nothing, changes nothing).

    ``session``: the proxy session's reply (its host ports matter only on a
    shared network); ``terminal``: whether stdin and stdout are terminals.
    """
    net = network_plan(policy, facts, ports)
    warnings, notes = [], []
    for warning in (network.relaxed_warning(net.intent), network.outbound_warning(net.shared, policy.network)):
        if warning:
            warnings.append(warning)
    if debug and ports:
        notes.append(f"[fence] Exposing ports: [{' '.join(str(p) for _, p in ports)}]")
        if not net.published:
            notes.append("[fence] Skipping reverse bridge (no network namespace, ports accessible directly)")
    extra_env = {**facts.fs.env, **network.proxy_env(net.intent, session, net.shared)}
    files: list[tuple[str, bytes]] = []
    if net.intent == "filtered" and not net.shared:  # ssh/scp/sftp/rsync/git go through the SOCKS proxy
        from fence.executor import sshproxy  # lazy: only filtered runs route ssh (tests/test_sshproxy.py checks)

        ssh_route = sshproxy.route(env, facts.fs.view.deny_read)
        files += ssh_route.files
        extra_env.update(ssh_route.env)
    if net.connect_only is not None:
        net = msgspec.structs.replace(
            net, connect_only=tuple(p for p in (session.http_port, session.socks_port) if p) + net.connect_only
        )
    force = force_new_session or bool(policy.force_new_session)
    pty, new_session = session_mode(policy.allow_pty and bool(facts.host.python), *terminal, force)
    protection = facts.fs.protection
    return RunPlan(
        command=list(command),
        cwd=cwd,
        host=facts.host,
        env=dict(env),
        extra_env=extra_env,
        sandbox=sandbox,
        policy=policy,
        fs=facts.fs.view,
        network=net,
        files=files,
        seccomp_program=facts.seccomp[0],
        seccomp_label=facts.seccomp[1],
        exec_masks=list(facts.masks.masks),
        exec_notify=(policy.command.runtime_exec_policy or "path") == "argv",
        pty=pty,
        new_session=new_session,
        debug=debug,
        warnings=facts.warnings + warnings,
        trace=notes + facts.trace,
        notes=_notes(policy, facts),
        watch=list(protection.watch),
        reserve=[ph.path for ph in protection.placeholders],
    )


def network_plan(policy: Policy, facts: RunFacts, ports: Sequence[tuple[str, int]] = ()) -> NetPlan:
    """Listeners, relayed ports, published ports and the Landlock connect list; FenceError on a clash.

    ``connect_only`` holds the listed local ports here; ``prepare`` puts the
    proxies' host ports in front once the session is known.
    """
    net_mode, shared = facts.net_mode, facts.shared
    proxy_listen = network.listeners(net_mode, shared)
    out_ports = network.outbound_ports(shared, policy.network)
    clash = sorted({port for _, port in proxy_listen} & set(out_ports))
    if clash:
        raise FenceError(
            f"network.allowLocalOutboundPorts: port {clash[0]} is the sandbox's own proxy port "
            "(every sandbox with its own network has one); it cannot also be relayed to the host"
        )
    connect_only = None
    if shared and net_mode != "relaxed":  # no netns: Landlock keeps TCP to the proxies (and listed ports)
        local = policy.network.allow_local_outbound_ports if network.local_outbound(policy.network) else []
        connect_only = tuple(local)
    return NetPlan(
        intent=net_mode,
        shared=shared,
        proxy_listen=tuple(proxy_listen),
        outbound_ports=tuple(out_ports),
        published=tuple(ports) if not shared else (),
        connect_only=connect_only,
    )


def _notes(policy: Policy, facts: RunFacts) -> list[str]:
    """The ``-d`` lines after the sandbox's summary: repaired variables, filesystem notes, ungranted fields."""
    out = [f"[fence] {name} is not usable inside the sandbox: set to {value}" for name, value in facts.fs.env.items()]
    out += [f"[fence] Note: {note}" for note in facts.fs.notes]
    out += [
        f"[fence] Note: {name} is not granted by this build yet; the sandbox stays stricter"
        for name in ungranted(policy)
    ]
    return out


def _shared_network(net_mode: str, host: HostFacts, env: dict[str, str], warnings: list[str]) -> tuple[bool, HostFacts]:
    """Whether the sandbox runs on the host's network: relaxed mode, or no netns can be made here.

    The latter is known from ``netns.py``'s per-boot cache (probed on the
    first run of a boot).  Proxy-only is announced on every run; a policy
    allowing no network is refused unless the user opted in.  Without a
    netns, Landlock (ABI 4+) is what keeps TCP to the proxies, so the host
    facts come back with Landlock's filled in.
    """
    if net_mode == "relaxed":
        return True, host
    from fence.executor import netns  # lazy: relaxed runs, and runs refused before planning, never load it (~0.15 ms)

    found = netns.state(host.bwrap)
    if not found.proxy_only:
        return False, host  # available, or bwrap fails without a netns too: nothing to weaken, bwrap says why
    refusal = network.shared_network_refusal(net_mode, found.detail, env)
    if refusal:
        raise FenceError(refusal)
    host = with_landlock(host, warnings, without="direct TCP connections are not blocked either")
    warnings.append(network.no_netns_warning(found.detail, tcp_blocked=host.landlock_abi >= 4))
    return True, host


def with_landlock(host: HostFacts, warnings: list[str], helper: tuple[str, ...] = (), without: str = "") -> HostFacts:
    """``host`` with the kernel's Landlock ABI and the init helper filled in (once per run)."""
    if host.helper:
        return host
    # lazy: only runs with Landlock or the init helper need it (writes, defaultDenyRead, no netns; ~0.3 ms)
    from fence.executor import inithelper

    try:
        abi = inithelper.abi_version()
    except OSError as e:
        abi = 0
        warnings.append(f"[fence:linux] Warning: Landlock unavailable ({e.strerror}): {without}")
    return msgspec.structs.replace(host, landlock_abi=abi, helper=helper or _helper())


def _helper() -> tuple[str, ...]:
    # lazy: only runs with Landlock or the init helper need it (writes, defaultDenyRead, no netns; ~0.3 ms)
    from fence.executor.inithelper import helper_command

    # the real interpreter, not a venv's symlink: -I -S needs no venv, and under
    # defaultDenyRead only the interpreter's own tree is made readable
    python, *rest = helper_command()
    return (os.path.realpath(python), *rest)


def seccomp_for(policy: Policy, warnings: list[str]) -> tuple[bytes, str]:
    """The seccomp program and its label; a warning and no filter when it cannot be built.

    socketpair(AF_UNIX) stays allowed: an anonymous connected pair reaches
    nothing outside the sandbox, and denying it breaks asyncio and Node's child
    processes.  socket(AF_UNIX), which can connect to host sockets, is denied.
    """
    from fence.executor import seccomp  # lazy: a run refused before planning never loads it (zlib, ~0.5 ms)

    try:
        return seccomp.build_program(policy, deny_socketpair=False), seccomp.summary(policy)
    except Exception as e:  # libseccomp missing or broken: degrade as documented, loudly
        warnings.append(
            f"[fence:linux] Warning: seccomp filter unavailable ({type(e).__name__}: {e}): "
            "running without syscall filtering"
        )
        return b"", ""
