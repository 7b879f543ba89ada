"""SSH policy (docs/compatibility.md#config-fields): which hosts ssh may reach and which remote commands it may run.

Opt-in, as in Fence: nothing here applies unless ``ssh.allowedHosts``
or ``ssh.deniedHosts`` is non-empty (``preflight.check_commands`` only calls
``check`` then).  For every command that would open an ssh connection --
``ssh``, ``scp``, ``sftp``, ``rsync`` over ssh, git's ssh transport
(``git@host:repo``, ``ssh://`` URLs) -- the decision is, in order:

1. a host in ``deniedHosts`` -> blocked (the name as written *and* the real
   host name are checked);
2. ``allowedHosts`` set and the real host not in it -> blocked;
3. no remote command -> allowed;
4. each command of the remote command line in ``deniedCommands`` -> blocked;
5. ``inheritDeny`` and a ``command.deny`` (or, with ``useDefaults``, a
   default) rule matches -> blocked;
6. ``allowAllCommands`` -> allowed;
7. every remote command in ``allowedCommands`` -> allowed; else blocked.

Decided on what ssh will do, not on the text: the effective host name, port,
user, proxy and remote command come from ``ssh -G`` (which evaluates
``~/.ssh/config`` without connecting), so an alias cannot hide a denied host.
Options that run local commands or send the connection elsewhere are refused
unless harmless: ``-o ProxyCommand`` (``none`` is fine), ``-o LocalCommand``,
``-o PermitLocalCommand=yes``, ``-o KnownHostsCommand``, ``-o Include``,
``-F FILE`` (``none`` is fine), ``-I``/PKCS11Provider, ``-S``/ControlPath,
a ProxyCommand/LocalCommand/KnownHostsCommand from the resolved config, and
jump hosts (``-J``, ProxyJump) that the host rules would not allow.  Without
an ``ssh`` binary the textual host is used (and said so in the docs).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping

from fence.defaults import DEFAULT_DENIED_COMMANDS, DEFAULT_DENY_SOURCE
from fence.executor import shellparse
from fence.executor.commandrules import Blocked, RuleSources, ruleset, use_defaults
from fence.executor.shellparse import (
    Command,
    ParseError,
    basename,
    git_globals,
    option_cluster,
    split_words,
    ssh_option,
)
from fence.globmatch import star_match
from fence.goquote import go_quote
from fence.policy import Policy

__all__ = [
    "Target",
    "Resolved",
    "ResolveError",
    "check",
    "targets",
    "host_matches",
    "resolve",
    "ssh_binary",
    "RESOLVE_TIMEOUT",
    "FENCE_POLICY",
]

RESOLVE_TIMEOUT = 3.0
"""Seconds ``ssh -G`` may take (it does not connect; canonicalisation may look up DNS)."""
MAX_JUMP_DEPTH = 3
FENCE_POLICY = "fence ssh policy"
"""``Blocked.source`` of refusals that come from fence itself rather than a config rule."""

_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_IPV6_CHARS = frozenset("0123456789ABCDEFabcdef:.")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")
_OPTION_VALUE = re.compile(r"[A-Za-z0-9_.:%,@*\[\] /+-]*\Z")

_PASSED_OPTIONS = frozenset(
    {
        "hostname",
        "port",
        "user",
        "proxyjump",
        "canonicalizehostname",
        "canonicaldomains",
        "canonicalizemaxdots",
        "canonicalizefallbacklocal",
        "canonicalizepermittedcnames",
        "addressfamily",
        "tag",
        "hostkeyalias",
    }
)
"""``-o`` options that change where ssh connects: handed to ``ssh -G`` (after a character check)."""

_SSH_FLAGS_NO_CONNECT = "GV"
_SSH_ARG = "bcDEeFIiJLlmOoPpQRSWw"
_SCP_ARG = "lPSoFciJXD"
_SFTP_ARG = "cDilosSbBFJPRX"


def _ipv6_like(host: str) -> bool:
    """Hex digits, dots and at least one colon.  A set test, not a regex: ``[...]*:[...]*`` backtracks
    quadratically over a long run of colons, and the host is the sandboxed command's."""
    return ":" in host and set(host) <= _IPV6_CHARS


class ResolveError(Exception):
    """``ssh -G`` failed or timed out."""


class Target:
    """One ssh connection a command would open, as far as the command line says."""

    __slots__ = (
        "program",
        "dest",
        "host",
        "user",
        "port",
        "options",
        "jumps",
        "remote",
        "refused",
        "refused_rule",
        "unknown",
    )

    def __init__(self, program: str):
        self.program = program
        self.dest = ""  # what is handed to ssh -G: [user@]host or ssh://[user@]host[:port]
        self.host = ""  # host as written (an alias, perhaps)
        self.user = ""
        self.port = ""
        self.options: list[str] = []  # vetted ssh options for ssh -G
        self.jumps: list[str] = []  # -J / -o ProxyJump values from the command line
        self.remote: str | None = None  # remote command line, None when none
        self.refused = ""  # why an option is refused ("" when none is)
        self.refused_rule = ""
        self.unknown = ""  # why the destination cannot be known before the run

    def refuse(self, why: str, rule: str) -> None:
        if not self.refused:
            self.refused, self.refused_rule = why, rule

    def __repr__(self) -> str:
        return (
            f"Target({self.program} dest={self.dest!r} opts={self.options} jumps={self.jumps} "
            f"remote={self.remote!r} refused={self.refused!r} unknown={self.unknown!r})"
        )


class Resolved:
    """What ``ssh -G`` says ssh would do."""

    __slots__ = ("values",)

    def __init__(self, values: dict[str, str]):
        self.values = values

    def get(self, key: str) -> str:
        value = self.values.get(key, "")
        return "" if value.lower() == "none" else value

    @property
    def hostname(self) -> str:
        return self.values.get("hostname", "")


# --------------------------------------------------------------------------- reading command lines


def _set_dest(t: Target, text: str, dynamic: bool) -> None:
    """``[user@]host``, ``ssh://[user@]host[:port][/path]`` (also for scp/sftp URLs)."""
    if dynamic:
        t.host = text
        t.unknown = f"destination {go_quote(text)} is only known when the command runs"
        return
    user = port = ""
    rest = text
    m = re.match(r"(?:ssh|scp|sftp|git\+ssh|ssh\+git)://", text, re.I)
    if m:
        rest = text[m.end() :]
        rest = rest.split("/", 1)[0]
        if "@" in rest:
            user, _, rest = rest.rpartition("@")
        if rest.startswith("["):
            host, _, tail = rest[1:].partition("]")
            port = tail[1:] if tail.startswith(":") else ""
        else:
            host, _, port = rest.partition(":")
    else:
        if "@" in rest:
            user, _, rest = rest.rpartition("@")
        host = rest[1:-1] if rest.startswith("[") and rest.endswith("]") else rest
    if not host:
        t.unknown = f"no host in {go_quote(text)}"
        return
    if (
        not (_HOST.match(host) or _ipv6_like(host))
        or (user and not _USER.match(user))
        or (port and not _PORT.match(port))
    ):
        t.host = text
        t.refuse(f"destination {go_quote(text)} has characters ssh would not accept in a host or user name", text)
        return
    t.host = host
    t.user = user
    t.port = port
    t.dest = f"{user}@{host}" if user else host
    if port:
        t.options += ["-p", port]


def _ssh_o(t: Target, value: str) -> None:
    key, val = ssh_option(value)
    low = val.lower()
    if key == "proxycommand":
        if low != "none":
            t.refuse("-o ProxyCommand runs a local command that decides where the connection goes", "ProxyCommand")
    elif key == "localcommand":
        if val and low != "none":
            t.refuse("-o LocalCommand runs a local command", "LocalCommand")
    elif key == "permitlocalcommand":
        if low in ("yes", "true"):
            t.refuse("-o PermitLocalCommand=yes lets ssh run a local command", "PermitLocalCommand")
    elif key == "knownhostscommand":
        if low != "none":
            t.refuse("-o KnownHostsCommand runs a local command", "KnownHostsCommand")
    elif key == "include":
        t.refuse("-o Include reads another ssh config", "Include")
    elif key in ("pkcs11provider", "securitykeyprovider"):
        if low not in ("none", "internal", ""):
            t.refuse(f"-o {key} loads a library into ssh", key)
    elif key == "controlpath":
        if low != "none":
            t.refuse("-o ControlPath may reuse a connection to another host", "ControlPath")
    elif key == "remotecommand" and low != "none" and t.remote is None:
        t.remote = val
    if key in _PASSED_OPTIONS:
        if not _OPTION_VALUE.match(val):
            t.refuse(f"-o {key} value {go_quote(val)} has characters fence does not pass to ssh", key)
            return
        if key == "proxyjump":
            t.jumps.append(val)
        t.options += ["-o", f"{key}={val}"]


def _ssh_short(t: Target, ch: str, value: str, program: str) -> None:
    """One ssh-style option with a value (``-o``, ``-J``, ``-F``, ...); ``program`` is ssh/scp/sftp."""
    if ch == "o":
        _ssh_o(t, value)
    elif ch == "J":
        if not _OPTION_VALUE.match(value):
            t.refuse(f"-J {go_quote(value)} has characters fence does not pass to ssh", "-J")
        else:
            t.jumps.append(value)
            t.options += ["-J", value]
    elif ch == "F":
        if value in ("none", "/dev/null"):
            t.options += ["-F", value]
        else:
            t.refuse(f"-F {value} reads another ssh config file", "-F")
    elif ch == "I" and program == "ssh":
        t.refuse("-I loads a PKCS#11 library into ssh", "-I")
    elif ch == "S":
        if program == "ssh":
            if value.lower() != "none":
                t.refuse("-S may reuse a connection to another host", "-S")
        elif basename(split_words(value)[0] if value.strip() else "") != "ssh":
            t.refuse(f"{program} -S runs {go_quote(value)} instead of ssh", "-S")
    elif (ch == "p" and program == "ssh") or (ch == "P" and program in ("scp", "sftp")):
        if _PORT.match(value):
            t.options += ["-p", value]
        else:
            t.refuse(f"port {go_quote(value)} is not a number", "-p")
    elif ch == "l" and program == "ssh":
        if _USER.match(value):
            t.options += ["-l", value]
        else:
            t.refuse(f"user {go_quote(value)} has characters ssh would not accept", "-l")
    elif ch == "P" and program == "ssh":
        if _OPTION_VALUE.match(value):
            t.options += ["-P", value]
        else:
            t.refuse(f"-P {go_quote(value)} has characters fence does not pass to ssh", "-P")


def _walk_options(
    t: Target, argv: list[str], dyn: list[bool], i: int, arg_chars: str, program: str, flags: dict
) -> int:
    """Parse one run of ssh-style options from ``argv[i]``; return the index of the first operand."""
    n = len(argv)
    while i < n:
        w = argv[i]
        if w == "--":
            flags["dashdash"] = True
            return i + 1
        if not w.startswith("-") or len(w) < 2:
            return i
        options, i = option_cluster(argv, i, arg_chars)
        for ch, value, k in options:
            if value is None:  # a flag
                if program == "ssh":
                    if ch in _SSH_FLAGS_NO_CONNECT:
                        flags["noconnect"] = True
                    elif ch == "N":
                        flags["nocommand"] = True
                    elif ch == "s":
                        flags["subsystem"] = True
            elif k < n and dyn[k]:
                t.refuse(f"option -{ch} {go_quote(value)} is only known when the command runs", f"-{ch}")
            elif (program == "ssh" and ch == "Q") or (program in ("scp", "sftp") and ch == "D"):
                flags["noconnect"] = True
            elif program == "sftp" and ch == "s":
                t.remote = value
            elif program == "ssh" and ch == "W":
                flags["nocommand"] = True
            else:
                _ssh_short(t, ch, value, program)
    return i


def _ssh_targets(argv: list[str], dyn: list[bool]) -> list[Target]:
    t = Target("ssh")
    flags: dict = {}
    n = len(argv)
    i = _walk_options(t, argv, dyn, 1, _SSH_ARG, "ssh", flags)
    if i >= n:
        return []  # ssh -V, ssh -G host... or no destination: nothing is opened
    dest_i = i
    i += 1
    if not flags.get("dashdash"):
        i = _walk_options(t, argv, dyn, i, _SSH_ARG, "ssh", flags)  # ssh re-reads options after the host
    if flags.get("noconnect"):
        return []
    _set_dest(t, argv[dest_i], dyn[dest_i])
    words = argv[i:]
    if words and not flags.get("nocommand"):
        t.remote = " ".join(words)
    elif flags.get("nocommand"):
        t.remote = None
    return [t]


def _colon_host(operand: str) -> tuple[str, str] | None:
    """scp/rsync ``[user@]host:path`` -> (``[user@]host``, path); None for a local path."""
    if operand.startswith("["):
        end = operand.find("]")
        if end > 0 and operand[end + 1 : end + 2] == ":":
            return operand[: end + 1], operand[end + 2 :]
    at = operand.find("@")
    start = at + 1 if at >= 0 and "/" not in operand[:at] else 0
    if operand[start : start + 1] == "[":
        end = operand.find("]", start)
        if end > 0 and operand[end + 1 : end + 2] == ":":
            return operand[: end + 1], operand[end + 2 :]
    colon = operand.find(":")
    slash = operand.find("/")
    if colon <= 0 or (0 <= slash < colon):
        return None
    return operand[:colon], operand[colon + 1 :]


def _copy_targets(argv: list[str], dyn: list[bool], program: str) -> list[Target]:
    """scp SRC... DST and sftp [user@]host[:path]: one target per remote operand."""
    base = Target(program)
    flags: dict = {}
    i = _walk_options(base, argv, dyn, 1, _SCP_ARG if program == "scp" else _SFTP_ARG, program, flags)
    if flags.get("noconnect"):
        return []
    out = []
    operands = argv[i:]
    odyn = dyn[i:]
    if program == "sftp":
        operands, odyn = operands[:1], odyn[:1]
    for word, d in zip(operands, odyn, strict=True):
        t = Target(program)
        t.options = list(base.options)
        t.jumps = list(base.jumps)
        t.refused, t.refused_rule = base.refused, base.refused_rule
        t.remote = base.remote
        if re.match(r"(scp|sftp)://", word, re.I):
            _set_dest(t, word, d)
        elif d:
            if ":" in word or "$" in word:
                _set_dest(t, word, True)
            else:
                continue
        elif program == "sftp":
            host = _colon_host(word)
            _set_dest(t, host[0] if host else word, False)
        else:
            host = _colon_host(word)
            if host is None:
                continue
            _set_dest(t, host[0], False)
        out.append(t)
    return out


_RSYNC_LONG_ARG = frozenset(
    {
        "--rsh",
        "--rsync-path",
        "--filter",
        "--exclude",
        "--include",
        "--exclude-from",
        "--include-from",
        "--files-from",
        "--temp-dir",
        "--compare-dest",
        "--copy-dest",
        "--link-dest",
        "--partial-dir",
        "--backup-dir",
        "--suffix",
        "--chmod",
        "--chown",
        "--usermap",
        "--groupmap",
        "--timeout",
        "--contimeout",
        "--port",
        "--password-file",
        "--log-file",
        "--log-file-format",
        "--out-format",
        "--bwlimit",
        "--max-size",
        "--min-size",
        "--max-delete",
        "--block-size",
        "--modify-window",
        "--compress-level",
        "--compress-choice",
        "--checksum-choice",
        "--skip-compress",
        "--iconv",
        "--remote-option",
        "--sockopts",
        "--protocol",
        "--outbuf",
        "--address",
        "--info",
        "--debug",
        "--stop-after",
        "--stop-at",
        "--write-batch",
        "--only-write-batch",
        "--read-batch",
        "--checksum-seed",
        "--early-input",
        "--config",
        "--dparam",
        "--log-format",
        "--zc",
        "--cc",
    }
)


def _rsync_targets(cmd: Command) -> list[Target]:
    argv, dyn = cmd.argv, cmd.dynamic
    n = len(argv)
    rsh = cmd.env.get("RSYNC_RSH")
    rsh_given = rsh is not None
    rsync_path = "rsync"
    operands: list[tuple[str, bool]] = []
    i = 1
    while i < n:
        w = argv[i]
        if w == "--":
            operands += list(zip(argv[i + 1 :], dyn[i + 1 :], strict=True))
            break
        if w.startswith("--"):
            name, eq, value = w.partition("=")
            if name in _RSYNC_LONG_ARG and not eq:
                value = argv[i + 1] if i + 1 < n else ""
                i += 1
            if name == "--rsh":
                rsh, rsh_given = value, True
            elif name == "--rsync-path":
                rsync_path = value
            i += 1
            continue
        if w.startswith("-") and len(w) > 1:
            for j in range(1, len(w)):
                if w[j] in "efBTM@":
                    value = w[j + 1 :]
                    if not value:
                        value = argv[i + 1] if i + 1 < n else ""
                        i += 1
                    if w[j] == "e":
                        rsh, rsh_given = value, True
                    break
            i += 1
            continue
        operands.append((w, dyn[i]))
        i += 1
    rsh_words = split_words(rsh) if rsh else ["ssh"]
    if not rsh_words or basename(rsh_words[0]) != "ssh":
        return []  # another remote shell program: checked as a local command by the command policy
    out = []
    for word, d in operands:
        if re.match(r"rsync://", word, re.I):
            continue  # the rsync daemon protocol: a plain TCP connection (network policy)
        host = _colon_host(word)
        if host is None:
            if d and ":" in word:
                t = Target("rsync")
                _set_dest(t, word, True)
                out.append(t)
            continue
        daemon = host[1].startswith(":")
        if daemon and not rsh_given:
            continue
        t = Target("rsync")
        flags: dict = {}
        _walk_options(t, rsh_words, [False] * len(rsh_words), 1, _SSH_ARG, "ssh", flags)
        _set_dest(t, host[0], d)
        t.remote = f"{rsync_path} --server" + (" --daemon" if daemon else "")
        out.append(t)
    return out


_GIT_SUB_ARG = {
    "clone": {
        "-o",
        "--origin",
        "-b",
        "--branch",
        "-u",
        "--upload-pack",
        "--reference",
        "--reference-if-able",
        "--separate-git-dir",
        "--depth",
        "--shallow-since",
        "--shallow-exclude",
        "-c",
        "--config",
        "--template",
        "-j",
        "--jobs",
        "--filter",
        "--bundle-uri",
        "--server-option",
        "--ref-format",
    },
    "fetch": {
        "--upload-pack",
        "--depth",
        "--deepen",
        "--shallow-since",
        "--shallow-exclude",
        "-j",
        "--jobs",
        "--refmap",
        "-o",
        "--server-option",
        "--negotiation-tip",
        "--filter",
        "--recurse-submodules-default",
        "--submodule-prefix",
    },
    "pull": {
        "--upload-pack",
        "--depth",
        "--deepen",
        "--shallow-since",
        "--shallow-exclude",
        "-j",
        "--jobs",
        "-o",
        "--server-option",
        "--negotiation-tip",
        "-s",
        "--strategy",
        "-X",
        "--strategy-option",
    },
    "push": {"--receive-pack", "--exec", "--repo", "-o", "--push-option"},
    "ls-remote": {"--upload-pack", "--exec", "--sort", "-o", "--server-option"},
    "archive": {
        "--remote",
        "--exec",
        "--format",
        "--prefix",
        "-o",
        "--output",
        "--add-file",
        "--add-virtual-file",
        "--mtime",
    },
}
_GIT_SERVICE = {
    "clone": "git-upload-pack",
    "fetch": "git-upload-pack",
    "pull": "git-upload-pack",
    "ls-remote": "git-upload-pack",
    "push": "git-receive-pack",
    "archive": "git-upload-archive",
}


def _git_url_host(url: str) -> tuple[str, str] | None:
    """An ssh-transport git URL -> (``ssh://...`` or ``[user@]host`` for ``_set_dest``, path)."""
    m = re.match(r"(ssh|git\+ssh|ssh\+git)://", url, re.I)
    if m:
        rest = url[m.end() :]
        authority, slash, path = rest.partition("/")
        return url[: m.end()] + authority, slash + path
    if "://" in url or url.startswith(("/", ".", "~")):
        return None
    if url.lower().startswith("ext::"):
        return None
    return _colon_host(url)


def _git_targets(cmd: Command) -> list[Target]:
    argv, dyn = cmd.argv, cmd.dynamic
    i, configs = git_globals(argv)
    n = len(argv)
    if i >= n or dyn[i]:
        return []
    sub = argv[i]
    if sub not in _GIT_SERVICE:
        return []
    settings: dict[str, str] = {}
    rewrites: list[tuple[str, str, bool]] = []  # (prefix, base, push only)
    for item in configs:
        key, _, value = item.partition("=")
        low = key.lower()
        settings[low] = value
        m = re.match(r"url\.(.+)\.(push)?insteadof\Z", key, re.I)
        if m:
            rewrites.append((value, m.group(1), bool(m.group(2))))
    service = _GIT_SERVICE[sub]
    takes = _GIT_SUB_ARG.get(sub, set())
    repo = None
    repo_dyn = False
    j = i + 1
    while j < n:
        w = argv[j]
        if w == "--":
            if j + 1 < n and repo is None:
                repo, repo_dyn = argv[j + 1], dyn[j + 1]
            break
        if w.startswith("-") and len(w) > 1:
            name, eq, value = w.partition("=")
            if name in takes and not eq:
                value = argv[j + 1] if j + 1 < n else ""
                j += 1
            if name in ("--upload-pack", "-u", "--receive-pack", "--exec"):
                service = value
            elif name in ("--repo", "--remote"):
                repo, repo_dyn = value, dyn[j]
            elif name in ("-c", "--config") and sub == "clone":
                k2, _, v2 = value.partition("=")
                settings[k2.lower()] = v2
            j += 1
            continue
        if repo is None:
            repo, repo_dyn = w, dyn[j]
        j += 1
    if repo is None:
        return []  # the default remote: its URL is in the repository's config
    if repo_dyn:
        if ":" in repo or "$" in repo:
            t = Target("git")
            _set_dest(t, repo, True)
            return [t]
        return []
    best = None
    for prefix, base, push_only in rewrites:
        if push_only and sub != "push":
            continue
        if repo.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, base)
    if best is not None:
        repo = best[1] + repo[len(best[0]) :]
    found = _git_url_host(repo)
    if found is None:
        return []
    dest, path = found
    t = Target("git")
    ssh_cmd = cmd.env.get("GIT_SSH_COMMAND") or settings.get("core.sshcommand")
    if ssh_cmd:
        words = split_words(ssh_cmd)
        if not words or basename(words[0]) != "ssh":
            t.refuse(f"git would run {go_quote(ssh_cmd)} instead of ssh", "GIT_SSH_COMMAND")
        else:
            flags: dict = {}
            _walk_options(t, words, [False] * len(words), 1, _SSH_ARG, "ssh", flags)
    elif cmd.env.get("GIT_SSH") and basename(cmd.env["GIT_SSH"]) != "ssh":
        t.refuse(f"git would run {go_quote(cmd.env['GIT_SSH'])} instead of ssh", "GIT_SSH")
    _set_dest(t, dest, False)
    quoted = "'" + path.lstrip(":").replace("'", "'\\''") + "'"
    t.remote = f"{service} {quoted}"
    return [t]


def targets(cmd: Command) -> list[Target]:
    """The ssh connections ``cmd`` would open (empty for anything else)."""
    name = cmd.name
    if name == "ssh":
        return _ssh_targets(cmd.argv, cmd.dynamic)
    if name in ("scp", "sftp"):
        return _copy_targets(cmd.argv, cmd.dynamic, name)
    if name == "rsync":
        return _rsync_targets(cmd)
    if name == "git":
        return _git_targets(cmd)
    return []


# --------------------------------------------------------------------------- ssh -G


def ssh_binary(env: Mapping[str, str] | None = None) -> str | None:
    """``ssh`` on ``env``'s PATH (the one the sandboxed command would find), or None."""
    env = os.environ if env is None else env
    for d in env.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(d or ".", "ssh")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _run(argv: list[str], env: Mapping[str, str], timeout: float) -> tuple[int, str, str]:
    """Run without the subprocess module (kept off the hot path): (exit code, stdout, stderr)."""
    import select  # lazy: only an ssh command runs ssh -G; other runs with an SSH policy skip select (~0.2 ms)

    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2),
            (os.POSIX_SPAWN_CLOSE, out_r),
            (os.POSIX_SPAWN_CLOSE, err_r),
        ]
        pid = os.posix_spawn(argv[0], argv, dict(env), file_actions=actions, setsid=True)
    except OSError as e:
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        raise ResolveError(f"cannot run {argv[0]}: {e.strerror}") from None
    os.close(out_w)
    os.close(err_w)
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    poller = select.poll()  # not select(): a long-running executor may hold fds above 1024
    poller.register(out_r, select.POLLIN)
    poller.register(err_r, select.POLLIN)
    open_fds = 2
    deadline = time.monotonic() + timeout

    def give_up() -> ResolveError:
        try:
            os.killpg(pid, 9)
        except OSError:
            pass
        os.waitpid(pid, 0)
        return ResolveError(f"ssh -G took longer than {timeout:g} s")

    try:
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                raise give_up()
            for fd, _ in poller.poll(max(1, int(left * 1000))):
                data = os.read(fd, 65536)
                if data:
                    chunks[fd].append(data)
                else:
                    poller.unregister(fd)
                    open_fds -= 1
        done, status = os.waitpid(pid, os.WNOHANG)
        if not done:  # output closed but still running: wait for the exit, not past the deadline
            try:
                pidfd = os.pidfd_open(pid)
            except (AttributeError, OSError):
                pidfd = -1
            try:
                while not done:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise give_up()
                    if pidfd >= 0:
                        exited = select.poll()
                        exited.register(pidfd, select.POLLIN)
                        exited.poll(max(1, int(left * 1000)))
                    else:
                        time.sleep(0.002)
                    done, status = os.waitpid(pid, os.WNOHANG)
            finally:
                if pidfd >= 0:
                    os.close(pidfd)
    finally:
        os.close(out_r)
        os.close(err_r)
    return (
        os.waitstatus_to_exitcode(status),
        b"".join(chunks[out_r]).decode("utf-8", "replace"),
        b"".join(chunks[err_r]).decode("utf-8", "replace"),
    )


def resolve(
    target: Target, env: Mapping[str, str] | None = None, ssh: str | None = None, timeout: float | None = None
) -> Resolved | None:
    """``ssh -G [options] -- dest``: the effective settings; None when no ssh is installed."""
    env = os.environ if env is None else env
    timeout = RESOLVE_TIMEOUT if timeout is None else timeout
    ssh = ssh or ssh_binary(env)
    if ssh is None:
        return None
    code, out, err = _run([ssh, "-G", *target.options, "--", target.dest], env, timeout)
    if code != 0:
        lines = [ln for ln in err.splitlines() if ln.strip() and "Pseudo-terminal" not in ln]
        raise ResolveError(lines[0].strip() if lines else f"ssh -G exited with {code}")
    values: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key and key not in values:
            values[key] = value.strip()
    return Resolved(values)


# --------------------------------------------------------------------------- the decision


def host_matches(host: str, pattern: str) -> bool:
    """Case-insensitive glob, ``*`` anywhere (as Fence matches hosts); ``[v6]`` compared without brackets.

    The host comes from the sandboxed command, so the match must not backtrack
    (``fence.globmatch``: linear in the host, whatever the pattern).
    """
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return star_match(host, pattern.lower())


class _Check:
    """One ``check`` call: the policy, where rules came from, a cache of ``ssh -G`` answers."""

    def __init__(self, cmd: Command, policy: Policy, sources: RuleSources, env: Mapping[str, str] | None, resolver):
        self.cmd = cmd
        self.policy = policy
        self.sources = sources
        self.env = env
        self.resolver = resolver
        self.cache: dict[tuple, Resolved | None] = {}

    def blocked(
        self, reason: str, host: str, rule: str = "", source: str = "", remote: str | None = None, default: bool = False
    ) -> Blocked:
        if remote is not None:
            text = f"SSH command blocked: {reason} (host: {host}, command: {remote})"
        else:
            text = f"SSH blocked: {reason} (host: {host})"
        if source:
            text += f" (rule from {source})" if source != FENCE_POLICY else f" ({FENCE_POLICY})"
        return Blocked(
            message=text, command=self.cmd.text(), rule=rule, source=source, default_rule=default, kind="ssh"
        )

    def resolved(self, t: Target) -> Resolved | None:
        key = (t.dest, tuple(t.options))
        if key not in self.cache:
            self.cache[key] = self.resolver(t, self.env)
        return self.cache[key]

    def host_rules(self, names: list[str], real: str, shown: str) -> Blocked | None:
        ssh = self.policy.ssh
        for pattern in ssh.denied_hosts:
            for name in names:
                if name and host_matches(name, pattern):
                    return self.blocked(
                        f"host matches denied pattern {go_quote(pattern)}",
                        shown,
                        pattern,
                        self.sources.rule_label("ssh.deniedHosts", pattern),
                    )
        if ssh.allowed_hosts and not any(host_matches(real, p) for p in ssh.allowed_hosts):
            return self.blocked("host not in allowedHosts", shown, "", self.sources.list_label("ssh.allowedHosts"))
        return None

    def target(self, t: Target, depth: int = 0) -> Blocked | None:
        shown = t.host or t.dest or "?"
        if t.refused:
            return self.blocked(t.refused, shown, t.refused_rule, FENCE_POLICY)
        if t.unknown:
            return self.blocked(t.unknown, shown, "", FENCE_POLICY)
        try:
            res = self.resolved(t)
        except ResolveError as e:
            return self.blocked(f"cannot tell where ssh would connect: {e}", shown, "", FENCE_POLICY)
        real = (res.hostname if res is not None else "") or t.host
        if real.lower() != t.host.lower():
            shown = f"{t.host} -> {real}"
        blocked = self.host_rules([t.host, real], real, shown)
        if blocked is not None:
            return blocked
        jumps = list(t.jumps)
        if res is not None:
            if res.get("proxycommand"):
                return self.blocked(
                    "ssh config sets a ProxyCommand (a local command that decides where the connection goes)",
                    shown,
                    "ProxyCommand",
                    FENCE_POLICY,
                )
            if res.get("permitlocalcommand").lower() == "yes" and res.get("localcommand"):
                return self.blocked("ssh config sets a LocalCommand", shown, "LocalCommand", FENCE_POLICY)
            if res.get("knownhostscommand"):
                return self.blocked(
                    "ssh config sets a KnownHostsCommand (a local command)", shown, "KnownHostsCommand", FENCE_POLICY
                )
            jumps = [res.get("proxyjump")] if res.get("proxyjump") else []
        for spec in jumps:
            for hop in spec.split(","):
                hop = hop.strip()
                if not hop or hop.lower() == "none":
                    continue
                if depth >= MAX_JUMP_DEPTH:
                    return self.blocked(
                        f"more than {MAX_JUMP_DEPTH} levels of jump hosts", shown, "ProxyJump", FENCE_POLICY
                    )
                jt = Target("ssh")
                text = hop
                if "://" not in hop and re.search(r":[0-9]+\Z", hop):
                    text = "ssh://" + hop
                _set_dest(jt, text, False)
                blocked = self.target(jt, depth + 1)
                if blocked is not None:
                    return Blocked(
                        message=blocked.message.replace("(host: ", f"(jump host for {t.host}: ", 1),
                        command=blocked.command,
                        rule=blocked.rule,
                        source=blocked.source,
                        default_rule=blocked.default_rule,
                        kind="ssh",
                    )
        if depth:
            return None
        remote = t.remote
        if remote is None and res is not None and res.get("remotecommand"):
            remote = res.get("remotecommand")
        if remote is None or not remote.strip():
            return None
        return self.remote(remote, shown)

    def remote(self, remote: str, shown: str) -> Blocked | None:
        ssh = self.policy.ssh
        try:
            cmds = shellparse.commands(remote)
        except ParseError as e:
            return self.blocked(f"remote command cannot be checked: {e}", shown, "", FENCE_POLICY, remote)
        for rc in cmds:
            sub = go_quote(rc.text())
            if ssh.denied_commands:
                hit = ruleset(ssh.denied_commands).first_match(rc, deny=True)
                if hit is not None:
                    return self.blocked(
                        f"command {sub} matches ssh.deniedCommands {go_quote(hit)}",
                        shown,
                        hit,
                        self.sources.rule_label("ssh.deniedCommands", hit),
                        remote,
                    )
            if ssh.inherit_deny:
                if self.policy.command.deny:
                    hit = ruleset(self.policy.command.deny).first_match(rc, deny=True)
                    if hit is not None:
                        return self.blocked(
                            f"command {sub} matches inherited global deny {go_quote(hit)}",
                            shown,
                            hit,
                            self.sources.rule_label("command.deny", hit),
                            remote,
                        )
                if use_defaults(self.policy):
                    hit = ruleset(DEFAULT_DENIED_COMMANDS).first_match(rc, deny=True)
                    if hit is not None:
                        return self.blocked(
                            f"command {sub} matches inherited default deny {go_quote(hit)}",
                            shown,
                            hit,
                            DEFAULT_DENY_SOURCE,
                            remote,
                            default=True,
                        )
            if ssh.allow_all_commands:
                continue
            if ssh.allowed_commands:
                if ruleset(ssh.allowed_commands).first_match(rc, deny=False) is not None:
                    continue
                return self.blocked(
                    f"command {sub} not in ssh.allowedCommands",
                    shown,
                    "",
                    self.sources.list_label("ssh.allowedCommands"),
                    remote,
                )
            return self.blocked(
                "no ssh.allowedCommands configured (allowlist mode requires explicit commands)",
                shown,
                "",
                FENCE_POLICY,
                remote,
            )
        return None


def _default_resolver(target: Target, env: Mapping[str, str] | None) -> Resolved | None:
    return resolve(target, env)


def check(
    cmd: Command,
    policy: Policy,
    sources: RuleSources | None = None,
    *,
    env: Mapping[str, str] | None = None,
    resolver=None,
) -> Blocked | None:
    """Apply the SSH policy to one command (``None`` when allowed or not an ssh command).

    Callers check that an SSH policy is configured (``preflight`` does);
    ``resolver(target, env)`` replaces ``ssh -G`` (tests, or a host without ssh).
    """
    ts = targets(cmd)
    if not ts:
        return None
    c = _Check(cmd, policy, sources or RuleSources(), env, resolver or _default_resolver)
    for t in ts:
        blocked = c.target(t)
        if blocked is not None:
            return blocked
    return None
