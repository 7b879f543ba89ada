"""What this Linux machine offers the sandbox: ``fence --linux-features`` and the debug summary.

``detect()`` is cheap by default (uname, a PATH lookup, two or three
syscalls, a few /proc reads: well under a millisecond, no processes) so it
can run on every ``fence run``.  Only ``detect(probe=True)`` starts
processes (``bwrap --version`` and a real ``bwrap --unshare-net`` sandbox);
their results are cached per boot in fence's runtime directory
(``cache/features-<boot_id>.json``; the network namespace answer is
``netns.py``'s, the very one every ``fence run`` uses), which every sandbox
sees as an empty tmpfs: a sandbox must not be able to tell the next run "no
network namespace here".

The minimum is bubblewrap.  Unlike the Go tool Fence we need no socat (bridges
are made by a setns helper, see ``bridge.py``), so the report has no socat
line and the requirement is bwrap alone.
"""

from __future__ import annotations

import os
import sys

import msgspec

from fence.executor import netns
from fence.executor.host import HostError, find_bwrap
from fence.executor.inithelper import EXEC_SYSCALLS, abi_version, prctl, syscall
from fence.executor.netns import boot_id
from fence.runtime import cache_dir as default_cache_dir
from fence.runtime import read_cache, write_cache

PR_GET_SECCOMP = 21
SECCOMP_GET_NOTIF_SIZES = 3
SECCOMP_SYSCALL = {"x86_64": 317, "aarch64": 277}
CAP_AUDIT_READ = 37
CAP_BPF = 39
LANDLOCK_MIN_KERNEL = (5, 13)
SECCOMP_LOG_KERNEL = (4, 14)
USERNOTIF_KERNEL = (5, 0)


class Features(msgspec.Struct, kw_only=True):
    """One machine's sandboxing features, as ``detect`` found them."""

    kernel: str
    """``major.minor`` of the running kernel."""
    kernel_version: tuple[int, int]
    machine: str
    bwrap: str = ""
    """Path of the bubblewrap fence uses, "" when there is none."""
    bwrap_version: str = ""
    """``bwrap --version`` ("bubblewrap 0.11.0"); probed only."""
    netns: bool | None = None
    """bwrap could create a network namespace; None when not probed."""
    netns_detail: str = ""
    """Why not (bwrap's last error line) when it could not."""
    netns_shared_ok: bool = False
    """Without a netns, bwrap still runs on the host's network (fence then runs proxy-only)."""
    userns: bool = False
    """Unprivileged users may create user namespaces (sysctls; with probe and non-root, a real try)."""
    userns_detail: str = ""
    seccomp: bool = False
    seccomp_log_level: int = 0
    """The Go tool Fence's scale: 1 from 4.14 (SECCOMP_RET_LOG), 2 from 5.0 (user notification)."""
    seccomp_usernotif: bool = False
    landlock_abi: int = 0
    landlock_detail: str = ""
    """Why Landlock is missing ("kernel built without Landlock", "disabled at boot", ...)."""
    root: bool = False
    cap_bpf: bool = False
    cap_audit_read: bool = False
    audit: bool = False
    """The kernel has an audit subsystem (where Landlock's ABI 7 logs go)."""

    @property
    def ebpf(self) -> bool:
        return self.root or self.cap_bpf

    @property
    def minimum_met(self) -> bool:
        return bool(self.bwrap)


class _Probed(msgspec.Struct):
    """The per-boot cache: what only probing tells (beyond the netns), and for which bwrap and user."""

    bwrap: str
    bwrap_id: tuple[int, int]
    euid: int
    bwrap_version: str


# detection ------------------------------------------------------------------------------
def detect(*, probe: bool = False, bwrap: str | None = None, cache_dir: str | None = None) -> Features:
    """This machine's features.  ``probe`` also runs bwrap (cached per boot, see the module doc).

    ``bwrap``: the binary to describe (default: the one fence would use).
    ``cache_dir``: where probe results are kept (default: ``cache/`` in the
    runtime dir; "" keeps nothing).
    """
    uname = os.uname()
    version = kernel_version(uname.release)
    caps = effective_caps()
    f = Features(
        kernel=f"{version[0]}.{version[1]}",
        kernel_version=version,
        machine=uname.machine,
        bwrap=_find_bwrap() if bwrap is None else bwrap,
        root=os.geteuid() == 0,
        cap_bpf=bool(caps >> CAP_BPF & 1),
        cap_audit_read=bool(caps >> CAP_AUDIT_READ & 1),
        audit=os.path.exists("/proc/self/loginuid"),
    )
    f.seccomp, f.seccomp_usernotif = seccomp_support(uname.machine, version)
    if f.seccomp:
        f.seccomp_log_level = 2 if version >= USERNOTIF_KERNEL else 1 if version >= SECCOMP_LOG_KERNEL else 0
    f.landlock_abi, f.landlock_detail = landlock_support(version)
    f.userns, f.userns_detail = userns_sysctls()
    if probe and f.bwrap:
        _apply_probe(f, _probe_cached(f.bwrap, cache_dir), netns.state(f.bwrap, cache_dir))
    return f


def kernel_version(release: str) -> tuple[int, int]:
    """``"6.18.44-fc-v669"`` -> ``(6, 18)``; (0, 0) if unreadable."""
    parts = []
    for piece in release.split(".")[:2]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        parts.append(int(digits) if digits else 0)
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def effective_caps() -> int:
    """CapEff of this process, from /proc/self/status (0 if unreadable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def seccomp_support(machine: str, version: tuple[int, int]) -> tuple[bool, bool]:
    """(filters available, user notification available).

    ``prctl(PR_GET_SECCOMP)`` answers 0/1/2 when the kernel has seccomp and
    EINVAL when not.  ``seccomp(SECCOMP_GET_NOTIF_SIZES)`` succeeds from 5.0
    on; where we don't know the syscall number, the kernel version decides.
    """
    try:
        prctl(PR_GET_SECCOMP, 0)
    except OSError:
        return False, False
    number = SECCOMP_SYSCALL.get(machine)
    if number is None:
        return True, version >= USERNOTIF_KERNEL
    sizes = bytes(6)  # struct seccomp_notif_sizes: three u16
    try:
        syscall(number, SECCOMP_GET_NOTIF_SIZES, 0, sizes)
    except OSError:
        return True, False
    return True, True


def landlock_support(version: tuple[int, int]) -> tuple[int, str]:
    """(ABI, "") or (0, why not), from ``landlock_create_ruleset(NULL, 0, VERSION)``."""
    try:
        return abi_version(), ""
    except OSError as e:
        if e.errno == 95:
            return 0, "disabled at boot (add landlock to the lsm= kernel parameter)"
        if version < LANDLOCK_MIN_KERNEL:
            return 0, "kernel 5.13+ required"
        if e.errno == 38:
            return 0, "kernel built without Landlock"
        return 0, e.strerror or "unavailable"


def userns_sysctls() -> tuple[bool, str]:
    """Whether unprivileged user namespaces are allowed, by the sysctls that can forbid them."""
    if _read_int("/proc/sys/user/max_user_namespaces", 1) == 0:
        return False, "user.max_user_namespaces is 0"
    if _read_int("/proc/sys/kernel/unprivileged_userns_clone", 1) == 0:
        return False, "kernel.unprivileged_userns_clone is 0"
    if _read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", 0) == 1:
        return False, (
            "AppArmor restricts unprivileged user namespaces "
            "(kernel.apparmor_restrict_unprivileged_userns=1): bwrap needs a profile allowing userns"
        )
    return True, ""


def _read_int(path: str, default: int) -> int:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return default


def _find_bwrap() -> str:
    try:
        return find_bwrap()
    except HostError:
        return ""


# probing (processes; cached per boot) ------------------------------------------------------
def _probe_cached(bwrap: str, cache_dir: str | None) -> _Probed:
    """The probe results for ``bwrap``: from this boot's cache when they are for the same binary and user."""
    try:
        st = os.stat(bwrap)
        ident = (st.st_mtime_ns, st.st_size)
    except OSError:
        ident = (0, 0)

    if cache_dir is None:
        cache_dir = default_cache_dir()
    bid = boot_id()
    path = os.path.join(cache_dir, f"features-{bid}.json") if cache_dir and bid else ""
    cached = read_cache(path, _Probed)
    if cached and cached.bwrap == bwrap and cached.bwrap_id == ident and cached.euid == os.geteuid():
        return cached
    probed = probe(bwrap)
    probed.bwrap_id = ident
    if path:
        write_cache(path, probed)
    return probed


def probe(bwrap: str) -> _Probed:
    """Run ``bwrap --version`` (the network namespace is probed by ``netns.py``)."""
    code, out = run_quiet([bwrap, "--version"])
    version = out.strip() if code == 0 else ""
    return _Probed(bwrap=bwrap, bwrap_id=(0, 0), euid=os.geteuid(), bwrap_version=version)


def _apply_probe(f: Features, probed: _Probed, net) -> None:
    f.bwrap_version = probed.bwrap_version
    f.netns, f.netns_detail, f.netns_shared_ok = net.available, net.detail, net.shared_ok
    userns = net.available or net.shared_ok  # a non-root bwrap always makes a user namespace
    if os.geteuid() != 0 and userns != f.userns:  # its success or failure is the real answer
        f.userns = userns
        f.userns_detail = "" if f.userns else (net.detail or "bwrap could not create a user namespace")


def run_quiet(argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` with stdin on /dev/null and stdout+stderr captured; (exit code, output).

    posix_spawn, not subprocess: subprocess costs ~10 ms of imports.
    """
    read_end, write_end = os.pipe()
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, write_end, 1),
        (os.POSIX_SPAWN_DUP2, write_end, 2),
    ]
    try:
        pid = os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=actions)
    except OSError as e:
        os.close(read_end)
        os.close(write_end)
        return 127, f"{argv[0]}: {e.strerror}"
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as r:
        while chunk := r.read(65536):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode("utf-8", "replace")


# output ---------------------------------------------------------------------------------
def _yn(value: bool) -> str:
    return "true" if value else "false"


def report(f: Features) -> str:
    """The ``fence --linux-features`` text (Fence's, without socat, plus our lines: docs/compatibility.md#cli-flags)."""
    bwrap = _yn(bool(f.bwrap))
    if f.bwrap:
        bwrap += f" ({f.bwrap_version + ', ' if f.bwrap_version else ''}{f.bwrap})"
    netns = "unknown (not probed)" if f.netns is None else _yn(f.netns)
    seccomp = f"true (log level: {f.seccomp_log_level})" if f.seccomp else "false"
    landlock = f"true (ABI v{f.landlock_abi})" if f.landlock_abi else f"false ({f.landlock_detail})"
    userns = _yn(f.userns) + (f" ({f.userns_detail})" if f.userns_detail else "")
    lines = [
        "Linux Sandbox Features:",
        f"  Kernel: {f.kernel}",
        f"  Bubblewrap (bwrap): {bwrap}",
        f"  Network namespace (--unshare-net): {netns}",
        f"  Unprivileged user namespaces: {userns}",
        f"  Seccomp: {seccomp}",
        f"  Seccomp user notification: {_yn(f.seccomp_usernotif)}",
        f"  Landlock: {landlock}",
        f"  eBPF: {_yn(f.ebpf)} (CAP_BPF: {_yn(f.cap_bpf)}, root: {_yn(f.root)})",
        f"  Audit: {_yn(f.audit)} (CAP_AUDIT_READ: {_yn(f.cap_audit_read)})",
        "",
        "Feature Status:",
    ]
    lines += _status(f)
    return "\n".join(lines) + "\n"


def _status(f: Features) -> list[str]:
    """One line per layer: what fence *does* with it on this host (✓ used, ⚠ degraded, ○ not used, ✗ missing).

    Each claim names code that acts on it: the netns (``plan.render``,
    ``--unshare-net``), Landlock (the init helper, ``plan.wants_landlock``;
    TCP rules ``prepare.network_plan``), seccomp (``seccomp.build_program``),
    user notification (``execsupervisor``, the argv policy).  Reporting is
    what ``-m`` prints (``fence.eventlines``): proxy decisions and argv exec
    refusals.  Nothing in fence uses eBPF, seccomp logging or the audit
    subsystem, so no line offers them as available features.
    """
    out = ["  ✓ Minimum requirements met (bwrap)" if f.minimum_met else "  ✗ Missing requirements: bwrap"]
    tcp_rules = f.landlock_abi >= 4
    if f.netns is None:
        out.append("  ? Network namespace isolation not probed")
    elif f.netns:
        out.append(
            '  ✓ Network namespace isolation: each sandbox (but relaxed "*") has its own network, '
            "reached only through fence's proxies"
        )
    else:
        out += [
            "  ⚠ Network namespace unavailable (containerized environment?)",
            f"    bwrap --unshare-net failed: {f.netns_detail or 'unknown error'}",
        ]
        if f.netns_shared_ok:
            escape = (
                "direct TCP connections are blocked by Landlock, but UDP and other non-TCP traffic is NOT filtered"
                if tcp_rules
                else "programs ignoring HTTP_PROXY/ALL_PROXY are NOT filtered"
            )
            out += [
                f"    fence runs proxy-only: {escape}, and a policy allowing no network is refused unless "
                "FENCE_ALLOW_SHARED_NETWORK=1"
            ]
        else:
            out += [
                "    bwrap does not run without it either; allow user namespaces in the container or run on the host"
            ]
    if not f.userns and not f.root:
        out.append(f"  ⚠ Unprivileged user namespaces unavailable: {f.userns_detail}")
    out.append(
        "  ✓ Seccomp: every sandbox runs under fence's syscall filter (denied calls fail with EPERM)"
        if f.seccomp
        else "  ✗ Seccomp unavailable: fence's syscall filter cannot be applied on this kernel"
    )
    out.append(
        f"  ✓ Landlock v{f.landlock_abi}: fence adds filesystem rules inside the sandbox when something is "
        "writable or execute-only, or under defaultDenyRead"
        if f.landlock_abi
        else f"  ○ Landlock not available ({f.landlock_detail}): filesystem rules rest on bubblewrap's mounts alone"
    )
    argv_policy = f.seccomp_usernotif and f.machine in EXEC_SYSCALLS  # as execsupervisor.supported
    if argv_policy:
        out.append(
            '  ✓ Runtime exec policy "argv" available (seccomp user notification): every exec checked, '
            "refusals shown by -m"
        )
    elif f.seccomp_usernotif:
        out.append(f"  ○ Runtime argv exec policy unavailable (not built for {f.machine})")
    else:
        out.append("  ○ Runtime argv exec policy unavailable (kernel 5.0+ for seccomp user notification)")
    execs = ', and execs refused under runtimeExecPolicy "argv"' if argv_policy else ""
    out.append(
        f"  ○ Violation reporting: -m shows blocked network requests{execs}; filesystem and syscall "
        "denials are not reported"
    )
    out.append("  ○ eBPF monitoring: not implemented by fence")
    return out


def summary(f: Features) -> str:
    """``[fence:linux] Available features: kernel 6.8, bwrap, seccomp+usernotif, landlock-v4`` (fence -d)."""
    parts = [f"kernel {f.kernel}"]
    if f.bwrap:
        parts.append("bwrap(no-netns)" if f.netns is False else "bwrap")
    if f.seccomp:
        parts.append("seccomp+usernotif" if f.seccomp_usernotif else "seccomp")
    if f.landlock_abi:
        parts.append(f"landlock-v{f.landlock_abi}")
    if f.ebpf:
        parts.append("ebpf(root)" if f.root else "ebpf(CAP_BPF)")
    return "[fence:linux] Available features: " + ", ".join(parts)


if __name__ == "__main__":
    sys.stdout.write(report(detect(probe=True)))
