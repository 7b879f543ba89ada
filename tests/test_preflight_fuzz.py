"""Preflight under fuzzing: no input crashes the parser or the checker, and a decision never changes
when only whitespace between tokens changes."""

from __future__ import annotations

import shlex

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fence.executor import shellparse
from fence.executor.commandrules import Blocked, RuleSources
from fence.executor.preflight import check_command
from fence.executor.shellparse import ParseError
from fence.policy import CommandConfig, Policy, SSHConfig

POLICY = Policy(
    command=CommandConfig(
        deny=["git push", "rm -rf", "dd if=", "sudo", "docker run --privileged"], allow=["git push --dry-run"]
    )
)
SOURCES = RuleSources({"command.deny": "template: code"})
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SHELLISH = list("abcgitpushrmdfx -'\"\\$`(){}[];&|<>#=~*?!\n\t,.0123456789/:@%+^") + [
    "$(",
    "${",
    "$((",
    "<<",
    "<<-",
    "<<<",
    "&&",
    "||",
    "|&",
    ";;",
    ">(",
    "<(",
    "EOF",
    "bash -c ",
    "eval ",
    "sudo ",
    "xargs ",
    "find . -exec ",
    "git push",
    "if ",
    "then ",
    "fi",
    "case ",
    " in ",
    "esac",
    "for ",
    "do ",
    "done",
    "function ",
    "\\\n",
    "$'",
    "\\x67",
    "[[ ",
    " ]]",
    "((",
    "))",
    "coproc ",
    "time ",
    "ssh ",
    "-o ProxyCommand=",
    "env -S ",
    "{a,b}",
    "{1..3}",
    "@(",
    "=(",
]
shellish = st.lists(st.sampled_from(SHELLISH), max_size=40).map("".join)


@FAST
@given(st.one_of(shellish, st.text(max_size=120)))
def test_parser_never_crashes(text):
    try:
        cmds = shellparse.commands(text)
    except ParseError:
        return
    for c in cmds:
        assert c.argv and len(c.dynamic) == len(c.argv)
        assert all(isinstance(w, str) for w in c.argv)


@FAST
@given(st.one_of(shellish, st.text(max_size=120)), st.lists(st.one_of(shellish, st.text(max_size=20)), max_size=6))
def test_checker_never_raises(text, argv):
    for args in ((None, text), (argv, None), (argv, text)):
        result = check_command(args[0], args[1], POLICY, SOURCES)
        assert result is None or isinstance(result, Blocked)
        if result is not None:
            assert result.message.startswith("command blocked by ")


@FAST
@given(st.lists(st.one_of(shellish, st.text(max_size=12)), min_size=1, max_size=8))
def test_argv_mode_never_crashes(argv):
    try:
        cmds = shellparse.commands_from_argv(argv)
    except ParseError:
        return
    assert cmds[0].argv == argv


# --------------------------------------------------------------------------- whitespace invariance

WORDS = [
    "git",
    "push",
    "origin",
    "rm",
    "-rf",
    "/tmp/x",
    "ls",
    "echo",
    "dd",
    "if=/dev/zero",
    "of=x",
    "sudo",
    "docker",
    "run",
    "--privileged",
    "--debug",
    "'git push'",
    '"a b"',
    "x=1",
    "$HOME",
    "--dry-run",
    "nice",
    "env",
    "A=1",
    "xargs",
    "time",
]
OPS = ["&&", "||", ";", "|", "&", "\n"]


@st.composite
def command_lines(draw):
    """A list of tokens: simple commands joined by operators, some grouped or substituted."""
    out: list[tuple[str, str]] = []
    for k in range(draw(st.integers(1, 4))):
        if k:
            out.append(("op", draw(st.sampled_from(OPS))))
        words = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=5))
        shape = draw(st.sampled_from(["plain", "paren", "brace", "subst", "bash", "if"]))
        if shape == "paren":
            out += [("op", "(")] + [("w", w) for w in words] + [("op", ")")]
        elif shape == "brace":
            out += [("w", "{")] + [("w", w) for w in words] + [("op", ";"), ("w", "}")]
        elif shape == "subst":
            out += [("w", "echo"), ("w", "$(" + " ".join(words) + ")")]
        elif shape == "bash":
            out += [("w", "bash"), ("w", "-c"), ("w", shlex.quote(" ".join(words)))]
        elif shape == "if":
            out += (
                [("w", "if")]
                + [("w", w) for w in words]
                + [("op", ";"), ("w", "then"), ("w", ":"), ("op", ";"), ("w", "fi")]
            )
        else:
            out += [("w", w) for w in words]
    return out


def render(tokens, gaps) -> str:
    parts = []
    for k, (kind, text) in enumerate(tokens):
        if k:
            prev = tokens[k - 1][0]
            gap = gaps[k % len(gaps)]
            if kind == "w" and prev == "w":
                gap = gap or " "  # words need a blank between them
            elif kind == "op" and prev == "op":
                gap = gap or " "  # ";" ";" would become ";;"
            parts.append(gap)
        parts.append(text)
    return "".join(parts)


def decision(text: str):
    b = check_command(None, text, POLICY, SOURCES)
    return None if b is None else (b.rule, b.command.split(), b.default_rule)


@FAST
@given(command_lines(), st.lists(st.sampled_from(["", " ", "  ", "\t", " \t ", " \\\n "]), min_size=1, max_size=5))
def test_decision_invariant_under_whitespace(tokens, gaps):
    base = render(tokens, [" "])
    other = render(tokens, gaps)
    lead = gaps[0].replace("\\\n", "")
    assert decision(base) == decision(other) == decision(lead + other + lead)


@FAST
@given(
    st.lists(
        st.sampled_from(
            [w for w in WORDS if w.replace("-", "").replace("/", "").replace("=", "").replace(".", "").isalnum()]
        ),
        min_size=1,
        max_size=6,
    )
)
def test_string_and_argv_agree_on_plain_words(words):
    assume("=" not in words[0])  # NAME=value first is an assignment to a shell, a program name to exec
    assume("time" not in words)  # the shell keyword (only -p) is not /usr/bin/time (GNU options)
    b1 = check_command(words, None, POLICY, SOURCES)
    b2 = check_command(None, " ".join(words), POLICY, SOURCES)
    assert (b1 is None) == (b2 is None)
    if b1 is not None and b2 is not None:
        assert (b1.rule, b1.command) == (b2.rule, b2.command)


@FAST
@given(st.text(alphabet="abc-@:./[]$'\" ", max_size=30), st.text(alphabet="abc-;|&$ ", max_size=20))
def test_ssh_parsing_never_crashes(host, remote):
    from fence.executor import sshpolicy

    policy = Policy(ssh=SSHConfig(allowed_hosts=["*.example.com"], allowed_commands=["ls"]))
    cmd = shellparse.Command(["ssh", "-o", f"Hostname={host}", host, remote])
    # no ssh -G: the fuzzed host names never reach a process
    result = sshpolicy.check(cmd, policy, RuleSources(), resolver=lambda t, env: None)
    assert result is None or result.kind == "ssh"
    for name in ("scp", "sftp", "rsync", "git"):
        args = ["clone", host] if name == "git" else [host, f"{host}:{remote}"]
        sshpolicy.check(shellparse.Command([name, *args]), policy, RuleSources(), resolver=lambda t, env: None)
