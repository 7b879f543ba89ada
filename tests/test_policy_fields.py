"""Every policy field is accounted for: who decides it and where it is enforced.

The walk goes through ``fence.policy.Policy`` by msgspec introspection, so a
field added to the model (or renamed) fails here until it has a row in
``DECIDED`` (the function that decides it, then the place(s) that enforce it)
or in ``NO_LINUX_EFFECT`` (why nothing on Linux acts on it), and a line in
ARCHITECTURE.md's table.  Each named function must exist, and a module of its
row must read the field, so the table stays true to the code.

Names are in ``fence.executor`` unless they start with another part of
``fence`` (``proxy.``, ``config.``, ``domains.``).
"""

from __future__ import annotations

import importlib
import inspect
import re

import msgspec
import msgspec.inspect as mi
import pytest

from conftest import REPO
from fence.policy import Policy

DECIDED: dict[str, tuple[str, ...]] = {
    # path: (decides, enforces, [also enforces...])
    "extends": ("config.resolve.resolve_source", "config.merge.merge"),
    "network.allowedDomains": ("domains.DomainFilter.decide", "proxy.session.Session.check", "plan.render"),
    "network.deniedDomains": ("domains.DomainFilter.decide", "proxy.session.Session.check"),
    "network.allowUnixSockets": ("seccomp.unix_sockets_allowed", "seccomp.build_program"),
    "network.allowAllUnixSockets": ("seccomp.unix_sockets_allowed", "seccomp.build_program"),
    "network.allowLocalBinding": ("network.local_outbound", "portfwd.Forwarder.outbound"),
    "network.allowLocalOutbound": ("network.local_outbound", "portfwd.Forwarder.outbound"),
    "network.allowLocalOutboundPorts": ("network.outbound_ports", "portfwd.Forwarder.outbound"),
    "network.httpProxyPort": ("proxy.service.ProxyService._open_session", "proxy.session.Session.listen"),
    "network.socksProxyPort": ("proxy.service.ProxyService._open_session", "proxy.session.Session.listen"),
    "network.upstreamProxy": ("proxy.session.Session", "proxy.http._Exchange._dial_upstream_proxy"),
    "network.defaultAction": ("domains.DomainFilter.decide", "proxy.http._Exchange._dial_upstream_proxy"),
    "filesystem.allowRead": ("fsfacts.gather", "mounts.filesystem_mounts", "mounts.landlock_options"),
    "filesystem.allowExecute": ("fsfacts.gather", "mounts.landlock_options"),
    "filesystem.allowWrite": ("fsfacts.gather", "mounts.filesystem_mounts", "mounts.landlock_options"),
    "filesystem.denyRead": ("fsfacts.gather", "mounts.filesystem_mounts"),
    "filesystem.denyWrite": ("fsfacts.gather", "mounts.filesystem_mounts"),
    "filesystem.defaultDenyRead": ("fsfacts.gather", "mounts.filesystem_mounts", "mounts.landlock_options"),
    "filesystem.strictDenyRead": ("fsfacts.gather", "mounts.filesystem_mounts", "mounts.landlock_options"),
    "filesystem.allowGitConfig": ("protect.protected_paths", "mounts.filesystem_mounts"),
    "filesystem.allowWriteProtected": ("fsfacts.gather", "mounts.filesystem_mounts"),
    "filesystem.allowAgentConfig": ("fsfacts.gather", "protect.protected_paths", "mounts.filesystem_mounts"),
    "filesystem.wslInterop": ("coverage.refused", "runner.admit", "seccomp.build_program"),
    "filesystem.tmpSize": ("fsfacts.gather", "mounts.filesystem_mounts"),
    "filesystem.shmSize": ("fsfacts.gather", "mounts.filesystem_mounts"),
    "devices.mode": ("fsfacts.gather", "mounts.filesystem_mounts"),
    "devices.allow": ("fsfacts.gather", "mounts.filesystem_mounts"),
    "command.deny": (
        "preflight.command_rule_hit",
        "preflight.check_command",
        "execdeny.plan_for",
        "execsupervisor.ExecPolicy",
    ),
    "command.allow": (
        "preflight.command_rule_hit",
        "preflight.check_command",
        "execdeny.plan_for",
        "execsupervisor.ExecPolicy",
    ),
    "command.useDefaults": (
        "commandrules.use_defaults",
        "preflight.check_command",
        "execdeny.plan_for",
        "execsupervisor.ExecPolicy",
    ),
    "command.runtimeExecPolicy": ("prepare.prepare", "plan.render", "execsupervisor.Supervisor"),
    "command.acceptSharedBinaryCannotRuntimeDeny": ("execdeny.plan_for", "plan.render"),
    "ssh.allowedHosts": ("sshpolicy._Check.host_rules", "preflight.check_commands"),
    "ssh.deniedHosts": ("sshpolicy._Check.host_rules", "preflight.check_commands"),
    "ssh.allowedCommands": ("sshpolicy._Check.remote", "preflight.check_commands"),
    "ssh.deniedCommands": ("sshpolicy._Check.remote", "preflight.check_commands"),
    "ssh.allowAllCommands": ("sshpolicy._Check.remote", "preflight.check_commands"),
    "ssh.inheritDeny": ("sshpolicy._Check.remote", "preflight.check_commands"),
    "allowPty": ("plan.session_mode", "ptyrelay.PtyRelay"),
    "forceNewSession": ("plan.session_mode", "plan.render"),
}
"""Field path (JSON names) -> the function that decides it, then where it is enforced."""

NO_LINUX_EFFECT: dict[str, str] = {
    "$schema": "for editors: config.resolve.resolve drops it",
    "macos.mach.lookup": "macOS sandbox profiles only (not built)",
    "macos.mach.register": "macOS sandbox profiles only (not built)",
}
"""Field path -> why nothing on Linux acts on it."""

SECTION = "## Policy fields: who decides, who enforces"


def field_paths(struct_type: mi.StructType, prefix: str = "") -> list[str]:
    """Every leaf field of ``struct_type`` as a dotted path of JSON names (``network.allowedDomains``);
    a section inside a list or dict gets ``[]`` (``rules[].name``)."""
    out: list[str] = []
    for field in struct_type.fields:
        path = prefix + field.encode_name
        nested = _structs_in(field.type)
        if not nested:
            out.append(path)
        for inner, in_collection in nested:
            out += field_paths(inner, path + ("[]." if in_collection else "."))
    return out


def _structs_in(t: mi.Type, in_collection: bool = False) -> list[tuple[mi.StructType, bool]]:
    """The Struct types a field holds (itself, or inside an optional, a list, a dict...)."""
    if isinstance(t, mi.StructType):
        return [(t, in_collection)]
    if isinstance(t, mi.UnionType):
        return [s for member in t.types for s in _structs_in(member, in_collection)]
    for attr in ("item_type", "value_type"):
        inner = getattr(t, attr, None)
        if isinstance(inner, mi.Type):
            return _structs_in(inner, True)
    return []


def resolve(name: str):
    """``fsfacts.gather`` -> the object, looked up in ``fence.executor`` first, then ``fence``; and its module."""
    parts = name.split(".")
    for base in ("fence.executor.", "fence."):
        for cut in range(len(parts) - 1, 0, -1):
            try:
                module = importlib.import_module(base + ".".join(parts[:cut]))
            except ImportError:
                continue
            obj = module
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                break
            return obj, module
    raise LookupError(f"{name}: no such function in fence")


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def struct_info(cls) -> mi.StructType:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return info


POLICY_FIELDS = field_paths(struct_info(Policy))


def test_every_field_is_accounted_for_once():
    listed = set(DECIDED) | set(NO_LINUX_EFFECT)
    assert not set(DECIDED) & set(NO_LINUX_EFFECT)
    missing = [p for p in POLICY_FIELDS if p not in listed]
    assert not missing, f"policy fields nobody decides or enforces (add them to DECIDED): {missing}"
    stale = sorted(listed - set(POLICY_FIELDS))
    assert not stale, f"table rows for fields the policy no longer has: {stale}"
    assert all(why for why in NO_LINUX_EFFECT.values())


@pytest.mark.parametrize("path", sorted(DECIDED))
def test_named_functions_exist_and_their_modules_read_the_field(path):
    decides, *enforces = DECIDED[path]
    assert enforces, f"{path}: name at least one place that enforces it"
    modules = {resolve(name)[1] for name in (decides, *enforces)}
    leaf = snake(path.rsplit(".", 1)[-1])
    assert any(leaf in inspect.getsource(m) for m in modules), f"{path}: no module of its row reads {leaf}"


def test_architecture_lists_every_field():
    text = (REPO / "ARCHITECTURE.md").read_text()
    assert SECTION in text
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", section, re.M)}
    assert rows == set(POLICY_FIELDS), (
        f"ARCHITECTURE.md: missing {sorted(set(POLICY_FIELDS) - rows)}, stale {sorted(rows - set(POLICY_FIELDS))}"
    )
    for path, (decides, *enforces) in DECIDED.items():
        row = next(line for line in section.splitlines() if line.startswith(f"| `{path}` |"))
        for name in (decides, *enforces):
            assert f"`{name}`" in row, f"ARCHITECTURE.md row for {path} does not name {name}"


class _Inner(msgspec.Struct, rename="camel"):
    new_switch: bool = False


class _Model(msgspec.Struct, rename="camel"):
    plain: int = 0
    section: _Inner = msgspec.field(default_factory=_Inner)
    maybe: _Inner | None = None
    many: list[_Inner] = []


def test_a_new_field_would_be_found():
    """The walk sees nested, optional and listed sections, so no field hides from the table."""
    assert field_paths(struct_info(_Model)) == ["plain", "section.newSwitch", "maybe.newSwitch", "many[].newSwitch"]
