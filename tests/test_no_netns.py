"""No network namespace available: proxy-only runs with a warning, no-network policies refused.

The condition is real, not mocked: ``unshare -U -r`` gives fence a user
namespace of its own whose ``user.max_net_namespaces`` is set to 0, so
bwrap's ``--unshare-net`` fails there with ENOSPC exactly as in a container
that forbids network namespaces, while bwrap without it still works.  Runs
as root and as the unprivileged user.  Plus the per-boot cache itself
(``netns.state``), where a fake answer is the test hook.

Only servers these tests start on 127.0.0.1 are contacted.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import marker_server
from fence.executor import features, netns
from fence.executor.host import find_bwrap
from fence.executor.network import RELAXED_WARNING

pytestmark = pytest.mark.sandbox

MARKER = "fence-no-netns-marker"
NO_NETNS = ("unshare", "-U", "-r", "sh", "-c", 'echo 0 > /proc/sys/user/max_net_namespaces && exec "$@"', "sh")
"""Prefix: run the rest in a user namespace that may create no network namespace."""


@pytest.fixture(scope="module")
def origin():
    with marker_server(MARKER) as port:
        yield port


@pytest.fixture(autouse=True)
def _needs_unshare():
    if not shutil.which("unshare"):
        pytest.skip("unshare(1) is needed to make a netns-less environment")


def run_without_netns(fence, work, *args: str, **env: str):
    import subprocess

    argv = [*NO_NETNS, *fence.argv(*args)]
    return subprocess.run(
        argv, env=fence.env(**env), cwd=str(work), user=fence.user, capture_output=True, text=True, timeout=60
    )


def workdir(fence, network: dict):
    work = fence.workdir()
    (work / "fence.json").write_text(json.dumps({"network": network}))
    return work


def test_filtered_runs_proxy_only_with_a_warning(fence, origin):
    work = workdir(fence, {"allowedDomains": ["127.0.0.1"]})
    script = (
        f"echo $HTTP_PROXY; NO_PROXY= no_proxy= curl -sS --max-time 10 http://127.0.0.1:{origin}/; echo; "
        f"NO_PROXY= no_proxy= curl -s --max-time 10 -w '%{{http_code}}' http://localhost:{origin}/"
    )
    r = run_without_netns(fence, work, "-d", "-c", script)
    assert r.returncode == 0, r.stderr
    proxy, allowed, *blocked = r.stdout.splitlines()
    assert proxy.startswith("http://127.0.0.1:") and not proxy.endswith(":3128")  # host loopback proxy
    assert allowed == MARKER
    assert blocked[0] == "Connection blocked by network allowlist" and blocked[-1].endswith("403")
    assert (
        "[fence:linux] Warning: Skipping --unshare-net (network namespace unavailable in this environment: "
        "bwrap: Creating new namespace failed"
    ) in r.stderr
    assert (
        "direct TCP connections are blocked by Landlock, but UDP and other non-TCP traffic is NOT" in r.stderr
        or "direct connections are NOT blocked" in r.stderr
    )
    assert "[fence:linux] Sandbox: bwrap(pid,fs)," in r.stderr
    sandboxed = next(line for line in r.stderr.splitlines() if line.startswith("[fence] Sandboxed command:"))
    assert "--unshare-net" not in sandboxed


def test_landlock_keeps_tcp_to_the_proxies(fence, origin):
    """Without a netns, a client ignoring the proxy env is stopped by Landlock's TCP rules (ABI 4+)."""
    work = workdir(fence, {"allowedDomains": ["127.0.0.1"]})
    script = (
        f"curl -sS --max-time 5 --noproxy '*' http://127.0.0.1:{origin}/ && echo DIRECT; "
        f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {origin}), 3)' && echo PY; "
        f"NO_PROXY= no_proxy= curl -sS --max-time 10 http://127.0.0.1:{origin}/"
    )
    r = run_without_netns(fence, work, "-d", "-c", script)
    if "landlock-v" not in r.stderr or "(tcp-connect)" not in r.stderr:
        pytest.skip("Landlock TCP rules (ABI 4) unavailable here")
    assert "DIRECT" not in r.stdout and "PY" not in r.stdout, r.stderr
    assert r.stdout.endswith(MARKER), r.stderr  # through the proxy it still works
    assert "direct TCP connections are blocked by Landlock" in r.stderr


def test_warning_is_printed_without_debug_too(fence, origin):
    work = workdir(fence, {"allowedDomains": ["127.0.0.1"]})
    r = run_without_netns(fence, work, "--", "true")
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("[fence:linux] Warning: Skipping --unshare-net")
    assert r.stderr.count("Skipping --unshare-net") == 1, r.stderr  # once per run, not once per phase


def test_no_network_policy_is_refused_unless_opted_in(fence, origin):
    work = workdir(fence, {})
    r = run_without_netns(fence, work, "-c", "echo COMMAND-RAN")
    assert r.returncode == 1 and "COMMAND-RAN" not in r.stdout
    assert r.stderr.startswith("Error: network namespace unavailable here (bwrap --unshare-net: ")
    assert "the policy allows no network" in r.stderr and "FENCE_ALLOW_SHARED_NETWORK=1" in r.stderr
    assert (
        ". Refusing to run. To run with less protection: set FENCE_ALLOW_SHARED_NETWORK=1 in fence's "
        "environment (the host's network;" in r.stderr
    )  # the wording of every missing-layer refusal
    script = (
        f"echo COMMAND-RAN; echo ${{HTTP_PROXY:-no-proxy}}; "
        f"NO_PROXY= no_proxy= curl -s --max-time 10 -w '%{{http_code}}' http://localhost:{origin}/"
    )
    r = run_without_netns(fence, work, "-m", "-c", script, FENCE_ALLOW_SHARED_NETWORK="1")
    assert r.returncode == 0, r.stderr
    ran, proxy, *blocked = r.stdout.splitlines()
    assert ran == "COMMAND-RAN" and proxy.startswith("http://127.0.0.1:") and not proxy.endswith(":3128")
    assert blocked[0] == "Connection blocked by network allowlist" and blocked[-1].endswith("403")  # host proxies
    assert "[fence:linux] Warning: Skipping --unshare-net" in r.stderr
    assert " ✗ GET     403 localhost " in r.stderr


def test_relaxed_mode_is_unchanged_without_a_netns(fence, origin):
    """Relaxed runs share the host's network anyway: no netns warning, only the relaxed one (issue 14 p. 5)."""
    work = workdir(fence, {"allowedDomains": ["*"]})
    r = run_without_netns(fence, work, "-c", f"curl -sS --max-time 5 --noproxy '*' http://127.0.0.1:{origin}/")
    assert (r.returncode, r.stdout) == (0, MARKER), r.stderr
    assert r.stderr.splitlines() == [RELAXED_WARNING], r.stderr


def test_linux_features_shows_it(fence):
    r = run_without_netns(fence, fence.workdir(), "--linux-features")
    assert r.returncode == 0, r.stderr
    assert "  Network namespace (--unshare-net): false\n" in r.stdout
    assert "  ⚠ Network namespace unavailable (containerized environment?)\n" in r.stdout
    assert "    bwrap --unshare-net failed: bwrap: Creating new namespace failed" in r.stdout
    from fence.executor.inithelper import abi_version

    try:
        tcp_rules = abi_version() >= 4  # what runs there do: Landlock TCP rules keep TCP to the proxies
    except OSError:
        tcp_rules = False
    escape = (
        "direct TCP connections are blocked by Landlock, but UDP and other non-TCP traffic is NOT filtered"
        if tcp_rules
        else "programs ignoring HTTP_PROXY/ALL_PROXY are NOT filtered"
    )
    assert f"    fence runs proxy-only: {escape}" in r.stdout


# --- the cache ------------------------------------------------------------------------------
def test_probe_once_then_cached(tmp_path, monkeypatch):
    bwrap = find_bwrap()
    first = netns.state(bwrap, str(tmp_path))
    assert first.available and first.detail == ""
    assert os.path.exists(netns.cache_path(str(tmp_path)))

    def no_processes(argv):
        raise AssertionError(f"probed again: {argv}")

    monkeypatch.setattr(features, "run_quiet", no_processes)
    assert netns.state(bwrap, str(tmp_path)) == first


def test_cache_of_another_user_namespace_or_writable_by_others_is_ignored(tmp_path, monkeypatch):
    bwrap = find_bwrap()
    calls = []

    def run_quiet(argv):
        calls.append(argv)
        return 1, "bwrap: no netns here"

    monkeypatch.setattr(features, "run_quiet", run_quiet)
    other = dict(netns.key(bwrap), userns=1)  # a container's answer in the same file name would not apply
    netns.write(netns.cache_path(str(tmp_path)), netns.NetnsState(available=True, **other))
    found = netns.state(bwrap, str(tmp_path))
    assert len(calls) == 2 and not found.available and not found.shared_ok  # probed: bwrap fails both ways
    os.chmod(netns.cache_path(str(tmp_path)), 0o666)
    netns.state(bwrap, str(tmp_path))
    assert len(calls) == 4


def test_a_no_netns_answer_expires(tmp_path, monkeypatch):
    """Weakening runs on a stale answer is bounded: "no netns" is probed again after NEGATIVE_TTL."""
    import time

    bwrap = find_bwrap()
    path = netns.cache_path(str(tmp_path))
    netns.write(path, netns.NetnsState(available=False, shared_ok=True, at=time.time(), **netns.key(bwrap)))
    assert netns.state(bwrap, str(tmp_path)).proxy_only  # fresh: used as is
    netns.write(
        path,
        netns.NetnsState(available=False, shared_ok=True, at=time.time() - netns.NEGATIVE_TTL - 1, **netns.key(bwrap)),
    )
    assert netns.state(bwrap, str(tmp_path)).available  # stale: probed again (this machine has netns)


def test_fake_cached_answer_makes_a_run_proxy_only(self_runner, origin):
    """The test hook: a cached "no netns" answer (what a container's first run would have stored)."""
    work = workdir(self_runner, {"allowedDomains": ["127.0.0.1"]})
    rdir = work / "run"
    rdir.mkdir(mode=0o700)
    env = self_runner.env(XDG_RUNTIME_DIR=str(rdir))
    cache = str(rdir / "fence" / "cache")
    bwrap = find_bwrap()
    import time

    netns.write(
        netns.cache_path(cache),
        netns.NetnsState(available=False, shared_ok=True, detail="fake (test)", at=time.time(), **netns.key(bwrap)),
    )
    r = self_runner.run(
        "-c", f"NO_PROXY= no_proxy= curl -sS --max-time 10 http://127.0.0.1:{origin}/", env=env, cwd=str(work)
    )
    assert (r.returncode, r.stdout) == (0, MARKER), r.stderr
    assert "unavailable in this environment: fake (test))" in r.stderr
