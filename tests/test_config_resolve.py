"""Where the config comes from, extends chains, provenance, and the config service."""

from __future__ import annotations

import json

import pytest

from fence.bus import InProcessBus, RemoteError, run_sync
from fence.config.errors import SettingsFileMissing
from fence.config.resolve import MAX_EXTENDS_DEPTH, ConfigError, resolve
from fence.config.service import ConfigService
from fence.messages import ConfigResolveReply, ConfigResolveRequest
from fence.policy import Policy
from fence.subjects import CONFIG_RESOLVE


class Env:
    """A home, an XDG config dir and a project tree, all under tmp_path."""

    def __init__(self, root):
        self.root = root
        self.home = root / "home"
        self.xdg = root / "xdg"
        self.project = root / "work" / "project"
        self.cwd = self.project / "src" / "pkg"
        self.cwd.mkdir(parents=True)
        self.home.mkdir()

    def write(self, path, config) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config if isinstance(config, str) else json.dumps(config))
        return str(path)

    def req(self, **kw) -> ConfigResolveRequest:
        kw.setdefault("cwd", str(self.cwd))
        kw.setdefault("home", str(self.home))
        return ConfigResolveRequest(**kw)

    def resolve(self, **kw) -> ConfigResolveReply:
        return resolve(self.req(**kw))


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def domains(reply):
    return reply.policy.network.allowed_domains


# --- discovery --------------------------------------------------------------------------


def test_defaults_when_nothing_is_found(env):
    reply = env.resolve()
    assert reply.policy == Policy()
    assert len(reply.sources) == 1 and reply.sources[0].startswith("built-in defaults")
    assert reply.provenance == {}


def test_precedence(env):
    env.write(env.home / ".fence.json", {"network": {"allowedDomains": ["legacy-json.com"]}})
    assert domains(env.resolve()) == ["legacy-json.com"]
    env.write(env.home / ".fence.jsonc", {"network": {"allowedDomains": ["legacy-jsonc.com"]}})
    assert domains(env.resolve()) == ["legacy-jsonc.com"]
    env.write(env.home / ".config" / "fence" / "fence.json", {"network": {"allowedDomains": ["user.com"]}})
    reply = env.resolve()
    assert domains(reply) == ["user.com"] and reply.sources[0].startswith("user config: ")
    env.write(env.xdg / "fence" / "fence.json", {"network": {"allowedDomains": ["xdg.com"]}})
    assert domains(env.resolve()) == ["user.com"]  # XDG_CONFIG_HOME not given: ~/.config
    assert domains(env.resolve(env_xdg_config_home=str(env.xdg))) == ["xdg.com"]
    env.write(env.root / "work" / "fence.json", {"network": {"allowedDomains": ["far.com"]}})
    assert domains(env.resolve(env_xdg_config_home=str(env.xdg))) == ["far.com"]
    env.write(env.project / "fence.json", {"network": {"allowedDomains": ["near-json.com"]}})
    assert domains(env.resolve()) == ["near-json.com"]
    env.write(env.project / "fence.jsonc", '// c\n{"network": {"allowedDomains": ["near-jsonc.com"]}}')
    reply = env.resolve()
    assert domains(reply) == ["near-jsonc.com"]
    assert reply.sources == [f"project config: {env.project / 'fence.jsonc'}"]
    settings = env.write(env.root / "s.json", {"network": {"allowedDomains": ["settings.com"]}})
    reply = env.resolve(settings=settings)
    assert domains(reply) == ["settings.com"] and reply.sources == [f"settings: {settings}"]
    reply = env.resolve(settings=settings, template="code")
    assert "api.openai.com" in domains(reply) and reply.sources == ["template: code"]


def test_relative_xdg_config_home_is_ignored(env):
    env.write(env.home / ".config" / "fence" / "fence.json", {"allowPty": True})
    assert env.resolve(env_xdg_config_home="relative/dir").policy.allow_pty


def test_directories_named_like_configs_are_ignored(env):
    (env.cwd / "fence.jsonc").mkdir()
    (env.cwd / "fence.json").mkdir()
    env.write(env.project / "fence.json", {"allowPty": True})
    assert env.resolve().sources == [f"project config: {env.project / 'fence.json'}"]


def test_blank_discovered_file_means_defaults(env):
    env.write(env.project / "fence.json", "  \n")
    reply = env.resolve()
    assert reply.policy == Policy() and "empty: built-in defaults" in reply.sources[0]


def test_settings_relative_to_cwd_and_home(env):
    env.write(env.cwd / "local.json", {"allowPty": True})
    assert env.resolve(settings="local.json").policy.allow_pty
    env.write(env.home / "h.json", {"forceNewSession": True})
    assert env.resolve(settings="~/h.json").policy.force_new_session is True


def test_missing_settings_file_is_refused(env):
    """Not the defaults in its place: that would drop every rule the user wrote (issue 10)."""
    with pytest.raises(SettingsFileMissing, match=r"^settings file nope\.json does not exist$"):
        env.resolve(settings="nope.json")
    (env.cwd / "dangling.json").symlink_to(env.cwd / "gone.json")
    with pytest.raises(SettingsFileMissing, match=r"^settings file dangling\.json does not exist$"):
        env.resolve(settings="dangling.json")


def test_blank_settings_file_means_defaults(env):
    env.write(env.cwd / "blank.json", "  \n")
    reply = env.resolve(settings="blank.json")
    assert reply.policy == Policy() and "missing or empty" in reply.sources[0]


def test_template_names(env):
    for name in ("code", "code.json", "code.jsonc"):
        assert env.resolve(template=name).sources == ["template: code"]
    with pytest.raises(ConfigError, match='unknown template "cod"; did you mean "code"'):
        env.resolve(template="cod")


def test_invalid_project_config_names_the_file(env):
    path = env.write(env.project / "fence.json", {"network": {"allowedDomains": ["*.com"]}})
    with pytest.raises(ConfigError) as e:
        env.resolve()
    assert e.value.message.startswith(f"invalid configuration in {path}: $.network.allowedDomains[0]: ")


# --- extends ---------------------------------------------------------------------------------


def test_extends_template_merges(env):
    env.write(
        env.project / "fence.json",
        {"extends": "code.json", "network": {"allowedDomains": ["example.com", "github.com"]}, "allowPty": False},
    )
    reply = env.resolve()
    d = domains(reply)
    assert d[0] == "api.openai.com" and d[-1] == "example.com" and d.count("github.com") == 1
    assert reply.policy.allow_pty  # OR: the child cannot switch it off
    assert reply.policy.extends == "" and reply.policy.schema == ""
    assert reply.sources == [f"project config: {env.project / 'fence.json'}", "extends template: code"]
    assert (
        reply.provenance["network.allowedDomains"] == f"template: code + project config: {env.project / 'fence.json'}"
    )
    assert reply.provenance["allowPty"] == "template: code"
    assert reply.provenance["command.deny"] == "template: code"


def test_extends_relative_path_is_relative_to_the_extending_file(env):
    env.write(env.project / "conf" / "base.jsonc", '{"network": {"allowedDomains": ["base.com"]},}')
    env.write(
        env.project / "conf" / "mid.json", {"extends": "./base.jsonc", "network": {"allowedDomains": ["mid.com"]}}
    )
    env.write(env.project / "fence.json", {"extends": "conf/mid.json", "network": {"allowedDomains": ["top.com"]}})
    reply = env.resolve()
    assert domains(reply) == ["base.com", "mid.com", "top.com"]
    assert reply.sources[1:] == [
        f"extends file: {env.project / 'conf' / 'mid.json'}",
        f"extends file: {env.project / 'conf' / 'base.jsonc'}",
    ]


def test_extends_home_path(env):
    env.write(env.home / "base.json", {"allowPty": True})
    env.write(env.project / "fence.json", {"extends": "~/base.json"})
    assert env.resolve().policy.allow_pty


def test_extends_base_is_the_user_config_not_the_project(env):
    env.write(env.home / ".config" / "fence" / "fence.jsonc", {"network": {"allowedDomains": ["user.com"]}})
    env.write(env.root / "work" / "fence.json", {"network": {"allowedDomains": ["outer-project.com"]}})
    env.write(env.project / "fence.json", {"extends": "@base", "network": {"allowedDomains": ["p.com"]}})
    reply = env.resolve()
    assert domains(reply) == ["user.com", "p.com"]
    assert reply.sources[1] == f"extends @base (user config): {env.home / '.config' / 'fence' / 'fence.jsonc'}"


def test_extends_base_without_user_config_is_defaults(env):
    env.write(env.project / "fence.json", {"extends": "@base", "allowPty": True})
    reply = env.resolve()
    assert reply.policy.allow_pty and reply.sources[1] == "extends @base: built-in defaults (no user config)"


def test_extends_base_from_the_user_config_is_a_cycle(env):
    path = env.write(env.home / ".config" / "fence" / "fence.json", {"extends": "@base"})
    with pytest.raises(ConfigError) as e:
        env.resolve()
    assert f"extends cycle: {path} -> {path}" in e.value.message


def test_extends_cycle_names_the_chain(env):
    a = env.write(env.project / "a.json", {"extends": "./b.json"})
    b = env.write(env.project / "b.json", {"extends": "./a.json"})
    with pytest.raises(ConfigError) as e:
        env.resolve(settings=a)
    assert e.value.message == (
        f"invalid configuration in {b}: $.extends: extends cycle: {a} -> {b} -> {a}; remove one of these extends"
    )


def test_extends_depth_limit(env):
    for i in range(MAX_EXTENDS_DEPTH + 1):
        env.write(
            env.project / f"c{i}.json", {"extends": f"./c{i + 1}.json", "network": {"allowedDomains": [f"d{i}.com"]}}
        )
    env.write(env.project / f"c{MAX_EXTENDS_DEPTH + 1}.json", {"allowPty": True})
    # c0 -> ... -> c10: ten hops is the limit
    env.write(env.project / f"c{MAX_EXTENDS_DEPTH}.json", {"allowPty": True})
    reply = env.resolve(settings=str(env.project / "c0.json"))
    assert len(reply.sources) == MAX_EXTENDS_DEPTH + 1 and reply.policy.allow_pty
    env.write(env.project / f"c{MAX_EXTENDS_DEPTH}.json", {"extends": f"./c{MAX_EXTENDS_DEPTH + 1}.json"})
    with pytest.raises(ConfigError, match=f"extends chain is deeper than {MAX_EXTENDS_DEPTH} levels"):
        env.resolve(settings=str(env.project / "c0.json"))


def test_extends_missing_file_and_unknown_template(env):
    path = env.write(env.project / "fence.json", {"extends": "./nope.json"})
    with pytest.raises(ConfigError) as e:
        env.resolve()
    assert e.value.message.startswith(
        f'invalid configuration in {path}: $.extends: extends "./nope.json": file '
        f"not found: {env.project / 'nope.json'}"
    )
    env.write(env.project / "fence.json", {"extends": "cod"})
    with pytest.raises(ConfigError, match='unknown template "cod"; did you mean "code"'):
        env.resolve()


def test_invalid_extended_file_is_named(env):
    base = env.write(env.project / "base.json", {"devices": {"mode": "everything"}})
    env.write(env.project / "fence.json", {"extends": "./base.json"})
    with pytest.raises(ConfigError) as e:
        env.resolve()
    assert e.value.message.startswith(f"invalid configuration in {base}: $.devices.mode: ")


def test_cross_field_rule_spans_the_chain(env):
    env.write(env.project / "base.json", {"network": {"upstreamProxy": "http://proxy:3128"}})
    env.write(env.project / "fence.json", {"extends": "./base.json", "network": {"defaultAction": "proxy"}})
    assert env.resolve().policy.network.default_action == "proxy"
    env.write(env.project / "base.json", {})
    with pytest.raises(ConfigError) as e:
        env.resolve()
    assert e.value.message.startswith(
        f"invalid configuration in {env.project / 'fence.json'}: "
        '$.network.defaultAction: network.defaultAction "proxy" requires'
    )


def test_strict_deny_read_in_a_base_implies_default_deny_read(env):
    env.write(env.project / "base.json", {"filesystem": {"strictDenyRead": True}})
    env.write(env.project / "fence.json", {"extends": "./base.json"})
    fs = env.resolve().policy.filesystem
    assert fs.strict_deny_read and fs.default_deny_read


# --- provenance records ---------------------------------------------------------------------------


def test_chain_records_say_what_each_source_is_and_how_it_was_reached(env):
    user = env.write(
        env.home / ".config" / "fence" / "fence.jsonc", {"extends": "code", "command": {"deny": ["make release"]}}
    )
    mid = env.write(env.project / "conf" / "mid.json", {"extends": "@base", "command": {"deny": ["shared"]}})
    top = env.write(
        env.project / "fence.json",
        {"extends": "./conf/mid.json", "allowPty": True, "command": {"deny": ["git push", "shared"]}},
    )
    reply = env.resolve()
    assert [(r.kind, r.via, r.extends, r.path, r.name, r.empty) for r in reply.chain] == [
        ("file", "project", "", top, "", False),
        ("file", "extends", "./conf/mid.json", mid, "", False),
        ("file", "user", "@base", user, "", False),
        ("template", "extends", "code", "", "code", False),
    ]
    assert [r.label for r in reply.chain] == [
        f"project config: {top}",
        f"file: {mid}",
        f"@base (user config): {user}",
        "template: code",
    ]
    assert reply.user_config_dir == str(env.home / ".config" / "fence")
    deny = reply.fields["command.deny"]
    assert deny.sources == [3, 2, 1, 0]  # the order the merge applied them: innermost base first
    assert deny.owners["shared"] == [1, 0] and deny.owners["make release"] == [2]
    assert deny.owners["git push"] == [3, 0]  # the template denies it too
    assert reply.fields["allowPty"].sources == [3] and not reply.fields["allowPty"].owners  # template's true wins
    assert reply.fields["network.allowedDomains"].sources == [3] and not reply.fields["network.allowedDomains"].owners
    assert "extends" not in reply.fields


def test_display_strings_are_rendered_from_the_records(env):
    env.write(env.project / "base.json", "")
    env.write(env.project / "fence.json", {"extends": "./base.json", "network": {"allowedDomains": ["a.com"]}})
    reply = env.resolve()
    assert reply.chain[1].empty
    assert reply.sources[1] == f"extends file: {env.project / 'base.json'} (empty: built-in defaults)"
    for path, record in reply.fields.items():
        assert reply.provenance[path] == " + ".join(reply.chain[i].label for i in record.sources)
    env.write(env.cwd / "blank.json", "")
    blank = env.resolve(settings="blank.json")
    assert blank.chain[0].empty and blank.chain[0].via == "cli"
    assert blank.sources == [f"settings: {env.cwd / 'blank.json'} (missing or empty: built-in defaults)"]
    defaults = env.resolve(cwd=str(env.root))
    assert defaults.chain[0].kind == "defaults" and defaults.chain[0].label == defaults.sources[0]
    template = env.resolve(template="code.json")
    assert (template.chain[0].kind, template.chain[0].via, template.chain[0].name) == ("template", "cli", "code")


def test_user_config_dir_follows_the_requests_xdg_config_home(env):
    assert env.resolve(env_xdg_config_home=str(env.xdg)).user_config_dir == str(env.xdg / "fence")
    assert env.resolve(env_xdg_config_home="relative").user_config_dir == str(env.home / ".config" / "fence")


# --- the service ---------------------------------------------------------------------------------


def test_service_replies_with_policy_sources_and_provenance(env):
    env.write(env.project / "fence.json", {"extends": "code-strict"})
    bus = InProcessBus()
    run_sync(ConfigService().start(bus))
    reply = run_sync(bus.request(CONFIG_RESOLVE, env.req(), ConfigResolveReply))
    assert reply.policy.filesystem.default_deny_read
    assert reply.provenance["filesystem.defaultDenyRead"] == "template: code-strict"
    assert reply.sources[1:] == ["extends template: code-strict", "extends template: code"]
    assert [r.name for r in reply.chain] == ["", "code-strict", "code"]  # the records cross the bus
    assert reply.fields["filesystem.defaultDenyRead"].sources == [1]
    assert reply.user_config_dir == str(env.home / ".config" / "fence")


def test_service_reports_config_errors_as_invalid_config(env):
    env.write(env.project / "fence.json", "{")
    bus = InProcessBus()
    run_sync(ConfigService().start(bus))
    with pytest.raises(RemoteError) as e:
        run_sync(bus.request(CONFIG_RESOLVE, env.req(), ConfigResolveReply))
    assert e.value.code == "invalid_config" and "invalid JSON in config file" in e.value.message


def test_request_env_not_process_env(env, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(env.xdg))
    monkeypatch.setenv("HOME", "/nonexistent")
    env.write(env.xdg / "fence" / "fence.json", {"allowPty": True})
    assert not env.resolve().policy.allow_pty
    assert env.resolve(env_xdg_config_home=str(env.xdg)).policy.allow_pty
