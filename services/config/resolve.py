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

The reply carries the provenance as records: the chain of sources (nearest
first, ``SourceRef``), which of them set each field (``FieldSource``, made by
``fence.config.merge.field_sources``) and the user config directory, plus the
same facts rendered for people (``sources``, ``provenance``) from those
records, here and only here.  Consumers (preflight, the filesystem layer)
decide on the records and never read config files themselves.  ``resolve``
only reads files: the config service calls it from its async handler, and
``fence config show`` calls it directly.
"""

from __future__ import annotations

import os

from fence.config import discover, templates, validate
from fence.config.errors import ConfigError, SettingsFileMissing, invalid
from fence.config.load import MAX_CONFIG_BYTES, load_file
from fence.config.merge import field_sources, merge, provenance_labels
from fence.messages import ConfigResolveReply, ConfigResolveRequest, SourceRef
from fence.policy import Policy

__all__ = [
    "ConfigError",
    "MAX_CONFIG_BYTES",
    "MAX_EXTENDS_DEPTH",
    "Source",
    "resolve",
    "resolve_source",
    "root_source",
    "load_file",
]

MAX_EXTENDS_DEPTH = 10


_FOUND_AS = {"project": "project config", "user": "user config", "legacy": "legacy config"}


class Source:
    """One link of a chain while it is resolved: a config file, a built-in template, or the built-in defaults.

    The same facts as the ``SourceRef`` it becomes in the reply (``ref``); its
    names for people are rendered from them here, and only here.
    """

    __slots__ = ("kind", "via", "extends", "path", "name", "empty", "why")

    def __init__(self, kind: str, via: str = "", extends: str = "", path: str = "", name: str = "", why: str = ""):
        self.kind = kind  # "file" | "template" | "defaults"
        self.via = via  # "cli" | "project" | "user" | "legacy" | "extends" | ""
        self.extends = extends  # the extends value that named it; "" for the config the run asked for
        self.path = path  # a file's path, a template's file
        self.name = name  # template name
        self.empty = False  # missing or blank: stood for the built-in defaults
        self.why = why  # defaults: why there is no file, e.g. " (no user config)"

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

    @property
    def label(self) -> str:
        """How messages about its settings name it (``SourceRef.label``): ``project config: /src/app/fence.json``."""
        if self.kind == "template":
            return f"template: {self.name}"
        base = "@base" if self.extends == "@base" else ""
        if self.kind == "defaults":
            return f"{base}{': ' if base else ''}built-in defaults{self.why}"
        if base:
            return f"@base ({_FOUND_AS[self.via]}): {self.path}"
        if self.via == "extends":
            return f"file: {self.path}"
        return f"{'settings' if self.via == 'cli' else _FOUND_AS[self.via]}: {self.path}"

    @property
    def chain_line(self) -> str:
        """Its line in the chain (``fence -d``'s ``[fence] Config: ...``, ``fence config show``)."""
        text = f"extends {self.label}" if self.extends else self.label
        if self.empty:
            text += " (empty: built-in defaults)" if self.extends else " (missing or empty: built-in defaults)"
        return text

    def ref(self) -> SourceRef:
        """The record the reply carries (a template's file stays out: nothing outside resolving needs it)."""
        return SourceRef(
            kind=self.kind,
            via=self.via,
            extends=self.extends,
            path=self.path if self.kind == "file" else "",
            name=self.name if self.kind == "template" else "",
            empty=self.empty,
            label=self.label,
        )

    def __repr__(self) -> str:
        return f"Source({self.chain_line!r})"


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


def _template_source(name: str, via: str, extends: str = "") -> Source | None:
    path = templates.path_of(name)
    if path is None:
        return None
    return Source("template", via, extends, path, templates.canonical(name))


def root_source(req: ConfigResolveRequest) -> Source:
    """The config a run asks for, before following ``extends``."""
    env = _Env(req)
    if req.template:
        source = _template_source(req.template, "cli")
        if source is None:
            raise ConfigError(templates.unknown_message(req.template))
        return source
    if req.settings:
        path = env.expand(req.settings, env.cwd)
        if not os.path.exists(path):  # a dangling symlink included
            raise SettingsFileMissing(f"settings file {req.settings} does not exist")
        return Source("file", "cli", path=path)
    project = discover.find_project_config(env.cwd)
    if project:
        return Source("file", "project", path=project)
    user = discover.find_user_config(env.home, env.xdg)
    if user:
        return _user_source(user)
    where = discover.user_config_dir(env.home, env.xdg)
    return Source("defaults", why=f" (no fence.jsonc or fence.json from {env.cwd} up, nor in {where})")


def _user_source(found: tuple[str, str], extends: str = "") -> Source:
    kind, path = found
    return Source("file", "user" if kind == "user config" else "legacy", extends, path)


def _load(source: Source) -> Policy | None:
    return None if source.kind == "defaults" else load_file(source.path, source.where)


def _extends_target(value: str, source: Source, env: _Env) -> Source:
    if value == "@base":
        user = discover.find_user_config(env.home, env.xdg)
        if user is None:
            return Source("defaults", extends="@base", name="@base", why=" (no user config)")
        return _user_source(user, "@base")
    if "/" in value or "\\" in value or value.startswith("."):
        base_dir = os.path.dirname(source.path) if source.path else env.cwd
        path = env.expand(value, base_dir)
        if not os.path.lexists(path):
            raise invalid(
                source.where,
                [
                    (
                        "$.extends",
                        f'extends "{value}": file not found: {path} '
                        "(a relative path is relative to this file's directory)",
                    )
                ],
            )
        return Source("file", "extends", value, path)
    target = _template_source(value, "extends", value)
    if target is None:
        raise invalid(
            source.where,
            [("$.extends", templates.unknown_message(value) + '; a file path must contain "/" or start with "."')],
        )
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
            source.empty = source.kind != "defaults"
        chain.append((source, policy))
        if not policy.extends:
            break
        if len(chain) > MAX_EXTENDS_DEPTH:
            names = " -> ".join(s.short for s, _ in chain)
            raise invalid(
                source.where,
                [("$.extends", f"extends chain is deeper than {MAX_EXTENDS_DEPTH} levels: {names} -> ...; flatten it")],
            )
        target = _extends_target(policy.extends, source, env)
        seen = [s.key for s, _ in chain]
        if target.key in seen:
            loop = [s.short for s, _ in chain[seen.index(target.key) :]] + [target.short]
            raise invalid(
                source.where, [("$.extends", f"extends cycle: {' -> '.join(loop)}; remove one of these extends")]
            )
        source = target
    merged = chain[-1][1]
    for _, policy in reversed(chain[:-1]):
        merged = merge(merged, policy)
    return merged, chain


def resolve(req: ConfigResolveRequest) -> ConfigResolveReply:
    root = root_source(req)
    policy, chain = resolve_source(root, req)
    fields = field_sources([(i, p) for i, (_, p) in reversed(list(enumerate(chain)))])
    cross = validate.cross_problems(policy)
    if cross:
        record = fields.get(cross[0][0][2:])
        culprit = chain[record.sources[0]][0] if record is not None and len(record.sources) == 1 else root
        raise invalid(culprit.where or root.label, cross)
    if policy.extends or policy.schema:
        policy.extends = ""
        policy.schema = ""
    refs = [s.ref() for s, _ in chain]
    env = _Env(req)
    return ConfigResolveReply(
        policy=policy,
        sources=[s.chain_line for s, _ in chain],
        provenance=provenance_labels(fields, [r.label for r in refs]),
        chain=refs,
        fields=fields,
        user_config_dir=discover.user_config_dir(env.home, env.xdg),
    )
