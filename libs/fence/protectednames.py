"""The names that run code on the host later: one table, one reason a row (docs/filesystem.md#protected-names).

A sandbox that can write a shell startup file, an agent's hooks or an
editor's task file gets its code run *outside* the sandbox later: by the
user's next shell, the next Claude Code session, the next time VS Code opens
the folder.  Each row names such a path relative to a directory, where it is
looked for, what stands in for it while it is missing, and which tool reads
it.  The executor keeps every row read-only inside each writable tree
(``fence.executor.protect``); the config service checks that
``filesystem.allowAgentConfig`` names only tools of this table.

The list is the union of the Go tool Fence's mandatory protections and
Anthropic's sandbox-runtime (srt) dangerous files (shell startup files,
``.gitconfig``, ``.gitmodules``, ``.ripgreprc``, ``.mcp.json``, ``.vscode``,
``.idea``, ``.claude/commands``, ``.claude/agents``, ``.claude/settings.json``,
``.claude/settings.local.json``) with the agent and editor files of issue 15
and the home-directory files fence protected already.

Pure data, no I/O: imported by every run that writes anywhere.
"""

from __future__ import annotations

PROJECT = "project"
"""Looked for in the working directory, every project directory nested in it and the top of every writable
root, never in the home directory (where the same name is often the tool's own state, ``~/.cursor``)."""
HOME = "home"
"""Looked for in the home directory only (``.config/`` and ``.local/share/`` rows under the XDG directories
too)."""
BOTH = "both"
"""Looked for in project directories and in the home directory."""

DIR = b"/"
"""Placeholder: an empty directory (any other placeholder is a file's content; ``None``: watched instead).

Each reserved name costs every run that can write there a directory or file made, a bind mount
and a removal (about 0.4 ms together), so a row has a placeholder where a tool reads the name by
itself, live (settings, MCP and hook configs, a project's editor directory); a directory whose
entries run only when the user invokes them or a protected settings file names them (Claude
Code's commands, agents, skills, hooks, plugins; Codex rules; Gemini commands and extensions)
is watched instead."""
EMPTY = b""
JSON = b"{}\n"


class Name:
    """One protected name: the path, where it is looked for, its placeholder while missing, tool, reason."""

    __slots__ = ("path", "where", "placeholder", "tool", "why")

    def __init__(self, path: str, where: str, placeholder: bytes | None, tool: str, why: str):
        self.path, self.where, self.placeholder, self.tool, self.why = path, where, placeholder, tool, why

    def __repr__(self) -> str:
        return f"Name({self.path!r})"


PROTECTED_NAMES: tuple[Name, ...] = (
    # shells and git (Fence and srt): no tool switch opens them, only filesystem.allowWriteProtected
    Name(".gitconfig", BOTH, None, "", "git runs the aliases, pager, fsmonitor and hooks directory it names"),
    Name(".gitmodules", BOTH, None, "", "git submodule clones the URLs it lists and runs update = !command"),
    Name(".bashrc", BOTH, None, "", "bash runs it at every interactive start"),
    Name(".bash_profile", BOTH, None, "", "bash login shells run it"),
    Name(".zshrc", BOTH, None, "", "zsh runs it at every interactive start"),
    Name(".zprofile", BOTH, None, "", "zsh login shells run it"),
    Name(".profile", BOTH, None, "", "sh and bash login shells run it"),
    Name(
        ".ripgreprc",
        BOTH,
        None,
        "",
        "ripgrep takes flags from it (RIPGREP_CONFIG_PATH); --pre runs a program on every file searched",
    ),
    Name(".zshenv", HOME, EMPTY, "", "zsh reads it at every start, scripts included"),
    Name(".zlogin", HOME, EMPTY, "", "zsh login shells run it"),
    Name(".bash_login", HOME, None, "", "bash login shells run it when .bash_profile is missing"),
    Name(".bash_logout", HOME, EMPTY, "", "bash login shells run it on exit"),
    Name(".config/fish", HOME, DIR, "", "fish runs config.fish, conf.d/ and functions/ at every start"),
    Name(".config/git/config", HOME, EMPTY, "", "git runs core.fsmonitor, core.pager, aliases and filters from it"),
    Name(
        ".config/git/attributes", HOME, EMPTY, "", "selects the filter and diff drivers git runs on checkout and diff"
    ),
    # the desktop session and systemd
    Name(".config/systemd/user", HOME, DIR, "", "systemd --user starts these units at login and on timers"),
    Name(".config/autostart", HOME, DIR, "", "the desktop session starts these entries at login"),
    Name(
        ".config/environment.d",
        HOME,
        DIR,
        "",
        "systemd --user puts these variables (LD_PRELOAD, PATH) in every service",
    ),
    Name(
        ".local/share/applications", HOME, DIR, "", "desktop entries whose Exec= runs when a file type or URL is opened"
    ),
    # ssh and package managers
    Name(".ssh/config", HOME, EMPTY, "", "ssh runs its ProxyCommand, LocalCommand and Match exec"),
    Name(".ssh/authorized_keys", HOME, EMPTY, "", "lets a key log in, with the command= it names"),
    Name(".ssh/rc", HOME, None, "", "sshd runs it at every login"),
    Name(".npmrc", HOME, EMPTY, "", "npm runs script-shell, node-options and the registry it names"),
    Name(".pypirc", HOME, EMPTY, "", "where twine uploads, with which credentials"),
    Name(".config/pip/pip.conf", HOME, EMPTY, "", "pip installs from the index it names"),
    Name(".pip/pip.conf", HOME, EMPTY, "", "pip installs from the index it names (legacy location)"),
    # Claude Code
    Name(".mcp.json", BOTH, None, "claude", "Claude Code starts the MCP servers a project lists in it"),
    Name(
        ".claude/settings.json",
        BOTH,
        JSON,
        "claude",
        "Claude Code runs its hooks, apiKeyHelper and statusLine commands",
    ),
    Name(
        ".claude/settings.local.json",
        BOTH,
        JSON,
        "claude",
        "the same for one machine, and the commands a user let run without asking",
    ),
    Name(".claude/commands", BOTH, None, "claude", "slash commands: prompts whose !-lines Claude Code runs"),
    Name(".claude/agents", BOTH, None, "claude", "subagents: prompts with the tools and hooks they run with"),
    Name(".claude/skills", BOTH, None, "claude", "skills: instructions and the scripts Claude Code runs for them"),
    Name(".claude/hooks", BOTH, None, "claude", "where the hook scripts settings.json runs are kept by convention"),
    Name(
        ".claude/plugins",
        HOME,
        None,
        "claude",
        "installed plugins: their hooks, MCP servers and commands run in every session",
    ),
    Name(".claude.json", HOME, None, "claude", "Claude Code starts the mcpServers listed in it"),
    # Codex
    Name(
        ".codex",
        PROJECT,
        DIR,
        "codex",
        "a trusted project's config.toml (MCP servers, notify) and rules/ (commands run without asking)",
    ),
    Name(
        ".codex/config.toml", HOME, EMPTY, "codex", "Codex starts its mcp_servers and runs the notify program it names"
    ),
    Name(".codex/rules", HOME, None, "codex", "execution policy: the commands Codex runs without asking"),
    # Cursor
    Name(
        ".cursor",
        PROJECT,
        DIR,
        "cursor",
        "project rules, MCP servers (mcp.json), hooks (hooks.json), the background agent's environment.json",
    ),
    Name(".cursor/mcp.json", HOME, JSON, "cursor", "Cursor starts the MCP servers listed in it"),
    Name(".cursor/hooks.json", HOME, JSON, "cursor", "Cursor's agent runs the hook commands listed in it"),
    Name(
        ".config/Cursor/User/settings.json", HOME, JSON, "cursor", "Cursor's user settings: terminal profiles and env"
    ),
    Name(".config/Cursor/User/tasks.json", HOME, JSON, "cursor", "Cursor's user tasks, offered in every workspace"),
    # Gemini CLI
    Name(
        ".gemini",
        PROJECT,
        DIR,
        "gemini",
        "workspace settings.json (MCP servers, hooks, tool discovery), commands, extensions",
    ),
    Name(
        ".gemini/settings.json",
        HOME,
        JSON,
        "gemini",
        "Gemini CLI starts its mcpServers and runs its hooks and toolDiscoveryCommand",
    ),
    Name(".gemini/commands", HOME, None, "gemini", "custom commands whose !{...} parts run in the shell"),
    Name(".gemini/extensions", HOME, None, "gemini", "installed extensions: their MCP servers and commands"),
    # GitHub Copilot
    Name(".github/hooks", PROJECT, DIR, "copilot", "Copilot's coding agent and CLI run the hook commands defined here"),
    Name(".copilot/mcp-config.json", HOME, JSON, "copilot", "Copilot CLI starts the MCP servers listed in it"),
    # opencode
    Name("opencode.json", PROJECT, None, "opencode", "opencode starts the MCP servers and loads the plugins it names"),
    Name("opencode.jsonc", PROJECT, None, "opencode", "the same, with comments"),
    Name(".opencode", PROJECT, DIR, "opencode", "opencode runs the plugins (JavaScript) and commands in it"),
    Name(".config/opencode", HOME, DIR, "opencode", "opencode's global config, plugins and commands"),
    # VS Code
    Name(
        ".vscode",
        BOTH,
        DIR,
        "vscode",
        "tasks.json (run on folder open), settings.json (terminal, interpreters), launch.json, mcp.json; "
        "in the home directory the extensions VS Code runs",
    ),
    Name(
        ".config/Code/User/settings.json",
        HOME,
        JSON,
        "vscode",
        "user settings of every workspace: terminal profiles and env, interpreters, automatic tasks",
    ),
    Name(".config/Code/User/tasks.json", HOME, JSON, "vscode", "user tasks, offered in every workspace"),
    Name(".config/Code/User/mcp.json", HOME, JSON, "vscode", "VS Code starts the MCP servers listed in it"),
    # JetBrains IDEs
    Name(
        ".idea", BOTH, DIR, "jetbrains", "run configurations, external tools and file watchers: commands the IDE runs"
    ),
    # direnv
    Name(".envrc", BOTH, None, "direnv", "direnv runs it in the user's shell on cd (in ~: for every directory below)"),
    Name(
        ".config/direnv", HOME, DIR, "direnv", "direnvrc runs before every .envrc; direnv.toml can allow them unasked"
    ),
    Name(".local/share/direnv/allow", HOME, DIR, "direnv", "the .envrc files direnv runs without asking"),
    # Dev Containers
    Name(
        ".devcontainer",
        PROJECT,
        DIR,
        "devcontainer",
        "devcontainer.json: initializeCommand runs on the host; the image and features it names are built and run",
    ),
    Name(".devcontainer.json", PROJECT, None, "devcontainer", "the same, as one file"),
)
"""Every protected name (fence's own config and the git repositories are found separately, by ``protect``)."""

TOOL_NAMES = {
    "claude": "Claude Code",
    "codex": "Codex",
    "copilot": "GitHub Copilot",
    "cursor": "Cursor",
    "devcontainer": "Dev Containers",
    "direnv": "direnv",
    "gemini": "Gemini CLI",
    "jetbrains": "JetBrains IDEs",
    "opencode": "opencode",
    "vscode": "VS Code",
}
"""The tools ``filesystem.allowAgentConfig`` takes (``fence.policy.AGENT_TOOLS``), as messages name them."""
