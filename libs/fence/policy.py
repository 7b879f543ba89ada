"""The policy language: a fence config and its parts as msgspec Structs.

Field names are camelCase on disk (``rename="camel"``) so files written for
the Go tool Fence load unchanged.  Defaults here are the built-in defaults
(reference §2.10): no network, read-mostly filesystem, default command deny
list on.  Loading, merging and validation live in ``fence.config``; later
layers only read these objects.

Every field carries a description (``msgspec.Meta``) so the generated JSON
Schema (``fence config schema``, ``docs/schema/fence.schema.json``) helps
editors.  Value constraints that fence checks itself, with better messages
than a schema validator would give (domain patterns, ports, enums), are
added to the schema only (``extra_json_schema``); ``fence.config.validate``
enforces them.

Conventions the merge rules (``fence.config.merge``) rely on: lists are
``list[...]``, plain switches are ``bool`` (merged with OR), optional
switches are ``bool | None`` (None = unset), numbers are ``int`` (0 =
unset) and strings ``str`` ("" = unset).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta


class _Part(msgspec.Struct, rename="camel", omit_defaults=True, forbid_unknown_fields=True):
    """Base of every config section: camelCase keys, unknown keys rejected."""


def _d(text: str, **schema) -> Meta:
    return Meta(description=text, extra_json_schema=schema) if schema else Meta(description=text)


_Entry = Annotated[str, Meta(extra_json_schema={"minLength": 1})]
Domains = list[_Entry]
Paths = list[_Entry]
Commands = list[_Entry]
Port = Annotated[int, Meta(extra_json_schema={"minimum": 1, "maximum": 65535})]
DevicePath = Annotated[str, Meta(extra_json_schema={"pattern": "^/dev/."})]
MachName = Annotated[str, Meta(extra_json_schema={"pattern": r"^(\*|[^*]+\*?)$"})]


class NetworkConfig(_Part):
    """Outbound network policy, enforced by fence's filtering HTTP and SOCKS5 proxies."""

    allowed_domains: Annotated[Domains, _d(
        'Domains the sandbox may reach. Empty: all outbound traffic is blocked. Patterns: "example.com" '
        '(exact), "*.example.com" (any subdomain, not the apex), "localhost", or "*" (everything not '
        "denied; relaxed mode). No scheme, path or port.")] = []
    denied_domains: Annotated[Domains, _d(
        "Domains always blocked, checked before allowedDomains (same pattern syntax).")] = []
    allow_unix_sockets: Annotated[Paths, _d("Unix socket paths the sandbox may connect to.")] = []
    allow_all_unix_sockets: Annotated[bool, _d("Allow connecting to any Unix socket.")] = False
    allow_local_binding: Annotated[bool, _d("Allow binding local ports (a server inside the sandbox).")] = False
    allow_local_outbound: Annotated[bool | None, _d(
        "Allow connections to the host's localhost. Unset: follows allowLocalBinding. On Linux only the "
        "ports in allowLocalOutboundPorts are reachable.")] = None
    allow_local_outbound_ports: Annotated[list[Port], _d(
        "Linux: host loopback ports (1-65535) bridged into the sandbox's localhost.")] = []
    http_proxy_port: Annotated[int, _d("Fixed port of the HTTP proxy; 0 picks a free port.",
                                       minimum=0, maximum=65535)] = 0
    socks_proxy_port: Annotated[int, _d("Fixed port of the SOCKS5 proxy; 0 picks a free port.",
                                        minimum=0, maximum=65535)] = 0
    upstream_proxy: Annotated[str, _d(
        'Upstream HTTP proxy (http://host:port) for traffic matching no rule when defaultAction is "proxy".')] = ""
    default_action: Annotated[str, _d(
        'What happens to traffic matching neither list: "deny" (default) or "proxy" (forward to '
        "upstreamProxy).", enum=["", "deny", "proxy"])] = ""


class FilesystemConfig(_Part):
    """Filesystem policy: what the sandbox may read, execute and write."""

    allow_read: Annotated[Paths, _d(
        "Extra readable paths or globs (~ and relative paths allowed); matters with defaultDenyRead.")] = []
    allow_execute: Annotated[Paths, _d("Paths that may be read and executed but not listed.")] = []
    allow_write: Annotated[Paths, _d(
        'Writable paths or globs (also readable). Default: nothing writable; "." is the working directory.')] = []
    deny_read: Annotated[Paths, _d("Paths never readable; wins over allowRead and defaults.")] = []
    deny_write: Annotated[Paths, _d("Paths never writable; wins over allowWrite.")] = []
    default_deny_read: Annotated[bool, _d(
        "Deny all reads except allowRead, allowWrite and essential system paths.")] = False
    strict_deny_read: Annotated[bool, _d(
        "Like defaultDenyRead (which it implies) without the default system read paths.")] = False
    allow_git_config: Annotated[bool, _d(
        "Allow access to git configuration (.git/config, ~/.gitconfig, ~/.config/git), protected otherwise.")] = False
    wsl_interop: Annotated[bool | None, _d("WSL: allow executing Windows binaries (/init). Unset: detect.")] = None


class DevicesConfig(_Part):
    """Linux: which /dev the sandbox sees."""

    mode: Annotated[str, _d(
        'Device view: "minimal" (null, zero, random, tty, ptmx, shm, pts...), "host" (the host\'s /dev), or '
        '"auto" (default: minimal unless the host needs otherwise).', enum=["", "auto", "minimal", "host"])] = ""
    allow: Annotated[list[DevicePath], _d("Extra /dev/... paths passed through in minimal mode.")] = []


class CommandConfig(_Part):
    """Command policy: command prefixes blocked before and while the sandbox runs."""

    deny: Annotated[Commands, _d(
        'Command prefixes to block, e.g. "git push" (matches "git push origin main", not "git pushall").')] = []
    allow: Annotated[Commands, _d("Command prefixes allowed even when a deny rule matches.")] = []
    use_defaults: Annotated[bool | None, _d(
        "Include the built-in deny list (shutdown, mkfs, chroot, ...). Unset means true.")] = None
    runtime_exec_policy: Annotated[str, _d(
        'How commands started inside the sandbox are checked: "path" (default: single-word deny rules mask '
        'the executable) or "argv" (Linux: every exec is checked against all rules).',
        enum=["", "path", "argv"])] = ""
    accept_shared_binary_cannot_runtime_deny: Annotated[Commands, _d(
        "Denied commands whose binary is shared with others (busybox): skip runtime masking, no warning.")] = []


class SSHConfig(_Part):
    """SSH policy: which hosts and remote commands ``ssh`` may reach."""

    allowed_hosts: Annotated[Paths, _d(
        'Host patterns ssh may connect to ("*" glob anywhere, case-insensitive); no user@, scheme or port.')] = []
    denied_hosts: Annotated[Paths, _d("Host patterns ssh may never connect to (checked first).")] = []
    allowed_commands: Annotated[Commands, _d("Remote command prefixes allowed.")] = []
    denied_commands: Annotated[Commands, _d("Remote command prefixes denied.")] = []
    allow_all_commands: Annotated[bool, _d(
        "Allow every remote command not denied (deny-list mode).")] = False
    inherit_deny: Annotated[bool, _d(
        "Also apply command.deny (and the default deny list) to remote commands.")] = False


class MachConfig(_Part):
    """macOS: extra Mach services."""

    lookup: Annotated[list[MachName], _d(
        'Mach services the sandbox may look up: exact names, a trailing "*" prefix, or "*".')] = []
    register: Annotated[list[MachName], _d("Mach services the sandbox may register (same patterns).")] = []


class MacOSConfig(_Part):
    """macOS-only settings."""

    mach: Annotated[MachConfig, _d("Mach service access.")] = msgspec.field(default_factory=MachConfig)


class Policy(_Part):
    """A fence configuration (fence.json / fence.jsonc, a --settings file or a built-in template)."""

    schema: Annotated[str, _d("JSON Schema of this file, for editors; ignored by fence.")] = msgspec.field(
        default="", name="$schema")
    extends: Annotated[str, _d(
        'Config to build on: a built-in template name ("code"), "@base" (your user config), or a file path '
        "(relative to this file). Lists are appended, switches ORed, and values set here win.")] = ""
    network: Annotated[NetworkConfig, _d("Network policy.")] = msgspec.field(default_factory=NetworkConfig)
    filesystem: Annotated[FilesystemConfig, _d("Filesystem policy.")] = msgspec.field(
        default_factory=FilesystemConfig)
    devices: Annotated[DevicesConfig, _d("Linux device policy.")] = msgspec.field(default_factory=DevicesConfig)
    command: Annotated[CommandConfig, _d("Command policy.")] = msgspec.field(default_factory=CommandConfig)
    ssh: Annotated[SSHConfig, _d("SSH policy.")] = msgspec.field(default_factory=SSHConfig)
    allow_pty: Annotated[bool, _d(
        "Give interactive programs a terminal: Linux relays a PTY when stdin and stdout are terminals; "
        "macOS allows PTY devices.")] = False
    force_new_session: Annotated[bool | None, _d(
        "Linux: always run the command in a new terminal session (bwrap --new-session), even for PTY "
        "sessions.")] = None
    macos: Annotated[MacOSConfig, _d("macOS-only settings.")] = msgspec.field(default_factory=MacOSConfig)
