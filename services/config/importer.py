"""Import other tools' permission settings as a fence config.

Claude Code (``fence import --claude``): ``settings.json`` holds
``permissions.allow`` / ``deny`` / ``ask`` lists of rules such as
``Bash(npm run test:*)``, ``Read(./.env)``, ``Edit(src/**)``,
``WebFetch(domain:example.com)``.  Translation (``ask`` is treated as
``deny``: fence cannot ask, so it fails closed):

| Claude rule | allow | deny / ask |
|---|---|---|
| ``Bash(cmd)``, ``Bash(cmd:*)``, ``Bash(cmd *)`` | ``command.allow`` | ``command.deny`` |
| ``Read(path)`` | ``filesystem.allowRead`` | ``filesystem.denyRead`` |
| ``Edit(path)``, ``Write(path)``, ``MultiEdit(path)`` | ``filesystem.allowWrite`` | ``filesystem.denyWrite`` |
| ``WebFetch(domain:host)`` | ``network.allowedDomains`` | ``network.deniedDomains`` |

Paths: ``//abs`` is the absolute ``/abs``; ``/p`` is relative to the project
root (the directory holding ``.claude/``), so it becomes an absolute path;
``~/p``, ``./p`` and ``p`` are kept (fence resolves them against the home and
the working directory).  Everything else -- bare tool names (``Bash``),
other tools (``WebSearch``, ``mcp__*``, ``Glob``), ``Bash`` rules with a
wildcard in the middle, domains fence cannot express -- is reported as not
translated, never silently dropped.

The result extends a template (``code`` by default) so the imported rules
add to a working base.
"""

from __future__ import annotations

import os
import re

from fence.domains import pattern_error as domain_pattern_error

_RULE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)(?:\((.*)\))?$", re.S)


class ImportResult:
    def __init__(self) -> None:
        self.sections: dict[str, dict[str, list[str]]] = {}
        self.skipped: list[str] = []

    def add(self, section: str, field: str, value: str) -> None:
        values = self.sections.setdefault(section, {}).setdefault(field, [])
        if value not in values:
            values.append(value)

    def skip(self, rule: str, kind: str, why: str) -> None:
        self.skipped.append(f"{kind} {rule!r}: {why}")

    def config(self, extends: str = "code") -> dict:
        out: dict = {}
        if extends:
            out["extends"] = extends
        for section in ("network", "filesystem", "command"):
            if section in self.sections:
                out[section] = self.sections[section]
        return out


def _command_prefix(spec: str) -> str | None:
    """``npm run test:*`` / ``npm run test *`` / ``npm run test`` -> ``npm run test``; None if untranslatable."""
    spec = spec.strip()
    if spec.endswith((":*", " *")):
        spec = spec[:-2]
    elif spec == "*":
        return None
    spec = spec.strip()
    if not spec or "*" in spec:
        return None
    return spec


def _path(spec: str, project_root: str) -> str | None:
    spec = spec.strip()
    if not spec:
        return None
    if spec.startswith("//"):
        return "/" + spec.lstrip("/")
    if spec.startswith("/"):
        return os.path.join(project_root, spec.lstrip("/"))
    return spec


def project_root_of(settings_path: str) -> str:
    """The directory a settings file's ``/path`` rules are relative to."""
    d = os.path.dirname(os.path.abspath(settings_path))
    return os.path.dirname(d) if os.path.basename(d) == ".claude" else d


def translate_claude(settings: dict, settings_path: str = "") -> ImportResult:
    """Translate a parsed Claude Code settings.json."""
    result = ImportResult()
    permissions = settings.get("permissions") if isinstance(settings, dict) else None
    if not isinstance(permissions, dict):
        return result
    root = project_root_of(settings_path) if settings_path else os.getcwd()
    for kind in ("allow", "deny", "ask"):
        rules = permissions.get(kind) or []
        if not isinstance(rules, list):
            result.skip(str(rules), kind, "not a list of rules")
            continue
        allow = kind == "allow"
        for rule in rules:
            if not isinstance(rule, str):
                result.skip(repr(rule), kind, "not a string")
                continue
            _translate_rule(result, rule, kind, allow, root)
    for key in ("additionalDirectories", "defaultMode"):
        if permissions.get(key):
            result.skip(
                f"permissions.{key}",
                "setting",
                "no fence equivalent (add paths to filesystem.allowWrite by hand if the agent must write there)"
                if key == "additionalDirectories"
                else "no fence equivalent",
            )
    return result


def _translate_rule(result: ImportResult, rule: str, kind: str, allow: bool, root: str) -> None:
    m = _RULE.match(rule.strip())
    if not m:
        result.skip(rule, kind, "not a Tool(specifier) rule")
        return
    tool, spec = m.group(1), m.group(2)
    if spec is None:
        result.skip(rule, kind, "a rule for a whole tool has no fence equivalent")
        return
    if tool == "Bash":
        prefix = _command_prefix(spec)
        if prefix is None:
            result.skip(rule, kind, "fence command rules are prefixes; a wildcard is only understood at the end")
            return
        result.add("command", "allow" if allow else "deny", prefix)
    elif tool == "Read":
        path = _path(spec, root)
        if path is None:
            result.skip(rule, kind, "empty path")
            return
        result.add("filesystem", "allowRead" if allow else "denyRead", path)
    elif tool in ("Edit", "Write", "MultiEdit", "NotebookEdit"):
        path = _path(spec, root)
        if path is None:
            result.skip(rule, kind, "empty path")
            return
        result.add("filesystem", "allowWrite" if allow else "denyWrite", path)
    elif tool == "WebFetch":
        if not spec.startswith("domain:"):
            result.skip(rule, kind, 'only "domain:" WebFetch rules can be translated')
            return
        domain = spec[len("domain:") :].strip()
        reason = domain_pattern_error(domain)
        if reason:
            result.skip(rule, kind, f"domain {domain!r}: {reason}")
            return
        result.add("network", "allowedDomains" if allow else "deniedDomains", domain)
    else:
        result.skip(rule, kind, f"fence has no equivalent of the {tool} tool")
