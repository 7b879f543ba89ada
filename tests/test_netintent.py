"""fence.netintent: one reading of a policy's network intent for the executor, the proxy service and sessions."""

from __future__ import annotations

import sys

import pytest

from fence.netintent import FILTERED, NONE, RELAXED, forwards_upstream, intent
from fence.policy import NetworkConfig

UPSTREAM = "http://proxy.example:3128"


@pytest.mark.parametrize(
    "network, expected",
    [
        (NetworkConfig(), NONE),
        (NetworkConfig(denied_domains=["a.com"]), NONE),  # denying alone allows nothing
        (NetworkConfig(allow_local_outbound=True, allow_local_outbound_ports=[8080]), NONE),  # local ports: no proxy
        (NetworkConfig(default_action="proxy"), NONE),  # grey upstream, but no upstream
        (NetworkConfig(upstream_proxy=UPSTREAM), NONE),  # an upstream nothing is sent to
        (NetworkConfig(default_action="proxy", upstream_proxy=UPSTREAM), FILTERED),
        (NetworkConfig(allowed_domains=["a.com"]), FILTERED),
        (NetworkConfig(allowed_domains=["a.com"], denied_domains=["a.com"]), FILTERED),
        (NetworkConfig(allowed_domains=["*"]), RELAXED),
        (NetworkConfig(allowed_domains=["a.com", " * "], denied_domains=["*"]), RELAXED),  # read as the filter reads
        (NetworkConfig(allowed_domains=["*"], default_action="proxy", upstream_proxy=UPSTREAM), RELAXED),
    ],
)
def test_intent(network, expected):
    assert intent(network) == expected


def test_forwards_upstream_needs_both_settings():
    assert forwards_upstream(NetworkConfig(default_action="proxy", upstream_proxy=UPSTREAM))
    assert not forwards_upstream(NetworkConfig(default_action="proxy"))
    assert not forwards_upstream(NetworkConfig(upstream_proxy=UPSTREAM))
    assert not forwards_upstream(NetworkConfig(default_action="deny", upstream_proxy=UPSTREAM))


def test_relaxed_is_the_filters_star():
    """``relaxed`` is exactly when the filter allows every host not denied."""
    from fence.domains import ALLOW, DomainFilter

    for allowed in (["*"], [" *"], ["*", "a.com"], ["a.com"], ["*.com"], []):
        everything = DomainFilter(allowed).decide("unlisted.example").action == ALLOW
        assert (intent(NetworkConfig(allowed_domains=allowed)) == RELAXED) == everything, allowed


def test_importing_it_loads_nothing_else():
    import subprocess

    probe = (
        "import sys, __future__, fence; before = set(sys.modules); import fence.netintent; "
        "print(sorted(set(sys.modules) - before))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['fence.netintent']"
