"""Where a run's config comes from when neither ``--template`` nor ``--settings`` is given.

Order (as Fence, docs/configuration.md#where-the-config-comes-from): the nearest ``fence.jsonc`` / ``fence.json``
walking up from the working directory (``.jsonc`` first in each directory);
else the user config ``$XDG_CONFIG_HOME/fence/fence.jsonc|.json`` (default
``~/.config/fence/``); else the legacy ``~/.fence.jsonc``, ``~/.fence.json``;
else the built-in defaults.  Only regular files count: a directory (or FIFO)
named like a config file is ignored.

Everything is derived from the request's home and ``XDG_CONFIG_HOME``, never
from this process's environment: the config service may run under the
supervisor, in another process with another environment.
"""

from __future__ import annotations

import os
import stat

NAMES = ("fence.jsonc", "fence.json")
LEGACY_NAMES = (".fence.jsonc", ".fence.json")


def is_config_file(path: str) -> bool:
    """True for an existing regular file (symlinks followed)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def home_dir(home: str) -> str:
    return home or os.path.expanduser("~")


def user_config_dir(home: str, xdg_config_home: str = "") -> str:
    """``$XDG_CONFIG_HOME/fence`` when that is an absolute path (the XDG rule), else ``~/.config/fence``."""
    if xdg_config_home and os.path.isabs(xdg_config_home):
        return os.path.join(xdg_config_home, "fence")
    return os.path.join(home_dir(home), ".config", "fence")


def find_project_config(cwd: str) -> str | None:
    """The nearest fence.jsonc / fence.json from ``cwd`` up to ``/``."""
    d = os.path.abspath(cwd)
    while True:
        for name in NAMES:
            path = os.path.join(d, name)
            if is_config_file(path):
                return path
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def find_user_config(home: str, xdg_config_home: str = "") -> tuple[str, str] | None:
    """("user config" | "legacy config", path) of the user's own config, or None."""
    d = user_config_dir(home, xdg_config_home)
    for name in NAMES:
        path = os.path.join(d, name)
        if is_config_file(path):
            return "user config", path
    h = home_dir(home)
    for name in LEGACY_NAMES:
        path = os.path.join(h, name)
        if is_config_file(path):
            return "legacy config", path
    return None


def default_user_config_path(home: str, xdg_config_home: str = "") -> str:
    """Where ``fence config init`` and ``fence import --save`` write: the existing user file, else fence.jsonc."""
    d = user_config_dir(home, xdg_config_home)
    for name in NAMES:
        if is_config_file(os.path.join(d, name)):
            return os.path.join(d, name)
    return os.path.join(d, "fence.jsonc")
