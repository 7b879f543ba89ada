"""Command policy: decide, before anything starts, whether a command may run.

``check_command(argv, command_string, policy, sources)`` returns ``None``
(allowed) or a ``Blocked`` naming the command, the rule and where the rule
came from.  The runner calls it after resolving the policy and before opening
a proxy session or starting bwrap; the CLI prints ``Error: <message>`` and
exits 1, and the runner publishes ``Blocked.event(sandbox)`` on
``fence.events.<sandbox>.preflight``.

What is checked: every command the input would run, as
``fence.executor.shellparse`` sees it (chains, pipelines, substitutions,
nested shells, wrappers such as ``sudo``/``env``/``xargs``).  For each
(Fence's order, docs/compatibility.md#command-matching):

1. a ``command.allow`` prefix matches -> this command is allowed;
2. else a ``command.deny`` prefix matches -> blocked;
3. else (unless ``command.useDefaults`` is false) a default rule
   (``fence.defaults``) matches -> blocked by the *default* policy.

Then, when an SSH policy is configured (``ssh.allowedHosts`` or
``ssh.deniedHosts`` is non-empty: the policy is opt-in, as in Fence),
every ssh/scp/sftp/rsync/git-over-ssh command is checked by
``fence.executor.sshpolicy``; ``command.allow`` does not exempt from it.

How a rule matches a command (``matches``, deny and allow rules read
asymmetrically): ``fence.executor.commandrules``.  See docs/command-policy.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fence.defaults import DEFAULT_DENIED_COMMANDS, DEFAULT_DENY_SOURCE
from fence.executor import shellparse
from fence.executor.commandrules import Blocked, RuleSources, ruleset, use_defaults
from fence.executor.shellparse import Command, ParseError
from fence.goquote import go_quote
from fence.policy import Policy

__all__ = ["check_command", "check_commands", "command_rule_hit"]


def _from(label: str) -> str:
    return f" (rule from {label})" if label else ""


# --------------------------------------------------------------------------- the decision


def command_rule_hit(cmd: Command, policy: Policy) -> tuple[str, bool] | None:
    """(rule, is default) of the first deny rule blocking ``cmd``, honouring ``command.allow``; or None."""
    allow = policy.command.allow
    if allow and ruleset(allow).first_match(cmd, deny=False) is not None:
        return None
    deny = policy.command.deny
    if deny:
        hit = ruleset(deny).first_match(cmd, deny=True)
        if hit is not None:
            return hit, False
    if use_defaults(policy):
        hit = ruleset(DEFAULT_DENIED_COMMANDS).first_match(cmd, deny=True)
        if hit is not None:
            return hit, True
    return None


def _unparseable(text: str, why: str) -> Blocked:
    return Blocked(
        message=f"command blocked by sandbox command policy: cannot check {go_quote(text[:200])}: {why}",
        command=text,
        kind="command",
    )


def check_commands(
    cmds: Sequence[Command], policy: Policy, sources: RuleSources | None = None, env: Mapping[str, str] | None = None
) -> Blocked | None:
    """Check already-parsed commands (``shellparse``); see ``check_command``."""
    sources = sources or RuleSources()
    for cmd in cmds:
        hit = command_rule_hit(cmd, policy)
        if hit is None:
            continue
        rule, default = hit
        shown = cmd.text()
        if default:
            return Blocked(
                message=f"command blocked by default sandbox command policy: {go_quote(shown)} matches "
                f"{go_quote(rule)}{_from(DEFAULT_DENY_SOURCE)}",
                command=shown,
                rule=rule,
                source=DEFAULT_DENY_SOURCE,
                default_rule=True,
            )
        label = sources.rule_label("command.deny", rule)
        return Blocked(
            message=f"command blocked by sandbox command policy: {go_quote(shown)} matches "
            f"{go_quote(rule)}{_from(label)}",
            command=shown,
            rule=rule,
            source=label,
        )
    ssh = policy.ssh
    if ssh.allowed_hosts or ssh.denied_hosts:
        from fence.executor import sshpolicy  # lazy: only runs with an SSH policy need it (hot path)

        for cmd in cmds:
            blocked = sshpolicy.check(cmd, policy, sources, env=env)
            if blocked is not None:
                return blocked
    return None


def check_command(
    argv: list[str] | None,
    command_string: str | None,
    policy: Policy,
    sources: RuleSources | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> Blocked | None:
    """May this run?  ``None`` when allowed, else a ``Blocked``.

    ``argv``: the exact argv of ``fence -- cmd args...`` (checked as one
    simple command, no re-parsing of its quoting; nested ``sh -c STRING`` and
    wrappers are still looked into).  ``command_string``: the string of
    ``fence -c STRING`` (parsed as bash would).  If both are given both are
    checked.  ``env``: the environment the command will run with (used for
    ``GIT_SSH_COMMAND`` and to find and run ``ssh -G``); default ``os.environ``.
    Input that cannot be checked (nested deeper than ``shellparse.MAX_DEPTH``)
    is blocked.  Never raises.
    """
    cmds: list[Command] = []
    what = command_string if command_string is not None else " ".join(argv or [])
    try:
        if command_string is not None:
            cmds += shellparse.commands(command_string)
        if argv:
            cmds += shellparse.commands_from_argv(list(argv))
        if env:
            for cmd in cmds:
                for name in ("GIT_SSH_COMMAND", "GIT_SSH", "RSYNC_RSH"):
                    if name in env and name not in cmd.env:
                        cmd.env[name] = env[name]
        return check_commands(cmds, policy, sources, env)
    except ParseError as e:
        return _unparseable(what, str(e))
    except RecursionError:
        return _unparseable(what, "nested too deeply")
    except Exception as e:  # fail closed: a bug here must not let a command through
        return _unparseable(what, f"internal error in the command checker ({type(e).__name__}: {e})")
