"""The seccomp program every sandbox runs under (``bwrap --seccomp FD``).

Default ALLOW, and EPERM for a fixed list of calls a sandboxed command has
no business making (see ``docs/linux-layers.md`` for the why of each):

* the Go tool Fence's 27 calls (``REFERENCE_DENIED``);
* ``socket``/``socketpair`` with ``AF_UNIX`` unless the policy allows Unix
  sockets: a read-only bind does not stop ``connect()`` to a host socket
  (docker.sock, ssh-agent), so the socket must never be created;
* ``io_uring_*`` (it performs I/O the filter never sees), ``ioctl`` TIOCSTI
  and TIOCLINUX (typing into the controlling terminal);
* kernel interfaces a sandbox has no use for (``KERNEL_INTERFACES``):
  ``modify_ldt``, ``uselib``, ``quotactl``/``quotactl_fd``, the NUMA
  placement calls, ``pidfd_getfd`` (taking another process's fds);
* ``socket(AF_VSOCK)``: vsock is not network-namespaced, so it would reach
  the hypervisor host whatever the network policy;
* ``ioctl`` TIOCSETD and TIOCCONS on any fd; TIOCSCTTY on fds 0-2 (what the
  sandbox was given) and in its steal form (arg 1) on any fd: seccomp cannot
  tell a terminal the sandbox opened from one it inherited and ``dup``ed, so
  a terminal it opened itself stays usable (``forkpty``: tmux, pexpect) and
  the kernel's ownership rule covers the rest; the init helper takes a PTY as
  controlling terminal without TIOCSCTTY (docs/linux-layers.md);
* new namespaces of any kind (``unshare``/``clone`` namespace flags) and
  ``setns``: a fresh user namespace would hand back every capability;
* the new mount API (``fsopen``, ``fsconfig``, ``fsmount``, ``fspick``,
  ``move_mount``, ``open_tree``, ``open_tree_attr``, ``mount_setattr``);
* ``clone3`` gets ENOSYS, not EPERM: its flags live in a struct seccomp
  cannot read, and ENOSYS makes glibc (and musl, Go, Rust) fall back to
  ``clone``, whose flags the filter does check.

Calls from a non-native ABI (on x86_64: 32-bit ``int 0x80`` and x32) kill
the process: Fence's filter has no architecture check, so a 32-bit
call walked around it.  With ``arch_native_only=False`` those ABIs are
allowed instead, under the same rules.

Building a filter needs libseccomp through pyseccomp, whose import alone
costs ~20 ms (it runs ``ctypes.util.find_library``), so programs are cached
by their rule set: ``build_program`` on a cache hit is one small file read.
The cache lives in fence's runtime directory, which every sandbox sees as
an empty tmpfs, so a sandbox can never rewrite the filter of a later run.
"""

from __future__ import annotations

import errno
import os
import zlib

from fence.runtime import cache_dir as default_cache_dir
from fence.runtime import read_cache, write_cache

FORMAT = 2
"""Bump when the way rules compile changes (the rules themselves are hashed).
2: the kernel-interface, AF_VSOCK and tty-control rules (a new name, so no older cached program is reused)."""
MAX_PROGRAM = 65535
"""A cached program bigger than this is not one of ours (the kernel takes 4096 instructions, 32 KiB)."""

EPERM = errno.EPERM
ENOSYS = errno.ENOSYS

REFERENCE_DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "keyctl",
    "add_key",
    "request_key",
    "personality",
    "userfaultfd",
    "perf_event_open",
    "bpf",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "syslog",
    "acct",
    "mount",
    "umount2",
    "pivot_root",
    "swapon",
    "swapoff",
    "sethostname",
    "setdomainname",
    "init_module",
    "finit_module",
    "delete_module",
    "ioperm",
    "iopl",
)
"""The Go tool Fence's 27 (docs/compatibility.md#seccomp); ioperm/iopl exist on x86 only."""

IO_URING = ("io_uring_setup", "io_uring_enter", "io_uring_register")

MOUNT_API = ("fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "open_tree_attr", "mount_setattr")

NAMESPACE_CALLS = ("setns",)

KERNEL_INTERFACES = (
    "modify_ldt",
    "uselib",
    "quotactl",
    "quotactl_fd",
    "mbind",
    "set_mempolicy",
    "set_mempolicy_home_node",
    "migrate_pages",
    "move_pages",
    "pidfd_getfd",
)
"""x86 segment tables (modify_ldt) and a.out libraries (uselib): old, exploit-prone; quotas of the host's
filesystems; NUMA placement (pages moved or pinned across the machine's memory nodes, other processes' too);
pidfd_getfd: a copy of another process's fd.  modify_ldt exists on x86 only, uselib not on aarch64."""

NEW_SYSCALL_NUMBERS = {"open_tree_attr": 467}
"""Calls newer than the libseccomp that may be installed (2.5.4 in Debian 12).
Numbers from 424 on are the same on every architecture fence supports."""

AF_UNIX = 1
AF_VSOCK = 40
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
TIOCSCTTY = 0x540E
TIOCCONS = 0x541D
TIOCSETD = 0x5423
TTY_INPUT = (TIOCSTI, TIOCLINUX)
"""Typing into (or driving) a terminal."""
TTY_CONTROL = (TIOCSCTTY, TIOCSETD, TIOCCONS)
TTY_ANY_FD = (TIOCSETD, TIOCCONS)
"""Refused on every fd: changing a terminal's line discipline, redirecting the console."""
INHERITED_FDS = (0, 1, 2)
"""Where TIOCSCTTY is refused (with its steal form, arg 1, everywhere): the descriptors the sandbox got."""
"""Taking a terminal as controlling terminal, changing its line discipline, redirecting the console to it."""
LOW32 = 0xFFFFFFFF
"""int arguments: the kernel ignores the upper half of the register, so the
filter must too, or ``socket(0x100000001, ...)`` would slip past as AF_UNIX."""

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080
CLONE_NAMESPACES = (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET)
"""For clone(); CLONE_NEWTIME is only for unshare/clone3 (bit 7 of clone's flags is the exit signal)."""

COMPAT_ARCHES = {"x86_64": ("X86", "X32"), "aarch64": ("ARM",)}
"""The non-native ABIs each native arch can run (pyseccomp ``Arch`` names)."""


class Rule(tuple):
    """``(syscall, errno, conditions)``; a condition is ``(arg index, mask, value)``.

    Several conditions on one rule must all hold; several rules for one
    syscall match if any does (libseccomp's semantics).
    """

    def __new__(cls, syscall: str, err: int = EPERM, *conditions: tuple[int, int, int]):
        return super().__new__(cls, (syscall, err, tuple(conditions)))


def unix_sockets_allowed(policy) -> bool:
    """The policy's say: ``allowAllUnixSockets`` or any ``allowUnixSockets`` path lets AF_UNIX through.

    seccomp cannot see paths, so a non-empty allow list opens AF_UNIX
    creation entirely; which sockets can be reached is then up to the
    filesystem view.
    """
    net = policy.network
    return bool(net.allow_all_unix_sockets or net.allow_unix_sockets)


def _always() -> tuple[Rule, ...]:
    """The rules every program has (everything but the AF_UNIX ones)."""
    out = [Rule(name) for name in REFERENCE_DENIED + IO_URING + MOUNT_API + NAMESPACE_CALLS + KERNEL_INTERFACES]
    out.append(Rule("clone3", ENOSYS))
    out += [Rule("unshare", EPERM, (0, flag, flag)) for flag in CLONE_NAMESPACES + (CLONE_NEWTIME,)]
    out += [Rule("clone", EPERM, (0, flag, flag)) for flag in CLONE_NAMESPACES]
    out += [Rule("ioctl", EPERM, (1, LOW32, request)) for request in TTY_INPUT + TTY_ANY_FD]
    # TIOCSCTTY: never on the descriptors the sandbox was given (0-2: the user's terminal, when it is
    # one), never to steal (arg 1); a terminal the sandbox opened itself stays usable (forkpty)
    out += [Rule("ioctl", EPERM, (0, LOW32, fd), (1, LOW32, TIOCSCTTY)) for fd in INHERITED_FDS]
    out.append(Rule("ioctl", EPERM, (1, LOW32, TIOCSCTTY), (2, LOW32, 1)))
    out.append(Rule("socket", EPERM, (0, LOW32, AF_VSOCK)))
    return tuple(out)


ALWAYS = _always()
"""Built at import, so ``rules`` is a tuple concatenation and a cache hit stays one small file read
(seventy-odd small objects made inside ``build_program`` were enough to land a garbage collection there)."""


def rules(*, deny_unix: bool, deny_socketpair: bool = True) -> tuple[Rule, ...]:
    """The rule set, as plain data (hashed for the cache, compiled by ``compile_rules``)."""
    if not deny_unix:
        return ALWAYS
    unix = [Rule("socket", EPERM, (0, LOW32, AF_UNIX))]
    if deny_socketpair:
        unix.append(Rule("socketpair", EPERM, (0, LOW32, AF_UNIX)))
    return ALWAYS + tuple(unix)


def build_program(
    policy, *, arch_native_only: bool = True, deny_socketpair: bool = True, cache_dir: str | None = None
) -> bytes:
    """The BPF program for ``policy``: bytes to feed ``bwrap --seccomp FD``.

    ``cache_dir``: where compiled programs are kept (default: ``cache/`` in
    fence's runtime directory; ``""`` turns caching off).  A hit costs one
    file read and never imports pyseccomp.
    """
    ruleset = rules(deny_unix=not unix_sockets_allowed(policy), deny_socketpair=deny_socketpair)
    if cache_dir is None:
        cache_dir = default_cache_dir()
    path = os.path.join(cache_dir, cache_name(ruleset, arch_native_only)) if cache_dir else ""
    cached = read_cache(path, bytes, max_size=MAX_PROGRAM)
    if cached and len(cached) % 8 == 0:  # a whole BPF program (8 bytes an instruction)
        return cached
    program = compile_rules(ruleset, arch_native_only=arch_native_only)
    if path:
        write_cache(path, program)
    return program


def cache_name(ruleset: tuple[Rule, ...], arch_native_only: bool) -> str:
    """``seccomp-<machine>-<crc of everything the program depends on>.bpf``.

    A crc is enough: nobody chooses the inputs adversarially, the name only
    has to change when the rules do.  (hashlib's import would cost ~1 ms.)
    """
    key = repr((FORMAT, os.uname().machine, arch_native_only, ruleset)).encode()
    return f"seccomp-{os.uname().machine}-{zlib.crc32(key):08x}.bpf"


def compile_rules(ruleset: tuple[Rule, ...], *, arch_native_only: bool = True) -> bytes:
    """Compile ``ruleset`` with libseccomp (default ALLOW) and return the exported BPF."""
    # lazy: only compiling needs pyseccomp (see the module docstring); a cached program does not
    import pyseccomp as sc

    native = sc.SyscallFilter(sc.ALLOW)
    native.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    # The filter holds the native arch only, so anything else is a "bad arch":
    # on x86_64 that is the 32-bit ABI and (syscall numbers with bit 30 set) x32.
    _add_rules(sc, native, ruleset, raw_numbers=True)
    compat = COMPAT_ARCHES.get(os.uname().machine, ())
    if not arch_native_only and compat:
        # libseccomp refuses numbers it has no name for on a non-native arch, so
        # the compat ABIs get their own filter (named calls only), merged in.
        other = sc.SyscallFilter(sc.ALLOW)
        other.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
        other.remove_arch(sc.Arch.NATIVE)
        for name in compat:
            other.add_arch(getattr(sc.Arch, name))
        _add_rules(sc, other, ruleset, raw_numbers=False)
        native.merge(other)
    return _export(native)


def _add_rules(sc, flt, ruleset: tuple[Rule, ...], *, raw_numbers: bool) -> None:
    for syscall, err, conditions in ruleset:
        number = _resolve(sc, syscall, raw_numbers)
        if number is None:
            continue
        args = [sc.Arg(index, sc.MASKED_EQ, mask, value) for index, mask, value in conditions]
        flt.add_rule(sc.ERRNO(err), number, *args)


def _resolve(sc, syscall: str, raw_numbers: bool):
    """The call by name, a known number for calls newer than libseccomp, or None if absent here."""
    if sc.resolve_syscall(sc.Arch.NATIVE, syscall) >= 0:
        return syscall  # by name: libseccomp maps it per arch in the filter
    if raw_numbers and syscall in NEW_SYSCALL_NUMBERS and os.uname().machine in COMPAT_ARCHES:
        return NEW_SYSCALL_NUMBERS[syscall]
    return None  # e.g. ioperm/iopl on aarch64


def _export(flt) -> bytes:
    """``export_bpf`` writes to an fd: a pipe, drained after (programs are a few hundred bytes)."""
    read_end, write_end = os.pipe()
    try:
        with os.fdopen(write_end, "wb", closefd=True) as w:
            flt.export_bpf(w)
        chunks = []
        while True:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(read_end)


def summary(policy) -> str:
    """A short label for ``fence -d``'s layer list."""
    extra = "" if unix_sockets_allowed(policy) else ", unix-sockets denied"
    return f"seccomp({len(REFERENCE_DENIED)}+ calls{extra}, native-abi-only)"
