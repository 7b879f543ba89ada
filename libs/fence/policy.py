"""The policy language: a fence config and its parts as msgspec Structs.

Field names are camelCase on disk (``rename="camel"``) so files written for
the Go tool Fence load unchanged.  Defaults here are the built-in defaults
(docs/compatibility.md#built-in-defaults): no network, read-mostly filesystem, default command deny
list on.  Loading, merging and validation live in ``fence.config``; later
layers only read these objects.

Descriptions: the string under each field is its description in the JSON
Schema (``fence config schema``, ``docs/schema/fence.schema.json``), read from
this file by ``fence.config.schema``.  They are deliberately not
``Annotated[..., msgspec.Meta(description=...)]``: msgspec builds its decoder
for ``Policy`` on first use in every process, and annotated fields made that
~1.5 ms slower on every ``fence run`` (measured; see bench/config).
``SCHEMA_EXTRA`` adds value constraints to the schema for editors; fence
enforces them itself with better messages (``fence.config.validate``).

Conventions the merge rules (``fence.config.merge``) rely on: lists are
``list[...]``, plain switches are ``bool`` (merged with OR), optional
switches are ``bool | None`` (None = unset), numbers are ``int`` (0 =
unset) and strings ``str`` ("" = unset); a size (``tmpSize``) is
``str | int`` ("" = unset).  Every field has a default.
"""

import msgspec


class _Part(msgspec.Struct, rename="camel", omit_defaults=True, forbid_unknown_fields=True):
    """Base of every config section: camelCase keys, unknown keys rejected."""


class NetworkConfig(_Part):
    """Outbound network policy, enforced by fence's filtering HTTP and SOCKS5 proxies."""

    allowed_domains: list[str] = []
    """Domains the sandbox may reach. Empty: all outbound traffic is blocked. Patterns: "example.com" (exact),
    "*.example.com" (any subdomain, not the apex), "localhost", or "*" (everything not denied: relaxed mode).
    No scheme, path or port."""
    denied_domains: list[str] = []
    """Domains always blocked, checked before allowedDomains (same patterns)."""
    allow_unix_sockets: list[str] = []
    """Unix socket paths the sandbox may connect to."""
    allow_all_unix_sockets: bool = False
    """Allow connecting to any Unix socket."""
    allow_local_binding: bool = False
    """Allow binding local ports (a server inside the sandbox)."""
    allow_local_outbound: bool | None = None
    """Allow connections to the host's localhost. Unset: follows allowLocalBinding. On Linux only the ports in
    allowLocalOutboundPorts are reachable."""
    allow_local_outbound_ports: list[int] = []
    """Linux: host loopback ports (1-65535) bridged into the sandbox's localhost."""
    http_proxy_port: int = 0
    """Fixed port of the HTTP proxy; 0 picks a free port."""
    socks_proxy_port: int = 0
    """Fixed port of the SOCKS5 proxy; 0 picks a free port."""
    upstream_proxy: str = ""
    """Upstream HTTP proxy (http://host:port) for traffic matching no rule when defaultAction is "proxy"."""
    default_action: str = ""
    """What happens to traffic matching neither list: "deny" (the default) or "proxy" (forward it to
    upstreamProxy)."""


class FilesystemConfig(_Part):
    """Filesystem policy: what the sandbox may read, execute and write."""

    allow_read: list[str] = []
    """Extra readable paths or globs (~ and relative paths allowed); matters with defaultDenyRead."""
    allow_execute: list[str] = []
    """Paths that may be read and executed but not listed."""
    allow_write: list[str] = []
    """Writable paths or globs (also readable). Default: nothing writable; "." is the working directory."""
    deny_read: list[str] = []
    """Paths never readable; wins over allowRead and the defaults."""
    deny_write: list[str] = []
    """Paths never writable; wins over allowWrite."""
    default_deny_read: bool = False
    """Deny all reads except allowRead, allowWrite and essential system paths."""
    strict_deny_read: bool = False
    """Like defaultDenyRead (which it implies), without the default system read paths."""
    allow_git_config: bool = False
    """Allow access to git configuration (.git/config, ~/.gitconfig, ~/.config/git), protected otherwise."""
    allow_write_protected: list[str] = []
    """Paths that mandatory protection keeps read-only (shell startup files, git hooks and config, agent
    settings such as ~/.claude.json), made writable on purpose: each is named exactly, no globs, and must
    also be in allowWrite. fence's own config files stay protected."""
    allow_agent_config: list[str] = []
    """Tools whose protected agent and editor files stay writable where allowWrite grants them, on purpose:
    "claude", "codex", "copilot", "cursor", "devcontainer", "direnv", "gemini", "jetbrains", "opencode",
    "vscode" (each tool's files are listed in docs/filesystem.md). A sandbox can then plant hooks, MCP servers
    or tasks that the tool runs outside it later. Shell startup files, git and fence's own config stay
    protected."""
    wsl_interop: bool | None = None
    """WSL: let the sandbox start Windows programs (/init). Never granted by fence (true only gets a -d note);
    unset or false, a run that could reach WSL's interop server is refused."""
    tmp_size: str | int = ""
    """Linux: the most the sandbox's private /tmp (a tmpfs) may hold: bytes, "512M" (K, M, G, T: binary
    multiples) or "25%" of RAM. Unset: 25% of RAM."""
    shm_size: str | int = ""
    """Linux: the most the sandbox's private /dev/shm may hold (same forms as tmpSize). Unset: 25% of RAM. With
    devices.mode "host" the host's /dev/shm is used as it is."""


class DevicesConfig(_Part):
    """Linux: which /dev the sandbox sees."""

    mode: str = ""
    """Device view: "minimal" (null, zero, random, tty, ptmx, shm, pts...), "host" (the host's /dev), or "auto"
    (the default: minimal unless the host needs otherwise)."""
    allow: list[str] = []
    """Extra /dev/... paths passed through in minimal mode."""


class CommandConfig(_Part):
    """Command policy: command prefixes blocked before and while the sandbox runs."""

    deny: list[str] = []
    """Command prefixes to block, e.g. "git push" (matches "git push origin main", not "git pushall")."""
    allow: list[str] = []
    """Command prefixes allowed even when a deny rule matches."""
    use_defaults: bool | None = None
    """Include the built-in deny list (shutdown, mkfs, chroot, ...). Unset means true."""
    runtime_exec_policy: str = ""
    """How commands started inside the sandbox are checked: "path" (the default: single-word deny rules mask
    the executable) or "argv" (Linux: every exec is checked against all rules)."""
    accept_shared_binary_cannot_runtime_deny: list[str] = []
    """Denied commands whose binary is shared with others (busybox): skip runtime masking, without a
    warning."""


class SSHConfig(_Part):
    """SSH policy: which hosts and remote commands ``ssh`` may reach."""

    allowed_hosts: list[str] = []
    """Host patterns ssh may connect to ("*" glob anywhere, case-insensitive); no user@, scheme or port."""
    denied_hosts: list[str] = []
    """Host patterns ssh may never connect to (checked first)."""
    allowed_commands: list[str] = []
    """Remote command prefixes allowed."""
    denied_commands: list[str] = []
    """Remote command prefixes denied."""
    allow_all_commands: bool = False
    """Allow every remote command that is not denied (deny-list mode)."""
    inherit_deny: bool = False
    """Also apply command.deny (and the built-in deny list) to remote commands."""


class MachConfig(_Part):
    """macOS: extra Mach services."""

    lookup: list[str] = []
    """Mach services the sandbox may look up: exact names, a trailing "*" prefix, or "*"."""
    register: list[str] = []
    """Mach services the sandbox may register (same patterns)."""


class MacOSConfig(_Part):
    """macOS-only settings."""

    mach: MachConfig = msgspec.field(default_factory=MachConfig)
    """Mach service access."""


class Policy(_Part):
    """A fence configuration (fence.json / fence.jsonc, a --settings file or a built-in template)."""

    schema: str = msgspec.field(default="", name="$schema")
    """JSON Schema of this file, for editors; ignored by fence."""
    extends: str = ""
    """Config to build on: a built-in template name ("code"), "@base" (your user config), or a file path
    (relative to this file). Lists are appended, switches ORed, and values set here win."""
    network: NetworkConfig = msgspec.field(default_factory=NetworkConfig)
    """Network policy."""
    filesystem: FilesystemConfig = msgspec.field(default_factory=FilesystemConfig)
    """Filesystem policy."""
    devices: DevicesConfig = msgspec.field(default_factory=DevicesConfig)
    """Linux device policy."""
    command: CommandConfig = msgspec.field(default_factory=CommandConfig)
    """Command policy."""
    ssh: SSHConfig = msgspec.field(default_factory=SSHConfig)
    """SSH policy."""
    allow_pty: bool = False
    """Give interactive programs a terminal: Linux relays a PTY when stdin and stdout are terminals; macOS
    allows PTY devices."""
    force_new_session: bool | None = None
    """Linux: always run the command in a new terminal session (bwrap --new-session), even for PTY sessions."""
    macos: MacOSConfig = msgspec.field(default_factory=MacOSConfig)
    """macOS-only settings."""


AGENT_TOOLS = (
    "claude",
    "codex",
    "copilot",
    "cursor",
    "devcontainer",
    "direnv",
    "gemini",
    "jetbrains",
    "opencode",
    "vscode",
)
"""The names ``filesystem.allowAgentConfig`` takes: the tools of ``fence.protectednames``' table."""

_ENTRY = {"items": {"type": "string", "minLength": 1}}
_PORT = {"minimum": 0, "maximum": 65535}
_SIZE = {"pattern": r"^$|^\s*([0-9]+[KMGTkmgt]?|([0-9]+(\.[0-9]*)?|\.[0-9]+)%)\s*$", "minimum": 0}

SCHEMA_EXTRA: dict[str, dict] = {
    "NetworkConfig.allowedDomains": _ENTRY,
    "NetworkConfig.deniedDomains": _ENTRY,
    "NetworkConfig.allowUnixSockets": _ENTRY,
    "NetworkConfig.allowLocalOutboundPorts": {"items": {"type": "integer", "minimum": 1, "maximum": 65535}},
    "NetworkConfig.httpProxyPort": _PORT,
    "NetworkConfig.socksProxyPort": _PORT,
    "NetworkConfig.upstreamProxy": {"pattern": "^$|^[hH][tT][tT][pP]://[^/]"},
    "NetworkConfig.defaultAction": {"enum": ["", "deny", "proxy"]},
    "FilesystemConfig.allowRead": _ENTRY,
    "FilesystemConfig.allowExecute": _ENTRY,
    "FilesystemConfig.allowWrite": _ENTRY,
    "FilesystemConfig.denyRead": _ENTRY,
    "FilesystemConfig.denyWrite": _ENTRY,
    "FilesystemConfig.allowAgentConfig": {"items": {"type": "string", "enum": list(AGENT_TOOLS)}},
    "FilesystemConfig.tmpSize": _SIZE,
    "FilesystemConfig.shmSize": _SIZE,
    "DevicesConfig.mode": {"enum": ["", "auto", "minimal", "host"]},
    "DevicesConfig.allow": {"items": {"type": "string", "pattern": "^/dev/."}},
    "CommandConfig.deny": _ENTRY,
    "CommandConfig.allow": _ENTRY,
    "CommandConfig.runtimeExecPolicy": {"enum": ["", "path", "argv"]},
    "CommandConfig.acceptSharedBinaryCannotRuntimeDeny": _ENTRY,
    "SSHConfig.allowedHosts": _ENTRY,
    "SSHConfig.deniedHosts": _ENTRY,
    "SSHConfig.allowedCommands": _ENTRY,
    "SSHConfig.deniedCommands": _ENTRY,
    "MachConfig.lookup": {"items": {"type": "string", "pattern": r"^(\*|[^*]+\*?)$"}},
    "MachConfig.register": {"items": {"type": "string", "pattern": r"^(\*|[^*]+\*?)$"}},
}
"""Schema-only constraints, by ``Class.jsonName`` (merged into the generated schema)."""
