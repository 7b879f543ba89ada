"""Host canonicalisation and the domain filter (the proxies share it; command preflight will too).

Two jobs, kept apart so each is easy to check:

``canonical_host(raw)`` turns whatever a client wrote into the one form fence
matches *and* dials, or raises ``HostError``.  Matching a raw string and then
handing the same string to the resolver is how allowlists get bypassed:
glibc's ``inet_aton`` reads ``127.1``, ``2130706433``, ``0x7f.1`` and
``0177.0.0.1`` as 127.0.0.1, and Python encodes a ``str`` host with the IDNA
codec before resolving, which maps full-width letters and digits, drops soft
hyphens and splits on ideographic dots.  So:

* names: lowercase, IDNA (Python's ``encodings.idna``: IDNA 2003 nameprep,
  so ``ＥＸＡＭＰＬＥ。ｃｏｍ`` and ``exa<U+00AD>mple.com`` become
  ``example.com``, ``bücher.example`` becomes ``xn--bcher-kva.example``,
  ``straße.de`` becomes ``strasse.de``), one trailing dot removed; the result
  must be LDH-ish ASCII (``a-z 0-9 - _``, labels 1-63, at most 253) and every
  ``xn--`` label must decode.  A mapping that changes the number of labels
  (``a<U+2024>b.com``) is refused.
* IPv4: only the canonical dotted quad (four decimal numbers 0-255, no
  leading zeros), written in ASCII.  Any host whose last label looks numeric
  (digits, or ``0x`` hex) and is not canonical is refused, so no
  ``inet_aton`` spelling ever reaches a resolver.
* IPv6 (``[...]`` in URLs, bare from SOCKS): ``ipaddress`` compressed form;
  an IPv4-mapped address (``::ffff:127.0.0.1``) becomes its IPv4 dotted quad,
  because that is where a connection to it goes (so a rule about
  ``127.0.0.1`` covers it); zone ids (``%eth0``) are refused.

``DomainFilter`` decides allow / deny / proxy for a canonical host, as Fence
does (docs/compatibility.md#network): deny wins; exact names and a leading ``*.`` (which does
not match the apex); ``*`` allows everything not denied; the port is ignored.
Patterns go through the same canonicalisation (case, IDN, trailing dot), so a
rule and a host always compare like with like.  A *denied* pattern that is a
non-canonical IPv4 spelling (``0177.0.0.1``) also denies its canonical form.

``pattern_error`` / ``pattern_problem`` are the one check of a domain
pattern (the config validator and the importer use them): Fence's
rules and words, judged on the IDNA form, so a pattern validates exactly
when the filter can match it.

Nothing here resolves a name: deciding never touches DNS.  Importing this
module costs only ``re`` (command preflight uses it on every run).
"""

from __future__ import annotations

import re

__all__ = [
    "HostError",
    "canonical_host",
    "split_host_port",
    "is_ip",
    "display_host",
    "Decision",
    "DomainFilter",
    "ALLOW",
    "DENY",
    "PROXY",
    "block_hint",
    "pattern_problem",
    "pattern_error",
]

ALLOW, DENY, PROXY = "allow", "deny", "proxy"

# reasons (``Decision.reason``): why the filter decided what it did
ALLOWED, DENIED, NO_MATCH, NO_CONFIG, INVALID = "allowed", "denied", "nomatch", "noconfig", "invalid"


class HostError(ValueError):
    """A host that does not canonicalise cleanly; the message says why (for 403 bodies and logs)."""


# --- canonical hosts --------------------------------------------------------------------

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_V6_CHARS = frozenset("0123456789abcdefABCDEF:.")
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdef")
_IDNA_DOTS = ".\u3002\uff0e\uff61"  # the dots IDNA 2003 (and Python's codec) split on
_name_re = None  # compiled on first use: importing this module stays cheap


def _name_match(host: str) -> bool:
    global _name_re
    if _name_re is None:
        _name_re = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
    return _name_re.fullmatch(host) is not None


def _numeric_label(label: str) -> bool:
    """Digits, or ``0x`` followed by hex digits: how ``inet_aton`` reads a part (so, an IPv4 spelling)."""
    if label[:2] == "0x":
        return set(label[2:]) <= _HEX
    return bool(label) and set(label) <= _DIGITS


def _quad_part(part: str) -> bool:
    return (part == "0" or (0 < len(part) <= 3 and part[0] != "0" and set(part) <= _DIGITS)) and int(part) < 256


def _canonical_v4(host: str) -> str:
    parts = host.split(".")
    if len(parts) == 4 and all(_quad_part(p) for p in parts):
        return host
    raise HostError(f'"{host}" is not a canonical IPv4 address; write it as four decimal numbers (e.g. 127.0.0.1)')


def _canonical_v6(text: str) -> str:
    import ipaddress  # lazy: only IPv6 literals need it (~1 ms)

    if not text or not set(text) <= _V6_CHARS:
        raise HostError(f'"[{text}]" is not an IPv6 address (zone ids are not accepted)')
    try:
        addr = ipaddress.IPv6Address(text)
    except ValueError:
        raise HostError(f'"[{text}]" is not an IPv6 address') from None
    mapped = addr.ipv4_mapped
    return str(mapped) if mapped is not None else addr.compressed


def _idna_ascii(raw: str) -> str:
    """A non-ASCII name in lowercase IDNA (ASCII) form, as Python's resolver would encode it; or HostError."""
    if any(c.isspace() or c < " " or "\x7f" <= c < "\xa0" for c in raw):
        raise HostError(f"{raw!r} contains spaces or control characters")
    try:
        host = raw.encode("idna").decode("ascii").lower()
    except UnicodeError as e:
        raise HostError(f"{raw!r} is not a valid internationalised domain name ({e})") from None
    if host.count(".") != sum(raw.count(d) for d in _IDNA_DOTS):
        raise HostError(f"{raw!r} maps to a different number of labels ({host!r})")
    return host


def canonical_host(raw: str) -> str:
    """The canonical form of a host as written by a client (no port, no brackets in the result).

    Raises ``HostError`` for anything that does not canonicalise cleanly.
    Never resolves anything.
    """
    if not raw:
        raise HostError("empty host")
    if raw[0] == "[":
        if raw[-1] != "]":
            raise HostError(f'"{raw}" is not a host')
        return _canonical_v6(raw[1:-1])
    if ":" in raw:  # a bare IPv6 address (SOCKS5 ATYP 4 formats to this; URLs use brackets)
        return _canonical_v6(raw)
    was_ascii = raw.isascii()
    host = raw.lower() if was_ascii else _idna_ascii(raw)
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > 253:
        raise HostError(f"{raw!r} is not a valid host name (empty or longer than 253)")
    last = host.rpartition(".")[2]
    if _numeric_label(last):
        # an IPv4 spelling: only the canonical dotted quad, written in ASCII as it is matched
        if not was_ascii or host != raw:
            raise HostError(
                f'"{raw}" is not a canonical IPv4 address; write it as four decimal numbers (e.g. 127.0.0.1)'
            )
        return _canonical_v4(host)
    if not _name_match(host):
        raise HostError(f"{raw!r} is not a valid host name (letters, digits, '-', '_' and dots only)")
    if "xn--" in host:
        for label in host.split("."):
            if label.startswith("xn--"):
                try:
                    label[4:].encode("ascii").decode("punycode").encode("idna")
                except UnicodeError:
                    raise HostError(f"{raw!r} has an invalid IDNA label {label!r}") from None
    return host


def is_ip(host: str) -> bool:
    """True for a canonical host that is an IP address (as ``canonical_host`` returns them)."""
    return ":" in host or (host[-1:].isdigit() and _numeric_label(host.rpartition(".")[2]))


def display_host(host: str) -> str:
    """A canonical host as it is written before ``:port`` (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


def split_host_port(authority: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` / ``host`` (with ``default_port``); strict decimal port 1-65535.

    The host part is returned as written (canonicalise it next); raises ``HostError``.
    """
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise HostError(f'"{authority}": unclosed "["')
        host, rest = authority[: end + 1], authority[end + 1 :]
        if rest and rest[0] != ":":
            raise HostError(f'"{authority}" is not host:port')
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text = authority.rpartition(":")
        if not sep:
            host, port_text = authority, None
        elif ":" in host:
            raise HostError(f'"{authority}": write IPv6 addresses in brackets ([::1]:443)')
    if port_text is None:
        if default_port is None:
            raise HostError(f'"{authority}" has no port')
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5 and 0 < int(port_text) < 65536):
        raise HostError(f'"{authority}" has an invalid port (expected 1-65535)')
    return host, int(port_text)


# --- the filter ---------------------------------------------------------------------------


class Decision:
    """What the filter decided for one host: ``action`` (allow/deny/proxy), why, and the rule."""

    __slots__ = ("action", "reason", "rule")

    def __init__(self, action: str, reason: str, rule: str = ""):
        self.action, self.reason, self.rule = action, reason, rule

    def __repr__(self) -> str:
        return f"Decision({self.action!r}, {self.reason!r}, {self.rule!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Decision) and (self.action, self.reason, self.rule) == (
            other.action,
            other.reason,
            other.rule,
        )


def _canonical_pattern(pattern: str) -> str | None:
    """A pattern in canonical form ("*", "*.<canonical>", "<canonical>"), or None if it can never match."""
    p = pattern.strip()
    if p == "*":
        return "*"
    wildcard = p.startswith("*.")
    try:
        host = canonical_host(p[2:] if wildcard else p)
    except HostError:
        return None
    if wildcard:
        return None if ":" in host else "*." + host
    return host


def _inet_aton_spelling(pattern: str) -> str | None:
    """The dotted quad glibc would read ``pattern`` as (``0177.0.0.1`` -> 127.0.0.1), else None."""
    p = pattern.strip().lower().rstrip(".")
    if not p or not p.isascii() or not _numeric_label(p.rpartition(".")[2]):
        return None
    import socket  # lazy: only numeric patterns (0177.0.0.1) get here; runs without bridges never load socket (~3 ms)

    try:
        return socket.inet_ntoa(socket.inet_aton(p))  # a pure parse: never a lookup
    except OSError:
        return None


class _Rules:
    """One list of patterns, as a set of exact names and a set of wildcard suffixes."""

    __slots__ = ("exact", "suffix", "star")

    def __init__(self, patterns: list[str], expand_ip_spellings: bool = False):
        self.exact: dict[str, str] = {}
        self.suffix: dict[str, str] = {}
        self.star = ""
        for pattern in patterns:
            canon = _canonical_pattern(pattern)
            if canon is None:
                if expand_ip_spellings:
                    quad = _inet_aton_spelling(pattern)
                    if quad is not None:
                        self.exact.setdefault(quad, pattern)
                continue
            if canon == "*":
                self.star = self.star or pattern
            elif canon.startswith("*."):
                self.suffix.setdefault(canon[2:], pattern)
            else:
                self.exact.setdefault(canon, pattern)

    def match(self, host: str) -> str:
        """The (first-listed form of the) pattern matching canonical ``host``, or ""."""
        rule = self.exact.get(host)
        if rule is not None:
            return rule
        if self.suffix and ":" not in host:
            i = host.find(".")
            while i >= 0:
                rule = self.suffix.get(host[i + 1 :])
                if rule is not None:
                    return rule
                i = host.find(".", i + 1)
        return self.star


class DomainFilter:
    """allow / deny / proxy for canonical hosts; built once per policy, then pure lookups.

    ``DomainFilter(None)`` (no config) denies everything, as in Fence.
    ``default_action="proxy"`` turns no-match into ``PROXY`` (the caller
    forwards to the upstream proxy, or denies where it cannot, as SOCKS);
    the session passes it only when there is an upstream to forward to
    (``fence.netintent.forwards_upstream``).  Whether a policy can allow
    anything at all, or is relaxed, is ``fence.netintent.intent``.
    """

    __slots__ = ("allowed", "denied", "grey", "configured")

    def __init__(self, allowed: list[str] | None, denied: list[str] | None = None, default_action: str = ""):
        self.configured = allowed is not None
        self.allowed = _Rules(allowed or [])
        self.denied = _Rules(denied or [], expand_ip_spellings=True)
        self.grey = PROXY if default_action == "proxy" else DENY

    def decide(self, host: str) -> Decision:
        """The decision for a canonical host (``canonical_host``); the port never matters."""
        if not self.configured:
            return Decision(DENY, NO_CONFIG)
        rule = self.denied.match(host)
        if rule:
            return Decision(DENY, DENIED, rule)
        rule = self.allowed.match(host)
        if rule:
            return Decision(ALLOW, ALLOWED, rule)
        return Decision(self.grey, NO_MATCH)

    def denies_address(self, ip: str) -> str:
        """The denied pattern naming a resolved address exactly (deny wins after DNS too), or ""."""
        return self.denied.exact.get(ip, "")


def block_hint(host: str, decision: Decision) -> str:
    """One line telling the user which config key would change a block (the 403 body's second line)."""
    if decision.reason == DENIED:
        canon = _canonical_pattern(decision.rule)
        if canon == host:
            return f'"{host}" is in network.deniedDomains.'
        return f'"{host}" matches "{decision.rule}" in network.deniedDomains.'
    if decision.reason == NO_CONFIG:
        return "No network policy is configured; add network.allowedDomains to allow hosts."
    return f'Add "{host}" to network.allowedDomains to allow it.'


# --- pattern validation ---------------------------------------------------------------------
# Fence's rules and reasons (docs/compatibility.md#messages), applied to the IDNA (ASCII) form of a pattern: that is
# the form the filter matches, so a pattern is valid exactly when it can mean a host.

PORT_OR_PATH = "domain pattern cannot contain protocol, path, or port"
TOO_BROAD = "wildcard pattern too broad (e.g., *.com not allowed)"
ONE_WILDCARD = "only *.domain.com wildcard patterns are allowed"
BAD_FORMAT = "invalid domain format"

PATTERN_HELP = {
    PORT_OR_PATH: "write the host name only, e.g. {example}",
    TOO_BROAD: 'list the domains you need, e.g. "*.example.com"',
    ONE_WILDCARD: 'a wildcard is a single leading "*." (e.g. "*.example.com") or "*" alone',
    BAD_FORMAT: 'a domain has a dot and no leading or trailing dot (e.g. "example.com"); "localhost" and "*" are '
    "also accepted",
}
"""What to do about each reason (the second half of a config validation message)."""

_DOMAIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")


def pattern_error(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid domain pattern (Fence's reason, docs/compatibility.md#messages), or None.

    ASCII patterns follow Fence exactly.  A non-ASCII one is checked
    in its IDNA form (``bücher.example`` as ``xn--bcher-kva.example``), and
    must also be a host ``canonical_host`` accepts: a pattern the filter
    could never match (``１２７.０.０.１``, ``a<U+2024>b.com``) is refused
    rather than silently ignored.
    """
    if pattern == "localhost" or pattern == "*":
        return None
    if "://" in pattern or "/" in pattern or ":" in pattern:
        return PORT_OR_PATH
    wildcard = pattern.startswith("*.")
    name = pattern[2:] if wildcard else pattern
    if "*" in name:
        return ONE_WILDCARD
    ascii_name = _ascii_name(name)
    if wildcard and ascii_name is not None and "." not in ascii_name:
        return TOO_BROAD
    if ascii_name is None or not _plain_domain_ok(ascii_name):
        return BAD_FORMAT
    return None


def pattern_problem(kind: str, pattern: str) -> str | None:
    """The whole message for a bad ``kind`` ("allowed"/"denied") pattern, or None when it is valid.

    ``invalid allowed domain "P": <reason>; <what to do>``: the config
    validator's wording, which scripts written for Fence grep for.
    """
    reason = pattern_error(pattern)
    if reason is None:
        return None
    help_ = PATTERN_HELP[reason]
    if "{example}" in help_:
        host = _host_of(pattern)
        help_ = help_.format(example=f'"{host}"' if host and pattern_error(host) is None else '"example.com"')
    return f'invalid {kind} domain "{pattern}": {reason}; {help_}'


def _plain_domain_ok(domain: str) -> bool:
    if "." not in domain or domain.startswith(".") or domain.endswith(".") or ".." in domain:
        return False
    return all(c in _DOMAIN_CHARS for c in domain)


def _ascii_name(name: str) -> str | None:
    """The ASCII form of a pattern's name part, or None when a non-ASCII name maps to no matchable host."""
    if name.isascii():
        return name
    try:
        canonical_host(name)
        return _idna_ascii(name)  # not the canonical form: a trailing dot stays invalid, as in ASCII
    except HostError:
        return None


def _host_of(pattern: str) -> str:
    """Best guess at the host inside a URL-ish pattern, for the hint."""
    rest = pattern.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    if rest.startswith("["):
        return ""
    return rest.split(":", 1)[0]
