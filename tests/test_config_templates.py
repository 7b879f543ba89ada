"""Built-in templates: all load and validate; content of "code" is Fence's (docs/compatibility.md#templates)."""

from __future__ import annotations

import pytest

from fence.config import templates
from fence.config.load import load_file
from fence.config.resolve import resolve
from fence.messages import ConfigResolveRequest

REQUIRED = [
    "code",
    "code-strict",
    "code-relaxed",
    "local-dev-server",
    "git-readonly",
    "disable-telemetry",
    "npm-install",
    "pip-install",
    "workspace-write",
    "default-deny",
    "agent-api-only",
]


def resolved(name):
    return resolve(ConfigResolveRequest(cwd="/", template=name, home="/nonexistent")).policy


def test_all_required_templates_exist():
    assert set(REQUIRED) <= set(templates.names())


@pytest.mark.parametrize("name", templates.names())
def test_template_loads_validates_and_describes_itself(name):
    path = templates.path_of(name)
    assert path is not None
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    assert raw.startswith("// "), "first line is the one-line description"
    assert 20 < len(templates.description(name)) < 200
    assert raw.count("//") > 2, "templates explain their choices in comments"
    assert load_file(path) is not None
    resolved(name)


def test_code_template_content():
    p = resolved("code")
    assert p.allow_pty and p.network.allow_local_binding and p.network.allow_local_outbound is True
    assert p.network.allowed_domains == [
        "api.openai.com",
        "*.anthropic.com",
        "api.githubcopilot.com",
        "generativelanguage.googleapis.com",
        "api.mistral.ai",
        "api.cohere.ai",
        "api.together.xyz",
        "openrouter.ai",
        "api.morphllm.com",
        "api.minimax.io",
        "api.minimaxi.com",
        "*.amazonaws.com",
        "opencode.ai",
        "api.opencode.ai",
        "ampcode.com",
        "*.ampcode.com",
        "*.factory.ai",
        "api.workos.com",
        "*.cursor.sh",
        "data.charm.land",
        "catwalk.charm.sh",
        "*.githubcopilot.com",
        "github.com",
        "api.github.com",
        "raw.githubusercontent.com",
        "codeload.github.com",
        "objects.githubusercontent.com",
        "release-assets.githubusercontent.com",
        "gitlab.com",
        "registry.npmjs.org",
        "*.npmjs.org",
        "registry.yarnpkg.com",
        "pypi.org",
        "files.pythonhosted.org",
        "crates.io",
        "static.crates.io",
        "index.crates.io",
        "proxy.golang.org",
        "sum.golang.org",
        "formulae.brew.sh",
        "models.dev",
    ]
    assert p.network.denied_domains == [
        "169.254.169.254",
        "metadata.google.internal",
        "instance-data.ec2.internal",
        "statsig.anthropic.com",
        "*.sentry.io",
    ]
    assert p.filesystem.allow_write == [
        ".",
        "/tmp",
        "~/.cache/**",
        "~/.claude*",
        "~/.claude/**",
        "~/.amp",
        "~/.codex/**",
        "~/.cursor/**",
        "~/.opencode/**",
        "~/.local/state/**",
        "~/.gemini/**",
        "~/.factory/**",
        "~/.pi/**",
        "~/.copilot/**",
        "~/.kiro/**",
        "~/Library/Application Support/kiro-cli/**",
        "~/.npm/_cacache",
        "~/.npm/_npx",
        "~/.cache",
        "~/.bun/**",
        "~/.cargo/registry/**",
        "~/.cargo/git/**",
        "~/.cargo/.package-cache",
        "~/.zcompdump*",
        "~/.local/share/**",
        "~/.config/**",
    ]
    assert p.filesystem.deny_write == ["**/.env", "**/.env.*", "**/*.key", "**/*.pem", "**/*.p12", "**/*.pfx"]
    assert p.filesystem.deny_read == [
        "~/.ssh/id_*",
        "~/.ssh/config",
        "~/.ssh/*.pem",
        "~/.gnupg/**",
        "~/.aws/**",
        "~/.azure/**",
        "~/.config/gcloud/**",
        "~/.config/op/**",
        "~/.kube/**",
        "~/.docker/**",
        "~/.pypirc",
        "~/.netrc",
        "~/.git-credentials",
        "~/.cargo/credentials",
        "~/.cargo/credentials.toml",
    ]
    assert p.command.use_defaults is True
    assert p.command.deny == [
        "git push",
        "git reset",
        "git clean",
        "git checkout --",
        "git rebase",
        "git merge",
        "npm publish",
        "pnpm publish",
        "yarn publish",
        "cargo publish",
        "twine upload",
        "gem push",
        "sudo",
        "gh pr create",
        "gh pr merge",
        "gh pr close",
        "gh pr reopen",
        "gh pr review",
        "gh pr comment",
        "gh release create",
        "gh release delete",
        "gh repo create",
        "gh repo fork",
        "gh repo delete",
        "gh issue create",
        "gh issue close",
        "gh issue comment",
        "gh gist create",
        "gh workflow run",
        "gh api",
        "gh auth login",
        "gh secret set",
        "gh secret delete",
        "gh variable set",
        "gh variable delete",
    ]


def test_code_strict_and_relaxed_build_on_code():
    code, strict, relaxed = resolved("code"), resolved("code-strict"), resolved("code-relaxed")
    assert strict.filesystem.default_deny_read and strict.filesystem.allow_read == ["."]
    assert strict.network == code.network and strict.command == code.command
    assert strict.filesystem.deny_read == code.filesystem.deny_read + ["~/.config/gh/hosts.yml", "~/.npmrc"]
    assert relaxed.network.allowed_domains == code.network.allowed_domains + ["*"]
    assert relaxed.network.denied_domains == code.network.denied_domains


def test_reference_example_templates():
    assert resolved("agent-api-only").network.allowed_domains == ["api.openai.com", "api.anthropic.com"]
    assert resolved("agent-api-only").filesystem.allow_write == ["."]
    assert resolved("workspace-write").filesystem.allow_write == ["."]
    assert resolved("workspace-write").network.allowed_domains == []
    deny = resolved("default-deny")
    assert deny.network.allowed_domains == [] and deny.filesystem.allow_write == []
    git = resolved("git-readonly")
    assert git.filesystem.allow_write == ["."] and git.filesystem.deny_write == [".git"]
    assert git.command.deny == ["git push", "git reset", "git clean", "git checkout --", "git rebase", "git merge"]
    dev = resolved("local-dev-server")
    assert dev.network.allow_local_binding and dev.network.allow_local_outbound
    assert dev.filesystem.allow_write == [".", "/tmp"]
    npm = resolved("npm-install")
    assert {"registry.npmjs.org", "*.npmjs.org"} <= set(npm.network.allowed_domains)
    assert {".", "node_modules", "/tmp"} <= set(npm.filesystem.allow_write)
    pip = resolved("pip-install")
    assert {"pypi.org", "files.pythonhosted.org"} <= set(pip.network.allowed_domains)
    assert {".", "/tmp"} <= set(pip.filesystem.allow_write)
    telemetry = resolved("disable-telemetry")
    assert telemetry.network.allowed_domains == [] and "*.sentry.io" in telemetry.network.denied_domains


def test_template_lookup():
    assert templates.path_of("code.json") == templates.path_of("code.jsonc") == templates.path_of("code")
    for bad in ("", "../code", "nope", ".hidden", "a/b"):
        assert templates.path_of(bad) is None
