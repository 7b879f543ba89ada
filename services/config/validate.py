"""Semantic validation of one config (types are already checked by msgspec).

``problems(policy)`` returns every problem as ``(JSON path, message)``; the
messages keep the Go tool Fence's wording (docs/compatibility.md#messages) and add
what to do.  Domain patterns are checked by ``fence.domains`` (the core
owns domain syntax, IDNA included, so what validates is what the proxies
match).  ``normalize`` applies the one implied setting
(``strictDenyRead`` implies ``defaultDenyRead``).  ``cross_problems`` checks
rules that span fields which may come from different files of an
``extends`` chain, so it runs on the merged result.

Everything here is plain string work: it runs on every ``fence run``.
"""

from __future__ import annotations

import posixpath

from fence.policy import AGENT_TOOLS, Policy
from fence.sizes import size_problem

Problem = tuple[str, str]


def upstream_proxy_error(url: str) -> str | None:
    """Why ``url`` is not a usable upstream proxy (Fence's reasons), or None."""
    if "://" not in url:
        return f'missing scheme: URL must start with http:// (got "{url}")'
    scheme, rest = url.split("://", 1)
    if scheme.lower() != "http":
        return f'scheme "{scheme}" is not supported; only http:// upstream proxies are supported'
    host = rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
    host = host.split("]", 1)[0][1:] if host.startswith("[") else host.split(":", 1)[0]
    if not host:
        return "URL has no host"
    return None


def ssh_host_error(pattern: str) -> str | None:
    if "://" in pattern or "/" in pattern:
        return 'a host pattern cannot contain a scheme or a path; write the host only, e.g. "*.example.com"'
    if "@" in pattern:
        return "a host pattern cannot contain a user (user@host); write the host only"
    if ":" in pattern and pattern.count(":") < 2:
        return "a host pattern cannot contain a port; set ports in ~/.ssh/config"
    if any(c.isspace() for c in pattern):
        return "a host pattern cannot contain spaces"
    return None


def mach_error(name: str) -> str | None:
    if name == "*":
        return None
    star = name.find("*")
    if star != -1 and star != len(name) - 1:
        return 'only a single trailing "*" is allowed (e.g. "com.apple.*"), or "*" alone'
    return None


def _empty_paths(problems: list[Problem], section: str, field: str, values: list[str]) -> None:
    for i, v in enumerate(values):
        if v == "":
            problems.append(
                (f"$.{section}.{field}[{i}]", f"{section}.{field} contains empty path; remove the empty entry")
            )


def _empty_commands(problems: list[Problem], section: str, field: str, values: list[str]) -> bool:
    bad = False
    for i, v in enumerate(values):
        if not v.strip():
            problems.append(
                (f"$.{section}.{field}[{i}]", f"{section}.{field} contains empty command; remove the empty entry")
            )
            bad = True
    return bad


def problems(policy: Policy) -> list[Problem]:
    """Every problem in one config, in file order of the fields."""
    out: list[Problem] = []
    net = policy.network
    if net.allowed_domains or net.denied_domains:
        from fence.domains import pattern_problem  # lazy: configs listing no domain never load fence.domains (~0.3 ms)

        for kind, field, values in (
            ("allowed", "allowedDomains", net.allowed_domains),
            ("denied", "deniedDomains", net.denied_domains),
        ):
            for i, pattern in enumerate(values):
                message = pattern_problem(kind, pattern)
                if message:
                    out.append((f"$.network.{field}[{i}]", message))
    _empty_paths(out, "network", "allowUnixSockets", net.allow_unix_sockets)
    for i, port in enumerate(net.allow_local_outbound_ports):
        if not 1 <= port <= 65535:
            out.append(
                (
                    f"$.network.allowLocalOutboundPorts[{i}]",
                    f"invalid network.allowLocalOutboundPorts entry {port} (expected 1-65535)",
                )
            )
    for field, port in (("httpProxyPort", net.http_proxy_port), ("socksProxyPort", net.socks_proxy_port)):
        if not 0 <= port <= 65535:
            out.append(
                (f"$.network.{field}", f"invalid network.{field} {port} (expected 0-65535; 0 picks a free port)")
            )
    if net.upstream_proxy:
        reason = upstream_proxy_error(net.upstream_proxy)
        if reason:
            out.append(("$.network.upstreamProxy", f"invalid network.upstreamProxy: {reason}; use http://host:port"))
    if net.default_action not in ("", "deny", "proxy"):
        out.append(
            (
                "$.network.defaultAction",
                f'invalid network.defaultAction "{net.default_action}": must be "deny" or "proxy"',
            )
        )

    fs = policy.filesystem
    for field, values in (
        ("allowRead", fs.allow_read),
        ("allowExecute", fs.allow_execute),
        ("denyRead", fs.deny_read),
        ("allowWrite", fs.allow_write),
        ("denyWrite", fs.deny_write),
    ):
        if "" in values:
            _empty_paths(out, "filesystem", field, values)
    _empty_paths(out, "filesystem", "allowWriteProtected", fs.allow_write_protected)
    for field, value in (("tmpSize", fs.tmp_size), ("shmSize", fs.shm_size)):
        reason = size_problem(value)
        if reason:
            out.append((f"$.filesystem.{field}", f"invalid filesystem.{field}: {reason}"))
    for i, path in enumerate(fs.allow_write_protected):
        if any(c in path for c in "*?["):
            out.append(
                (
                    f"$.filesystem.allowWriteProtected[{i}]",
                    f'filesystem.allowWriteProtected entry "{path}" is a pattern: name each protected path '
                    'exactly (e.g. "~/.claude.json"), so no protection is opened by accident',
                )
            )

    _agent_tools(out, fs.allow_agent_config)

    dev = policy.devices
    if dev.mode not in ("", "auto", "minimal", "host"):
        out.append(("$.devices.mode", f'invalid devices.mode "{dev.mode}" (expected one of: auto, minimal, host)'))
    for i, path in enumerate(dev.allow):
        where = f"$.devices.allow[{i}]"
        if path == "":
            out.append((where, "devices.allow contains empty path; remove the empty entry"))
            continue
        clean = posixpath.normpath(path)
        if clean == "/dev":
            out.append((where, f'devices.allow path "{path}" is too broad; use devices.mode "host" instead'))
        elif not clean.startswith("/dev/"):
            out.append((where, f'devices.allow path "{path}" must be under /dev/ (e.g. "/dev/kvm")'))

    cmd = policy.command
    _empty_commands(out, "command", "deny", cmd.deny)
    _empty_commands(out, "command", "allow", cmd.allow)
    _empty_commands(out, "command", "acceptSharedBinaryCannotRuntimeDeny", cmd.accept_shared_binary_cannot_runtime_deny)
    if cmd.runtime_exec_policy not in ("", "path", "argv"):
        out.append(
            (
                "$.command.runtimeExecPolicy",
                f'invalid command.runtimeExecPolicy "{cmd.runtime_exec_policy}" (expected one of: path, argv)',
            )
        )

    ssh = policy.ssh
    for field, values in (("allowedHosts", ssh.allowed_hosts), ("deniedHosts", ssh.denied_hosts)):
        _checked_entries(out, f"ssh.{field}", values, "host pattern", ssh_host_error)
    _empty_commands(out, "ssh", "allowedCommands", ssh.allowed_commands)
    _empty_commands(out, "ssh", "deniedCommands", ssh.denied_commands)

    mach = policy.macos.mach
    for field, values in (("lookup", mach.lookup), ("register", mach.register)):
        _checked_entries(out, f"macos.mach.{field}", values, "service name", mach_error)
    return out


def _agent_tools(out: list[Problem], tools: list[str]) -> None:
    """``filesystem.allowAgentConfig``: each entry one of ``AGENT_TOOLS`` (a typo must not leave a tool's files
    protected while the user believes them open, nor the other way round)."""
    for i, tool in enumerate(tools):
        where = f"$.filesystem.allowAgentConfig[{i}]"
        if not tool.strip():
            out.append((where, "filesystem.allowAgentConfig contains empty tool name; remove the empty entry"))
        elif tool not in AGENT_TOOLS:
            from fence.config.load import suggest  # lazy: import cycle (load imports validate)

            hint = suggest(tool.lower(), list(AGENT_TOOLS))
            did = f'; did you mean "{hint}"?' if hint else ""
            out.append(
                (where, f'unknown tool "{tool}" in filesystem.allowAgentConfig{did} (tools: {", ".join(AGENT_TOOLS)})')
            )


def _checked_entries(out: list, label: str, values: list[str], what: str, error) -> None:
    """Each entry of the list ``label`` (``ssh.allowedHosts``): not blank, and ``error(entry)`` says nothing."""
    for i, value in enumerate(values):
        where = f"$.{label}[{i}]"
        if not value.strip():
            out.append((where, f"{label} contains empty {what}; remove the empty entry"))
            continue
        reason = error(value)
        if reason:
            out.append((where, f'invalid {label} entry "{value}": {reason}'))


def normalize(policy: Policy) -> Policy:
    """Apply implied settings in place: ``strictDenyRead`` implies ``defaultDenyRead``."""
    if policy.filesystem.strict_deny_read:
        policy.filesystem.default_deny_read = True
    return policy


def cross_problems(policy: Policy) -> list[Problem]:
    """Rules spanning fields that an ``extends`` chain may set in different files."""
    out: list[Problem] = []
    if policy.network.default_action == "proxy" and not policy.network.upstream_proxy:
        out.append(
            (
                "$.network.defaultAction",
                'network.defaultAction "proxy" requires network.upstreamProxy to be set; add '
                '"upstreamProxy": "http://host:port" or remove defaultAction',
            )
        )
    return out
