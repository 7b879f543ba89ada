"""The console lines for events: what ``-d`` and ``-m`` print on stderr (docs/compatibility.md#messages).

Rendering lives in the core because two places print the same events: the
monitor service (a lone run, where it shares the process) and a supervised
``fence run`` (``executor/remote.py``), which shows its own events as they
come back over NATS.  Both call ``console_lines(event, debug, monitor)``:

* ``-d`` (debug): every event; a proxy decision gives a ``[fence:filter]``
  line then the ``[fence:http]`` / ``[fence:socks]`` line;
* ``-m`` (monitor): only blocked and failed requests and blocked execs,
  without filter lines.

Formats (Fence's, except that durations are always whole milliseconds)::

    [fence:filter] Allowed by rule: example.com:443 (matched *.example.com)
    [fence:filter] Denied by rule: evil.com:443 (matched evil.com)
    [fence:filter] No matching rule, denying: other.com:443
    [fence:http] 12:00:01 ✗ CONNECT 403 other.com https://other.com:443 (0ms)
    [fence:http] 12:00:02 ✓ GET     200 example.com http://example.com/index.html (12ms)
    [fence:socks] 12:00:03 ✗ CONNECT other.com:22 BLOCKED
    [fence:exec] 12:00:04 ✗ exec "git push origin main" (pid 4242) matches "git push"
    [fence] Sandbox 0123456789ab started (pid 4242)

Every line goes through ``fence.textsafe.printable`` as a whole: hosts, URLs,
paths, argv and error details in events come from the sandbox, and none of
them may forge a line or move the cursor (docs/compatibility.md#escaped-text).

Pure string work over ``fence.messages`` events.
"""

from __future__ import annotations

import time

from fence.goquote import go_quote
from fence.messages import Event, ExecBlockedEvent, LifecycleEvent, NetDecisionEvent, ProtectedPathEvent
from fence.textsafe import printable

ICONS = {"allowed": "✓", "blocked": "✗", "error": "!"}


def console_lines(event: Event, debug: bool, monitor: bool = False) -> list[str]:
    """Every stderr line for an event at this verbosity (-d: all, -m: blocks only)."""
    if isinstance(event, NetDecisionEvent):
        return net_lines(event, debug, monitor)
    if isinstance(event, ExecBlockedEvent):
        return [exec_line(event)] if (debug or monitor) else []
    if isinstance(event, ProtectedPathEvent):
        return []  # the run itself always warns on stderr (fence.executor.runner._quarantine)
    line = console_line(event, debug)
    return [line] if line else []


def console_line(event: Event, debug: bool) -> str:
    """The stderr line for a lifecycle event, or "" when the verbosity hides it."""
    return printable(_lifecycle_text(event, debug))


def _lifecycle_text(event: Event, debug: bool) -> str:
    if isinstance(event, LifecycleEvent) and debug:
        if event.phase == "started":
            return f"[fence] Sandbox {event.sandbox} started (pid {event.pid})"
        if event.phase == "exited":
            how = f"signal {event.signal}" if event.signal else f"code {event.exit_code}"
            return f"[fence] Sandbox {event.sandbox} exited with {how}"
        return f"[fence] Sandbox {event.sandbox} {event.phase}: {event.detail}"
    return ""


def exec_line(event: ExecBlockedEvent) -> str:
    """``[fence:exec] 12:00:01 ✗ exec "git push origin main" (pid 4242) matches "git push"``."""
    clock = time.strftime("%H:%M:%S", time.localtime(event.ts))
    shown = " ".join(event.argv) or event.path
    why = f"matches {go_quote(event.rule)}" if event.rule else f"unchecked: {event.reason}"
    return printable(f"[fence:exec] {clock} ✗ exec {go_quote(shown[:200])} (pid {event.pid}) {why}")


# --- proxy decisions ----------------------------------------------------------------------


def net_lines(event: NetDecisionEvent, debug: bool = False, monitor: bool = False) -> list[str]:
    """The stderr lines for one ``NetDecisionEvent`` at this verbosity (maybe none)."""
    if debug:
        first = filter_line(event)
        return [first, request_line(event)] if first else [request_line(event)]
    if monitor and event.outcome != "allowed":
        return [request_line(event)]
    return []


def _hostport(event: NetDecisionEvent) -> str:
    host = event.host or "-"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{event.port}"


def filter_line(event: NetDecisionEvent) -> str:
    """The ``[fence:filter]`` line for an event ("" when the request never reached the filter)."""
    return printable(_filter_text(event))


def _filter_text(event: NetDecisionEvent) -> str:
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


def request_line(event: NetDecisionEvent) -> str:
    """The ``[fence:http]`` or ``[fence:socks]`` line for an event."""
    clock = time.strftime("%H:%M:%S", time.localtime(event.ts))
    icon = ICONS.get(event.outcome, "!")
    if event.proto == "socks":
        word = {"allowed": "ALLOWED", "blocked": "BLOCKED"}.get(event.outcome, "ERROR")
        line = f"[fence:socks] {clock} {icon} {event.method} {_hostport(event)} {word}"
        if event.outcome == "error" and event.detail:
            line += f" ({event.detail})"
        return printable(line)
    url = event.url or "-"
    if len(url) > 60:
        url = url[:57] + "..."
    host = event.host or "-"
    if ":" in host:
        host = f"[{host}]"
    return printable(
        f"[fence:http] {clock} {icon} {event.method or '-':<7} {event.status} {host} {url} "
        f"({round(event.duration_ms)}ms)"
    )


def listening_lines(http_port: int, socks_port: int) -> list[str]:
    """Fence's debug lines for a session that has listeners (``HTTP proxy listening on ...``)."""
    out = []
    if http_port:
        out.append(f"[fence:http] HTTP proxy listening on localhost:{http_port}")
    if socks_port:
        out.append(f"[fence:socks] SOCKS5 proxy listening on localhost:{socks_port}")
    return out
