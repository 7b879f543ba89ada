"""fence.domains: host canonicalisation, the domain filter, hints and pattern validation (pure, no network)."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fence.domains import (
    ALLOW,
    DENY,
    PROXY,
    Decision,
    DomainFilter,
    HostError,
    block_hint,
    canonical_host,
    display_host,
    is_ip,
    pattern_error,
    pattern_problem,
    split_host_port,
)


@pytest.mark.parametrize(
    "raw, canonical",
    [
        ("example.com", "example.com"),
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("ｅｘａｍｐｌｅ。ｃｏｍ", "example.com"),  # full-width letters, ideographic full stop
        ("example\uff0ecom", "example.com"),  # full-width full stop
        ("example\uff61com", "example.com"),  # half-width ideographic full stop
        ("exa\u00admple.com", "example.com"),  # soft hyphen: mapped to nothing by IDNA
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example.", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("straße.de", "strasse.de"),  # IDNA 2003 mapping (documented)
        ("localhost", "localhost"),
        ("_srv.example.com", "_srv.example.com"),
        ("1.2.3.4.nip.io", "1.2.3.4.nip.io"),
        ("127.0.0.1", "127.0.0.1"),
        ("0.0.0.0", "0.0.0.0"),
        ("255.255.255.255", "255.255.255.255"),
        ("[::1]", "::1"),
        ("[0:0:0:0:0:0:0:1]", "::1"),
        ("[2001:DB8::1]", "2001:db8::1"),
        ("[::ffff:127.0.0.1]", "127.0.0.1"),  # IPv4-mapped: the IPv4 it reaches
        ("[::ffff:7f00:1]", "127.0.0.1"),
        ("::1", "::1"),  # bare (SOCKS5 ATYP 4)
    ],
)
def test_canonical_host(raw, canonical):
    assert canonical_host(raw) == canonical


@pytest.mark.parametrize(
    "raw",
    [
        "",
        ".",
        "..",
        "a..b",
        ".example.com",
        "example..com",
        "-a.com",
        "a-.com",
        "127.1",
        "2130706433",
        "0x7f.1",
        "0x7f000001",
        "0177.0.0.1",
        "127.000.0.1",
        "127.0.0.01",
        "256.1.1.1",
        "1.2.3.4.5",
        "127.0.0.1.",
        "１２７.０.０.１",
        "127。0。0。1",
        "example.123",
        "a.0x1",
        "a b.com",
        "a\tb.com",
        "exa%6dple.com",
        "user@example.com",
        "example.com/",
        "a\x00b.com",
        "a\x85b.com",
        "a\u2024b.com",  # ONE DOT LEADER would map to an extra label
        "xn--zz.example",  # undecodable A-label
        "[fe80::1%eth0]",
        "[::1",
        "[example.com]",
        "[1.2.3.4]",
        "::g",
        "a" * 64 + ".com",
        ("a." * 127) + "com",
    ],
)
def test_refused_hosts(raw):
    with pytest.raises(HostError):
        canonical_host(raw)


def test_is_ip_and_display():
    assert is_ip("127.0.0.1") and is_ip("::1") and not is_ip("example.com") and not is_ip("1.2.3.4.nip.io")
    assert display_host("::1") == "[::1]" and display_host("a.b") == "a.b"


@pytest.mark.parametrize(
    "authority, default, expected",
    [
        ("a.b:443", None, ("a.b", 443)),
        ("a.b", 443, ("a.b", 443)),
        ("[::1]:8080", None, ("[::1]", 8080)),
        ("[::1]", 80, ("[::1]", 80)),
        ("a.b:65535", None, ("a.b", 65535)),
    ],
)
def test_split_host_port(authority, default, expected):
    assert split_host_port(authority, default) == expected


@pytest.mark.parametrize(
    "authority",
    ["a.b:0", "a.b:65536", "a.b:+1", "a.b:0x50", "a.b:８０", "a.b: 80", "a.b:", "::1:80", "[::1]x", "[::1", "a.b"],
)
def test_split_host_port_refuses(authority):
    with pytest.raises(HostError):
        split_host_port(authority)


# --- the filter ----------------------------------------------------------------------------
def decide(allowed, denied=(), default_action="", host="example.com"):
    return DomainFilter(list(allowed), list(denied), default_action).decide(canonical_host(host))


def test_filter_semantics():
    f = DomainFilter(["example.com", "*.api.test", "localhost", "127.0.0.1"], ["bad.api.test", "*.evil.test"])
    assert f.decide("example.com") == Decision(ALLOW, "allowed", "example.com")
    assert f.decide("a.api.test") == Decision(ALLOW, "allowed", "*.api.test")
    assert f.decide("x.y.api.test").action == ALLOW
    assert f.decide("api.test") == Decision(DENY, "nomatch")  # the wildcard is not the apex
    assert f.decide("bad.api.test") == Decision(DENY, "denied", "bad.api.test")  # deny wins
    assert f.decide("x.evil.test") == Decision(DENY, "denied", "*.evil.test")
    assert f.decide("localhost").action == ALLOW and f.decide("127.0.0.1").action == ALLOW
    assert f.decide("127.0.0.2").action == DENY


def test_star_is_relaxed_and_deny_still_wins():
    f = DomainFilter(["*"], ["*.bad.test", "1.2.3.4"])
    assert f.decide("anything.example").action == ALLOW
    assert f.decide("x.bad.test").action == DENY and f.decide("1.2.3.4").action == DENY
    assert f.decide("::1").action == ALLOW


def test_patterns_are_canonicalised_too():
    assert decide(["EXAMPLE.com"], host="example.COM").action == ALLOW
    assert decide(["*.Example.COM"], host="A.example.com").action == ALLOW
    assert decide(["bücher.example"], host="xn--bcher-kva.example").action == ALLOW
    assert decide(["xn--bcher-kva.example"], host="BÜCHER.example").action == ALLOW
    assert decide([" example.com "], host="example.com").action == ALLOW
    assert decide(["*"], ["ＥＸＡＭＰＬＥ.com"], host="example.com").action == DENY


def test_denied_ip_spellings_deny_the_canonical_address():
    for spelling in ("0177.0.0.1", "127.1", "2130706433", "0x7f.0.0.1"):
        assert DomainFilter(["*"], [spelling]).decide("127.0.0.1").action == DENY, spelling
    # an allowed non-canonical spelling allows nothing (never widen an allowlist)
    assert DomainFilter(["127.1"]).decide("127.0.0.1").action == DENY


def test_ipv6_patterns_cannot_match_by_wildcard():
    assert DomainFilter(["*.1"]).decide("::1").action == DENY


def test_default_action_proxy_and_no_config():
    assert decide([], default_action="proxy").action == PROXY
    assert decide(["*"], ["example.com"], "proxy").action == DENY  # denied is never forwarded
    assert decide(["example.com"], default_action="proxy").action == ALLOW  # allowed goes direct
    assert DomainFilter(None).decide("example.com") == Decision(DENY, "noconfig")
    assert DomainFilter(["a.com"], [], "proxy").decide("b.com") == Decision(PROXY, "nomatch")


def test_port_is_ignored():
    f = DomainFilter(["example.com"])
    assert f.decide(canonical_host(split_host_port("example.com:1")[0])).action == ALLOW


def test_denies_address():
    f = DomainFilter(["*.ok.test"], ["169.254.169.254", "*.x.test"])
    assert f.denies_address("169.254.169.254") == "169.254.169.254"
    assert f.denies_address("10.0.0.1") == ""


def test_block_hints():
    assert block_hint("a.com", Decision(DENY, "nomatch")) == 'Add "a.com" to network.allowedDomains to allow it.'
    assert block_hint("a.com", Decision(DENY, "denied", "a.com")) == '"a.com" is in network.deniedDomains.'
    assert block_hint("a.com", Decision(DENY, "denied", "A.COM")) == '"a.com" is in network.deniedDomains.'
    assert (
        block_hint("x.a.com", Decision(DENY, "denied", "*.a.com"))
        == '"x.a.com" matches "*.a.com" in network.deniedDomains.'
    )


# --- pattern validation (the config validator's rules and words) -------------------------------
def test_pattern_validation_uses_the_reference_reasons():
    for pattern, reason in (
        ("*.com", "wildcard pattern too broad (e.g., *.com not allowed)"),
        ("https://a.com/", "domain pattern cannot contain protocol, path, or port"),
        ("a.com:443", "domain pattern cannot contain protocol, path, or port"),
        ("::1", "domain pattern cannot contain protocol, path, or port"),
        ("api.*.com", "only *.domain.com wildcard patterns are allowed"),
        ("*example.com", "only *.domain.com wildcard patterns are allowed"),
        ("example", "invalid domain format"),
        ("example.com.", "invalid domain format"),
        ("", "invalid domain format"),
        ("*.", "wildcard pattern too broad (e.g., *.com not allowed)"),
        ("bücher", "invalid domain format"),
        ("*.bücher", "wildcard pattern too broad (e.g., *.com not allowed)"),
    ):
        assert pattern_error(pattern) == reason, pattern
        problem = pattern_problem("allowed", pattern)
        assert problem is not None and problem.startswith(f'invalid allowed domain "{pattern}": {reason}; ')
    for pattern in (
        "example.com",
        "*.example.com",
        "localhost",
        "*",
        "127.0.0.1",
        "0177.0.0.1",
        "bücher.example",
        "*.bücher.example",
        "xn--bcher-kva.example",
    ):
        assert pattern_error(pattern) is None and pattern_problem("denied", pattern) is None, pattern


def test_valid_non_ascii_patterns_are_ones_the_filter_matches():
    for pattern in ("bücher.example", "*.bücher.example", "ＥＸＡＭＰＬＥ.com", "straße.de"):
        assert pattern_error(pattern) is None
        assert DomainFilter([pattern]).allowed.exact or DomainFilter([pattern]).allowed.suffix, pattern
    for pattern in ("１２７.０.０.１", "a\u2024b.com", "ü\u3002"):  # the filter could never match these
        assert pattern_error(pattern) == "invalid domain format", pattern


# --- properties -------------------------------------------------------------------------------
HOSTISH = st.text(
    alphabet=st.sampled_from(
        list("abcxyz019-_.:[]%@ \x00AZ") + ["\u3002", "\uff0e", "\uff61", "\u00ad", "ü", "ß", "１", "ａ", "\u2024"]
    ),
    max_size=30,
)


@settings(max_examples=400, deadline=None)
@given(HOSTISH)
def test_canonical_is_a_fixed_point_and_never_reinterpreted(raw):
    try:
        host = canonical_host(raw)
    except HostError:
        return
    assert canonical_host(host) == host
    assert host == host.lower() and host.isascii() and " " not in host
    if ":" in host:
        return
    if is_ip(host):
        assert socket.inet_ntoa(socket.inet_aton(host)) == host
    else:
        with pytest.raises(OSError):  # what we dial is never read as a number by the resolver
            socket.inet_aton(host)
        assert host.encode("idna").decode() == host  # and the resolver's IDNA step leaves it alone


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["a.test", "*.a.test", "b.a.test", "*", "c.test", "127.0.0.1"]), max_size=4),
    st.lists(st.sampled_from(["a.test", "*.a.test", "b.a.test", "c.test", "127.0.0.1"]), max_size=3),
    st.sampled_from(["a.test", "b.a.test", "x.b.a.test", "c.test", "d.test", "127.0.0.1"]),
)
def test_deny_always_wins(allowed, denied, host):
    from fence.domains import _Rules

    decision = DomainFilter(allowed, denied).decide(host)
    if _Rules(denied).match(host):
        assert decision.action == DENY and decision.reason == "denied"
    elif _Rules(allowed).match(host):
        assert decision.action == ALLOW
    else:
        assert decision == Decision(DENY, "nomatch")
