"""Command rules, shared by the command policy (``preflight``) and the SSH policy (``sshpolicy``).

Both match rule lists against the commands ``fence.executor.shellparse``
finds, and both refuse with a ``Blocked`` that names where the rule came
from (``RuleSources``); keeping these here lets each policy import them
without importing the other.

Matching (``matches``): the executable is compared by basename; rule tokens
match positionally on whole tokens (``git push`` matches ``git push origin``,
not ``git pushall``); a rule token ending in ``=`` is an option that may be
anywhere later (``dd if=`` matches ``dd of=x if=/dev/zero``); flags before the
rule's first subcommand-like token are skipped (``docker --debug run
--privileged`` matches ``docker run --privileged``).  Deny and allow rules
are matched asymmetrically so that a doubt never turns into "allowed": for a
*deny* rule a skipped flag may also take a value (``git -C dir push``), a
glob word may stand for the rule's token, and ``xargs``' stdin may supply the
missing tail; an *allow* rule gets none of these.  See docs/command-policy.md.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import msgspec

from fence.executor.shellparse import Command, basename
from fence.globmatch import fnmatch_case
from fence.messages import FieldSource, PreflightBlockedEvent
from fence.policy import Policy

__all__ = ["Blocked", "RuleSources", "RuleSet", "matches", "rule_tokens", "ruleset", "use_defaults"]


class Blocked(msgspec.Struct, frozen=True, kw_only=True):
    """Why a command may not run.

    ``message`` is the full text for ``Error: ...`` (Fence's shape, docs/compatibility.md#messages, then
    where the rule came from); ``command`` is the offending (sub)command;
    ``rule`` the rule that matched ("" when no single rule did, e.g. a host
    not in ``ssh.allowedHosts`` or input too deep to check); ``source``
    where that rule (or list) came from; ``default_rule`` whether it is a
    rule of the built-in default list; ``kind`` "command" or "ssh".
    """

    message: str
    command: str
    rule: str = ""
    source: str = ""
    default_rule: bool = False
    kind: str = "command"

    def event(self, sandbox: str, ts: float | None = None):
        """The bus event for this block (``fence.events.<sandbox>.preflight``)."""
        return PreflightBlockedEvent(
            sandbox=sandbox,
            ts=time.time() if ts is None else ts,
            command=self.command,
            rule=self.rule,
            source=self.source,
            default_rule=self.default_rule,
            kind=self.kind,
        )


# --------------------------------------------------------------------------- where rules came from


class RuleSources:
    """Which config file or template each rule came from, as the config service recorded it.

    ``from_reply`` takes the records of a ``ConfigResolveReply``: ``chain``
    names each source, ``fields`` says which sources set each list and, when
    several did, which of them list each entry, so a message names the file
    that holds the rule, not every file merged into the list.  Nothing here
    reads a config file or parses a label.  ``RuleSources({"command.deny":
    "template: code"})`` names whole lists by fixed names; ``RuleSources()``
    names nothing.
    """

    __slots__ = ("names", "fields")

    def __init__(self, names: Mapping[str, str] | None = None):
        self.names: list[str] = []
        self.fields: dict[str, FieldSource] = {}
        for field, name in (names or {}).items():
            self.fields[field] = FieldSource(sources=[len(self.names)])
            self.names.append(name)

    @classmethod
    def from_reply(cls, reply) -> RuleSources:
        """From a ``ConfigResolveReply``."""
        out = cls()
        out.names = [source.label for source in reply.chain]
        out.fields = reply.fields
        return out

    def _join(self, indices: Sequence[int]) -> str:
        return " + ".join(self.names[i] for i in indices if 0 <= i < len(self.names))

    def list_label(self, field: str) -> str:
        """The source(s) of a whole field, e.g. ``ssh.allowedHosts`` -> ``project config: /p/fence.json``."""
        record = self.fields.get(field)
        return self._join(record.sources) if record is not None else ""

    def rule_label(self, field: str, rule: str) -> str:
        """The source(s) that list one entry of a list field (``command.deny``, ``git push``)."""
        record = self.fields.get(field)
        if record is None:
            return ""
        return self._join(record.owners.get(rule) or record.sources)


# --------------------------------------------------------------------------- rules and matching


def rule_tokens(rule: str) -> list[str]:
    """Tokens of a rule as Fence splits them: on blanks outside quotes, quotes removed;
    the executable reduced to its basename."""
    tokens: list[str] = []
    cur: list[str] = []
    quote = ""
    has = False
    for c in rule:
        if quote:
            if c == quote:
                quote = ""
            else:
                cur.append(c)
        elif c in "'\"":
            quote = c
            has = True
        elif c in " \t\n":
            if cur or has:
                tokens.append("".join(cur))
                cur, has = [], False
        else:
            cur.append(c)
    if cur or has:
        tokens.append("".join(cur))
    if tokens:
        tokens[0] = basename(tokens[0])
    return tokens


def _globby(word: str) -> bool:
    return "*" in word or "?" in word or "[" in word


def _same(word: str, dynamic: bool, want: str, deny: bool) -> bool:
    if dynamic:
        return False
    if word == want:
        return True
    return deny and _globby(word) and fnmatch_case(want, word)


def _skip_flags(argv: Sequence[str], pos: int, want: str, deny: bool) -> int:
    """Skip flags before a subcommand; for deny rules a flag may take the following word as its value."""
    n = len(argv)
    while pos < n:
        word = argv[pos]
        if word == "--" or not word.startswith("-"):
            return pos
        pos += 1
        if deny and pos < n and "=" not in word and (word.startswith("--") or len(word) == 2):
            nxt = argv[pos]
            if nxt != "--" and not nxt.startswith("-") and nxt != want:
                pos += 1
    return pos


def matches(
    argv: Sequence[str],
    rule: Sequence[str],
    *,
    deny: bool = True,
    dynamic: Sequence[bool] | None = None,
    open_tail: bool = False,
) -> bool:
    """Does the command ``argv`` match the tokenized ``rule``?  (``rule_tokens``; heads compared by basename.)

    ``deny`` selects the generous reading (deny rules) or the strict one (allow rules).
    """
    if not argv or not rule:
        return False
    dyn = dynamic if dynamic is not None else [False] * len(argv)
    head = basename(argv[0])
    if not _same(head, dyn[0] and not head, rule[0], deny):
        return False
    tail = open_tail and deny
    n = len(argv)
    pos = 1
    lead = True
    for want in rule[1:]:
        if want.endswith("="):
            for k in range(pos, n):
                if not dyn[k] and argv[k].startswith(want):
                    break
            else:
                if not tail:
                    return False
            continue
        if lead and want and want != "--" and not want.startswith("-"):
            pos = _skip_flags(argv, pos, want, deny)
            lead = False
        if pos >= n:
            return tail
        if not _same(argv[pos], dyn[pos], want, deny):
            return False
        pos += 1
    return True


class RuleSet:
    """Rules indexed by executable, tokenized once."""

    __slots__ = ("rules", "by_head", "globbed")

    def __init__(self, rules: Sequence[str]):
        self.rules: list[tuple[str, list[str]]] = []
        self.by_head: dict[str, list[tuple[str, list[str]]]] = {}
        for text in rules:
            tokens = rule_tokens(text)
            if not tokens or not tokens[0]:
                continue
            entry = (text, tokens)
            self.rules.append(entry)
            self.by_head.setdefault(tokens[0], []).append(entry)
        self.globbed = [e for e in self.rules if _globby(e[1][0])]

    def first_match(self, cmd: Command, deny: bool) -> str | None:
        """The first rule (in config order) matching ``cmd``, or None."""
        name = cmd.name
        if not name:
            return None
        candidates = self.by_head.get(name)
        if deny and _globby(name):
            candidates = [e for e in self.rules if fnmatch_case(e[1][0], name)]
        if not candidates:
            return None
        argv = cmd.argv if cmd.argv[0] == name else [name] + cmd.argv[1:]
        for text, tokens in candidates:
            if matches(argv, tokens, deny=deny, dynamic=cmd.dynamic, open_tail=cmd.open_tail):
                return text
        return None


_CACHE: dict[tuple[str, ...], RuleSet] = {}


def ruleset(rules: Sequence[str]) -> RuleSet:
    """A cached ``RuleSet`` for these rules (a long-running executor sees the same lists again and again)."""
    key = tuple(rules)
    found = _CACHE.get(key)
    if found is None:
        if len(_CACHE) > 64:
            _CACHE.clear()
        found = _CACHE[key] = RuleSet(key)
    return found


def use_defaults(policy: Policy) -> bool:
    """Does the built-in default deny list apply (``command.useDefaults`` not set to false)?"""
    return policy.command.use_defaults is not False
