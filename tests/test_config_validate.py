"""Every validation message: Fence's wording (docs/compatibility.md#messages), the file, the JSON path, what to do."""

from __future__ import annotations

import json

import pytest

from fence.config.errors import ConfigError
from fence.config.load import parse
from fence.config.validate import upstream_proxy_error
from fence.domains import pattern_error

FILE = "/proj/fence.json"


def problem(config: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse(json.dumps(config).encode(), FILE)
    return e.value.message


def single(config: dict, path: str) -> str:
    message = problem(config)
    prefix = f"invalid configuration in {FILE}: {path}: "
    assert message.startswith(prefix), message
    return message[len(prefix) :]


# (config, JSON path, message) -- message is the whole text after "<file>: <path>: "
CASES = [
    (
        {"network": {"allowedDomains": ["*.com"]}},
        "$.network.allowedDomains[0]",
        'invalid allowed domain "*.com": wildcard pattern too broad (e.g., *.com not allowed); list the domains you '
        'need, e.g. "*.example.com"',
    ),
    (
        {"network": {"deniedDomains": ["ok.com", "https://api.github.com/v1"]}},
        "$.network.deniedDomains[1]",
        'invalid denied domain "https://api.github.com/v1": domain pattern cannot contain protocol, path, or port; '
        'write the host name only, e.g. "api.github.com"',
    ),
    (
        {"network": {"allowedDomains": ["example.com:443"]}},
        "$.network.allowedDomains[0]",
        'invalid allowed domain "example.com:443": domain pattern cannot contain protocol, path, or port; write the '
        'host name only, e.g. "example.com"',
    ),
    (
        {"network": {"allowedDomains": ["::1"]}},
        "$.network.allowedDomains[0]",
        'invalid allowed domain "::1": domain pattern cannot contain protocol, path, or port; write the host name '
        'only, e.g. "example.com"',
    ),
    (
        {"network": {"allowedDomains": ["api.*.com"]}},
        "$.network.allowedDomains[0]",
        'invalid allowed domain "api.*.com": only *.domain.com wildcard patterns are allowed; a wildcard is a single '
        'leading "*." (e.g. "*.example.com") or "*" alone',
    ),
    (
        {"network": {"allowedDomains": ["*example.com"]}},
        "$.network.allowedDomains[0]",
        'invalid allowed domain "*example.com": only *.domain.com wildcard patterns are allowed; a wildcard is a '
        'single leading "*." (e.g. "*.example.com") or "*" alone',
    ),
    (
        {"network": {"allowedDomains": ["example"]}},
        "$.network.allowedDomains[0]",
        'invalid allowed domain "example": invalid domain format; a domain has a dot and no leading or trailing dot '
        '(e.g. "example.com"); "localhost" and "*" are also accepted',
    ),
    (
        {"network": {"allowedDomains": ["example.com."]}},
        "$.network.allowedDomains[0]",
        'invalid allowed domain "example.com.": invalid domain format; a domain has a dot and no leading or trailing '
        'dot (e.g. "example.com"); "localhost" and "*" are also accepted',
    ),
    (
        {"network": {"allowedDomains": [""]}},
        "$.network.allowedDomains[0]",
        'invalid allowed domain "": invalid domain format; a domain has a dot and no leading or trailing dot '
        '(e.g. "example.com"); "localhost" and "*" are also accepted',
    ),
    (
        {"network": {"allowUnixSockets": [""]}},
        "$.network.allowUnixSockets[0]",
        "network.allowUnixSockets contains empty path; remove the empty entry",
    ),
    (
        {"network": {"allowLocalOutboundPorts": [8080, 0]}},
        "$.network.allowLocalOutboundPorts[1]",
        "invalid network.allowLocalOutboundPorts entry 0 (expected 1-65535)",
    ),
    (
        {"network": {"allowLocalOutboundPorts": [65536]}},
        "$.network.allowLocalOutboundPorts[0]",
        "invalid network.allowLocalOutboundPorts entry 65536 (expected 1-65535)",
    ),
    (
        {"network": {"httpProxyPort": 70000}},
        "$.network.httpProxyPort",
        "invalid network.httpProxyPort 70000 (expected 0-65535; 0 picks a free port)",
    ),
    (
        {"network": {"socksProxyPort": -1}},
        "$.network.socksProxyPort",
        "invalid network.socksProxyPort -1 (expected 0-65535; 0 picks a free port)",
    ),
    (
        {"network": {"upstreamProxy": "proxy:3128"}},
        "$.network.upstreamProxy",
        'invalid network.upstreamProxy: missing scheme: URL must start with http:// (got "proxy:3128"); use '
        "http://host:port",
    ),
    (
        {"network": {"upstreamProxy": "https://proxy:3128"}},
        "$.network.upstreamProxy",
        'invalid network.upstreamProxy: scheme "https" is not supported; only http:// upstream proxies are '
        "supported; use http://host:port",
    ),
    (
        {"network": {"upstreamProxy": "http://:3128"}},
        "$.network.upstreamProxy",
        "invalid network.upstreamProxy: URL has no host; use http://host:port",
    ),
    (
        {"network": {"defaultAction": "allow"}},
        "$.network.defaultAction",
        'invalid network.defaultAction "allow": must be "deny" or "proxy"',
    ),
    (
        {"network": {"defaultAction": "proxy"}},
        "$.network.defaultAction",
        'network.defaultAction "proxy" requires network.upstreamProxy to be set; add "upstreamProxy": '
        '"http://host:port" or remove defaultAction',
    ),
    (
        {"filesystem": {"allowRead": [""]}},
        "$.filesystem.allowRead[0]",
        "filesystem.allowRead contains empty path; remove the empty entry",
    ),
    (
        {"filesystem": {"allowExecute": ["/bin", ""]}},
        "$.filesystem.allowExecute[1]",
        "filesystem.allowExecute contains empty path; remove the empty entry",
    ),
    (
        {"filesystem": {"denyRead": [""]}},
        "$.filesystem.denyRead[0]",
        "filesystem.denyRead contains empty path; remove the empty entry",
    ),
    (
        {"filesystem": {"allowWrite": [""]}},
        "$.filesystem.allowWrite[0]",
        "filesystem.allowWrite contains empty path; remove the empty entry",
    ),
    (
        {"filesystem": {"denyWrite": [""]}},
        "$.filesystem.denyWrite[0]",
        "filesystem.denyWrite contains empty path; remove the empty entry",
    ),
    (
        {"devices": {"mode": "all"}},
        "$.devices.mode",
        'invalid devices.mode "all" (expected one of: auto, minimal, host)',
    ),
    ({"devices": {"allow": [""]}}, "$.devices.allow[0]", "devices.allow contains empty path; remove the empty entry"),
    (
        {"devices": {"allow": ["/dev/"]}},
        "$.devices.allow[0]",
        'devices.allow path "/dev/" is too broad; use devices.mode "host" instead',
    ),
    (
        {"devices": {"allow": ["/dev/kvm", "/dev"]}},
        "$.devices.allow[1]",
        'devices.allow path "/dev" is too broad; use devices.mode "host" instead',
    ),
    (
        {"devices": {"allow": ["/etc/passwd"]}},
        "$.devices.allow[0]",
        'devices.allow path "/etc/passwd" must be under /dev/ (e.g. "/dev/kvm")',
    ),
    (
        {"devices": {"allow": ["/dev/../etc/shadow"]}},
        "$.devices.allow[0]",
        'devices.allow path "/dev/../etc/shadow" must be under /dev/ (e.g. "/dev/kvm")',
    ),
    (
        {"devices": {"allow": ["dev/kvm"]}},
        "$.devices.allow[0]",
        'devices.allow path "dev/kvm" must be under /dev/ (e.g. "/dev/kvm")',
    ),
    (
        {"filesystem": {"tmpSize": "lots"}},
        "$.filesystem.tmpSize",
        'invalid filesystem.tmpSize: "lots" is not a size: expected a number of bytes, "<number>K|M|G|T" (e.g. "512M") '
        'or "<percent>%" of RAM (e.g. "25%")',
    ),
    (
        {"filesystem": {"shmSize": "150%"}},
        "$.filesystem.shmSize",
        'invalid filesystem.shmSize: "150%" is not a percentage of RAM between 0 and 100 (e.g. "25%")',
    ),
    (
        {"filesystem": {"tmpSize": "0M"}},
        "$.filesystem.tmpSize",
        'invalid filesystem.tmpSize: "0M" is zero: a tmpfs needs room (leave the field out for the default)',
    ),
    (
        {"filesystem": {"tmpSize": -1}},
        "$.filesystem.tmpSize",
        "invalid filesystem.tmpSize: a size cannot be negative (got -1)",
    ),
    ({"command": {"deny": [""]}}, "$.command.deny[0]", "command.deny contains empty command; remove the empty entry"),
    (
        {"command": {"allow": ["  "]}},
        "$.command.allow[0]",
        "command.allow contains empty command; remove the empty entry",
    ),
    (
        {"command": {"acceptSharedBinaryCannotRuntimeDeny": [""]}},
        "$.command.acceptSharedBinaryCannotRuntimeDeny[0]",
        "command.acceptSharedBinaryCannotRuntimeDeny contains empty command; remove the empty entry",
    ),
    (
        {"command": {"runtimeExecPolicy": "seccomp"}},
        "$.command.runtimeExecPolicy",
        'invalid command.runtimeExecPolicy "seccomp" (expected one of: path, argv)',
    ),
    (
        {"ssh": {"allowedHosts": [""]}},
        "$.ssh.allowedHosts[0]",
        "ssh.allowedHosts contains empty host pattern; remove the empty entry",
    ),
    (
        {"ssh": {"deniedHosts": ["ssh://host"]}},
        "$.ssh.deniedHosts[0]",
        'invalid ssh.deniedHosts entry "ssh://host": a host pattern cannot contain a scheme or a path; write the host '
        'only, e.g. "*.example.com"',
    ),
    (
        {"ssh": {"allowedHosts": ["git@github.com"]}},
        "$.ssh.allowedHosts[0]",
        'invalid ssh.allowedHosts entry "git@github.com": a host pattern cannot contain a user (user@host); write the '
        "host only",
    ),
    (
        {"ssh": {"allowedHosts": ["github.com:22"]}},
        "$.ssh.allowedHosts[0]",
        'invalid ssh.allowedHosts entry "github.com:22": a host pattern cannot contain a port; set ports in '
        "~/.ssh/config",
    ),
    (
        {"ssh": {"allowedHosts": ["my host"]}},
        "$.ssh.allowedHosts[0]",
        'invalid ssh.allowedHosts entry "my host": a host pattern cannot contain spaces',
    ),
    (
        {"ssh": {"allowedCommands": [""]}},
        "$.ssh.allowedCommands[0]",
        "ssh.allowedCommands contains empty command; remove the empty entry",
    ),
    (
        {"ssh": {"deniedCommands": [""]}},
        "$.ssh.deniedCommands[0]",
        "ssh.deniedCommands contains empty command; remove the empty entry",
    ),
    (
        {"macos": {"mach": {"lookup": ["com.*.x"]}}},
        "$.macos.mach.lookup[0]",
        'invalid macos.mach.lookup entry "com.*.x": only a single trailing "*" is allowed (e.g. "com.apple.*"), or '
        '"*" alone',
    ),
    (
        {"macos": {"mach": {"register": ["a**"]}}},
        "$.macos.mach.register[0]",
        'invalid macos.mach.register entry "a**": only a single trailing "*" is allowed (e.g. "com.apple.*"), or '
        '"*" alone',
    ),
    (
        {"macos": {"mach": {"lookup": [""]}}},
        "$.macos.mach.lookup[0]",
        "macos.mach.lookup contains empty service name; remove the empty entry",
    ),
]


@pytest.mark.parametrize("config, path, message", CASES, ids=[c[1] for c in CASES])
def test_validation_message(config, path, message):
    if config.get("network", {}).get("defaultAction") == "proxy":
        # a cross-field rule: checked on the resolved config (see test_config_resolve), same text
        import msgspec

        from fence.config.validate import cross_problems
        from fence.policy import Policy

        assert cross_problems(msgspec.convert(config, Policy)) == [(path, message)]
        return
    assert single(config, path) == message


def test_reference_message_shape_is_kept():
    """The Go tool Fence's text survives inside ours (scripts grep for it)."""
    message = problem({"network": {"allowedDomains": ["*.com"]}})
    assert 'invalid allowed domain "*.com": wildcard pattern too broad (e.g., *.com not allowed)' in message


@pytest.mark.parametrize(
    "pattern",
    [
        "localhost",
        "*",
        "example.com",
        "*.example.com",
        "127.0.0.1",
        "169.254.169.254",
        "a-b.c_d.example.org",
        "xn--bcher-kva.de",
    ],
)
def test_valid_domains(pattern):
    assert pattern_error(pattern) is None
    parse(json.dumps({"network": {"allowedDomains": [pattern], "deniedDomains": [pattern]}}).encode(), FILE)


@pytest.mark.parametrize(
    "pattern", ["bücher.example", "*.bücher.example", "straße.de", "ＥＸＡＭＰＬＥ.com", "例え。テスト"]
)
def test_internationalised_domains_are_valid(pattern):
    """An IDN pattern is checked in the IDNA form the filter matches (docs/network.md)."""
    parse(json.dumps({"network": {"allowedDomains": [pattern], "deniedDomains": [pattern]}}).encode(), FILE)


IDN_CASES = [
    # the reason is judged on the IDNA form; the message shows the pattern as written
    ("bücher", "invalid domain format"),
    ("bücher.example.", "invalid domain format"),  # a trailing dot is refused, as for ASCII names
    ("*.bücher", "wildcard pattern too broad (e.g., *.com not allowed)"),
    ("１２７.０.０.１", "invalid domain format"),  # the filter refuses a non-ASCII IPv4 spelling
    ("a\u2024b.com", "invalid domain format"),  # IDNA would change the number of labels
    ("bü cher.example", "invalid domain format"),
    ("*.bü*.example", "only *.domain.com wildcard patterns are allowed"),
]


@pytest.mark.parametrize("pattern, reason", IDN_CASES)
def test_invalid_internationalised_domains(pattern, reason):
    message = single({"network": {"allowedDomains": [pattern]}}, "$.network.allowedDomains[0]")
    assert message.startswith(f'invalid allowed domain "{pattern}": {reason}; '), message


def test_idn_hint_names_the_host_as_written():
    assert single({"network": {"allowedDomains": ["https://bücher.example/x"]}}, "$.network.allowedDomains[0]") == (
        'invalid allowed domain "https://bücher.example/x": domain pattern cannot contain protocol, path, or port; '
        'write the host name only, e.g. "bücher.example"'
    )


@pytest.mark.parametrize(
    "url", ["http://proxy:3128", "http://user:pw@proxy.corp:8080/", "HTTP://p", "http://[::1]:3128"]
)
def test_valid_upstream_proxies(url):
    assert upstream_proxy_error(url) is None


def test_valid_values_pass():
    parse(
        json.dumps(
            {
                "network": {
                    "allowedDomains": ["*", "localhost"],
                    "allowLocalOutboundPorts": [1, 65535],
                    "httpProxyPort": 0,
                    "socksProxyPort": 65535,
                    "upstreamProxy": "http://p:1",
                    "defaultAction": "proxy",
                },
                "devices": {"mode": "minimal", "allow": ["/dev/kvm", "/dev/dri/card0"]},
                "filesystem": {"tmpSize": "512M", "shmSize": 1048576},
                "command": {"runtimeExecPolicy": "argv", "deny": ["git push"]},
                "ssh": {"allowedHosts": ["*.example.com", "fe80::1", "10.0.0.*"]},
                "macos": {"mach": {"lookup": ["*", "com.apple.*", "com.apple.x"]}},
            }
        ).encode(),
        FILE,
    )


@pytest.mark.parametrize(
    "value, expected",
    [
        ("512M", 512 << 20),
        ("2g", 2 << 30),
        ("1048576", 1048576),
        (4096, 4096),
        ("25%", 1 << 28),
        ("0.5%", 5368709),
        ("", 1 << 28),
        (0, 1 << 28),
    ],
)
def test_sizes_in_bytes(value, expected):
    """What the executor hands bwrap's --size: binary units, a share of RAM, and the default (25%)."""
    from fence.sizes import size_problem, to_bytes

    assert size_problem(value) is None
    assert to_bytes(value, memory=1 << 30) == expected


def test_all_problems_are_reported_together():
    message = problem({"network": {"allowedDomains": ["*.com"], "defaultAction": "x"}, "devices": {"mode": "y"}})
    assert message.startswith(f"invalid configuration in {FILE} (3 problems):\n")
    assert message.count("\n  $.") == 3
