"""Nothing a sandbox writes in a granted tree runs later on the host, as root and as an unprivileged user.

The attack: under ``-t code`` (which grants ``~/.config/**``) a command plants
``~/.config/git/config`` with a ``core.fsmonitor``, and the user's next
``git status`` on the host runs it.  Each case checks the host with real
programs (git) and real files, during and after the run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from fence.protectednames import DIR, PROJECT, PROTECTED_NAMES

HOME_PERSISTENCE = [(n.path, n.placeholder, n.why) for n in PROTECTED_NAMES if n.where != PROJECT]
"""Every row of the table looked for in the home directory: (path, placeholder, why)."""

pytestmark = pytest.mark.sandbox


class Home:
    """A fresh home directory (and a git project in it) owned by the runner's user."""

    def __init__(self, fence):
        self.fence = fence
        self.path = fence.workdir()
        self.project = self.path / "proj"
        self.mkdir(self.project, ".config", ".local/share", ".claude", ".cache")
        self.git("init", "-q", str(self.project))
        self.own(self.project)

    def own(self, *paths: Path) -> None:
        self.fence.own(*paths)

    def mkdir(self, *rels) -> None:
        for rel in rels:
            path = self.path / rel
            path.mkdir(parents=True, exist_ok=True)
        self.own(self.path)

    def put(self, rel: str, text: str) -> Path:
        path = self.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        self.own(self.path)
        return path

    def env(self, **extra) -> dict:
        return self.fence.env(HOME=str(self.path), **extra)

    def fence_sh(self, script: str, *args: str, cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
        return self.fence.run(*args, "-c", script, env=self.env(), cwd=str(cwd or self.project), **kw)

    def fence_popen(self, script: str, *args: str) -> subprocess.Popen:
        return self.fence.popen(
            *args,
            "-c",
            script,
            env=self.env(),
            cwd=str(self.project),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def git(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """git on the host, as the user (whose global config the sandbox attacked)."""
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.path), "GIT_CONFIG_NOSYSTEM": "1"}
        return subprocess.run(
            ["git", *args],
            cwd=str(cwd or self.path),
            env=env,
            user=self.fence.user,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def writable(self, policy: dict) -> None:
        (self.project / "fence.json").write_text(json.dumps(policy))
        self.own(self.project)


@pytest.fixture
def home(fence):
    h = Home(fence)
    yield h
    shutil.rmtree(h.path, ignore_errors=True)


PLANT_FSMONITOR = (
    'mkdir -p ~/.config/git && printf "[core]\\n\\tfsmonitor = \\"touch {marker}; false\\"\\n" > ~/.config/git/config'
)


def test_code_template_cannot_plant_the_global_git_config(home):
    marker = home.path / "PWNED"
    r = home.fence_sh(PLANT_FSMONITOR.format(marker=marker) + "; echo planted=$?", "-t", "code")
    assert "planted=1" in r.stdout and "Read-only file system" in r.stderr, r.stderr
    assert home.git("status", cwd=home.project).returncode == 0
    assert not marker.exists()
    assert not (home.path / ".config" / "git").exists()  # the placeholder is gone with the run


def test_an_existing_global_git_config_cannot_be_changed_or_moved_away(home):
    cfg = home.put(".config/git/config", "[user]\n\tname = me\n")
    marker = home.path / "PWNED"
    script = (
        f'printf "[core]\\n\\tfsmonitor = \\"touch {marker}\\"\\n" >> ~/.config/git/config; '
        "mv ~/.config/git ~/.config/git.old; mv ~/.config/git/config ~/.config/git/c2; "
        "rm -rf ~/.config/git; echo done"
    )
    r = home.fence_sh(script, "-t", "code")
    assert "done" in r.stdout, r.stderr
    assert cfg.read_text() == "[user]\n\tname = me\n"
    assert not (home.path / ".config" / "git.old").exists()
    home.git("status", cwd=home.project)
    assert not marker.exists()


def test_the_placeholder_holds_during_a_long_run(home):
    """The host's git runs *while* the sandbox is still going: nothing planted is live, even for a moment."""
    marker = home.path / "PWNED"
    proc = home.fence_popen("sleep 1; " + PLANT_FSMONITOR.format(marker=marker) + "; sleep 2; echo end", "-t", "code")
    try:
        deadline = time.monotonic() + 20
        while not (home.path / ".config" / "git").exists():  # reserved: an empty read-only directory
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        time.sleep(1.5)  # the plant has been tried by now
        assert list((home.path / ".config" / "git").iterdir()) == []
        home.git("status", cwd=home.project)
        assert not marker.exists()
    finally:
        out, err = proc.communicate(timeout=30)
    assert "end" in out, err
    assert not (home.path / ".config" / "git").exists()


def test_a_run_ending_keeps_the_placeholders_of_a_run_still_going(home):
    """Removing a placeholder that is a mount point in another sandbox would detach that sandbox's bind."""
    long = home.fence_popen("sleep 3; echo evil > ~/.config/git/config; echo wrote=$?", "-t", "code")
    try:
        deadline = time.monotonic() + 20
        while not (home.path / ".config" / "git").exists():
            assert time.monotonic() < deadline and long.poll() is None, long.communicate()
            time.sleep(0.05)
        short = home.fence_sh("true", "-t", "code")
        assert short.returncode == 0, short.stderr
        assert (home.path / ".config" / "git").exists()  # the long run still holds it
    finally:
        out, err = long.communicate(timeout=30)
    assert "wrote=1" in out, err
    assert not (home.path / ".config" / "git").exists()  # the last run out removed it


def test_every_home_persistence_path_is_protected_when_home_is_writable(home):
    """Existing: unchanged, and their parents cannot be moved away.  Missing: nothing appears on the host."""
    existing = [rel for i, (rel, _, _) in enumerate(HOME_PERSISTENCE) if i % 2 == 0]
    missing = [rel for i, (rel, _, _) in enumerate(HOME_PERSISTENCE) if i % 2 == 1]
    for rel, placeholder, _ in HOME_PERSISTENCE:
        if rel in existing:
            home.put(rel + "/keep" if placeholder == DIR else rel, "orig\n")
    home.writable({"filesystem": {"allowWrite": [".", "~"]}, "command": {"useDefaults": False}})
    lines = []
    for rel, placeholder, _ in HOME_PERSISTENCE:
        target = f"~/{rel}/evil" if placeholder == DIR else f"~/{rel}"
        lines.append(f'mkdir -p "$(dirname {target})"; echo evil >> {target}')
        if "/" in rel:
            parent = rel.rsplit("/", 1)[0]
            lines.append(f"mv ~/{parent} ~/{parent}.moved")
    r = home.fence_sh("; ".join(lines) + "; echo done")
    assert "done" in r.stdout, r.stderr
    for rel, placeholder, _ in HOME_PERSISTENCE:
        path = home.path / rel
        if rel in existing:
            kept = path / "keep" if placeholder == DIR else path
            assert kept.read_text() == "orig\n", rel
            assert not (path / "evil").exists(), rel
        else:
            assert not path.exists(), rel
    assert not list(home.path.rglob("*.moved")), r.stderr
    # the names that cannot have an inert placeholder were watched, and quarantined
    for rel, placeholder, _ in HOME_PERSISTENCE:
        if rel in missing and placeholder is None:
            assert list((home.path / rel).parent.glob(Path(rel).name + ".fence-quarantine-*")), rel


def test_claude_json_is_read_only_unless_opened_on_purpose(home):
    state = home.put(".claude.json", '{"numStartups": 1}\n')
    r = home.fence_sh('echo \'{"mcpServers":{"x":{"command":"evil"}}}\' > ~/.claude.json; echo rc=$?', "-t", "code")
    assert "rc=1" in r.stdout, r.stderr
    assert state.read_text() == '{"numStartups": 1}\n'
    (home.project / "open.json").write_text(
        json.dumps({"extends": "code", "filesystem": {"allowWriteProtected": ["~/.claude.json"]}})
    )
    home.own(home.project)
    r = home.fence_sh("echo '{\"numStartups\": 2}' > ~/.claude.json; echo rc=$?", "-d", "-s", "open.json")
    assert "rc=0" in r.stdout, r.stderr
    assert "allowWriteProtected" in r.stderr
    assert state.read_text() == '{"numStartups": 2}\n'


def test_claude_settings_are_protected_in_the_granted_claude_directory(home):
    r = home.fence_sh(
        "cat ~/.claude/settings.json; echo '{\"hooks\":{}}' > ~/.claude/settings.json; "
        "echo rc=$?; echo ok > ~/.claude/notes.txt",
        "-t",
        "code",
    )
    assert r.stdout.startswith("{}\n") and "rc=1" in r.stdout, r.stderr
    assert not (home.path / ".claude" / "settings.json").exists()
    assert (home.path / ".claude" / "notes.txt").read_text() == "ok\n"  # the rest stays writable


def test_a_dotfiles_repository_in_a_read_only_home_is_never_bound_writable(home):
    """``~/.git`` is seen by the protection scan; pinning it must not make a read-only home writable."""
    home.git("init", "-q", str(home.path))
    home.own(home.path)
    home.writable({"filesystem": {"allowWrite": ["."]}, "command": {"useDefaults": False}})
    r = home.fence_sh("true", "-d")
    assert r.returncode == 0, r.stderr
    binds = r.stderr.split("--bind-fd")[1:]
    assert not any(b.split()[1] == str(home.path / ".git") for b in binds), r.stderr
    r = home.fence_sh("echo x >> ~/.git/config; touch ~/.git/hooks/pre-commit; echo done")
    assert "done" in r.stdout
    assert not (home.path / ".git" / "hooks" / "pre-commit").exists()


def test_hooks_and_includes_named_by_the_global_git_config_are_protected(home):
    home.put(
        ".gitconfig",
        "[core]\n\thooksPath = ~/.cache/hooks\n[include]\n\tpath = ~/.cache/extra.gitconfig\n"
        '[includeIf "gitdir:~/"]\n\tpath = .cache/cond.gitconfig\n',
    )
    home.put(".cache/extra.gitconfig", "[user]\n\tname = me\n")
    marker = home.path / "PWNED"
    script = (
        f'printf "[core]\\n\\tfsmonitor = \\"touch {marker}\\"\\n" >> ~/.cache/extra.gitconfig; '
        f'printf "[core]\\n\\tfsmonitor = \\"touch {marker}\\"\\n" > ~/.cache/cond.gitconfig; '
        f"mkdir -p ~/.cache/hooks && printf '#!/bin/sh\\ntouch {marker}\\n' > ~/.cache/hooks/pre-commit "
        "&& chmod +x ~/.cache/hooks/pre-commit; echo ok > ~/.cache/fine; echo done"
    )
    r = home.fence_sh(script, "-t", "code")
    assert "done" in r.stdout, r.stderr
    assert (home.path / ".cache" / "fine").read_text() == "ok\n"
    assert (home.path / ".cache" / "extra.gitconfig").read_text() == "[user]\n\tname = me\n"
    assert not (home.path / ".cache" / "cond.gitconfig").exists()
    assert not (home.path / ".cache" / "hooks" / "pre-commit").exists()  # quarantined (a new hooks directory)
    home.git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "x", cwd=home.project)
    home.git("status", cwd=home.project)
    assert not marker.exists()


CREDENTIALS = {
    ".config/gh/hosts.yml": "oauth_token: gho_secret\n",
    ".npmrc": "//registry/:_authToken=npm_secret\n",
    ".azure/msal_token_cache.json": "azure_secret\n",
    ".config/op/config": "op_secret\n",
}


@pytest.mark.parametrize("template,readable", [("code", {".config/gh/hosts.yml", ".npmrc"}), ("code-strict", set())])
def test_credential_stores(home, template, readable):
    for rel, text in CREDENTIALS.items():
        home.put(rel, text)
    r = home.fence_sh("; ".join(f"cat ~/{rel} 2>/dev/null" for rel in CREDENTIALS) + "; true", "-t", template)
    for rel, text in CREDENTIALS.items():
        assert (text in r.stdout) == (rel in readable), (rel, r.stdout, r.stderr)


def test_the_parent_of_a_protected_project_directory_cannot_be_renamed_away(home):
    """``.claude/commands`` is read-only; ``mv .claude .claude.old && mkdir -p .claude/commands`` used to free it."""
    cmd = home.put("proj/.claude/commands/review.md", "review\n")
    home.writable({"filesystem": {"allowWrite": ["."]}, "command": {"useDefaults": False}})
    r = home.fence_sh(
        "mv .claude .claude.old; mkdir -p .claude/commands && echo evil > .claude/commands/evil.md; echo done"
    )
    assert "done" in r.stdout, r.stderr
    assert not (home.project / ".claude.old").exists()
    assert cmd.read_text() == "review\n" and not (home.project / ".claude" / "commands" / "evil.md").exists()
