"""fence's init helper inside the sandbox: its duties (Landlock, the argv listener, the PTY), then exec.

Runs as ``python3 -I -S inithelper.py [OPTIONS] -- COMMAND [ARG...]`` after
bubblewrap has built the mount view (Landlock rules name paths as the
sandbox sees them, and restrict_self cannot be undone, so it must come last).
It is on the path of every run, so it imports nothing but builtin modules:
``posix``, ``sys`` and ``_ctypes`` (the C half of ctypes; ``import ctypes``
itself costs ~3.5 ms more per run, measured in bench/helper).  No fence
imports: it must run from any interpreter, with no site-packages.  One file
on purpose, Landlock rules included: ``-I`` leaves its directory off
``sys.path``, so a second module would mean a path search and another file
to read (and keep readable under defaultDenyRead) on every run.

Options (each PATH/PORT option may repeat; order does not matter)::

  -r, --read PATH      read files, list directories, execute
  -x, --exec PATH      read and execute files, no listing
  -w, --write PATH     every right: read, write, create, remove, rename/link
                       across directories (REFER), truncate, device ioctls
  --rights LIST PATH   exactly the rights in LIST (comma-separated names,
                       e.g. read_file,write_file,truncate; see FS_RIGHTS)
  --connect PORT       allow TCP connect to PORT (implies --restrict-net)
  --bind PORT          allow TCP bind to PORT (implies --restrict-net)
  --connect-only       with --connect: handle TCP connect only, binds stay free
                       (fence's shared-network runs: only the proxies reachable)
  --restrict-net       handle TCP bind/connect (ABI 4+): only listed ports
  --scope              ABI 6+: no abstract unix sockets or signals across
                       the sandbox's Landlock domain boundary
  --audit              ABI 7+: let the kernel audit-log denials of the
                       command (the helper's own are not logged)
  --strict             refuse to run (exit 126) when Landlock, or a
                       requested network/scope restriction, is unavailable
  --debug              say what was applied on stderr
  --exec-notify FD     runtimeExecPolicy "argv": before anything else, install a
                       seccomp filter sending every execve/execveat to a
                       user-notification listener, and pass the listener over
                       the unix socket FD (SCM_RIGHTS) to fence's supervisor;
                       refuse to run (exit 126) if any of that fails
  --no-landlock        apply no Landlock ruleset (for runs that only need the
                       helper's other duties)
  --close-fd FD        close FD before any duty: the interpreter fence started
                       this helper from (``/proc/self/fd/FD``) when the exec
                       masks cover its path, so the command cannot reach it
  --pty                allowPty runs: start a session (setsid) and make stdin,
                       the PTY fence relays, its controlling terminal (by
                       opening it as the session's leader: TIOCSCTTY is
                       refused inside), so the command gets job control and
                       Ctrl-C reaches its foreground group, never bwrap

Everything not granted is denied for the rights this kernel's ABI knows.
Paths that do not exist are skipped.  Rules on a non-directory get only the
rights that apply to files.  Without Landlock the helper warns and runs the
command anyway (Fence's behaviour: bubblewrap still isolates),
unless ``--strict``.  Exit codes of its own: 127 command not found, 126
not executable or refused (strict), 2 bad arguments.
"""

import _frozen_importlib_external as bootstrap  # already loaded by every Python
import posix
import sys

# --- kernel ABI (include/uapi/linux/landlock.h) ------------------------------------------
SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
"""The same on every architecture (syscalls from 424 on share one table)."""
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH, RULE_NET_PORT = 1, 2
PR_SET_NO_NEW_PRIVS = 38
KNOWN_ABI = 7

FS_RIGHTS = {
    "execute": 1 << 0,
    "write_file": 1 << 1,
    "read_file": 1 << 2,
    "read_dir": 1 << 3,
    "remove_dir": 1 << 4,
    "remove_file": 1 << 5,
    "make_char": 1 << 6,
    "make_dir": 1 << 7,
    "make_reg": 1 << 8,
    "make_sock": 1 << 9,
    "make_fifo": 1 << 10,
    "make_block": 1 << 11,
    "make_sym": 1 << 12,
    "refer": 1 << 13,  # ABI 2: rename/link across directories
    "truncate": 1 << 14,  # ABI 3
    "ioctl_dev": 1 << 15,  # ABI 5: ioctl on device files
}
FS_ABI1 = (1 << 13) - 1
FS_BY_ABI = {1: FS_ABI1, 2: FS_ABI1 | 1 << 13, 3: FS_ABI1 | 3 << 13, 4: FS_ABI1 | 3 << 13}
FS_LATEST = FS_ABI1 | 7 << 13  # ABI 5 and later
FILE_RIGHTS = (
    FS_RIGHTS["execute"]
    | FS_RIGHTS["write_file"]
    | FS_RIGHTS["read_file"]
    | FS_RIGHTS["truncate"]
    | FS_RIGHTS["ioctl_dev"]
)
"""What a rule on a non-directory may grant (more gives EINVAL)."""

EXEC = FS_RIGHTS["execute"] | FS_RIGHTS["read_file"]
READ = EXEC | FS_RIGHTS["read_dir"]
WRITE = FS_LATEST

NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2
LOG_SAME_EXEC_OFF, LOG_NEW_EXEC_ON = 1, 2

TIER_OPTIONS = {"-r": READ, "--read": READ, "-x": EXEC, "--exec": EXEC, "-w": WRITE, "--write": WRITE}


class Usage(Exception):
    pass


# --- calling libc without importing ctypes -----------------------------------------------
_libc: dict[str, object] = {}
"""``syscall`` and ``prctl`` as C functions (and errno access), made on first use: importing
this module on the host for ``helper_command`` loads nothing."""


def _function(name):
    if not _libc:
        _libc.update(_load_libc())
    return _libc[name]


def _load_libc():
    import _ctypes  # lazy: importing the helper (helper_command, on the host) loads nothing; only a call needs it

    errno_access = {"get_errno": _ctypes.get_errno, "set_errno": _ctypes.set_errno}
    try:

        class Long(_ctypes._SimpleCData):
            _type_ = "l"

        class Libc:
            # dlopen(NULL) is the process itself (dlopen(3)); the stub only allows a path
            _handle = _ctypes.dlopen(None)  # type: ignore[arg-type]

        class Func(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = Long

        class Char(_ctypes._SimpleCData):
            _type_ = "c"

        def buffer(data):  # a C copy of ``data`` and its address (keep the copy alive while it is used)
            copy = (Char * len(data)).from_buffer_copy(data)
            return copy, _ctypes.addressof(copy)

        def function(name):
            # CFuncPtr takes any object with a _handle, not only the CDLL its stub names
            return Func((name, Libc))  # type: ignore[arg-type]

        return {
            "long": Long,
            "syscall": function("syscall"),
            "prctl": function("prctl"),
            "sendmsg": function("sendmsg"),
            "ioctl": function("ioctl"),
            "buffer": buffer,
            **errno_access,
        }
    except (AttributeError, TypeError):  # a CPython that reshaped _ctypes: pay for the public module
        import ctypes  # lazy: only a CPython whose _ctypes lacks these names pays for ctypes (~3.5 ms)

        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = libc.prctl.restype = libc.sendmsg.restype = libc.ioctl.restype = ctypes.c_long

        def buffer(data):
            copy = (ctypes.c_char * len(data)).from_buffer_copy(data)
            return copy, ctypes.addressof(copy)

        return {
            "long": ctypes.c_long,
            "syscall": libc.syscall,
            "prctl": libc.prctl,
            "sendmsg": libc.sendmsg,
            "ioctl": libc.ioctl,
            "buffer": buffer,
            **errno_access,
        }


def _call(name, *args):
    """Call libc's ``name``; ints go as C longs, bytes/None as pointers.  OSError on -1."""
    long = _function("long")
    _function("set_errno")(0)
    result = _function(name)(*[long(a) if isinstance(a, int) else a for a in args])
    if result < 0:
        err = _function("get_errno")()
        raise OSError(err, posix.strerror(err))
    return result


def load_libc():
    """Bind the C functions now: a process about to fork does it once, so its children only call them."""
    _function("syscall")


def syscall(number, *args):
    return _call("syscall", number, *args)


def prctl(option, arg):
    return _call("prctl", option, arg, 0, 0, 0)


def _u64(value):
    return value.to_bytes(8, sys.byteorder)


# --- arguments ---------------------------------------------------------------------------
class Request:
    """What the options ask for: path rules, port rules, switches and the command."""

    def __init__(self):
        self.paths = []  # (path, rights)
        self.connect = []
        self.bind = []
        self.restrict_net = self.scope = self.audit = self.strict = self.debug = False
        self.connect_only = False
        self.no_landlock = False
        self.exec_notify = -1  # the unix socket fd for --exec-notify
        self.close_fds = []
        self.pty = False
        self.command = []


def parse(argv):
    req = Request()
    i = 0
    while i < len(argv):
        opt = argv[i]
        if opt == "--":
            req.command = argv[i + 1 :]
            break
        if opt in TIER_OPTIONS:
            req.paths.append((_value(argv, i), TIER_OPTIONS[opt]))
            i += 2
        elif opt == "--rights":
            req.paths.append((_value(argv, i + 1), _rights(_value(argv, i))))
            i += 3
        elif opt in ("--connect", "--bind"):
            (req.connect if opt == "--connect" else req.bind).append(_port(_value(argv, i)))
            req.restrict_net = True
            i += 2
        elif opt == "--exec-notify":
            req.exec_notify = _fd(_value(argv, i))
            i += 2
        elif opt == "--close-fd":
            req.close_fds.append(_fd(_value(argv, i)))
            i += 2
        elif opt in (
            "--restrict-net",
            "--scope",
            "--audit",
            "--strict",
            "--debug",
            "--no-landlock",
            "--pty",
            "--connect-only",
        ):
            setattr(req, opt[2:].replace("-", "_"), True)
            i += 1
        else:
            raise Usage(f"unknown option {opt!r}")
    if not req.command:
        raise Usage("no command (expected: [OPTIONS] -- COMMAND [ARG...])")
    return req


def _value(argv, i):
    if i + 1 >= len(argv) or argv[i + 1] == "--":
        raise Usage(f"{argv[i]} needs a value")
    return argv[i + 1]


def _rights(names):
    mask = 0
    for name in names.split(","):
        if name not in FS_RIGHTS:
            raise Usage(f"unknown right {name!r}")
        mask |= FS_RIGHTS[name]
    return mask


def _fd(text):
    if not text.isdigit() or int(text) < 3:
        raise Usage(f"bad file descriptor {text!r}")
    return int(text)


def _port(text):
    if not text.isdigit() or int(text) > 65535:
        raise Usage(f"bad port {text!r}")
    return int(text)


# --- Landlock ----------------------------------------------------------------------------
def abi_version():
    """The kernel's Landlock ABI; OSError (ENOSYS: not built, EOPNOTSUPP: disabled at boot) if none."""
    return syscall(SYS_CREATE_RULESET, None, 0, CREATE_RULESET_VERSION)


def apply(req, abi):
    """Create the ruleset for ``abi``, add the rules, restrict this process. Returns notes for --strict."""
    abi = min(abi, KNOWN_ABI)
    fs = FS_BY_ABI.get(abi, FS_LATEST)
    missing = []
    handled = NET_CONNECT_TCP if req.connect_only else NET_BIND_TCP | NET_CONNECT_TCP
    net = handled if req.restrict_net and abi >= 4 else 0
    if req.restrict_net and not net:
        missing.append(f"TCP port rules need ABI 4 (have {abi})")
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if req.scope and abi >= 6 else 0
    if req.scope and not scoped:
        missing.append(f"scoping needs ABI 6 (have {abi})")
    attr = _u64(fs) + _u64(net) + _u64(scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = syscall(SYS_CREATE_RULESET, attr[:size], size, 0)
    try:
        if req.debug:
            _say(f"[fence:landlock] Created ruleset (ABI v{abi}, fd={ruleset})")
        for path, rights in req.paths:
            _add_path_rule(ruleset, path, rights & fs, req.debug)
        if net:
            for port in sorted(set(req.connect) | set(req.bind)):
                allowed = (
                    (NET_CONNECT_TCP if port in req.connect else 0) | (NET_BIND_TCP if port in req.bind else 0)
                ) & net
                if not allowed:
                    continue
                syscall(SYS_ADD_RULE, ruleset, RULE_NET_PORT, _u64(allowed) + _u64(port), 0)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        flags = LOG_SAME_EXEC_OFF | LOG_NEW_EXEC_ON if req.audit and abi >= 7 else 0
        syscall(SYS_RESTRICT_SELF, ruleset, flags)
    finally:
        posix.close(ruleset)
    if req.debug:
        _say(f"[fence:landlock] Applied restrictions (ABI v{abi})")
    return missing


def _add_path_rule(ruleset, path, rights, debug):
    """One path-beneath rule; a path that is missing (or unreachable) is skipped: fewer rights, never more."""
    try:
        fd = posix.open(path, posix.O_PATH | posix.O_CLOEXEC)
    except OSError as e:
        if debug:
            _say(f"[fence:landlock] Skipping {path}: {e.strerror}")
        return
    try:
        if not _is_dir(posix.fstat(fd).st_mode):
            rights &= FILE_RIGHTS
        if rights:
            # struct landlock_path_beneath_attr is packed: u64 allowed_access, s32 parent_fd
            syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, _u64(rights) + fd.to_bytes(4, sys.byteorder), 0)
    except OSError as e:
        _say(f"[fence:landlock] Warning: no rule for {path}: {e.strerror}")
    finally:
        posix.close(fd)


def _is_dir(mode):
    return mode & 0o170000 == 0o040000


# --- environment and exec ----------------------------------------------------------------
def clean_environ():
    """The environment this process was started with, minus every ``LD_*`` (case-sensitive, as
    Fence); bytes.  Read back from ``/proc/self/environ``, not ``posix.environ``: Python's start-up
    may have added ``LC_CTYPE`` (C locale coercion), and the command must see the planned environment."""
    try:
        fd = posix.open("/proc/self/environ", posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError:
        items = [[k, v] for k, v in posix.environ.items()]  # the shape the /proc branch makes
    else:
        try:
            chunks = []
            while True:
                chunk = posix.read(fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            posix.close(fd)
        items = [item.split(b"=", 1) for item in b"".join(chunks).split(b"\0") if b"=" in item]
    return {k: v for k, v in items if not k.startswith(b"LD_")}


def take_terminal():
    """``--pty``: a session of our own with the PTY on stdin as its controlling terminal.

    bwrap's child leads no process group, so ``setsid`` succeeds.  Not with
    TIOCSCTTY, which the seccomp program (already loaded by bwrap) refuses to
    everyone inside: a session leader without a terminal that opens a terminal
    no session owns gets it as its controlling terminal (the kernel's rule),
    and ``/proc/self/fd/0`` reopens the PTY fence handed over.  A failure
    leaves the command on the PTY without job control (a warning, not a refusal:
    the PTY is a convenience, the sandbox is unchanged).
    """
    try:
        posix.setsid()
        posix.close(posix.open("/proc/self/fd/0", posix.O_RDWR))
        if posix.tcgetpgrp(0) != posix.getpid():
            raise OSError(1, "another session owns it")
    except OSError as e:
        _say(f"[fence] Warning: the PTY is not the command's controlling terminal: {e.strerror}")


ENOENT, EPERM, ENOEXEC, EACCES, ENOTDIR = 2, 1, 8, 13, 20


def exec_command(command, env):
    """``execvp`` semantics (PATH search, ENOEXEC -> /bin/sh) with our own exit codes; never returns."""
    name = command[0]
    if "/" in name:
        candidates = [name]
    else:
        path = env.get(b"PATH", b"/bin:/usr/bin").decode("utf-8", "surrogateescape")
        candidates = [(d or ".") + "/" + name for d in path.split(":")]
    denied = None
    for candidate in candidates:
        if len(candidates) > 1:  # skip what is not there without an exec (each exec may cost a check)
            try:
                posix.stat(candidate)
            except OSError as e:
                if e.errno in (ENOENT, ENOTDIR):
                    continue
        try:
            posix.execve(candidate, command, env)
        except OSError as e:
            error = e
        if error.errno == ENOEXEC:  # a script without #!: sh runs it, as execvp does
            try:
                posix.execve("/bin/sh", ["sh", candidate] + command[1:], env)
            except OSError as e:
                error = e
        if error.errno in (EACCES, EPERM):  # remember, look further (execvp does too)
            denied = error
        elif error.errno not in (ENOENT, ENOTDIR):
            denied = error
            break
    if denied is not None:
        _say(f"[fence:landlock-wrapper] Error: cannot execute {name}: {denied.strerror}")
        posix._exit(126)
    _say(f"[fence:landlock-wrapper] Error: command not found: {name}")
    posix._exit(127)


def _say(line):
    try:
        posix.write(2, (line + "\n").encode("utf-8", "surrogateescape"))
    except OSError:
        pass


def main(argv):
    try:
        req = parse(argv)
    except Usage as e:
        _say(f"[fence:landlock-wrapper] Error: {e}")
        return 2
    for fd in req.close_fds:  # first: whatever happens next, the command never inherits it
        try:
            posix.close(fd)
        except OSError:
            pass
    if req.exec_notify >= 0:  # fails closed: without the supervisor no command may run
        try:
            hand_over_exec_notify(req.exec_notify)
        except NoListener as e:  # the layer is missing here
            _say(f"[fence:linux] Error: {argv_refusal(e.strerror)}")
            return 126
        except OSError as e:  # the layer is there, fence's end of the socket is not
            _say(
                f'[fence:linux] Error: runtime exec policy "argv": the exec listener could not be handed to '
                f"fence ({e.strerror}): refusing to run"
            )
            return 126
    if req.pty:
        take_terminal()
    problems = [] if req.no_landlock else _landlock(req)
    for problem in problems:
        lost = "filesystem enforcement is bubblewrap-only" if problem.startswith("Landlock") else "not enforced"
        if req.strict:
            _say(
                f"[fence:linux] Error: {problem}: --strict needs every requested Landlock restriction. Refusing "
                f"to run (strict mode). To run with less protection: leave out --strict ({lost})"
            )
            return 126
        if problem.startswith("Landlock"):
            _say(f"[fence:linux] Warning: {problem}: {lost}")
        else:
            _say(f"[fence:linux] Warning: Landlock: {problem}: {lost}")
    exec_command(req.command, clean_environ())


def argv_refusal(why):
    """The argv policy's listener cannot be had here: ``refusal.argv_unavailable``'s wording (this file
    imports nothing of fence's; a test holds the two equal)."""
    return (
        f'seccomp user notification unavailable here ({why}): command.runtimeExecPolicy "argv" needs it '
        "to check every exec. Refusing to run. To run with less protection: set command.runtimeExecPolicy "
        'to "path", the default (while the command runs, only the programs that single-token deny rules '
        "name are masked)"
    )


def _landlock(req):
    """Apply the requested Landlock restrictions; the problems (for ``--strict`` and warnings)."""
    try:
        abi = abi_version()
    except OSError as e:
        why = {38: "kernel built without Landlock", 95: "Landlock disabled at boot"}.get(e.errno or 0) or e.strerror
        return [f"Landlock unavailable ({why})"]
    try:
        return apply(req, abi)
    except OSError as e:
        return [f"Landlock not applied ({e.strerror})"]


# --- exec notification (runtimeExecPolicy "argv") ----------------------------------------
# bwrap's --seccomp loads a plain filter and cannot ask for a listener, so the helper adds a
# second, tiny filter of its own: execve/execveat -> SECCOMP_RET_USER_NOTIF, everything else
# allowed (the run's main filter still applies: the kernel runs both, strictest action wins).
# Every descendant inherits it; the listener goes to fence's supervisor (execsupervisor.py),
# which answers each exec with CONTINUE or EPERM.  The helper's own exec of the command is the
# first notification.  Without a listener the kernel fails these calls with ENOSYS: closed.
SECCOMP_SYSCALL = {"x86_64": 317, "aarch64": 277}
SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER = 1, 8
EXEC_SYSCALLS = {"x86_64": (0xC000003E, 59, 322), "aarch64": (0xC00000B7, 221, 281)}
"""machine -> (AUDIT_ARCH of the native ABI, execve, execveat)."""
X32_SYSCALL_BIT = 0x40000000
RET_KILL_PROCESS, RET_USER_NOTIF, RET_ALLOW = 0x80000000, 0x7FC00000, 0x7FFF0000
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x06
SOL_SOCKET, SCM_RIGHTS = 1, 1


def _bpf(code, jt, jf, k):
    """One ``struct sock_filter`` (u16 code, u8 jt, u8 jf, u32 k) in native byte order."""
    return code.to_bytes(2, sys.byteorder) + bytes((jt, jf)) + k.to_bytes(4, sys.byteorder)


def exec_notify_program(machine):
    """The classic BPF program: native-ABI execve/execveat notify, other ABIs are killed, the rest allowed.

    Another ABI (x86's int 0x80, x32) would reach the exec calls under other
    numbers the program does not watch, so it kills them, as fence's main
    filter does anyway.  ``seccomp_data``: ``nr`` at offset 0, ``arch`` at 4.
    """
    arch, execve, execveat = EXEC_SYSCALLS[machine]
    code = [
        _bpf(BPF_LD_W_ABS, 0, 0, 4),
        _bpf(BPF_JEQ_K, 1, 0, arch),
        _bpf(BPF_RET_K, 0, 0, RET_KILL_PROCESS),
        _bpf(BPF_LD_W_ABS, 0, 0, 0),
    ]
    if machine == "x86_64":
        code += [_bpf(BPF_JGE_K, 0, 1, X32_SYSCALL_BIT), _bpf(BPF_RET_K, 0, 0, RET_KILL_PROCESS)]
    code += [
        _bpf(BPF_JEQ_K, 2, 0, execve),
        _bpf(BPF_JEQ_K, 1, 0, execveat),
        _bpf(BPF_RET_K, 0, 0, RET_ALLOW),
        _bpf(BPF_RET_K, 0, 0, RET_USER_NOTIF),
    ]
    return b"".join(code)


def install_exec_notify():
    """Load the exec filter on this process with a new listener; return the listener fd (OSError if not)."""
    machine = posix.uname().machine
    if machine not in EXEC_SYSCALLS:
        raise OSError(95, f"unsupported architecture {machine}")
    program = exec_notify_program(machine)
    copy, address = _function("buffer")(program)
    # struct sock_fprog: unsigned short len, (padding), struct sock_filter *filter
    fprog = (len(program) // 8).to_bytes(2, sys.byteorder) + bytes(6) + address.to_bytes(8, sys.byteorder)
    prctl(PR_SET_NO_NEW_PRIVS, 1)  # bwrap set it already; seccomp() refuses without it (or CAP_SYS_ADMIN)
    listener = syscall(SECCOMP_SYSCALL[machine], SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, fprog)
    del copy
    return listener


def send_fd(sock, fd):
    """``sendmsg(sock, "x", SCM_RIGHTS fd)`` through libc: ``_socket`` would cost ~0.3 ms to import."""
    buffer = _function("buffer")
    payload, payload_at = buffer(b"x")
    iov, iov_at = buffer(_u64(payload_at) + _u64(1))  # struct iovec
    # struct cmsghdr: size_t len (16 + 4), int level, int type, then the fd; CMSG_SPACE(4) = 24
    control, control_at = buffer(
        _u64(20)
        + SOL_SOCKET.to_bytes(4, sys.byteorder)
        + SCM_RIGHTS.to_bytes(4, sys.byteorder)
        + fd.to_bytes(4, sys.byteorder)
        + bytes(4)
    )
    # struct msghdr: name, namelen (+pad), iov, iovlen, control, controllen, flags (+pad)
    header, _ = buffer(bytes(16) + _u64(iov_at) + _u64(1) + _u64(control_at) + _u64(24) + bytes(8))
    _call("sendmsg", sock, header, 0)
    del payload, iov, control


class NoListener(OSError):
    """The kernel gave no user-notification listener (too old, a listener already in the filter chain: EBUSY)."""


def hand_over_exec_notify(sock):
    """Install the exec filter and send its listener over ``sock``; both fds are closed after."""
    try:
        listener = install_exec_notify()
    except OSError as e:
        posix.close(sock)
        raise NoListener(e.errno, e.strerror) from None
    try:
        send_fd(sock, listener)
    finally:
        posix.close(listener)
        posix.close(sock)


# --- host side: how fence starts this helper ---------------------------------------------
def helper_command(python=None):
    """``[python, "-I", "-S", <this file, or its .pyc>]``: what goes right after bwrap's ``--``.

    Python compiles a script it is given on every start (~2 ms for this file);
    an up-to-date ``.pyc`` (pip writes one at install, any import of this module
    refreshes it when it can) runs directly instead.  Only for the interpreter
    that would have written it (``python`` omitted: this one); otherwise the
    source.  Reads 16 bytes and stats the source: no imports.
    """
    source = __file__
    if source.endswith(".pyc"):  # imported from a sourceless install
        return [python or sys.executable, "-I", "-S", source]
    if python is None or python == sys.executable:
        head, name = source.rsplit("/", 1)
        cached = f"{head}/__pycache__/{name[:-3]}.{sys.implementation.cache_tag}.pyc"
        if _pyc_is_current(cached, source):
            return [sys.executable, "-I", "-S", cached]
    return [python or sys.executable, "-I", "-S", source]


def _pyc_is_current(cached, source):
    """A timestamp-based pyc for this interpreter whose recorded mtime and size match the source."""
    try:
        st = posix.stat(source)
        fd = posix.open(cached, posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError:
        return False
    try:
        header = posix.read(fd, 16)
    finally:
        posix.close(fd)
    return (
        len(header) == 16
        and header[:4] == bootstrap.MAGIC_NUMBER
        and header[4:8] == b"\0\0\0\0"
        and int.from_bytes(header[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
        and int.from_bytes(header[12:16], "little") == st.st_size & 0xFFFFFFFF
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
