"""fence config show|init|schema|templates, fence import --claude, fence completion; schema drift."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from fence.config import templates
from fence.config.commands import main_completion, main_config, main_import
from fence.config.importer import translate_claude
from fence.config.load import parse
from fence.config.schema import generate, render

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.chdir(work)
    return home


# --- config show --------------------------------------------------------------------------


def test_show_prints_chain_on_stderr_and_json_on_stdout(home, capsys):
    Path("fence.json").write_text('{"extends": "code", "network": {"allowedDomains": ["example.com"]}}')
    assert main_config(["show"]) == 0
    out, err = capsys.readouterr()
    config = json.loads(out)
    assert config["network"]["allowedDomains"][-1] == "example.com"
    assert "extends" not in config and "$schema" not in config
    lines = err.splitlines()
    assert lines[0] == "Active config chain:"
    assert lines[1] == f"  project config: {Path.cwd() / 'fence.json'}"
    assert lines[2].strip() == "-> extends template: code"
    # the output is itself a valid config
    assert parse(out.encode(), "stdout") is not None


def test_show_template_and_settings(home, capsys, tmp_path):
    assert main_config(["show", "--template", "workspace-write"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"filesystem": {"allowWrite": ["."]}}
    assert "template: workspace-write" in err
    settings = tmp_path / "s.json"
    settings.write_text('{"allowPty": true}')
    assert main_config(["show", "-s", str(settings)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"allowPty": True} and f"settings: {settings}" in err


def test_show_explain(home, capsys):
    Path("fence.json").write_text('{"extends": "code-strict", "network": {"allowedDomains": ["example.com"]}}')
    assert main_config(["show", "--explain"]) == 0
    err = capsys.readouterr().err
    here = Path.cwd() / "fence.json"
    explained = err.split("Field sources:\n", 1)[1]
    sources = dict(line.strip().split(None, 1) for line in explained.splitlines())
    assert sources["network.allowedDomains"] == f"template: code + project config: {here}"
    assert sources["filesystem.defaultDenyRead"] == "template: code-strict"
    assert sources["allowPty"] == "template: code"


def test_show_bad_config(home, capsys):
    Path("fence.json").write_text('{"network": {"allowedDomains": ["*.com"]}}')
    assert main_config(["show"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: failed to load config: invalid configuration in ")
    assert 'invalid allowed domain "*.com": wildcard pattern too broad (e.g., *.com not allowed)' in err


def test_show_accepts_internationalised_domains(home, capsys):
    """docs/network.md: an IDN pattern means its IDNA form, so the validator accepts it as the filter matches it."""
    Path("fence.json").write_text(
        '{"network": {"allowedDomains": ["bücher.example", "*.bücher.example"], "deniedDomains": ["straße.de"]}}',
        encoding="utf-8",
    )
    assert main_config(["show"]) == 0, capsys.readouterr().err
    network = json.loads(capsys.readouterr().out)["network"]
    assert network == {"allowedDomains": ["bücher.example", "*.bücher.example"], "deniedDomains": ["straße.de"]}


def test_show_options_are_exclusive(home, capsys):
    assert main_config(["show", "-s", "x", "-t", "code"]) == 2


# --- config init ----------------------------------------------------------------------------


def test_init_writes_a_commented_starter_and_never_overwrites(home, capsys):
    path = home / ".config" / "fence" / "fence.jsonc"
    assert main_config(["init"]) == 0
    text = path.read_text()
    assert text.count("//") > 5 and parse(text.encode(), "starter") is not None
    path.write_text('{"allowPty": true}')
    assert main_config(["init"]) == 1
    assert "already exists; use --force" in capsys.readouterr().err
    assert path.read_text() == '{"allowPty": true}'
    assert main_config(["init", "--template", "code", "--force"]) == 0
    policy = parse(path.read_text().encode(), "starter")
    assert policy is not None
    assert policy.extends == "code"
    assert main_config(["init", "--template", "nope", "--force"]) == 1


def test_init_respects_xdg_and_existing_json(home, monkeypatch, tmp_path):
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    assert main_config(["init"]) == 0
    assert (xdg / "fence" / "fence.jsonc").is_file()
    monkeypatch.delenv("XDG_CONFIG_HOME")
    (home / ".config" / "fence").mkdir(parents=True)
    (home / ".config" / "fence" / "fence.json").write_text("{}")
    assert main_config(["init"]) == 1  # the existing user config is the target


# --- schema and templates -----------------------------------------------------------------------


def test_schema_matches_the_committed_file():
    committed = json.loads((REPO / "docs" / "schema" / "fence.schema.json").read_text())
    assert committed == generate(), (
        "docs/schema/fence.schema.json is stale: run python -m fence.config.schema > docs/schema/fence.schema.json"
    )


def test_schema_content():
    schema = generate()
    assert schema["$schema"].startswith("https://json-schema.org/") and schema["$id"].endswith("fence.schema.json")
    assert schema["additionalProperties"] is False
    assert all(d["additionalProperties"] is False for d in schema["$defs"].values())
    net = schema["$defs"]["NetworkConfig"]["properties"]
    assert net["allowedDomains"]["default"] == [] and net["allowedDomains"]["description"]
    assert net["defaultAction"]["enum"] == ["", "deny", "proxy"]
    assert net["allowLocalOutboundPorts"]["items"]["maximum"] == 65535
    for name, definition in [("Policy", schema), *schema["$defs"].items()]:
        for key, prop in definition["properties"].items():
            assert prop.get("description"), f"{name}.{key} has no description (a docstring under the field)"
    from fence.policy import SCHEMA_EXTRA

    for key in SCHEMA_EXTRA:
        cls, field = key.split(".")
        definition = schema if cls == "Policy" else schema["$defs"][cls]
        assert field in definition["properties"], f"SCHEMA_EXTRA names an unknown field {key}"


def test_every_template_follows_the_schema_shape():
    schema = generate()

    def check(obj, definition):
        for key, value in obj.items():
            assert key in definition["properties"], key
            ref = definition["properties"][key].get("$ref")
            if ref:
                check(value, schema["$defs"][ref.rsplit("/", 1)[1]])

    from fence.config import jsonc

    for name in templates.names():
        path = templates.path_of(name)
        assert path is not None
        check(jsonc.decode(Path(path).read_bytes()), schema)


def test_schema_and_templates_commands(capsys):
    assert main_config(["schema"]) == 0
    assert capsys.readouterr().out == render()
    assert main_config(["templates"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == templates.names()
    assert all(len(line.split(None, 1)[1]) > 10 for line in lines)


# --- import --claude ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, rule, section, field, value",
    [
        ("allow", "Bash(npm run test:*)", "command", "allow", "npm run test"),
        ("allow", "Bash(git status)", "command", "allow", "git status"),
        ("allow", "Bash(make *)", "command", "allow", "make"),
        ("deny", "Bash(curl:*)", "command", "deny", "curl"),
        ("ask", "Bash(git push:*)", "command", "deny", "git push"),
        ("deny", "Read(./.env)", "filesystem", "denyRead", "./.env"),
        ("deny", "Read(~/.aws/**)", "filesystem", "denyRead", "~/.aws/**"),
        ("deny", "Read(//etc/shadow)", "filesystem", "denyRead", "/etc/shadow"),
        ("allow", "Read(docs/**)", "filesystem", "allowRead", "docs/**"),
        ("allow", "Edit(src/**)", "filesystem", "allowWrite", "src/**"),
        ("allow", "Write(out/*)", "filesystem", "allowWrite", "out/*"),
        ("deny", "Edit(.github/**)", "filesystem", "denyWrite", ".github/**"),
        ("ask", "Write(~/.bashrc)", "filesystem", "denyWrite", "~/.bashrc"),
        ("allow", "WebFetch(domain:docs.python.org)", "network", "allowedDomains", "docs.python.org"),
        ("deny", "WebFetch(domain:evil.example.com)", "network", "deniedDomains", "evil.example.com"),
    ],
)
def test_claude_translation(kind, rule, section, field, value):
    result = translate_claude({"permissions": {kind: [rule]}}, "/proj/.claude/settings.json")
    assert result.config("") == {section: {field: [value]}} and not result.skipped


def test_claude_project_relative_paths():
    result = translate_claude({"permissions": {"deny": ["Read(/secrets/**)"]}}, "/proj/.claude/settings.json")
    assert result.config("") == {"filesystem": {"denyRead": ["/proj/secrets/**"]}}


@pytest.mark.parametrize(
    "rule",
    [
        "Bash",
        "WebSearch",
        "mcp__github__create_issue",
        "Bash(git * main)",
        "WebFetch(https://x.example.com)",
        "WebFetch(domain:*.com)",
        "Glob(**)",
        "Bash(*)",
        "not a rule (",
    ],
)
def test_claude_untranslatable_rules_are_reported(rule):
    result = translate_claude({"permissions": {"deny": [rule]}}, "/p/settings.json")
    assert result.config("") == {} and len(result.skipped) == 1 and repr(rule) in result.skipped[0]


def test_import_command(home, capsys, tmp_path):
    settings = tmp_path / "settings.json"
    settings.write_text(
        json.dumps(
            {
                "permissions": {
                    "allow": ["Bash(npm test)", "WebSearch"],
                    "deny": ["Read(~/.ssh/**)"],
                    "ask": ["Bash(rm:*)"],
                }
            }
        )
    )
    assert main_import(["--claude", "-f", str(settings)]) == 0
    out, err = capsys.readouterr()
    config = json.loads(out)
    assert config == {
        "extends": "code",
        "filesystem": {"denyRead": ["~/.ssh/**"]},
        "command": {"allow": ["npm test"], "deny": ["rm"]},
    }
    assert "Imported 3 rules" in err and "Not translated (1):" in err and "'WebSearch'" in err
    assert main_import(["--claude", "-f", str(settings), "--no-extend"]) == 0
    assert "extends" not in json.loads(capsys.readouterr().out)
    assert main_import(["--claude", "-f", str(settings), "--extend", "code-strict"]) == 0
    assert json.loads(capsys.readouterr().out)["extends"] == "code-strict"
    out_file = tmp_path / "out.json"
    assert main_import(["--claude", "-f", str(settings), "-o", str(out_file)]) == 0
    assert json.loads(out_file.read_text())["extends"] == "code"
    assert main_import(["--claude", "-f", str(settings), "-o", str(out_file)]) == 1  # exists
    assert main_import(["--claude", "-f", str(settings), "--save"]) == 0
    saved = home / ".config" / "fence" / "fence.jsonc"
    assert json.loads(saved.read_text())["command"]["deny"] == ["rm"]


def test_import_default_input_and_errors(home, capsys):
    assert main_import(["--claude"]) == 1
    assert f"{home}/.claude/settings.json: no such file" in capsys.readouterr().err
    (home / ".claude").mkdir()
    (home / ".claude" / "settings.json").write_text("{bad")
    assert main_import(["--claude"]) == 1
    assert "invalid JSON in Claude Code settings" in capsys.readouterr().err
    (home / ".claude" / "settings.json").write_text('{"permissions": {"allow": ["Edit(*)"]}}')
    assert main_import(["--claude"]) == 0
    assert main_import([]) == 1
    assert main_import(["--claude", "--save", "-o", "x"]) == 2
    assert main_import(["--claude", "--extend", "nope"]) == 1


# --- completion -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell, capsys, tmp_path):
    assert main_completion([shell]) == 0
    script = capsys.readouterr().out
    for word in (
        "run",
        "config",
        "import",
        "completion",
        "show",
        "init",
        "schema",
        "templates",
        "--settings",
        "--template",
        "--claude",
        "--explain",
        "code-strict",
    ):
        assert (word.lstrip("-") if shell == "fish" else word) in script, word
    if shutil.which(shell):
        path = tmp_path / f"fence.{shell}"
        path.write_text(script)
        r = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr


def test_bash_completion_completes(capsys, tmp_path):
    if not shutil.which("bash"):
        pytest.skip("no bash")
    main_completion(["bash"])
    path = tmp_path / "fence.bash"
    path.write_text(capsys.readouterr().out)

    def complete(*words):
        line = " ".join(f"'{w}'" for w in words)
        script = (
            f"source {path}; COMP_WORDS=(fence {line}); COMP_CWORD={len(words)}; _fence; "
            'printf "%s\\n" "${COMPREPLY[@]}"'
        )
        return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30).stdout.split()

    assert complete("con") == ["config"]
    assert complete("config", "") == ["show", "init", "schema", "templates"]
    assert complete("config", "show", "--t") == ["--template"]
    assert complete("-t", "code-s") == ["code-strict"]
    assert complete("import", "--extend", "npm") == ["npm-install"]
    assert complete("completion", "") == ["bash", "zsh", "fish"]


def test_completion_usage_error(capsys):
    assert main_completion(["tcsh"]) == 2
    assert main_completion([]) == 2
