"""Programs whose options or settings run commands: su/script ``-c``, find ``-exec``, ssh, rsync, git.

* ``su``/``runuser``/``script`` ``-c STRING`` (``runuser -u USER CMD...`` runs
  CMD directly);
* ``find ... -exec CMD ;`` (``-execdir``, ``-ok``, ``-okdir``), ``fd -x/-X CMD``;
* what ssh/scp/sftp run *locally*: ``-o ProxyCommand=`` and friends, scp's
  ``-S`` program;
* ``rsync -e CMD`` / ``--rsh=CMD``;
* git's ``-c KEY=VALUE`` settings that hold a command (pager, sshCommand,
  ``!``-aliases, credential helpers...), ``ext::`` URLs, and the command an
  alias given with ``-c alias.NAME=...`` expands to;
* environment variables holding a command line (``GIT_SSH_COMMAND``,
  ``PAGER``...: ``COMMAND_VARIABLES``).

``option_cluster``, ``ssh_option`` and ``git_globals`` read these programs'
command lines the same way for the SSH policy.  ``p`` is the
``grammar.Parser`` reading the script: strings go to ``p.script``, argv to
``p.nested_command``.
"""

from __future__ import annotations

import re

from .command import basename
from .words import LazyRe

COMMAND_VARIABLES = frozenset(
    {
        "GIT_SSH_COMMAND",
        "GIT_PAGER",
        "PAGER",
        "GIT_EDITOR",
        "EDITOR",
        "VISUAL",
        "GIT_SEQUENCE_EDITOR",
        "GIT_EXTERNAL_DIFF",
        "GIT_PROXY_COMMAND",
        "GIT_ASKPASS",
        "SSH_ASKPASS",
        "PROMPT_COMMAND",
        "MANPAGER",
        "SYSTEMD_PAGER",
        "RSYNC_RSH",
        "BROWSER",
    }
)
"""Environment variables whose value is a command line some program runs: parsed as nested scripts."""

_GIT_COMMAND_KEYS = LazyRe(
    r"(core\.(sshcommand|pager|editor|askpass|gitproxy|fsmonitor)|sequence\.editor|diff\.external|"
    r"gpg(\.[^.]+)?\.program|pager\..+|diff\..+\.(textconv|command)|filter\..+\.(clean|smudge|process)|"
    r"merge\..+\.driver|credential(\..+)?\.helper|alias\..+|uploadpack\.packobjectshook|"
    r"sendemail\..*(cmd|command)|web\.browser|browser\..+\.cmd|(diff|merge)tool\..+\.cmd)\Z"
)

STRING_RUNNERS = {"su": "csgGw", "runuser": "csgGuw", "script": "cEIOBTmo"}
"""Programs taking a command *string* with ``-c``/``--command`` (short options with a value listed)."""


def string_runner(p, argv: list[str], dyn: list[bool], short_arg: str) -> None:
    """su/runuser/script: ``-c``/``--command`` strings; ``runuser -u USER [--] CMD...`` runs CMD directly."""
    n = len(argv)
    i = 1
    direct = basename(argv[0]) == "runuser" and any(w == "-u" or w.startswith(("-u", "--user")) for w in argv[1:])
    while i < n:
        w = argv[i]
        if w == "--" or (direct and not w.startswith("-")):
            if direct:
                k = i + 1 if w == "--" else i
                if k < n:
                    p.nested_command(argv[k:], dyn[k:], {}, False)
            break
        if w in ("--command", "--session-command") or w.startswith(("--command=", "--session-command=")):
            _opt, eq, value = w.partition("=")
            k = i
            if not eq:
                k = i + 1
                value = argv[k] if k < n else ""
                i += 1
            if k < n and not dyn[k]:
                p.script(value)
        elif w.startswith("-") and not w.startswith("--") and len(w) > 1:
            options, i = option_cluster(argv, i, short_arg)
            for ch, arg, k in options:
                if ch == "c" and arg is not None and k < n and not dyn[k]:
                    p.script(arg)
            continue
        i += 1


def option_cluster(argv: list[str], i: int, arg_chars: str) -> tuple[list[tuple[str, str | None, int]], int]:
    """The options of one clustered short-option word ``argv[i]`` (``-abc``, ``-ovalue``, ``-o value``).

    Returns ``([(char, value, k)], next index)``: ``value`` is None for a flag,
    else the option's argument, read from the rest of the word or from the
    next word; ``k`` is the index of the word it came from (so callers can
    tell a literal from one only known at run time).  As getopt does, the
    first option in ``arg_chars`` ends the word.
    """
    word = argv[i]
    out: list[tuple[str, str | None, int]] = []
    for j in range(1, len(word)):
        ch = word[j]
        if ch not in arg_chars:
            out.append((ch, None, i))
            continue
        if j + 1 < len(word):
            out.append((ch, word[j + 1 :], i))
            return out, i + 1
        out.append((ch, argv[i + 1] if i + 1 < len(argv) else "", i + 1))
        return out, i + 2
    return out, i + 1


def find_exec(p, argv: list[str], dyn: list[bool], env: dict[str, str], name: str) -> None:
    """``find ... -exec CMD ... ;`` (also -execdir, -ok, -okdir) and ``fd -x/-X CMD``."""
    n = len(argv)
    starters = ("-exec", "-execdir", "-ok", "-okdir") if name == "find" else ("-x", "--exec", "-X", "--exec-batch")
    i = 1
    while i < n:
        if argv[i] in starters:
            j = i + 1
            while j < n and argv[j] not in (";", "+", "\\;") and not (name != "find" and argv[j] in starters):
                j += 1
            if j > i + 1:
                p.nested_command(argv[i + 1 : j], dyn[i + 1 : j], env, False)
            i = j + 1
        else:
            i += 1


_SSH_SHORT_ARG = "bcDEeFIiJLlmOoPpQRSWw"
_LOCAL_COMMAND_OPTIONS = ("proxycommand", "localcommand", "knownhostscommand")


def ssh_option(value: str) -> tuple[str, str]:
    """``-o`` value -> (lowercase key, value): ``Key=Value``, ``Key Value``, ``Key = "Value"``."""
    text = value.strip()
    m = re.match(r"([A-Za-z0-9]+)\s*(?:=\s*|\s+|$)", text)
    if not m:
        return text.lower(), ""
    rest = text[m.end() :].strip()
    if len(rest) >= 2 and rest[0] == rest[-1] == '"':
        rest = rest[1:-1]
    return m.group(1).lower(), rest


def ssh_local_commands(p, argv: list[str], dyn: list[bool], name: str) -> None:
    """Commands ssh/scp/sftp run *locally*: ``-o ProxyCommand=`` and friends, ``-S``/``-D`` programs."""
    n = len(argv)
    short_arg = _SSH_SHORT_ARG if name == "ssh" else ("cDFiJlopPSsXbBR" if name == "sftp" else "cDFiJlopPSX")
    i = 1
    while i < n:
        w = argv[i]
        if w == "--":
            break
        if w.startswith("-") and len(w) > 1:
            options, i = option_cluster(argv, i, short_arg)
            for ch, value, k in options:
                if value is None or (k < n and dyn[k]):
                    continue
                if ch == "o":
                    key, val = ssh_option(value)
                    if key in _LOCAL_COMMAND_OPTIONS and val.lower() != "none":
                        p.script(_ssh_percent(val))
                elif name != "ssh" and ch in "SD" and value:
                    p.script(value)
            continue
        elif name == "ssh":
            # ssh re-parses options after the destination; the first other word starts the remote command
            j = i + 1
            while j < n and argv[j].startswith("-") and argv[j] != "--":
                j += 1
                if argv[j - 1][-1:] in short_arg and len(argv[j - 1]) == 2:
                    j += 1
            if j > i + 1:
                ssh_local_commands(p, [argv[0]] + argv[i + 1 : j], [False] + dyn[i + 1 : j], name)
            return
        i += 1


def _ssh_percent(text: str) -> str:
    """ssh expands %h, %p, %r... in ProxyCommand/LocalCommand: stand-ins keep the words' shape."""
    return re.sub(r"%(.)", lambda m: "%" if m.group(1) == "%" else "X", text)


def rsync_local_commands(p, argv: list[str], dyn: list[bool], env: dict[str, str]) -> None:
    """``rsync -e CMD`` / ``--rsh=CMD``: the remote shell program runs locally."""
    n = len(argv)
    for k in range(1, n):
        w = argv[k]
        if dyn[k]:
            continue
        value = None
        if w == "-e" or w == "--rsh":
            if k + 1 < n and not dyn[k + 1]:
                value = argv[k + 1]
        elif w.startswith("--rsh="):
            value = w[6:]
        elif w.startswith("-") and not w.startswith("--") and "e" in w[1:]:
            j = w.index("e", 1)
            if w[1:j].isalpha():
                value = w[j + 1 :] or (argv[k + 1] if k + 1 < n and not dyn[k + 1] else None)
        if value:
            p.script(value)


_GIT_GLOBAL_ARG = frozenset(
    {
        "-C",
        "-c",
        "--git-dir",
        "--work-tree",
        "--namespace",
        "--super-prefix",
        "--config-env",
        "--exec-path",
        "--list-cmds",
        "--attr-source",
    }
)


def git_globals(argv: list[str]) -> tuple[int, list[str]]:
    """Skip git's global options: (index of the subcommand, ``-c`` values in order)."""
    n = len(argv)
    i = 1
    configs = []
    while i < n:
        w = argv[i]
        if not w.startswith("-") or w == "-":
            break
        if w == "--":
            i += 1
            break
        opt, eq, value = w.partition("=")
        if opt in _GIT_GLOBAL_ARG and not eq and opt != "--exec-path":
            value = argv[i + 1] if i + 1 < n else ""
            i += 1
        elif opt.startswith("-c") and len(opt) > 2 and not opt.startswith("--"):
            value = w[2:]
            opt = "-c"
        if opt == "-c":
            configs.append(value)
        i += 1
    return i, configs


def git_local_commands(p, argv: list[str], dyn: list[bool], env: dict[str, str]) -> None:
    """Commands git runs from ``-c KEY=VALUE`` (pager, sshCommand, ``!``-aliases...) and ``ext::`` URLs,
    and the command an alias given with ``-c alias.NAME=...`` expands to."""
    i, configs = git_globals(argv)
    aliases: dict[str, str] = {}
    for item in configs:
        key, eq, value = item.partition("=")
        key = key.lower()
        if not eq or not _GIT_COMMAND_KEYS.match(key):
            continue
        if key.startswith("alias."):
            aliases[key[6:]] = value
            if value.startswith("!"):
                p.script(value[1:])
        elif key.endswith(".helper") and not value.startswith("!"):
            if value and not value.startswith("/"):
                p.script("git credential-" + value)
            elif value:
                p.script(value)
        elif key == "core.fsmonitor" and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0", ""):
            continue
        else:
            p.script(value[1:] if value.startswith("!") else value)
    for k in range(i, len(argv)):
        if not dyn[k] and argv[k].startswith("ext::"):
            p.script(argv[k][5:].replace("%%", "%").replace("% ", " "))
    if i < len(argv) and not dyn[i] and argv[i].lower() in aliases:
        value = aliases[argv[i].lower()]
        rest = argv[i + 1 :]
        if value.startswith("!"):
            p.script(value[1:] + "".join(" " + _quote(r) for r in rest))
        else:
            words = p.split(value)
            if words:
                sub = argv[:i] + words + rest
                p.nested_command(sub, dyn[:i] + [False] * len(words) + dyn[i + 1 :], env, False)


def _quote(word: str) -> str:
    if word and re.fullmatch(r"[A-Za-z0-9_./=:@%+,-]+", word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"
