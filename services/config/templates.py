"""Built-in templates: JSONC files shipped as package data in ``templates/``.

A template is named by its file name without ``.jsonc``; ``-t code``,
``extends: "code"``, ``"code.json"`` and ``"code.jsonc"`` all name the same
one.  The first comment line of each file is its one-line description
(``fence config templates``).
"""

from __future__ import annotations

import os

from fence.config.load import suggest

DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
SUFFIX = ".jsonc"


def names() -> list[str]:
    try:
        return sorted(n[: -len(SUFFIX)] for n in os.listdir(DIR) if n.endswith(SUFFIX) and not n.startswith("."))
    except OSError:
        return []


def canonical(name: str) -> str:
    for suffix in (".jsonc", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def path_of(name: str) -> str | None:
    """The file of template ``name`` (with or without .json/.jsonc), or None when there is none."""
    name = canonical(name)
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    path = os.path.join(DIR, name + SUFFIX)
    return path if os.path.isfile(path) else None


def description(name: str) -> str:
    """The first ``//`` comment line of the template."""
    path = path_of(name)
    if path is None:
        return ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("//"):
                return line[2:].strip()
            if line:
                break
    return ""


def unknown_message(name: str) -> str:
    """`unknown template "x"; did you mean "y"?` plus the list of templates."""
    available = names()
    hint = suggest(canonical(name), available)
    did = f'; did you mean "{hint}"?' if hint else ""
    return f'unknown template "{name}"{did} (built-in templates: {", ".join(available)})'
