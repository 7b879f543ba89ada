"""Where a setting came from, end to end: the config service's records name the file or template in
preflight messages and ``fence -d``, and the files of the chain stay read-only in the sandbox.

The executor gets all of it in the resolve reply (``ConfigResolveReply.chain``/``fields``/
``user_config_dir``); it reads no config file and imports nothing from ``fence.config``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fence.executor.runner import FenceError, _user_config_dir
from fence.messages import ConfigResolveReply
from fence.policy import Policy

BLOCKED = "Error: command blocked by sandbox command policy: "


def _write(fence, path: Path, config: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    fence.own(path.parent)
    return str(path)


def _first_line(r) -> str:
    assert r.returncode == 1, (r.stdout, r.stderr)
    return r.stderr.splitlines()[0]


@pytest.mark.sandbox
def test_block_names_the_user_config(fence):
    work = fence.workdir()
    xdg = fence.workdir()
    user = _write(fence, xdg / "fence" / "fence.json", {"command": {"deny": ["make release"]}})
    r = fence.run("-c", "make release now", cwd=str(work), env=fence.env(XDG_CONFIG_HOME=str(xdg)))
    assert _first_line(r) == f'{BLOCKED}"make release now" matches "make release" (rule from user config: {user})'


@pytest.mark.sandbox
def test_block_names_the_file_of_an_extends_chain_that_holds_the_rule(fence):
    work = fence.workdir()
    base = _write(
        fence, work / "conf" / "base.json", {"extends": "code", "command": {"deny": ["make release", "shared"]}}
    )
    top = _write(fence, work / "fence.json", {"extends": "./conf/base.json", "command": {"deny": ["shared"]}})
    r = fence.run("-c", "make release", cwd=str(work))
    assert _first_line(r) == f'{BLOCKED}"make release" matches "make release" (rule from file: {base})'
    r = fence.run("-c", "shared thing", cwd=str(work))
    assert _first_line(r) == (
        f'{BLOCKED}"shared thing" matches "shared" (rule from file: {base} + project config: {top})'
    )
    r = fence.run("--", "git", "push", cwd=str(work))
    assert _first_line(r) == f'{BLOCKED}"git push" matches "git push" (rule from template: code)'


@pytest.mark.sandbox
def test_block_names_the_template_and_the_user_config_behind_base(fence):
    work = fence.workdir()
    xdg = fence.workdir()
    user = _write(fence, xdg / "fence" / "fence.jsonc", {"extends": "code", "command": {"deny": ["make release"]}})
    _write(fence, work / "fence.json", {"extends": "@base"})
    env = fence.env(XDG_CONFIG_HOME=str(xdg))
    r = fence.run("-c", "true && git push origin main", cwd=str(work), env=env)
    assert _first_line(r) == f'{BLOCKED}"git push origin main" matches "git push" (rule from template: code)'
    r = fence.run("-c", "make release", cwd=str(work), env=env)
    assert _first_line(r) == f'{BLOCKED}"make release" matches "make release" (rule from @base (user config): {user})'


@pytest.mark.sandbox
def test_debug_prints_the_chain(fence):
    work = fence.workdir()
    xdg = fence.workdir()
    user = _write(fence, xdg / "fence" / "fence.json", {"extends": "code"})
    mid = _write(fence, work / "conf" / "mid.json", {"extends": "@base"})
    top = _write(fence, work / "fence.json", {"extends": "./conf/mid.json"})
    r = fence.run("-d", "--", "true", cwd=str(work), env=fence.env(XDG_CONFIG_HOME=str(xdg)))
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("[fence] Config: ")]
    assert lines == [
        f"[fence] Config: project config: {top}",
        f"[fence] Config: extends file: {mid}",
        f"[fence] Config: extends @base (user config): {user}",
        "[fence] Config: extends template: code",
    ]
    empty = work / "conf" / "empty.json"
    empty.write_text("")
    fence.own(empty)
    r = fence.run("-d", "-s", str(empty), "--", "true", cwd=str(work))
    assert r.returncode == 0, r.stderr
    assert f"[fence] Config: settings: {empty} (missing or empty: built-in defaults)" in r.stderr.splitlines()


@pytest.mark.sandbox
def test_files_of_the_chain_stay_read_only(fence):
    work = fence.workdir()
    base = Path(
        _write(fence, work / "base.json", {"filesystem": {"allowWrite": ["."]}, "command": {"useDefaults": False}})
    )
    policy = Path(_write(fence, work / "policy.json", {"extends": "./base.json"}))
    before = (base.read_text(), policy.read_text())
    r = fence.run(
        "-s", str(policy), "-c", "echo '{}' > base.json; echo '{}' > policy.json; echo ok > other.txt", cwd=str(work)
    )
    assert (base.read_text(), policy.read_text()) == before
    assert (work / "other.txt").read_text() == "ok\n", r.stderr


def test_a_reply_without_records_is_refused():
    """An older config service sends no chain and no user config directory: the run must not go on
    with fence's own config files left writable."""
    with pytest.raises(FenceError, match="older than this fence"):
        _user_config_dir(ConfigResolveReply(policy=Policy()))
    assert (
        _user_config_dir(ConfigResolveReply(policy=Policy(), user_config_dir="/h/.config/fence")) == "/h/.config/fence"
    )
