"""Mandatory protection: the paths no config can make writable (docs/compatibility.md#mandatory-protections, and more).

A sandbox that can write a shell startup file, a git hook, an agent's hooks,
an editor's task file or fence's own config gets code run *outside* the
sandbox later.  These paths are found here (host side, bounded in time and
entries) and handed to the planner, which mounts them read-only after every
writable bind.  The names are one table, ``fence.protectednames``; the git
repositories and fence's own config are found here.

Only paths under something writable matter: a path on the read-only root is
already protected, so a policy with nothing writable costs nothing here.

A mount cannot protect a name that does not exist yet (bwrap needs a mount
point).  Such a name is *reserved* where an empty placeholder is inert and
leaves nothing behind that another tool would pick up (``reserve.py``:
created right before launch, bound read-only, removed after the run): in the
home directory each row's placeholder (an empty file, ``{}``, an empty
directory; for a missing parent the outermost missing directory, empty); in
the working directory only an empty *directory* whose parent exists (a
placeholder file there is what the next ``git add -A`` commits).  Every other
missing name is *watched*: after the sandbox has ended (its PID namespace is
gone, so nothing inside can race us) any of them that appeared is moved aside
to ``NAME.fence-quarantine-<sandbox>`` with a warning, so nothing a sandbox
creates there is ever used by a later run or by the user's tools.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Mapping, Sequence

from fence.executor.reserve import DIR, Placeholder, Reservation, live_entries
from fence.protectednames import HOME, PROJECT, PROTECTED_NAMES, TOOL_NAMES

XDG_BASES = ((".config/", "XDG_CONFIG_HOME"), (".local/share/", "XDG_DATA_HOME"))

FENCE_CONFIG_NAMES = ("fence.jsonc", "fence.json")
GIT_DIR_FILES = ("config", "commondir", "config.worktree")
"""Files in a git dir that decide what git runs: config (hooksPath, fsmonitor, filters), and the
files that point git at another config (commondir; config.worktree with worktreeConfig)."""
MAX_INCLUDE_DEPTH = 5
"""How deep git config ``include.path`` chains are followed (git itself stops at 10)."""

MAX_DEPTH = 4
MAX_ENTRIES = 5000
MAX_SECONDS = 0.05
SKIP_DIRS = frozenset({"node_modules", ".git", "__pycache__", ".venv", "venv", "target", "dist", "build"})
"""Directories the nested-project walk does not enter (huge, and not project roots)."""


class Protection:
    """What to mount read-only, which directories to pin in place, and what to watch for creation."""

    __slots__ = ("readonly", "pinned", "watch", "links", "opened", "placeholders", "reservation", "truncated")

    def __init__(self) -> None:
        self.readonly: list[str] = []
        """Existing canonical paths to mount read-only (files and directories)."""
        self.pinned: list[str] = []
        """Existing directories under a writable root, bound onto themselves so they cannot be renamed or
        removed: every ``.git``, and every directory between a writable root and a protected path (else
        ``mv ~/.config/git elsewhere`` would carry the read-only file away and leave the name free)."""
        self.watch: list[str] = []
        """Protected names that do not exist yet: quarantined after the run if they appear."""
        self.links: list[tuple[str, str]] = []
        """(path, target): protected names that are symlinks in a writable directory (a dotfile manager's
        ``~/.bashrc -> dotfiles/bashrc``).  The target is protected like any file, but the link itself
        could be replaced: after the run anything else found there is moved aside and the link restored."""
        self.opened: list[str] = []
        """Protected paths left writable because ``filesystem.allowWriteProtected`` names them (the names
        of the tools ``filesystem.allowAgentConfig`` opens are not looked for at all)."""
        self.placeholders: list[Placeholder] = []
        """Protected names reserved under a writable root, each in ``readonly`` (their parents in
        ``pinned``): ``reserve`` creates those missing right before launch, ``release`` removes them."""
        self.reservation: Reservation | None = None
        self.truncated = False

    def reserve(self) -> list[str]:
        """Create the missing placeholders (right before launch); warnings for those that could not be made.

        A placeholder that cannot be made (no permission, no space, no runtime
        directory) leaves its path watched instead: the weaker, after-the-run
        protection, said on stderr by the caller.  A symlink in the way raises
        ``PathSwapped``: someone is racing the run, which must not start.
        """
        if not self.placeholders:
            return []
        try:
            self.reservation = Reservation()
            failed = self.reservation.make(self.placeholders)
        except OSError as e:
            why = f"fence's runtime directory: {e.strerror or e}"
            failed = {ph.path: why for ph in self.placeholders if not os.path.lexists(ph.path)}
        unreserved: dict[str, list[str]] = {}  # why -> paths, so one cause is one line
        for path, why in failed.items():
            unreserved.setdefault(why, []).append(path)
            self.readonly.remove(path)
            if path not in self.watch:
                self.watch.append(path)
        self.pinned = [p for p in self.pinned if os.path.isdir(p)]
        return [
            f"cannot reserve protected {'paths' if len(paths) > 1 else 'path'} {', '.join(paths)} ({why}): "
            "watched instead, and quarantined after the run if the sandbox creates them"
            for why, paths in unreserved.items()
        ]

    def release(self) -> None:
        """After the run: the last run of this user out removes every placeholder still as it was made."""
        if self.reservation is not None:
            self.reservation.close()
            self.reservation = None


def protected_paths(
    writable: list[str],
    cwd: str,
    home: str,
    config_dir: str,
    config_sources: Sequence[str] = (),
    allow_git_config: bool = False,
    env: Mapping[str, str] | None = None,
    opened: Sequence[str] = (),
    open_tools: Collection[str] = (),
) -> Protection:
    """Everything under a writable path that must stay read-only.

    ``writable`` are the canonical writable roots (allowWrite after
    expansion).  Candidates are the names of ``PROTECTED_NAMES`` in the
    working directory and the directories nested in it (a bounded walk),
    in the home directory and at the top of every writable root, every git
    dir found (hooks, config, submodules, worktrees, ``core.hooksPath``,
    included config files, the global git config's hooks directory) and
    fence's own config files (project files from ``cwd`` up, the user
    config directory, every file the resolved config came from).
    ``opened`` are canonical paths the user made writable on purpose
    (``filesystem.allowWriteProtected``): protections at or under them are
    skipped, except fence's own config, which no setting opens.
    ``open_tools`` (``filesystem.allowAgentConfig``) drops the table's rows
    of those tools.
    """
    out = Protection()
    if not writable:
        return out
    env = env or {}
    roots = sorted(writable, key=len, reverse=True)  # deepest first: the root a path is bound under

    def root_of(path: str) -> str | None:
        for root in roots:
            if path == root or root == "/" or path.startswith(root + "/"):
                return root
        return None

    seen: set[str] = set()
    pinned: set[str] = set()
    reserved: set[str] = set()
    linked: set[str] = set()
    checked: set[str] = set()  # parents of table rows already checked for being symlinks

    def pin_parents(real: str, root: str) -> None:
        """Existing directories strictly between ``root`` (a mount point already) and ``real``."""
        if real == root:
            return
        parent = os.path.dirname(real)
        while parent != root and parent != "/" and parent not in pinned:
            if os.path.isdir(parent) and not os.path.islink(parent):
                pinned.add(parent)
            parent = os.path.dirname(parent)

    def pin_git_dir(real: str) -> None:
        """A repository bound onto itself; a pin is a writable bind of the host directory, so only where
        the tree is writable already."""
        if root_of(real) is not None:
            pinned.add(real)

    def keep_link(path: str) -> None:
        """A symlink standing for a protected name or one of its parents, in a writable directory (a
        dotfile manager's ``~/.bashrc -> dotfiles/bashrc``, a project's ``.claude -> ../shared``): what
        it leads to is protected, but the link could be replaced by a file or a directory of the
        sandbox's own, so it is recorded and restored after the run."""
        link = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if link not in linked and root_of(link) is not None:
            linked.add(link)
            try:
                out.links.append((link, os.readlink(path)))
            except OSError:
                pass

    def protect(
        path: str,
        watch_if_missing: bool = True,
        openable: bool = True,
        placeholder: bytes | None = None,
        base: str = "",
        watch_reserved: bool = False,
    ) -> None:
        if base:  # a table row under ``base``: a symlinked parent must stay the link it is
            parent = base
            for part in path[len(base) :].lstrip("/").split("/")[:-1]:
                parent = os.path.join(parent, part)
                if parent in checked:
                    continue
                checked.add(parent)
                if os.path.islink(parent):
                    keep_link(parent)
                    break
        real = os.path.realpath(path)
        if real in seen:
            return
        seen.add(real)
        root = root_of(real)
        if root is None:
            return  # on the read-only root already
        if openable and any(real == o or real.startswith(o + "/") for o in opened):
            out.opened.append(real)
            return
        if placeholder is not None and real != root and not os.path.islink(path):
            # existing or not (a concurrent run may remove its placeholder before this one starts); a
            # missing parent is reserved instead, as an empty directory: one mount, nothing to pin
            target, content = real, placeholder
            while os.path.dirname(target) != root and not os.path.lexists(os.path.dirname(target)):
                target, content = os.path.dirname(target), DIR
            if target not in reserved:
                reserved.add(target)
                out.placeholders.append(Placeholder(target, root, content))
                out.readonly.append(target)
                pin_parents(target, root)
                if watch_reserved and not os.path.lexists(target):
                    out.watch.append(target)  # what another process puts in it during the run goes aside
        elif os.path.lexists(path):
            if os.path.exists(real):
                out.readonly.append(real)
                pin_parents(real, root)
            if os.path.islink(path):
                keep_link(path)
        elif watch_if_missing:
            out.watch.append(real)

    rows = [n for n in PROTECTED_NAMES if not (n.tool and n.tool in open_tools)]
    for row in rows:
        if row.where != PROJECT:
            for base, rel in _home_bases(row.path, home, env):
                protect(os.path.join(base, rel), placeholder=row.placeholder, base=base)
    project_rows = [n for n in rows if n.where != HOME]
    for directory in _project_config_dirs(cwd):
        for name in FENCE_CONFIG_NAMES:
            protect(os.path.join(directory, name), openable=False)
    protect(config_dir, openable=False)
    for source in config_sources:
        if source.startswith("/"):
            protect(source, watch_if_missing=False, openable=False)
    global_hooks = _global_git_config(home, env, protect)

    # Project directories: the working directory and what is nested in it (a
    # bounded walk, when it is writable), the home directory, and the top of
    # every writable root.  Each directory is listed once and only the names
    # present are looked at, so big writable trees (/tmp, caches) cost one
    # listing, not a walk.
    deadline = time.monotonic() + MAX_SECONDS
    budget = [MAX_ENTRIES]
    listings: dict[str, set[str]] = {}
    if root_of(cwd) is not None or any(w.startswith(cwd + "/") for w in writable):
        for directory, names in _walk(cwd, deadline, budget, out):
            listings[directory] = names
    for directory in [home] + [w for w in writable if os.path.isdir(w)]:
        if directory not in listings:
            listings[directory] = _names(directory)
    git = _GitScan(protect, pin_git_dir, allow_git_config, home, global_hooks)
    for project, present in listings.items():
        if project != home:  # the home directory's rows were protected above
            _protect_project(project, present, project == cwd, project_rows, protect)
        if ".git" in present or project == cwd:
            git.repository(os.path.join(project, ".git"), project)
    out.pinned = sorted(pinned)
    return out


def agent_config_notes(tools: Sequence[str]) -> list[str]:
    """The ``-d`` notes for ``filesystem.allowAgentConfig``: each opened tool's names, as the table lists them."""
    notes = []
    for tool in dict.fromkeys(tools):
        paths = ", ".join(n.path for n in PROTECTED_NAMES if n.tool == tool)
        notes.append(
            f"mandatory protection: {TOOL_NAMES.get(tool, tool)} files are left writable where allowWrite "
            f'grants them (filesystem.allowAgentConfig "{tool}"): {paths}'
        )
    return notes


def _protect_project(project: str, present: set[str], is_cwd: bool, rows, protect) -> None:
    """The table's project rows in one project directory (``present``: the names in it).

    A row is looked at when its first component exists here (read-only, or watched when the rest
    is missing) and, while missing, where tools look for it: the working directory and every
    repository root nested in it (an editor or agent opens those).  In the working directory a
    missing directory row whose parent exists is reserved instead: an empty directory is inert
    and invisible to git, so nothing can appear there even during a long run.  It is watched as
    well: another run that does not bind it (one started earlier, from a parent directory) could
    fill it, or rename it away and let this run's sandbox make the name afresh.
    """
    watch_missing = is_cwd or ".git" in present
    for row in rows:
        if row.path.split("/", 1)[0] not in present and not watch_missing:
            continue
        path = os.path.join(project, row.path)
        if is_cwd and row.placeholder == DIR and os.path.isdir(os.path.dirname(path)):
            protect(path, placeholder=DIR, base=project, watch_reserved=True)
        else:
            protect(path, base=project)


def _home_bases(rel: str, home: str, env: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(home, rel)``, and the same file under ``$XDG_CONFIG_HOME`` / ``$XDG_DATA_HOME`` when those are set:
    (directory, path under it)."""
    out = [(home, rel)]
    for prefix, var in XDG_BASES:
        base = env.get(var, "")
        if rel.startswith(prefix) and base.startswith("/"):
            out.append((base.rstrip("/") or "/", rel[len(prefix) :]))
    return out


def _global_git_config(home: str, env: Mapping[str, str], protect) -> list[str]:
    """Protect the files the global git config includes; return its ``core.hooksPath`` values.

    The global config itself is protected by the tables (``.gitconfig``,
    ``.config/git/config``); what it *names* is not: an ``include.path`` to a
    file in a writable tree, or a hooks directory there, runs the sandbox's
    code in every repository the user touches.
    """
    files = [os.path.join(home, ".gitconfig")]
    files += [os.path.join(base, rel) for base, rel in _home_bases(".config/git/config", home, env)]
    if env.get("GIT_CONFIG_GLOBAL", "").startswith("/"):
        files.append(env["GIT_CONFIG_GLOBAL"])
        protect(env["GIT_CONFIG_GLOBAL"])
    hooks: list[str] = []
    for path in files:
        hooks += _follow_git_config(path, home, protect)
    return hooks


def _follow_git_config(path: str, home: str, protect, depth: int = 0) -> list[str]:
    """``core.hooksPath`` values of ``path`` and the files it includes, protecting each included file."""
    refs = _git_config_refs(path)
    hooks = list(refs.hooks_path)
    if depth >= MAX_INCLUDE_DEPTH:
        return hooks
    for include in refs.includes:
        target = _expand_git_path(include, home, os.path.dirname(path))
        protect(target)
        hooks += _follow_git_config(target, home, protect, depth + 1)
    return hooks


def _expand_git_path(value: str, home: str, base: str) -> str:
    """A git config path value: ``~/`` is home, a relative path is against ``base``."""
    if value == "~" or value.startswith("~/"):
        return home + value[1:]
    return os.path.normpath(os.path.join(base, value))


class _GitScan:
    """A repository's hooks and config, wherever its git dir really is (worktrees, submodules)."""

    def __init__(self, protect, pin, allow_git_config: bool, home: str, global_hooks: list[str]):
        self.protect, self.pin = protect, pin
        self.allow_git_config, self.home, self.global_hooks = allow_git_config, home, global_hooks

    def repository(self, dot_git: str, worktree: str) -> None:
        protect = self.protect
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
            self.pin(os.path.realpath(dot_git))
        common = git_dir
        commondir_file = os.path.join(git_dir, "commondir")
        if os.path.isfile(commondir_file):
            common = _read_relative(commondir_file, git_dir) or git_dir
        for hooks_path in self.global_hooks:  # relative: against each worktree, as git reads it
            protect(_expand_git_path(hooks_path, self.home, worktree))
        for gd in dict.fromkeys((git_dir, common)):
            self.git_dir(gd, worktree)
            modules = os.path.join(gd, "modules")
            if os.path.isdir(modules):  # submodules' git dirs, nested to any depth (bounded)
                for sub in _module_dirs(modules):
                    protect(os.path.join(sub, "hooks"))
                    if not self.allow_git_config:
                        protect(os.path.join(sub, "config"))

    def git_dir(self, gd: str, worktree: str) -> None:
        protect = self.protect
        protect(os.path.join(gd, "hooks"))
        for name in GIT_DIR_FILES:
            if name == "config" and self.allow_git_config:
                continue
            protect(os.path.join(gd, name))
        refs = _git_config_refs(os.path.join(gd, "config"))
        for hooks_path in refs.hooks_path:
            protect(_expand_git_path(hooks_path, self.home, worktree))
        if not self.allow_git_config:  # an opened config can name any include anyway
            for include in refs.includes:
                target = _expand_git_path(include, self.home, gd)
                protect(target)
                _follow_git_config(target, self.home, protect, 1)


def _names(directory: str) -> set[str]:
    try:
        return set(os.listdir(directory))
    except OSError:
        return set()


def _project_config_dirs(cwd: str) -> list[str]:
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
    target = line[len("gitdir:") :].strip()
    return os.path.normpath(os.path.join(os.path.dirname(path), target))


def _read_relative(path: str, base: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            target = f.read(4096).strip()
    except OSError:
        return ""
    return os.path.normpath(os.path.join(base, target)) if target else ""


class GitConfigRefs:
    """What one git config file names that can run code: hooks directories and included files."""

    __slots__ = ("hooks_path", "includes")

    def __init__(self) -> None:
        self.hooks_path: list[str] = []
        self.includes: list[str] = []


def _git_config_refs(config: str) -> GitConfigRefs:
    """``core.hooksPath`` and ``include.path`` / ``includeIf.*.path`` of one git config file.

    A small reader (sections, keys, quotes, comments; no subsections except
    includeIf's condition): it only has to find the names, not interpret them.
    Every ``includeIf`` is taken, whatever its condition, since the condition
    may hold for the next repository the user opens.
    """
    refs = GitConfigRefs()
    try:
        with open(config, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return refs
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            end = line.find("]")
            name = line[1:end].split(None, 1) if end > 0 else []
            section = name[0].lower() if name else ""  # [includeIf "gitdir:~/w/"] -> includeif
            line = line[end + 1 :].strip() if end > 0 else ""  # "[core] hooksPath = x" on one line
            if not line:
                continue
        if "=" not in line:
            continue
        key, _, val = line.partition("=")
        key, val = key.strip().lower(), _git_value(val)
        if section == "core" and key == "hookspath" and val:
            refs.hooks_path.append(val)
        elif section in ("include", "includeif") and key == "path" and val:
            refs.includes.append(val)
    return refs


def _git_value(raw: str) -> str:
    """A value without its trailing comment and quotes (enough for paths)."""
    out, quoted = [], False
    for ch in raw.strip():
        if ch == '"':
            quoted = not quoted
            continue
        if ch in "#;" and not quoted:
            break
        out.append(ch)
    return "".join(out).strip()


def _hooks_path(config: str) -> str:
    """The last ``core.hooksPath`` of one git config file ("" when none): git's own rule, last one wins."""
    found = _git_config_refs(config).hooks_path
    return found[-1] if found else ""


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
    for space and keeps the content for the user to inspect.  A watched path
    whose parent became a symlink during the run (``ln -s ~/.claude .claude``
    where ``.claude/settings.json`` was watched) has the *link* moved aside:
    renaming through it would move a file the sandbox could not even write.
    A watched directory that is a placeholder fence still holds for some run
    (``reserve.live_entries``) keeps its place, since renaming it would free
    the name in that run's sandbox: what was put in it goes aside instead.
    """
    moved: list[tuple[str, str, str]] = []
    live = None
    for path in watch:
        link = _linked_parent(path)
        if link:
            if not any(m[0] == link for m in moved):
                moved += _move_aside(link, sandbox)
            continue
        if not os.path.isdir(path) or os.path.islink(path):
            if os.path.lexists(path):
                moved += _move_aside(path, sandbox)
            continue
        if os.path.basename(path) == "hooks" and os.path.isfile(os.path.join(os.path.dirname(path), "HEAD")):
            # a new git hooks directory (``git init`` makes one): only real hooks go, samples stay
            moved += quarantine([os.path.join(path, n) for n in _listing(path) if not n.endswith(".sample")], sandbox)
            continue
        if live is None:
            live = live_entries()
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in live:
            moved += quarantine([os.path.join(path, n) for n in _listing(path)], sandbox)
        else:
            moved += _move_aside(path, sandbox)
    return moved


def _listing(path: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(path) if ".fence-quarantine-" not in n)
    except OSError:
        return []


def _move_aside(path: str, sandbox: str) -> list[tuple[str, str, str]]:
    target = f"{path}.fence-quarantine-{sandbox}"
    try:
        os.rename(path, target)
    except OSError as e:
        return [(path, "", e.strerror or str(e))]
    return [(path, target, "")]


def _linked_parent(path: str) -> str:
    """The outermost parent of ``path`` that is a symlink now, or "".  Watched paths are canonical when the
    scan records them, so such a link was made since."""
    parent = os.path.dirname(path)
    if os.path.realpath(parent) == parent:
        return ""
    current = ""
    for part in parent.split("/")[1:]:
        current += "/" + part
        if os.path.islink(current):
            return current
    return ""
