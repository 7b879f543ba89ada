"""The policy language: a fence config and its parts as msgspec Structs.

Field names are camelCase on disk (``rename="camel"``) so files written for
the Go tool Fence load unchanged.  Defaults here are the built-in defaults
(reference §2.10): no network, read-mostly filesystem, default command deny
list on.  Loading, merging and validation live in ``fence.config``; later
layers only read these objects.
"""

from __future__ import annotations

import msgspec


class _Part(msgspec.Struct, rename="camel", omit_defaults=True, forbid_unknown_fields=True):
    """Base of every config section: camelCase keys, unknown keys rejected."""


class NetworkConfig(_Part):
    allowed_domains: list[str] = []
    denied_domains: list[str] = []
    allow_unix_sockets: list[str] = []
    allow_all_unix_sockets: bool = False
    allow_local_binding: bool = False
    allow_local_outbound: bool | None = None
    allow_local_outbound_ports: list[int] = []
    http_proxy_port: int = 0
    socks_proxy_port: int = 0
    upstream_proxy: str = ""
    default_action: str = ""


class FilesystemConfig(_Part):
    allow_read: list[str] = []
    allow_execute: list[str] = []
    allow_write: list[str] = []
    deny_read: list[str] = []
    deny_write: list[str] = []
    default_deny_read: bool = False
    strict_deny_read: bool = False
    allow_git_config: bool = False
    wsl_interop: bool | None = None


class DevicesConfig(_Part):
    mode: str = ""
    allow: list[str] = []


class CommandConfig(_Part):
    deny: list[str] = []
    allow: list[str] = []
    use_defaults: bool | None = None
    runtime_exec_policy: str = ""
    accept_shared_binary_cannot_runtime_deny: list[str] = []


class SSHConfig(_Part):
    allowed_hosts: list[str] = []
    denied_hosts: list[str] = []
    allowed_commands: list[str] = []
    denied_commands: list[str] = []
    allow_all_commands: bool = False
    inherit_deny: bool = False


class MachConfig(_Part):
    lookup: list[str] = []
    register: list[str] = []


class MacOSConfig(_Part):
    mach: MachConfig = msgspec.field(default_factory=MachConfig)


class Policy(_Part):
    """A whole fence config, as written in ``fence.json(c)`` or a template."""

    schema: str = msgspec.field(default="", name="$schema")
    extends: str = ""
    network: NetworkConfig = msgspec.field(default_factory=NetworkConfig)
    filesystem: FilesystemConfig = msgspec.field(default_factory=FilesystemConfig)
    devices: DevicesConfig = msgspec.field(default_factory=DevicesConfig)
    command: CommandConfig = msgspec.field(default_factory=CommandConfig)
    ssh: SSHConfig = msgspec.field(default_factory=SSHConfig)
    allow_pty: bool = False
    force_new_session: bool | None = None
    macos: MacOSConfig = msgspec.field(default_factory=MacOSConfig)
