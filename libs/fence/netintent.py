"""What a policy asks of the network, decided once: ``none``, ``filtered`` or ``relaxed``.

The executor (netns or not, bridges, proxy env), the proxy service (listeners
or an idle session) and the proxy session (grey traffic upstream or denied)
each act on this answer, so they must read a policy the same way; before,
each had its own copy and they disagreed at the edges.

* ``relaxed``: ``"*"`` in allowedDomains (docs/compatibility.md#network): the sandbox shares
  the host's network; the proxies, on host loopback, still apply
  deniedDomains for clients that use them.
* ``filtered``: something can get through the proxies: an allowed pattern,
  or grey traffic forwarded to ``upstreamProxy`` (``defaultAction: "proxy"``
  *and* a proxy to forward to: without one grey traffic is denied, so a
  policy with nothing else allows nothing).
* ``none``: nothing can: the netns, and proxies whose filter denies every
  request (so a block is answered and reported, as in Fence).

Patterns are read as the filter reads them (surrounding blanks ignored),
so "relaxed" here is exactly the filter's ``*``.  Where no network
namespace can be made, ``filtered`` runs on the host's network like
``relaxed``, and ``none`` is refused unless the user opts in
(``fence.executor.network.shared_network_refusal``): both follow from this
answer.  Pure, and imports nothing: a lone run with no network decides it
without loading the domain filter.
"""

from __future__ import annotations

NONE, FILTERED, RELAXED = "none", "filtered", "relaxed"


def forwards_upstream(network) -> bool:
    """Whether traffic matching no rule goes to ``network.upstreamProxy`` (HTTP only; SOCKS denies it)."""
    return network.default_action == "proxy" and bool(network.upstream_proxy)


def intent(network) -> str:
    """``none``, ``filtered`` or ``relaxed`` for a ``fence.policy.NetworkConfig``."""
    allowed = [p.strip() for p in network.allowed_domains]
    if "*" in allowed:
        return RELAXED
    if allowed or forwards_upstream(network):
        return FILTERED
    return NONE
