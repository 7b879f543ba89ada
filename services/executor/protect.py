"""Mandatory protection: the paths no config can make writable (reference §4.4, and more).

A sandbox that can write a shell startup file, a git hook, an editor's task
file or fence's own config gets code run *outside* the sandbox later.  These
paths are found here (host side, bounded in time and entries) and handed to
the planner, which mounts them read-only after every writable bind.

Only paths under something writable matter: a path on the read-only root is
already protected, so a policy with nothing writable costs nothing here.

What a mount cannot do is protect a name that does not exist yet (bwrap
needs a mount point, and making one would litter the host).  Those names are
the *watch list*: after the sandbox has ended (its PID namespace is gone, so
nothing inside can race us) any of them that appeared is moved aside to
``NAME.fence-quarantine-<sandbox>`` with a warning, so nothing a sandbox
creates there is ever used by a later run or by the user's tools.
"""

from __future__ import annotations

import os
import time

DANGEROUS_FILES = (".gitconfig", ".gitmodules", ".bashrc", ".bash_profile", ".zshrc", ".zprofile", ".profile",
                   ".ripgreprc", ".mcp.json")
DANGEROUS_DIRS = (".vscode", ".idea", ".claude/commands", ".claude/agents")
FENCE_CONFIG_NAMES = ("fence.jsonc", "fence.json")
GIT_DIR_FILES = ("config", "commondir", "config.worktree")
"""Files in a git dir that decide what git runs: config (hooksPath, fsmonitor, filters), and the
files that point git at another config (commondir; config.worktree with worktreeConfig)."""

MAX_DEPTH = 4
MAX_ENTRIES = 5000
MAX_SECONDS = 0.05
SKIP_DIRS = frozenset({"node_modules", ".git", "__pycache__", ".venv", "venv", "target", "dist", "build"})
"""Directories the nested-project walk does not enter (huge, and not project roots)."""


class Protection:
    """What to mount read-only, which git dirs to pin in place, and what to watch for creation."""

    __slots__ = ("readonly", "pinned", "watch", "links", "truncated")

    def __init__(self) -> None:
        self.readonly: list[str] = []
        """Existing canonical paths to mount read-only (files and directories)."""
        self.pinned: list[str] = []
        """Existing ``.git`` directories, bound onto themselves so they cannot be renamed or removed."""
        self.watch: list[str] = []
        """Protected names that do not exist yet: quarantined after the run if they appear."""
        self.links: list[tuple[str, str]] = []
        """(path, target): protected names that are symlinks in a writable directory (a dotfile manager's
        ``~/.bashrc -> dotfiles/bashrc``).  The target is protected like any file, but the link itself
        could be replaced: after the run anything else found there is moved aside and the link restored."""
        self.truncated = False


def protected_paths(writable: list[str], cwd: str, home: str, config_dir: str, config_sources: list[str] = (),
                    allow_git_config: bool = False) -> Protection:
    """Everything under a writable path that must stay read-only.

    ``writable`` are the canonical writable roots (allowWrite after
    expansion).  Candidates are the working directory and the directories
    nested in it (a bounded walk), the home directory, the top of every
    writable root, every git dir found (hooks, config, submodules, worktrees,
    ``core.hooksPath``) and fence's own config files (project files from
    ``cwd`` up, the user config directory, every file the resolved config
    came from).
    """
    out = Protection()
    if not writable:
        return out
    roots = [os.path.join(w, "") for w in writable]

    def under_writable(path: str) -> bool:
        return any(path.startswith(r) or path + "/" == r for r in roots)

    seen: set[str] = set()

    def protect(path: str, watch_if_missing: bool = True) -> None:
        real = os.path.realpath(path)
        if real in seen:
            return
        seen.add(real)
        if os.path.lexists(path):
            if os.path.exists(real) and under_writable(real):
                out.readonly.append(real)
            if os.path.islink(path):
                link = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
                if under_writable(link):
                    try:
                        out.links.append((link, os.readlink(path)))
                    except OSError:
                        pass
        elif watch_if_missing and under_writable(real):
            out.watch.append(real)

    for name in DANGEROUS_FILES:
        protect(os.path.join(home, name))
    for directory in _fence_config_dirs(cwd):
        for name in FENCE_CONFIG_NAMES:
            protect(os.path.join(directory, name))
    protect(config_dir)
    for source in config_sources:
        if source.startswith("/"):
            protect(source, watch_if_missing=False)

    # Project directories: the working directory and what is nested in it (a
    # bounded walk, when it is writable), the home directory, and the top of
    # every writable root.  Each directory is listed once and only the names
    # present are looked at, so big writable trees (/tmp, caches) cost one
    # listing, not a walk.
    deadline = time.monotonic() + MAX_SECONDS
    budget = [MAX_ENTRIES]
    listings: dict[str, set[str]] = {}
    if under_writable(cwd) or any(w.startswith(cwd + "/") for w in writable):
        for directory, names in _walk(cwd, deadline, budget, out):
            listings[directory] = names
    for directory in [home] + [w for w in writable if os.path.isdir(w)]:
        if directory not in listings:
            listings[directory] = _names(directory)
    for project, names in listings.items():
        # missing names are watched where tools look for them: the working directory, the home
        # directory's dotfiles, and every nested repository root (an editor or agent opens those)
        watch_all = project == cwd or ".git" in names
        for name in DANGEROUS_FILES + DANGEROUS_DIRS:
            first = name.split("/", 1)[0]
            if first in names:
                protect(os.path.join(project, name))
            elif watch_all or (project == home and name in DANGEROUS_FILES):
                protect(os.path.join(project, name))  # missing: watched when writable
        if ".git" in names or project == cwd:
            _protect_git(os.path.join(project, ".git"), project, protect, out, allow_git_config, home)
    return out


def _names(directory: str) -> set[str]:
    try:
        return set(os.listdir(directory))
    except OSError:
        return set()


def _fence_config_dirs(cwd: str) -> list[str]:
    """``cwd`` and each parent: where project config discovery looks."""
    dirs, d = [], cwd
    while True:
        dirs.append(d)
        parent = os.path.dirname(d)
        if parent == d:
            return dirs
        d = parent


def _walk(root: str, deadline: float, budget: list[int], out: Protection):
    """(directory, names in it) from ``root`` down to ``MAX_DEPTH``, breadth first, within the bounds."""
    level = [root]
    for _ in range(MAX_DEPTH + 1):
        nxt = []
        for base in level:
            names: set[str] = set()
            try:
                with os.scandir(base) as it:
                    for entry in it:
                        budget[0] -= 1
                        if budget[0] <= 0 or time.monotonic() > deadline:
                            out.truncated = True
                            yield base, names
                            return
                        names.add(entry.name)
                        if entry.name not in SKIP_DIRS and entry.is_dir(follow_symlinks=False):
                            nxt.append(entry.path)
            except OSError:
                continue
            yield base, names
        level = nxt


def _protect_git(dot_git: str, worktree: str, protect, out: Protection, allow_git_config: bool, home: str) -> None:
    """A repository's hooks and config, wherever its git dir really is (worktrees, submodules)."""
    git_dir = dot_git
    if not os.path.lexists(dot_git):  # a repository the sandbox may create: its hooks are watched
        protect(os.path.join(dot_git, "hooks"))
        return
    if os.path.isfile(dot_git):  # a worktree or submodule: "gitdir: PATH"
        protect(dot_git)  # so it cannot be pointed elsewhere
        git_dir = _read_gitdir_file(dot_git)
        if not git_dir:
            return
    elif os.path.isdir(dot_git):
        real = os.path.realpath(dot_git)
        if real not in out.pinned:
            out.pinned.append(real)
    common = git_dir
    commondir_file = os.path.join(git_dir, "commondir")
    if os.path.isfile(commondir_file):
        common = _read_relative(commondir_file, git_dir) or git_dir
    for gd in dict.fromkeys((git_dir, common)):
        protect(os.path.join(gd, "hooks"))
        for name in GIT_DIR_FILES:
            if name == "config" and allow_git_config:
                continue
            protect(os.path.join(gd, name))
        hooks_path = _hooks_path(os.path.join(gd, "config"))
        if hooks_path:
            hooks_path = os.path.join(home, hooks_path[2:]) if hooks_path.startswith("~/") else hooks_path
            protect(os.path.join(worktree, hooks_path), watch_if_missing=False)
        modules = os.path.join(gd, "modules")
        if os.path.isdir(modules):  # submodules' git dirs, nested to any depth (bounded)
            for sub in _module_dirs(modules):
                protect(os.path.join(sub, "hooks"))
                if not allow_git_config:
                    protect(os.path.join(sub, "config"))


def _module_dirs(modules: str, limit: int = 200):
    found = 0
    for root, dirs, files in os.walk(modules):
        if "HEAD" in files and ("objects" in dirs or "config" in files):
            yield root
            found += 1
            if found >= limit:
                return
        dirs[:] = [d for d in dirs if d not in ("objects", "refs", "logs", "hooks", "info")]


def _read_gitdir_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            line = f.read(4096).strip()
    except OSError:
        return ""
    if not line.startswith("gitdir:"):
        return ""
    target = line[len("gitdir:"):].strip()
    return os.path.normpath(os.path.join(os.path.dirname(path), target))


def _read_relative(path: str, base: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            target = f.read(4096).strip()
    except OSError:
        return ""
    return os.path.normpath(os.path.join(base, target)) if target else ""


def _hooks_path(config: str) -> str:
    """``core.hooksPath`` from one git config file (a small reader: sections, keys, quotes)."""
    try:
        with open(config, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return ""
    section, value = "", ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line[1:line.find("]")].strip().lower() if "]" in line else ""
            continue
        if section == "core" and "=" in line:
            key, _, val = line.partition("=")
            if key.strip().lower() == "hookspath":
                value = val.strip().strip('"')
    return value


def restore_links(links: list[tuple[str, str]], sandbox: str) -> list[tuple[str, str, str]]:
    """Protected symlinks the sandbox replaced: what is there now is moved aside, the link put back.

    Returns (path, where the replacement went, error) for each one touched.
    """
    touched = []
    for path, target in links:
        try:
            if os.readlink(path) == target:
                continue
        except OSError:
            pass
        moved = quarantine([path], sandbox) if os.path.lexists(path) else [(path, "", "")]
        _, where, error = moved[0]
        if not error:
            try:
                os.symlink(target, path)
            except OSError as e:
                error = f"link not restored: {e.strerror}"
        touched.append((path, where, error))
    return touched


def quarantine(watch: list[str], sandbox: str) -> list[tuple[str, str, str]]:
    """Move aside every watched path that now exists; returns (path, new path, error) for each.

    Runs after the sandbox ended.  A rename in the same directory cannot fail
    for space and keeps the content for the user to inspect.
    """
    moved = []
    for path in watch:
        if os.path.basename(path) == "hooks" and os.path.isdir(path) and not os.path.islink(path):
            # a new hooks directory (``git init`` makes one): only real hooks go, samples stay
            try:
                names = sorted(n for n in os.listdir(path) if not n.endswith(".sample"))
            except OSError:
                names = []
            moved += quarantine([os.path.join(path, n) for n in names], sandbox)
        elif os.path.lexists(path):
            target = f"{path}.fence-quarantine-{sandbox}"
            try:
                os.rename(path, target)
            except OSError as e:
                moved.append((path, "", e.strerror))
            else:
                moved.append((path, target, ""))
    return moved
