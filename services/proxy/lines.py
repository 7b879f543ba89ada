"""Console lines for proxy decisions (docs/compatibility.md#messages), from ``NetDecisionEvent``s.

The monitor prints what ``net_lines(event, debug, monitor)`` returns on stderr:

* ``-d`` (debug): every decision, a ``[fence:filter]`` line then the
  ``[fence:http]`` / ``[fence:socks]`` line;
* ``-m`` (monitor): only blocked and failed requests, without filter lines.

Formats (Fence's, except that durations are always whole milliseconds)::

    [fence:filter] Allowed by rule: example.com:443 (matched *.example.com)
    [fence:filter] Denied by rule: evil.com:443 (matched evil.com)
    [fence:filter] No matching rule, denying: other.com:443
    [fence:http] 12:00:01 ✗ CONNECT 403 other.com https://other.com:443 (0ms)
    [fence:http] 12:00:02 ✓ GET     200 example.com http://example.com/index.html (12ms)
    [fence:socks] 12:00:03 ✗ CONNECT other.com:22 BLOCKED
"""

from __future__ import annotations

import time

ICONS = {"allowed": "✓", "blocked": "✗", "error": "!"}


def _hostport(event) -> str:
    host = event.host or "-"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{event.port}"


def filter_line(event) -> str:
    """The ``[fence:filter]`` line for an event ("" when the request never reached the filter)."""
    where = _hostport(event)
    reason = event.reason
    if reason == "allowed":
        return f"[fence:filter] Allowed by rule: {where} (matched {event.rule})"
    if reason == "denied":
        return f"[fence:filter] Denied by rule: {where} (matched {event.rule})"
    if reason == "resolved-denied":
        return f"[fence:filter] Denied by rule after resolving: {where} ({event.detail}; matched {event.rule})"
    if reason == "nomatch":
        if event.decision == "proxy" and event.proto == "http":
            return f"[fence:filter] No matching rule, forwarding to upstream proxy: {where}"
        if event.decision == "proxy":
            return f"[fence:filter] No matching rule, denying (SOCKS5 is never forwarded upstream): {where}"
        return f"[fence:filter] No matching rule, denying: {where}"
    if reason == "noconfig":
        return f"[fence:filter] No config, denying: {where}"
    if reason == "invalid":
        return f"[fence:filter] Refused host that does not canonicalise: {where} ({event.detail})"
    return ""


def request_line(event) -> str:
    """The ``[fence:http]`` or ``[fence:socks]`` line for an event."""
    clock = time.strftime("%H:%M:%S", time.localtime(event.ts))
    icon = ICONS.get(event.outcome, "!")
    if event.proto == "socks":
        word = {"allowed": "ALLOWED", "blocked": "BLOCKED"}.get(event.outcome, "ERROR")
        line = f"[fence:socks] {clock} {icon} {event.method} {_hostport(event)} {word}"
        if event.outcome == "error" and event.detail:
            line += f" ({event.detail})"
        return line
    url = event.url or "-"
    if len(url) > 60:
        url = url[:57] + "..."
    host = event.host or "-"
    if ":" in host:
        host = f"[{host}]"
    return (f"[fence:http] {clock} {icon} {event.method or '-':<7} {event.status} {host} {url} "
            f"({round(event.duration_ms)}ms)")


def net_lines(event, debug: bool = False, monitor: bool = False) -> list[str]:
    """The stderr lines for one ``NetDecisionEvent`` at this verbosity (maybe none)."""
    if debug:
        first = filter_line(event)
        return [first, request_line(event)] if first else [request_line(event)]
    if monitor and event.outcome != "allowed":
        return [request_line(event)]
    return []


def listening_lines(http_port: int, socks_port: int) -> list[str]:
    """The debug lines a run prints once its session has listeners."""
    out = []
    if http_port:
        out.append(f"[fence:http] HTTP proxy listening on localhost:{http_port}")
    if socks_port:
        out.append(f"[fence:socks] SOCKS5 proxy listening on localhost:{socks_port}")
    return out
