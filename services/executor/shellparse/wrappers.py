"""Report a command and everything it runs in turn: wrappers unwrapped, nested scripts found.

``expand_command`` is called for every simple command the grammar finds (and
for an exact argv).  It reports the command, then dispatches on its name to
what this module knows -- programs that run a program given as their
remaining arguments (``env``, ``sudo``, ``nice``, ``timeout``, ``xargs``...:
``WRAPPERS``, options skipped by ``_options_end``; ``watch``, ``flock``,
``sg``), shells running ``-c STRING`` or a script on stdin, and the builtins
that run a string (``eval``, ``trap``, ``alias``, ``source /dev/stdin``) --
or to ``tools`` (programs whose options run commands).  The wrapper *and*
the wrapped command are both reported; each wrapped level counts towards
``MAX_DEPTH``.  ``p`` is the ``grammar.Parser`` reading the script: strings
go to ``p.script``, argv to ``p.nested_command``.
"""

from __future__ import annotations

from .command import Command, basename
from .tools import (
    COMMAND_VARIABLES,
    STRING_RUNNERS,
    find_exec,
    git_local_commands,
    rsync_local_commands,
    ssh_local_commands,
    string_runner,
)
from .words import NAME

# --------------------------------------------------------------------------- shells and script builtins

STDIN_PATHS = frozenset({"/dev/stdin", "/dev/fd/0", "/proc/self/fd/0", "-"})
"""Script file names that mean "read the script from stdin"."""

SHELLS = frozenset(
    {
        "sh",
        "bash",
        "zsh",
        "ksh",
        "dash",
        "fish",
        "ash",
        "mksh",
        "lksh",
        "pdksh",
        "yash",
        "posh",
        "rbash",
        "csh",
        "tcsh",
        "ksh93",
    }
)
"""Shells whose ``-c STRING`` (or stdin) is parsed as a nested script."""

SCRIPT_BUILTINS = frozenset({"source", ".", "eval", "trap", "alias"})
"""Builtins whose arguments (or stdin) are a script run in the same shell."""


def _shell(p, argv: list[str], dyn: list[bool], stdin: str | None, name: str) -> None:
    """``sh -c STRING [NAME ARGS...]``, ``bash --norc -lc STRING``, ``fish -c STRING``, or a script on stdin."""
    n = len(argv)
    i = 1
    has_c = has_s = False
    strings: list[tuple[str, bool]] = []  # fish -c / -C values
    while i < n:
        w = argv[i]
        if w in ("--", "-"):
            i += 1
            break
        if w.startswith("--"):
            opt, eq, value = w.partition("=")
            if opt in ("--rcfile", "--init-file") and not eq:
                i += 1
            elif name == "fish" and opt in ("--command", "--init-command"):
                if not eq:
                    i += 1
                    value = argv[i] if i < n else ""
                strings.append((value, dyn[i] if i < n else False))
                has_c = has_c or opt == "--command"
            i += 1
            continue
        if len(w) > 1 and w[0] in "-+":
            takes = 0
            j = 1
            while j < len(w):
                ch = w[j]
                if name == "fish" and ch in "cC":
                    value = w[j + 1 :]
                    k = i
                    if not value:
                        k = i + 1 + takes
                        value = argv[k] if k < n else ""
                        takes += 1
                    strings.append((value, dyn[k] if k < n else False))
                    has_c = has_c or ch == "c"
                    break
                if ch == "c":
                    has_c = True
                elif ch == "s":
                    has_s = True
                elif ch in "oO":
                    takes += 1
                j += 1
            i += 1 + takes
            continue
        break
    if name == "fish":
        for text, d in strings:
            if not d:
                p.script(text)
        if has_c or i < n:
            return
    elif has_c:
        if i < n and not dyn[i]:
            params = {"0": [argv[i + 1]] if i + 1 < n else [argv[0]]}
            rest = argv[i + 2 :]
            if not any(dyn[i + 1 :]):
                for k, v in enumerate(rest, 1):
                    params[str(k)] = [v]
                params["@"] = rest
                params["*"] = rest
                params["#"] = [str(len(rest))]
            else:
                params = {}
            p.script(argv[i], params)
        return
    if i < n and not has_s and argv[i] not in STDIN_PATHS:
        return  # a script file: its content is not known here
    if stdin:
        p.script(stdin)


def _builtin_script(p, name: str, argv: list[str], dyn: list[bool], stdin: str | None) -> None:
    """``source /dev/stdin``, ``eval WORDS``, ``trap STRING SIGNAL``, ``alias NAME=STRING``: run in this shell."""
    n = len(argv)
    if name in ("source", ".") and n > 1 and argv[1] in STDIN_PATHS:
        if stdin:
            p.script(stdin, share=True)
        return
    if name in ("eval",):
        if n > 1 and not any(dyn[1:]):
            p.script(" ".join(argv[1:]), share=True)
        return
    if name == "trap":
        if n > 2 and not dyn[1] and argv[1] not in ("-", "-p", "-l", "--") and not argv[1].isdigit():
            p.script(argv[1], share=True)
        return
    if name == "alias":
        for w, d in zip(argv[1:], dyn[1:], strict=True):
            _lhs, eq, value = w.partition("=")
            if eq and not d:
                p.script(value, share=True)


def producer_output(argv: list[str], stdin: str | None) -> str | None:
    """What ``echo``/``printf``/``cat`` (with literal arguments ``argv``) write into a pipe."""
    name = basename(argv[0])
    args = argv[1:]
    if name == "echo":
        while args and args[0] in ("-n", "-e", "-E", "-ne", "-en"):
            args = args[1:]
        return " ".join(args) + "\n"
    if name == "printf" and args:
        fmt, rest = args[0], args[1:]
        if fmt in ("%s\n", "%s\\n", "%s", "%b\n", "%b\\n", "%b"):
            sep = "" if fmt in ("%s", "%b") else "\n"
            return sep.join(rest) + sep
        if "%" not in fmt:
            return fmt.replace("\\n", "\n")
        return None
    if name == "cat" and not args:
        return stdin
    return None


# --------------------------------------------------------------------------- wrappers


class _Spec:
    """How a wrapper's options look: which take a value, which mean "no command follows"."""

    __slots__ = ("short_arg", "long_arg", "skip", "stops", "assigns", "long_stops")

    def __init__(
        self,
        short_arg: str = "",
        long_arg: tuple[str, ...] = (),
        skip: int = 0,
        stops: str = "",
        assigns: bool = False,
        long_stops: tuple[str, ...] = (),
    ):
        self.short_arg = short_arg  # short options taking a value (attached or next word)
        self.long_arg = frozenset(long_arg)  # long options taking a value (=value or next word)
        self.skip = skip  # operands before the command (timeout DURATION, chroot DIR)
        self.stops = stops  # short options after which no command runs (command -v)
        self.assigns = assigns  # NAME=value words may follow the options (env, sudo)
        self.long_stops = frozenset(long_stops)


WRAPPERS: dict[str, _Spec] = {
    "env": _Spec("uCSP", ("--unset", "--chdir", "--split-string"), assigns=True),
    "exec": _Spec("a"),
    "command": _Spec("", stops="vV"),
    "builtin": _Spec(),
    "nohup": _Spec(),
    "nice": _Spec("n", ("--adjustment",)),
    "timeout": _Spec("sk", ("--signal", "--kill-after"), skip=1),
    "time": _Spec("fo", ("--format", "--output")),
    "stdbuf": _Spec("ioe", ("--input", "--output", "--error")),
    "setsid": _Spec(),
    "xargs": _Spec(
        "adEILnPs", ("--arg-file", "--delimiter", "--max-args", "--max-procs", "--max-chars", "--process-slot-var")
    ),
    "sudo": _Spec(
        "ugCDhprtTU",
        (
            "--user",
            "--group",
            "--close-from",
            "--chdir",
            "--host",
            "--prompt",
            "--role",
            "--type",
            "--command-timeout",
            "--other-user",
        ),
        stops="elvVK",
        assigns=True,
        long_stops=("--edit", "--list", "--validate", "--version", "--remove-timestamp"),
    ),
    "doas": _Spec("uC", stops="L"),
    "pkexec": _Spec("", ("--user",)),
    "busybox": _Spec(),
    "ionice": _Spec("cn", ("--class", "--classdata"), stops="pPu", long_stops=("--pid", "--pgid", "--uid")),
    "chrt": _Spec(
        "TPD",
        ("--sched-runtime", "--sched-period", "--sched-deadline"),
        skip=1,
        stops="pm",
        long_stops=("--pid", "--max"),
    ),
    "taskset": _Spec("", (), skip=1, stops="p", long_stops=("--pid",)),
    "chroot": _Spec("", ("--userspec", "--groups"), skip=1),
    "unshare": _Spec(
        "SGRw",
        (
            "--setuid",
            "--setgid",
            "--root",
            "--wd",
            "--map-user",
            "--map-group",
            "--propagation",
            "--setgroups",
            "--kill-child",
        ),
    ),
    "nsenter": _Spec("tSGrwT", ("--target", "--setuid", "--setgid")),
    "fakeroot": _Spec("lsib", ("--lib", "--faked", "-s", "-i", "-b")),
    "unbuffer": _Spec(),
    "torsocks": _Spec("upaP"),
    "proxychains": _Spec("f"),
    "proxychains4": _Spec("f"),
    "strace": _Spec("abeEIoOpPsSuUX", ("--output", "--trace", "--signal", "--attach", "--user", "--env")),
    "ltrace": _Spec("aAeEFlLnopsuwxX", ("--output", "--library")),
    "catchsegv": _Spec(),
    "prlimit": _Spec("p", ("--pid",)),
    "firejail": _Spec(),
    "systemd-run": _Spec(
        "pEMHu",
        (
            "--property",
            "--setenv",
            "--machine",
            "--host",
            "--unit",
            "--description",
            "--slice",
            "--uid",
            "--gid",
            "--nice",
            "--working-directory",
        ),
    ),
    "runcon": _Spec("turl", ("--type", "--user", "--role", "--range")),
    "ifne": _Spec(),
    "chronic": _Spec(),
    "lckdo": _Spec("w", skip=1),
    "caffeinate": _Spec("tw"),
}
"""Programs that run another program given as their remaining arguments."""


def _options_end(p, argv: list[str], start: int, spec: _Spec) -> tuple[int, bool, list[str]]:
    """Skip a wrapper's options: (index of the wrapped command, command runs?, split-string words)."""
    i = start
    n = len(argv)
    runs = True
    extra: list[str] = []
    while i < n:
        w = argv[i]
        if w == "--":
            i += 1
            break
        if w == "-" and spec.assigns:  # env - (same as -i)
            i += 1
            continue
        if w.startswith("--") and len(w) > 2:
            name, eq, value = w.partition("=")
            if name in spec.long_stops:
                runs = False
            if name in spec.long_arg and not eq:
                value = argv[i + 1] if i + 1 < n else ""
                i += 1
            if name == "--split-string":
                extra = p.split(value)
            i += 1
            continue
        if w.startswith("-") and len(w) > 1:
            j = 1
            while j < len(w):
                ch = w[j]
                if ch in spec.stops:
                    runs = False
                if ch in spec.short_arg:
                    value = w[j + 1 :]
                    if not value:
                        value = argv[i + 1] if i + 1 < n else ""
                        i += 1
                    if ch == "S" and spec is WRAPPERS["env"]:
                        extra = p.split(value)
                    break
                j += 1
            i += 1
            continue
        break
    return i, runs, extra


# --------------------------------------------------------------------------- the dispatch


def expand_command(
    p, argv: list[str], dyn: list[bool], env: dict[str, str], stdin: str | None, open_tail: bool
) -> None:
    """Report ``argv`` and everything it runs in turn (wrapped commands, nested scripts)."""
    p.ctx.emit(Command(argv, dyn, open_tail, env))
    if dyn[0]:
        return
    name = basename(argv[0])
    n = len(argv)

    def inner(
        start: int, tail: bool = open_tail, more_env: dict[str, str] | None = None, extra: list[str] | None = None
    ) -> None:
        if extra:
            sub, sdyn = extra + argv[start:], [False] * len(extra) + dyn[start:]
        else:
            sub, sdyn = argv[start:], dyn[start:]
        if sub:
            e = env if not more_env else {**env, **more_env}
            p.nested_command(sub, sdyn, e, tail)

    if name in SHELLS:
        _shell(p, argv, dyn, stdin, name)
        return
    if name in SCRIPT_BUILTINS:
        _builtin_script(p, name, argv, dyn, stdin)
        return
    if name in ("find", "fd", "fdfind"):
        find_exec(p, argv, dyn, env, name)
        return
    if name == "watch":
        i, runs, _ = _options_end(p, argv, 1, _Spec("nqd", ("--interval", "--differences", "--chgexit")))
        if i < n:
            if "-x" in argv[1:i] or "--exec" in argv[1:i]:
                inner(i)
            elif not any(dyn[i:]):
                p.script(" ".join(argv[i:]))
        return
    if name in STRING_RUNNERS:
        string_runner(p, argv, dyn, STRING_RUNNERS[name])
        return
    if name == "sg":  # sg [-] GROUP [-c] COMMAND...  (run with /bin/sh -c)
        i = 1
        while i < n and argv[i] == "-":
            i += 1
        i += 1
        if i < n and argv[i] == "-c":
            i += 1
        if i < n and not any(dyn[i:]):
            p.script(" ".join(argv[i:]))
        return
    if name == "flock":
        i, _, _ = _options_end(p, argv, 1, _Spec("wEc", ("--timeout", "--wait", "--conflict-exit-code")))
        for k in range(1, min(i, n)):
            if argv[k] in ("-c", "--command") and k + 1 < n and not dyn[k + 1]:
                p.script(argv[k + 1])
            elif argv[k].startswith("--command="):
                p.script(argv[k].partition("=")[2])
        if i + 1 < n:
            if argv[i + 1] in ("-c", "--command"):
                if i + 2 < n and not dyn[i + 2]:
                    p.script(argv[i + 2])
            elif not argv[i].isdigit():
                inner(i + 1)
        return
    if name == "xargs":
        i, runs, _ = _options_end(p, argv, 1, WRAPPERS["xargs"])
        if i < n:
            inner(i, tail=True)
        return
    if name in ("ssh", "scp", "sftp"):
        ssh_local_commands(p, argv, dyn, name)
        return
    if name == "rsync":
        rsync_local_commands(p, argv, dyn, env)
        return
    if name == "git":
        git_local_commands(p, argv, dyn, env)
        return
    spec = WRAPPERS.get(name)
    if spec is None:
        return
    i, runs, extra = _options_end(p, argv, 1, spec)
    if not runs:
        return
    more: dict[str, str] = {}
    if spec.assigns:
        while i < n and not dyn[i] and "=" in argv[i] and NAME.fullmatch(argv[i].partition("=")[0]):
            var, _, v = argv[i].partition("=")
            more[var] = v
            if var in COMMAND_VARIABLES:
                p.script(v)
            i += 1
    if name == "busybox" and i < n and argv[i].startswith("--"):
        return
    i += spec.skip
    if i < n or extra:
        inner(i, more_env=more, extra=extra)
