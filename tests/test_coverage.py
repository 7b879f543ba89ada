"""fence.executor.coverage: fields refused or left ungranted, here ``filesystem.wslInterop``.

WSL cannot be had on this machine, so the host fact (is there WSL interop?)
is passed in for the decisions; the real CLI runs check what a plain Linux
host gets: a note for ``wslInterop: true``, nothing else.
"""

from __future__ import annotations

import json
import os

import pytest

from fence.executor.coverage import interop_server_reachable, refused, ungranted, wsl_interop_present
from fence.policy import FilesystemConfig, NetworkConfig, Policy


def policy(wsl=None, sockets=(), all_sockets=False, **fs) -> Policy:
    return Policy(
        network=NetworkConfig(allow_unix_sockets=list(sockets), allow_all_unix_sockets=all_sockets),
        filesystem=FilesystemConfig(wsl_interop=wsl, **fs),
    )


def test_without_unix_sockets_the_interop_server_is_out_of_reach():
    for wsl in (None, False, True):
        assert not interop_server_reachable(policy(wsl))
        assert refused(policy(wsl), wsl_interop=True) == []


def test_unix_sockets_reach_it_unless_run_wsl_is_hidden():
    assert interop_server_reachable(policy(sockets=["/var/run/docker.sock"]))
    assert interop_server_reachable(policy(all_sockets=True))
    for hidden in ("/run/WSL", "/run/WSL/", "/run/WSL/**", "/run", "/"):
        assert not interop_server_reachable(policy(all_sockets=True, deny_read=[hidden])), hidden
    for not_plainly in ("/run/WSL/*_interop", "/ru*", "~/run/WSL", "run/WSL", "/run/WSLx"):
        assert interop_server_reachable(policy(all_sockets=True, deny_read=[not_plainly])), not_plainly


def test_under_default_deny_read_only_an_absolute_grant_over_run_wsl_shows_it():
    hidden = {"all_sockets": True, "default_deny_read": True}
    assert not interop_server_reachable(policy(**hidden))
    assert not interop_server_reachable(policy(**hidden, allow_read=[".", "~/.config", "/usr/share"]))
    for shows in ("/", "/run", "/run/WSL/8_interop", "/r*"):
        assert interop_server_reachable(policy(**hidden, allow_read=[shows])), shows
    assert interop_server_reachable(policy(all_sockets=True, strict_deny_read=True, allow_write=["/run/**"]))


def test_unset_or_false_is_refused_on_wsl_when_windows_programs_could_start():
    for wsl in (None, False):
        (why,) = refused(policy(wsl, all_sockets=True), wsl_interop=True)
        assert why.startswith("filesystem.wslInterop (") and 'add "/run/WSL" to filesystem.denyRead' in why
        assert refused(policy(wsl, all_sockets=True), wsl_interop=False) == []  # plain Linux: nothing to block
        assert refused(policy(wsl, all_sockets=True, deny_read=["/run/WSL"]), wsl_interop=True) == []
    assert refused(policy(True, all_sockets=True), wsl_interop=True) == []  # asked for: not a protection


def test_true_is_ungranted_unless_the_server_is_reachable_anyway():
    assert ungranted(policy(True), wsl_interop=True) == ["filesystem.wslInterop"]
    assert ungranted(policy(True), wsl_interop=False) == ["filesystem.wslInterop"]
    assert ungranted(policy(True, all_sockets=True), wsl_interop=False) == ["filesystem.wslInterop"]
    assert ungranted(policy(True, all_sockets=True), wsl_interop=True) == []
    for wsl in (None, False):
        assert ungranted(policy(wsl, all_sockets=True), wsl_interop=True) == []


@pytest.mark.skipif(os.path.isdir("/run/WSL"), reason="a WSL host")
def test_this_host_has_no_wsl_interop():
    assert not wsl_interop_present()
    assert refused(policy(all_sockets=True)) == [] and ungranted(policy(True)) == ["filesystem.wslInterop"]


@pytest.mark.sandbox
@pytest.mark.skipif(wsl_interop_present(), reason="a WSL host")
def test_fence_notes_wsl_interop_true_and_runs_unix_socket_policies(self_runner):
    work = self_runner.workdir()
    settings = work / "fence.json"
    settings.write_text(json.dumps({"filesystem": {"wslInterop": True}}))
    r = self_runner.run("-d", "--settings", str(settings), "--", "true", cwd=str(work))
    assert r.returncode == 0, r.stderr
    assert (
        "[fence] Note: filesystem.wslInterop is not granted by this build yet; the sandbox stays stricter" in r.stderr
    )
    settings.write_text(json.dumps({"network": {"allowAllUnixSockets": True}}))
    r = self_runner.run("-d", "--settings", str(settings), "--", "true", cwd=str(work))
    assert r.returncode == 0 and "wslInterop" not in r.stderr, r.stderr
