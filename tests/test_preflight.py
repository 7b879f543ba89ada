"""Command preflight: the shell parser (fence.executor.shellparse), rule matching and the decision
(fence.executor.preflight).  Pure: nothing is run."""

from __future__ import annotations

import msgspec
import pytest

from fence.defaults import DEFAULT_DENIED_COMMANDS
from fence.executor import shellparse
from fence.executor.commandrules import Blocked, RuleSources, matches, rule_tokens
from fence.executor.preflight import check_command
from fence.executor.shellparse import Command, ParseError, commands, commands_from_argv
from fence.goquote import go_quote
from fence.messages import Event, PreflightBlockedEvent
from fence.policy import CommandConfig, Policy


def argvs(text: str) -> list[list[str]]:
    return [c.argv for c in commands(text)]


def known(text: str) -> list[str]:
    """The commands with a statically known name, as single strings."""
    return [c.text() for c in commands(text) if c.name]


def deny(*rules: str, allow: tuple[str, ...] = (), defaults: bool = False) -> Policy:
    return Policy(command=CommandConfig(deny=list(rules), allow=list(allow), use_defaults=defaults))


def blocked(text: str, policy: Policy) -> Blocked | None:
    return check_command(None, text, policy, RuleSources())


# --------------------------------------------------------------------------- parser: splitting and quoting

SPLITS = [
    ("git push origin main", [["git", "push", "origin", "main"]]),
    ("ls && git push", [["ls"], ["git", "push"]]),
    ("ls || git push", [["ls"], ["git", "push"]]),
    ("ls; git push", [["ls"], ["git", "push"]]),
    ("ls | git push", [["ls"], ["git", "push"]]),
    ("ls |& git push", [["ls"], ["git", "push"]]),
    ("sleep 1 & git push", [["sleep", "1"], ["git", "push"]]),
    ("ls\ngit push\n", [["ls"], ["git", "push"]]),
    ("ls&&git push", [["ls"], ["git", "push"]]),
    ("ls;git push;", [["ls"], ["git", "push"]]),
    ('echo "a; git push"', [["echo", "a; git push"]]),
    ("echo 'a && git push'", [["echo", "a && git push"]]),
    ("echo a\\; git push", [["echo", "a;", "git", "push"]]),
    ("echo a # git push", [["echo", "a"]]),
    ("echo a#b", [["echo", "a#b"]]),
    ("git \\\npush", [["git", "push"]]),
    ('"git" "push"', [["git", "push"]]),
    ("'git' push", [["git", "push"]]),
    ("g\\it push", [["git", "push"]]),
    ("gi\"t\" pu'sh'", [["git", "push"]]),
    ("$'\\x67it' push", [["git", "push"]]),
    ("$'\\147it' $'p\\u0075sh'", [["git", "push"]]),
    ('$"git" push', [["git", "push"]]),
    ("echo 'it''s'", [["echo", "its"]]),
    ('echo "a\\"b"', [["echo", 'a"b']]),
    ("echo 'a\\'", [["echo", "a\\"]]),
    ("a=1 b=2 git push", [["git", "push"]]),
    ("git push >/dev/null 2>&1", [["git", "push"]]),
    ("2>/dev/null git push", [["git", "push"]]),
    (">out git push", [["git", "push"]]),
    ("git push &>log", [["git", "push"]]),
    ("{fd}>log git push", [["git", "push"]]),
    ("echo {a..c}", [["echo", "a", "b", "c"]]),
    ("{git,push}", [["git", "push"]]),
    ("git {push,pull}", [["git", "push", "pull"]]),
    ("echo '{a,b}'", [["echo", "{a,b}"]]),
    ("echo {a}", [["echo", "{a}"]]),
]


@pytest.mark.parametrize("text,expected", SPLITS)
def test_splitting_and_quoting(text, expected):
    assert argvs(text) == expected


# --------------------------------------------------------------------------- parser: nesting and keywords

NESTED = [
    # substitutions of every kind are looked into
    ("echo $(git push)", ["git push", "echo $(git push)"]),
    ('echo "$(git push)"', ["git push", "echo $(git push)"]),
    ("echo `git push`", ["git push", "echo `git push`"]),
    ('echo "`git push`"', ["git push", "echo `git push`"]),
    ("cat <(git push)", ["git push", "cat <(git push)"]),
    ("tee >(git push)", ["git push", "tee >(git push)"]),
    ("cat > >(git push)", ["git push", "cat"]),
    ("echo ${x:-$(git push)}", ["git push", "echo ${x:-$(git push)}"]),
    ("echo $((1 + $(git push)))", ["git push", "echo $((1 + $(git push)))"]),
    ("a=$(git push)", ["git push"]),
    ("arr=(a $(git push) c)", ["git push"]),
    ("echo $(echo $(echo $(git push)))", None),
    ("echo `echo \\`git push\\``", None),
    ("echo '$(git push)'", ["echo $(git push)"]),
    ("echo ${ git push; }", ["git push", "echo ${ git push; }"]),  # bash 5.3 / mksh: runs in this shell
    ("echo ${| git push; }", ["git push", "echo ${| git push; }"]),
    # grouping and compound commands: keywords never hide a command
    ("(git push)", ["git push"]),
    ("( (git push) )", ["git push"]),
    ("((echo a); git push)", ["echo a", "git push"]),
    ("{ git push; }", ["git push"]),
    ("if git push; then :; fi", ["git push", ":"]),
    ("if [ x ]; then ls; elif y; then git push; else rm x; fi", ["[ x ]", "ls", "y", "git push", "rm x"]),
    ("while read x; do git push; done < f", ["read x", "git push"]),
    ("until false; do git push; done", ["false", "git push"]),
    ("for i in 1 2; do git push; done", ["git push"]),
    ("for i in git push; do :; done", [":"]),
    ("for i do git push; done", ["git push"]),
    ("for ((i=0;i<3;i++)); do git push; done", ["git push"]),
    ("select x in a b; do git push; done", ["git push"]),
    ("case $x in a|b) git push ;; *) ls ;; esac", ["git push", "ls"]),
    ("case $x in\n  (a) git push\n  ;;\nesac", ["git push"]),
    ("echo $(case x in a) git push;; esac)", None),
    ("f() { git push; }", ["git push"]),
    ("f () { git push; }", ["git push"]),
    ("function f { git push; }", ["git push"]),
    ("function f() { git push; }", ["git push"]),
    ("! git push", ["git push"]),
    ("time git push", ["git push"]),
    ("time -p git push", ["git push"]),
    ("coproc git push", ["git push"]),
    ("coproc mycop { git push; }", ["git push"]),
    ("[[ -n $(git push) ]] && ls", ["git push", "ls"]),
    ("[[ $a == b && $c < d ]] && git push", ["git push"]),
    ("(( x > 1 )) && git push", ["git push"]),
    ("then git push", ["git push"]),
    # here-documents: bodies are data, except substitutions in unquoted ones
    ("cat <<EOF\ngit push\nEOF\nls", ["cat", "ls"]),
    ("cat <<'EOF'\n$(git push)\nEOF\nls", ["cat", "ls"]),
    ("cat <<EOF\n$(git push)\nEOF\nls", ["git push", "cat", "ls"]),
    ("cat <<-EOF\n\tgit push\n\tEOF\nls", ["cat", "ls"]),
    ("cat <<EOF; ls\nbody\nEOF\nrm x", ["ls", "cat", "rm x"]),  # cat waits for its here-document
    # a shell fed a script on stdin runs it
    ("bash <<EOF\ngit push\nEOF", ["bash", "git push"]),
    ("bash <<'EOF'\ngit push\nEOF", ["bash", "git push"]),
    ('bash <<< "git push"', ["bash", "git push"]),
    ('echo "git push" | sh', ["echo git push", "sh", "git push"]),
    ("printf '%s\\n' 'git push' | bash", ["printf %s\\n git push", "bash", "git push"]),
    ("cat <<EOF | sh\ngit push\nEOF\n", ["cat", "sh", "git push"]),
    ("echo x | sh -s arg", ["echo x", "sh -s arg", "x"]),
    ('bash /dev/stdin <<< "git push"', ["bash /dev/stdin", "git push"]),
    ("echo 'git push' | bash -", ["echo git push", "bash -", "git push"]),
    ("source /dev/stdin <<EOF\ngit push\nEOF", ["source /dev/stdin", "git push"]),
    ("echo 'git push' | . /dev/stdin", ["echo git push", ". /dev/stdin", "git push"]),
    ("echo x | bash script.sh", ["echo x", "bash script.sh"]),
    # nested shells and eval
    ('bash -c "git push"', ["bash -c git push", "git push"]),
    ('bash -lc "git push"', ["bash -lc git push", "git push"]),
    ('sh -ec "ls && git push"', ["sh -ec ls && git push", "ls", "git push"]),
    ('bash --norc --noprofile -c "git push"', ["bash --norc --noprofile -c git push", "git push"]),
    ('bash -o pipefail -c "git push"', ["bash -o pipefail -c git push", "git push"]),
    ('bash --rcfile /x -c "git push"', ["bash --rcfile /x -c git push", "git push"]),
    ('/bin/zsh -c "git push"', ["/bin/zsh -c git push", "git push"]),
    ('dash -c -- "git push"', ["dash -c -- git push", "git push"]),
    ('fish -c "git push"', ["fish -c git push", "git push"]),
    ('fish --command="git push"', ["fish --command=git push", "git push"]),
    ('bash -c \'bash -c "sh -c \\"git push\\""\'', None),
    ("sh -c '\"$@\"' _ git push", ['sh -c "$@" _ git push', "git push"]),
    ("sh -c '$1 $2' _ git push", ["sh -c $1 $2 _ git push", "git push"]),
    ('eval "git push"', ["eval git push", "git push"]),
    ("eval git push", ["eval git push", "git push"]),
    ('trap "git push" EXIT', ["trap git push EXIT", "git push"]),
    ("alias p='git push'", ["alias p=git push", "git push"]),
    # variables assigned literally earlier in the script
    ("x=git; $x push", ["git push"]),
    ("x=git\ny=push\n$x $y", ["git push"]),
    ('x="git push"; $x', ["git push"]),
    ("export G=git; $G push", ["export G=git", "git push"]),
    ("declare -x G=git; ${G} push", ["declare -x G=git", "git push"]),
]


@pytest.mark.parametrize("text,expected", NESTED)
def test_nesting(text, expected):
    got = known(text)
    if expected is None:
        assert "git push" in got
    else:
        assert got == expected


WRAPPERS = [
    "sudo git push",
    "sudo -u root -- git push",
    "sudo -E VAR=1 git push",
    "doas -u root git push",
    "env git push",
    "env -i PATH=/bin git push",
    "env -u HOME git push",
    "env - git push",
    "env -S 'git push'",
    "env --split-string='git push'",
    "A=1 git push",
    "exec git push",
    "exec -a name git push",
    "command git push",
    "builtin command git push",
    "nohup git push &",
    "nice git push",
    "nice -n 5 git push",
    "nice -10 git push",
    "nice --adjustment=5 git push",
    "timeout 5 git push",
    "timeout -s KILL 10s git push",
    "timeout --kill-after=1 5 git push",
    "timeout --foreground 5 git push",
    "time git push",
    "/usr/bin/time -f %e git push",
    "stdbuf -oL git push",
    "stdbuf -o L -e0 git push",
    "setsid git push",
    "setsid -f git push",
    "xargs git push",
    "xargs -0 -n1 -P4 git push",
    "xargs -I{} git push {}",
    "find . -exec git push {} \\;",
    "find . -name x -execdir git push {} +",
    "find . -ok git push \\;",
    "busybox sh -c 'git push'",
    "su -c 'git push' root",
    "su root -c 'git push'",
    "runuser -u bob -- git push",
    "script -qc 'git push' /dev/null",
    "flock /tmp/l git push",
    "flock -w 5 /tmp/l -c 'git push'",
    "watch -n1 git push",
    "watch -x git push",
    "ionice -c3 git push",
    "chrt -f 10 git push",
    "taskset -c 1 git push",
    "taskset 0x1 git push",
    "sg staff -c 'git push'",
    "fakeroot git push",
    "unbuffer git push",
    "torsocks git push",
    "proxychains4 -q git push",
    "strace -f -o /dev/null git push",
    "systemd-run --user git push",
    "nohup nice -n 1 timeout 5 sudo env A=1 git push",
    "git -c 'alias.p=!git push' p",
    "GIT_SSH_COMMAND='git push' git fetch",
    "GIT_PAGER='git push' git log",
    "git -c core.pager='git push' log",
    "git -c core.sshCommand='git push' fetch",
    "ssh -o ProxyCommand='git push' host",
    "ssh host -o LocalCommand='git push'",
    "scp -S 'git push' a b:c",
    "rsync -e 'git push' a b:c",
    "rsync --rsh='git push' a b:c",
    "git clone 'ext::git push'",
]


@pytest.mark.parametrize("text", WRAPPERS)
def test_wrapped_commands_are_found(text):
    assert any(c.argv[:2] == ["git", "push"] for c in commands(text)), commands(text)
    assert blocked(text, deny("git push")) is not None


@pytest.mark.parametrize(
    "text", ["git -c alias.p=push p origin", "git -c alias.p='push --force' p", "git -c alias.x=push -C . x"]
)
def test_git_aliases_given_on_the_command_line(text):
    b = blocked(text, deny("git push"))
    assert b is not None and b.rule == "git push", commands(text)


NOT_RUN = [
    "command -v git push",
    "command -V git",
    "sudo -l git push",
    "sudo -e file",
    "echo git push",
    "printf 'git push'",
    "grep 'git push' log",
    "man git-push",
    "cat <<EOF\ngit push\nEOF",
    "echo '$(git push)'",
    "for x in git push; do :; done",
    "case git in push) ;; esac",
    "ionice -p 1",
    "taskset -p 1",
    "sudo -V",
]


@pytest.mark.parametrize("text", NOT_RUN)
def test_data_is_not_a_command(text):
    assert not any(c.argv[:2] == ["git", "push"] for c in commands(text)), commands(text)


def test_unknown_until_run_is_marked_dynamic():
    for text in (
        "$(echo git) push",
        "`which git` push",
        "$cmd push",
        '"$x" push',
        "read x; $x push",
        "for x in git; do $x push; done",
        "IFS=x; y=gitxpush; $y",
    ):
        cmds = commands(text)
        last = cmds[-1]
        assert last.dynamic[0] and last.name == "", (text, cmds)
    # the directory may be unknown and the program still known
    assert commands("$HOME/bin/git push")[0].name == "git"
    assert commands("${DIR}/git push")[0].name == "git"
    # a script's content, eval of a variable, base64 into a shell: not knowable here
    assert known("bash script.sh") == ["bash script.sh"]
    assert known('eval "$x"') == ["eval $x"]
    assert known("base64 -d <<< Z2l0IHB1c2g= | sh") == ["base64 -d", "sh"]
    assert known("cat f | sh") == ["cat f", "sh"]


def test_argv_mode_is_not_reparsed():
    # fence -- git 'push; rm -rf /' : one argument, no shell involved
    assert [c.argv for c in commands_from_argv(["echo", "a; git push"])] == [["echo", "a; git push"]]
    assert [c.argv for c in commands_from_argv(["git", "push", "$(x)"])] == [["git", "push", "$(x)"]]
    assert not any(c.dynamic[0] for c in commands_from_argv(["$x", "y"]))
    # ...but what it runs in turn is looked into
    got = [c.argv for c in commands_from_argv(["sudo", "bash", "-c", "ls && git push"])]
    assert got == [["sudo", "bash", "-c", "ls && git push"], ["bash", "-c", "ls && git push"], ["ls"], ["git", "push"]]
    assert commands_from_argv([]) == []


def test_xargs_tail_comes_from_stdin():
    cmds = commands("find . | xargs git")
    assert cmds[-1].argv == ["git"] and cmds[-1].open_tail


def test_command_repr_and_eq():
    c = Command(["a", "$b"], [False, True], True)
    assert "dyn" in repr(c) and "+stdin-args" in repr(c)
    assert c == Command(["a", "$b"], [False, True], True) and c != Command(["a"])
    assert shellparse.basename("/usr/bin/git") == "git" and shellparse.basename("../../bin/rm") == "rm"
    assert shellparse.split_words("a 'b c' \"d\"") == ["a", "b c", "d"]


def test_deep_nesting_is_an_error_not_a_crash():
    with pytest.raises(ParseError):
        commands("echo " + "$(" * 200 + "x" + ")" * 200)
    with pytest.raises(ParseError):
        commands("( " * 500 + "x" + " )" * 500)
    with pytest.raises(ParseError):
        commands("{ " * 500 + "x" + "; }" * 500)
    with pytest.raises(ParseError):
        commands("if x; then " * 500 + "y" + "; fi" * 500)
    with pytest.raises(ParseError):
        commands("nice " * 500 + "x")
    with pytest.raises(ParseError):
        commands("eval " * 80 + "git push")
    with pytest.raises(ParseError):
        commands_from_argv(["sudo"] * 80 + ["git", "push"])
    assert known("eval " * 30 + "git push")[-1] == "git push"
    # (((x))) is arithmetic however deep: no recursion at all
    assert commands("(" * 500 + "x" + ")" * 500) == []
    # moderately deep input is fine
    assert known("echo " + "$(" * 20 + "git push" + ")" * 20)[0] == "git push"


def test_large_inputs_stay_bounded():
    assert len(commands("echo " + "{a,b}" * 30)) == 1
    assert len(commands("echo " + "{a,b}" * 30)[0].argv) <= shellparse.MAX_BRACE_WORDS + 1
    assert len(commands("echo " + "x" * 200000 + "{a,b}" * 10)[0].argv) == 2  # long words expand to fewer words
    with pytest.raises(ParseError):
        commands("{" * 20000 + "}" * 20000)
    with pytest.raises(ParseError):
        commands("echo " + "{a,b}" * 100)
    assert len(commands("a | " * 2000 + "b")) == 2001
    with pytest.raises(ParseError):
        commands("x;" * (shellparse.MAX_COMMANDS + 1))


# --------------------------------------------------------------------------- matching

MATCH = [
    # (command, rule, deny matches, allow matches)
    ("git push origin main", "git push", True, True),
    ("git push", "git push", True, True),
    ("git pushall", "git push", False, False),
    ("git", "git push", False, False),
    ("rmdir x", "rm", False, False),
    ("rm -rf /", "rm", True, True),
    ("/usr/bin/git push", "git push", True, True),
    ("../../bin/rm -rf x", "rm -rf", True, True),
    ("git push", "/usr/bin/git push", True, True),
    ("dd if=/dev/zero of=x", "dd if=", True, True),
    ("dd of=x if=/dev/zero", "dd if=", True, True),
    ("dd of=x", "dd if=", False, False),
    ("docker --debug run --privileged x", "docker run --privileged", True, True),
    ("docker run --privileged x", "docker run --privileged", True, True),
    ("docker run --name x --privileged", "docker run --privileged", False, False),
    ("docker run -v /:/ x", "docker run -v /:/", True, True),
    ("git --no-pager push", "git push", True, True),
    ("git -C /src push", "git push", True, False),
    ("git -c user.name=x push", "git push", True, False),
    ("git --git-dir /x/.git push", "git push", True, False),
    ("git --git-dir=/x/.git push", "git push", True, True),
    ("git -p push status", "git status", True, False),  # deny reads generously, allow strictly
    ("git --paginate push status", "git status", True, False),
    ("git checkout -- file", "git checkout --", True, True),
    ("init 0", "init 0", True, True),
    ("init 5", "init 0", False, False),
    ("mkfs.ext4 /dev/sda", "mkfs", False, False),
    ("mkfs.ext4 /dev/sda", "mkfs.ext4", True, True),
    ("gi? push", "git push", True, False),
    ("git pu*", "git push", True, False),
    ("git --exec-path=/x push --force", "git push --force", True, True),
    ("git push origin --force", "git push --force", False, False),
]


@pytest.mark.parametrize("cmd,rule,as_deny,as_allow", MATCH)
def test_matching(cmd, rule, as_deny, as_allow):
    argv = shellparse.split_words(cmd)
    assert matches(argv, rule_tokens(rule), deny=True) is as_deny
    assert matches(argv, rule_tokens(rule), deny=False) is as_allow


def test_matching_details():
    assert rule_tokens("  /usr/bin/git   'push'  \"x y\"") == ["git", "push", "x y"]
    assert rule_tokens("") == []
    assert not matches([], ["git"]) and not matches(["git"], [])
    # unknown words never match a rule token
    assert not matches(["git", "$x"], ["git", "push"], dynamic=[False, True])
    # xargs: the tail may come from stdin for deny rules, never for allow rules
    assert matches(["git"], ["git", "push"], open_tail=True)
    assert matches(["dd"], ["dd", "if="], open_tail=True)
    assert not matches(["git"], ["git", "push"], open_tail=True, deny=False)
    assert not matches(["git", "add"], ["git", "push"], open_tail=True)


# --------------------------------------------------------------------------- the decision and its message


def test_message_shapes():
    policy = deny("git push")
    b = blocked("git push origin main", policy)
    assert b is not None
    assert b.message == 'command blocked by sandbox command policy: "git push origin main" matches "git push"'
    assert (b.command, b.rule, b.default_rule, b.kind, b.source) == (
        "git push origin main",
        "git push",
        False,
        "command",
        "",
    )
    b = blocked("shutdown -h now", Policy())
    assert b is not None
    assert b.message == (
        'command blocked by default sandbox command policy: "shutdown -h now" matches "shutdown" '
        "(rule from built-in default deny list)"
    )
    assert b.default_rule and b.source == "built-in default deny list"
    b = check_command(None, "ls && git push", policy, RuleSources({"command.deny": "template: code"}))
    assert b is not None
    assert b.message == (
        'command blocked by sandbox command policy: "git push" matches "git push" (rule from template: code)'
    )
    assert go_quote('a "b"\n\\') == '"a \\"b\\"\\n\\\\"'


def test_issue_examples():
    policy = deny("git push", "rm -rf", "dangerous-command")
    for text in (
        "git push origin main",
        "ls && git push",
        "bash -c 'git push'",
        "rm -rf /tmp/test",
        "ls && rm -rf /tmp/test",
        'bash -c "rm -rf /tmp/test"',
        "echo hi; git push --force",
        "sudo git push",
        "env FOO=1 git push",
        "$(git push)",
        "`git push`",
        "(git push)",
        "{ git push; }",
        "if git push; then :; fi",
        "/usr/bin/git push",
        "git push 2>&1 | tee log",
        "xargs git push",
        "find . -exec git push \\;",
        "nohup git push &",
        "git -C . push",
    ):
        assert blocked(text, policy) is not None, text
    for text in (
        "git pushall",
        "echo safe command",
        "git status",
        "rmdir x",
        "echo 'git push'",
        "git log --grep push",
        "ls -la",
    ):
        assert blocked(text, policy) is None, text


def test_allow_overrides_deny_per_command():
    policy = deny("git push", allow=("git push origin feature",))
    assert blocked("git push origin feature", policy) is None
    assert blocked("git push origin main", policy) is not None
    # an allowed wrapper does not allow what it wraps
    policy = deny("git push", allow=("bash",))
    assert blocked("bash -c 'git push'", policy) is not None
    assert blocked("bash -c 'ls'", policy) is None
    # allow never reads flags generously: a flag's "value" may be the real subcommand
    policy = deny("git", allow=("git status",))
    assert blocked("git status", policy) is None
    assert blocked("git -p push status", policy) is not None
    # allow also overrides the defaults
    assert blocked("shutdown -h now", Policy(command=CommandConfig(allow=["shutdown"]))) is None


def test_defaults_apply_unless_switched_off():
    assert blocked("chroot / sh", Policy()) is not None
    assert blocked("chroot / sh", Policy(command=CommandConfig(use_defaults=True))) is not None
    assert blocked("chroot / sh", Policy(command=CommandConfig(use_defaults=False))) is None
    for rule in DEFAULT_DENIED_COMMANDS:
        text = rule + ("/dev/zero" if rule.endswith("=") else "")
        b = blocked(text, Policy())
        assert b is not None and b.rule == rule and b.default_rule, rule
    # user rules are reported before default ones
    b = blocked("shutdown now", Policy(command=CommandConfig(deny=["shutdown now"])))
    assert b is not None
    assert not b.default_rule and b.rule == "shutdown now"


def test_first_blocked_command_in_source_order():
    b = blocked("ls; rm -rf x; git push", deny("git push", "rm -rf"))
    assert b is not None
    assert b.command == "rm -rf x" and b.rule == "rm -rf"


def test_argv_and_string_together():
    policy = deny("git push")
    assert check_command(["git", "push"], None, policy) is not None
    assert check_command(["git", "status"], None, policy) is None
    assert check_command(["bash", "-c", "git push"], None, policy) is not None
    assert check_command(["git", "status"], "git push", policy) is not None
    assert check_command(None, None, policy) is None
    assert check_command([], "", policy) is None


def test_unparseable_input_is_blocked_not_raised():
    b = check_command(None, "echo " + "$(" * 300 + ")" * 300, Policy())
    assert b is not None and "cannot check" in b.message and b.rule == "" and b.kind == "command"
    b = check_command(["nice"] * 300 + ["true"], None, Policy())
    assert b is not None and "cannot check" in b.message


def test_blocked_event():
    b = check_command(None, "git push", deny("git push"), RuleSources({"command.deny": "template: code"}))
    assert b is not None
    e = b.event("abc123", ts=5.0)
    assert isinstance(e, PreflightBlockedEvent)
    assert (e.sandbox, e.ts, e.command, e.rule, e.source, e.default_rule, e.kind) == (
        "abc123",
        5.0,
        "git push",
        "git push",
        "template: code",
        False,
        "command",
    )
    back = msgspec.json.decode(msgspec.json.encode(e), type=Event)
    assert back == e
    assert b.event("x").ts > 0


# --------------------------------------------------------------------------- where a rule came from


def _resolved(cwd, home=None):
    from fence.config.resolve import resolve
    from fence.messages import ConfigResolveRequest

    return resolve(ConfigResolveRequest(cwd=str(cwd), home=str(home or cwd)))


def test_rule_sources_names_the_file_that_has_the_rule(tmp_path):
    base = tmp_path / "base.json"
    base.write_text('{"extends": "code", "command": {"deny": ["make release", "shared"]}}')
    child = tmp_path / "fence.json"
    child.write_text('{"extends": "./base.json", "command": {"deny": ["git push", "shared"]}}')
    reply = _resolved(tmp_path)
    # what the rules are named by comes in the reply: preflight reads no file (these are gone)
    base.unlink()
    child.unlink()
    sources = RuleSources.from_reply(reply)
    assert sources.rule_label("command.deny", "git push") == f"template: code + project config: {child}"
    assert sources.rule_label("command.deny", "make release") == f"file: {base}"
    assert sources.rule_label("command.deny", "shared") == f"file: {base} + project config: {child}"
    assert sources.rule_label("command.deny", "gh api") == "template: code"
    everyone = f"template: code + file: {base} + project config: {child}"
    assert sources.rule_label("command.deny", "other") == everyone
    assert sources.list_label("command.deny") == everyone
    assert sources.list_label("ssh.allowedHosts") == ""


def test_rule_sources_by_fixed_names():
    sources = RuleSources({"command.deny": "template: code + project config: /p/fence.json"})
    assert sources.rule_label("command.deny", "gh api") == "template: code + project config: /p/fence.json"
    assert RuleSources().rule_label("command.deny", "x") == ""
    assert RuleSources().list_label("command.deny") == ""
    assert RuleSources({"ssh.allowedHosts": "template: code"}).list_label("ssh.allowedHosts") == "template: code"


def test_rule_sources_from_a_resolved_config(tmp_path):
    (tmp_path / "fence.json").write_text('{"extends": "code", "command": {"deny": ["make deploy"]}}')
    reply = _resolved(tmp_path)
    sources = RuleSources.from_reply(reply)
    b = check_command(None, "cd x && make deploy prod", reply.policy, sources)
    assert b is not None
    assert b.message.endswith(f'matches "make deploy" (rule from project config: {tmp_path / "fence.json"})')
    b = check_command(["git", "push"], None, reply.policy, sources)
    assert b is not None
    assert b.message.endswith('matches "git push" (rule from template: code)')
    b = check_command(None, "sudo reboot", reply.policy, sources)
    assert b is not None
    assert b.rule == "sudo" and b.source == "template: code"
