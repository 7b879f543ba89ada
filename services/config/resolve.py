"""Resolve the policy for a run: pick the config, follow ``extends``, merge, validate.

Which config (first that applies): ``--template NAME`` > ``--settings FILE`` >
the nearest project ``fence.jsonc``/``fence.json`` > the user config >
the legacy ``~/.fence.json(c)`` > built-in defaults (``fence.config.discover``).
A missing or blank discovered file means the built-in defaults; a missing
``--settings`` file is an error (``SettingsFileMissing``), a blank one the defaults.

``extends`` (docs/configuration.md#extends): a built-in template name (with or without
``.json``/``.jsonc``), ``@base`` (the user config -- not project discovery --
or the defaults when there is none), or a file path (it contains ``/`` or
``\\`` or starts with ``.``; relative to the extending file, ``~`` is the
home).  At most ``MAX_EXTENDS_DEPTH`` hops; a cycle is an error naming the
chain.  Each file is validated on its own (so messages name it), then merged
(``fence.config.merge``), then the cross-field rules run on the result.

The reply carries the chain of sources (nearest first) and the provenance of
every field set.  ``resolve`` only reads files: the config service calls it
from its async handler, and ``fence config show`` calls it directly.
"""

from __future__ import annotations

import os

from fence.config import discover, templates, validate
from fence.config.errors import ConfigError, SettingsFileMissing, invalid
from fence.config.load import MAX_CONFIG_BYTES, load_file
from fence.config.merge import merge, provenance
from fence.messages import ConfigResolveReply, ConfigResolveRequest
from fence.policy import Policy

__all__ = ["ConfigError", "MAX_CONFIG_BYTES", "MAX_EXTENDS_DEPTH", "Source", "resolve", "resolve_source",
           "root_source", "load_file"]

MAX_EXTENDS_DEPTH = 10


class Source:
    """One link of a chain: a config file, a built-in template, or the built-in defaults."""

    __slots__ = ("kind", "label", "path", "name")

    def __init__(self, kind: str, label: str, path: str = "", name: str = ""):
        self.kind = kind  # "file" | "template" | "defaults"
        self.label = label  # e.g. "project config: /src/app/fence.json"
        self.path = path
        self.name = name  # template name

    @property
    def key(self) -> str:
        """Identity for cycle detection."""
        if self.kind == "file":
            return "file:" + os.path.realpath(self.path)
        return f"{self.kind}:{self.name}"

    @property
    def short(self) -> str:
        """How the chain names it in a cycle/depth message."""
        return f"template {self.name}" if self.kind == "template" else (self.path or "built-in defaults")

    @property
    def where(self) -> str:
        """How messages name it."""
        return f'template "{self.name}"' if self.kind == "template" else self.path

    def __repr__(self) -> str:
        return f"Source({self.label!r})"


class _Env:
    __slots__ = ("cwd", "home", "xdg")

    def __init__(self, req: ConfigResolveRequest):
        self.home = discover.home_dir(req.home)
        self.cwd = req.cwd or "/"
        self.xdg = req.env_xdg_config_home

    def expand(self, path: str, base_dir: str) -> str:
        if path == "~" or path.startswith("~/"):
            path = self.home + path[1:]
        return os.path.normpath(os.path.join(base_dir, path))


def _template_source(name: str, label_prefix: str = "template") -> Source | None:
    path = templates.path_of(name)
    if path is None:
        return None
    canonical = templates.canonical(name)
    return Source("template", f"{label_prefix}: {canonical}", path, canonical)


def root_source(req: ConfigResolveRequest) -> Source:
    """The config a run asks for, before following ``extends``."""
    env = _Env(req)
    if req.template:
        source = _template_source(req.template)
        if source is None:
            raise ConfigError(templates.unknown_message(req.template))
        return source
    if req.settings:
        path = env.expand(req.settings, env.cwd)
        if not os.path.exists(path):  # a dangling symlink included
            raise SettingsFileMissing(f"settings file {req.settings} does not exist")
        return Source("file", f"settings: {path}", path)
    project = discover.find_project_config(env.cwd)
    if project:
        return Source("file", f"project config: {project}", project)
    user = discover.find_user_config(env.home, env.xdg)
    if user:
        kind, path = user
        return Source("file", f"{kind}: {path}", path)
    where = discover.user_config_dir(env.home, env.xdg)
    return Source("defaults", f"built-in defaults (no fence.jsonc or fence.json from {env.cwd} up, nor in {where})")


def _load(source: Source) -> Policy | None:
    return None if source.kind == "defaults" else load_file(source.path, source.where)


def _extends_target(value: str, source: Source, env: _Env) -> Source:
    if value == "@base":
        user = discover.find_user_config(env.home, env.xdg)
        if user is None:
            return Source("defaults", "extends @base: built-in defaults (no user config)", name="@base")
        kind, path = user
        return Source("file", f"extends @base ({kind}): {path}", path)
    if "/" in value or "\\" in value or value.startswith("."):
        base_dir = os.path.dirname(source.path) if source.path else env.cwd
        path = env.expand(value, base_dir)
        if not os.path.lexists(path):
            raise invalid(source.where, [("$.extends", f'extends "{value}": file not found: {path} '
                                          "(a relative path is relative to this file's directory)")])
        return Source("file", f"extends file: {path}", path)
    target = _template_source(value, "extends template")
    if target is None:
        raise invalid(source.where, [("$.extends", templates.unknown_message(value) +
                                      '; a file path must contain "/" or start with "."')])
    return target


def resolve_source(root: Source, req: ConfigResolveRequest) -> tuple[Policy, list[tuple[Source, Policy]]]:
    """Follow ``extends`` from ``root``: the merged policy and the chain (nearest first, own configs)."""
    env = _Env(req)
    chain: list[tuple[Source, Policy]] = []
    source = root
    while True:
        policy = _load(source)
        if policy is None:
            if source is not root and source.kind == "file" and not os.path.exists(source.path):
                raise invalid(chain[-1][0].where, [("$.extends", f"extended config file not found: {source.path}")])
            policy = Policy()
            if source.kind != "defaults":
                empty = "missing or empty" if source is root else "empty"
                source.label += f" ({empty}: built-in defaults)"
        chain.append((source, policy))
        if not policy.extends:
            break
        if len(chain) > MAX_EXTENDS_DEPTH:
            names = " -> ".join(s.short for s, _ in chain)
            raise invalid(source.where, [("$.extends", f"extends chain is deeper than {MAX_EXTENDS_DEPTH} levels: "
                                          f"{names} -> ...; flatten it")])
        target = _extends_target(policy.extends, source, env)
        seen = [s.key for s, _ in chain]
        if target.key in seen:
            loop = [s.short for s, _ in chain[seen.index(target.key):]] + [target.short]
            raise invalid(source.where, [("$.extends", f"extends cycle: {' -> '.join(loop)}; remove one of "
                                          "these extends")])
        source = target
    merged = chain[-1][1]
    for _, policy in reversed(chain[:-1]):
        merged = merge(merged, policy)
    return merged, chain


def resolve(req: ConfigResolveRequest) -> ConfigResolveReply:
    root = root_source(req)
    policy, chain = resolve_source(root, req)
    by_label = {_plain_label(s): s for s, _ in chain}
    prov = provenance([(_plain_label(s), p) for s, p in reversed(chain)])
    cross = validate.cross_problems(policy)
    if cross:
        culprit = by_label.get(prov.get(cross[0][0][2:], ""), root)
        raise invalid(culprit.where or root.label, cross)
    if policy.extends or policy.schema:
        policy.extends = ""
        policy.schema = ""
    return ConfigResolveReply(policy=policy, sources=[s.label for s, _ in chain], provenance=prov)


def _plain_label(source: Source) -> str:
    label = source.label
    if label.startswith("extends "):
        label = label[len("extends "):]
    return label.split(" (missing")[0].split(" (empty")[0]
