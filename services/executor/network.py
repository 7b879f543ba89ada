"""How a run reaches the network: none, filtered through the proxies, or relaxed.

Which of the three a policy asks for is ``fence.netintent.intent`` (shared
with the proxy service); this module turns it into the run's shape.

* ``none``: nothing allowed; ``--unshare-net`` and the proxies as in
  ``filtered``, whose filter denies every request: as in the Go tool Fence,
  which starts its proxies for every run, a blocked request gets the proxy's
  ``403`` and ``-m`` shows it, instead of failing in the resolver unseen.
* ``filtered``: ``--unshare-net``; listeners at 127.0.0.1:3128 (HTTP) and
  :1080 (SOCKS5) are created inside the sandbox's netns (``bridge.py``) and
  served by this run's proxy session; the proxy env points at them.
* ``relaxed``: ``"*"`` in allowedDomains; no network namespace at all (direct
  access for every program), the proxies on host loopback random ports for
  proxy-aware clients, where deniedDomains still applies.  Weaker, on purpose.

Where no network namespace can be made (``netns.py``), ``filtered`` runs
*shared* like ``relaxed`` (proxy-only, with a warning), and ``none`` is
refused unless ``FENCE_ALLOW_SHARED_NETWORK=1`` (``shared_network_refusal``).
The functions below take ``shared``: the sandbox is on the host's network.

Local ports (``portfwd.py``) need the network namespace, not the proxies, so
they work in ``none`` and ``filtered`` mode (allowedDomains may be empty) and
under a supervisor: ``allowLocalOutboundPorts`` adds listeners inside the
netns after the proxy ones, ``-p`` a host listener per port.  A shared
sandbox is on the host's loopback already, so neither is needed.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys

from fence.messages import ProxySessionOpened
from fence.netintent import NONE, RELAXED, intent
from fence.policy import NetworkConfig
from fence.textsafe import printable

HTTP_PORT_INSIDE = 3128
SOCKS_PORT_INSIDE = 1080
NO_PROXY = "localhost,127.0.0.1,::1"


def mode(network: NetworkConfig) -> str:
    """The run's network intent, as every service reads it (``fence.netintent``): none, filtered or relaxed."""
    return intent(network)


def listeners(net_mode: str, shared: bool = False) -> list[tuple[str, int]]:
    """The proxy listeners inside the sandbox (served by the proxy service): every run with a netns."""
    if net_mode != RELAXED and not shared:
        return [("127.0.0.1", HTTP_PORT_INSIDE), ("127.0.0.1", SOCKS_PORT_INSIDE)]
    return []


def local_outbound(network: NetworkConfig) -> bool:
    """``allowLocalOutbound``, or ``allowLocalBinding`` when it is unset (null)."""
    if network.allow_local_outbound is None:
        return network.allow_local_binding
    return network.allow_local_outbound


def outbound_ports(shared: bool, network: NetworkConfig) -> list[int]:
    """Host loopback ports relayed from the sandbox's own loopback (none when the network is shared)."""
    if shared or not local_outbound(network):
        return []
    return list(dict.fromkeys(network.allow_local_outbound_ports))


def outbound_listeners(ports: list[int]) -> list[tuple[str, int]]:
    """127.0.0.1:P and [::1]:P inside the sandbox for each port, in that order."""
    return [(host, port) for port in ports for host in ("127.0.0.1", "::1")]


OUTBOUND_WITHOUT_PORTS = (
    "[fence:linux] Warning: network.allowLocalOutbound is set but "
    "network.allowLocalOutboundPorts is empty: on Linux the sandbox has its own "
    "loopback, so no host port is reachable; list the host ports to reach in "
    "network.allowLocalOutboundPorts"
)


RELAXED_WARNING = (
    '[fence:linux] Warning: network.allowedDomains has "*" (relaxed mode): the sandbox shares the host\'s '
    "network, so direct connections are not filtered; deniedDomains binds only programs that use "
    "HTTP_PROXY/ALL_PROXY"
)


def relaxed_warning(net_mode: str) -> str:
    """Said on every relaxed run (never only with -d): it is the weakest network mode there is."""
    return RELAXED_WARNING if net_mode == RELAXED else ""


def outbound_warning(shared: bool, network: NetworkConfig) -> str:
    """Our wording of Fence's warning when local outbound is allowed without ports (it reaches nothing)."""
    if not shared and local_outbound(network) and not network.allow_local_outbound_ports:
        return OUTBOUND_WITHOUT_PORTS
    return ""


def no_netns_warning(detail: str, tcp_blocked: bool = False) -> str:
    """Printed on every run that falls back to the host's network (never only with -d: it is weaker).

    ``tcp_blocked``: Landlock (ABI 4+) limits TCP connects to the proxies, so
    only UDP (and other non-TCP traffic) escapes the filter.
    """
    escape = (
        "direct TCP connections are blocked by Landlock, but UDP and other non-TCP traffic is NOT"
        if tcp_blocked
        else "direct connections are NOT blocked"
    )
    return (
        "[fence:linux] Warning: Skipping --unshare-net (network namespace unavailable in this environment"
        f"{': ' + detail if detail else ''}): only programs that use HTTP_PROXY/ALL_PROXY are filtered; "
        f"{escape}"
    )


def shared_network_refusal(net_mode: str, detail: str, env: dict[str, str]) -> str:
    """Why a run is refused when no netns exists: a policy allowing no network would get the host's.

    The Go tool Fence runs it anyway; we fail closed unless the user opts in
    (``FENCE_ALLOW_SHARED_NETWORK=1``), because nothing but the netns keeps
    such a sandbox off the network.  "" when the run may go on.
    """
    from fence.executor.netns import ALLOW_SHARED_ENV  # lazy: prepare has loaded netns by now; refused runs do not
    from fence.executor.refusal import missing_layer  # lazy: only a refusal needs the wording (~0.1 ms)

    if net_mode != NONE or env.get(ALLOW_SHARED_ENV) == "1":
        return ""
    return missing_layer(
        "network namespace",
        f"bwrap --unshare-net: {detail or 'failed'}",
        "the policy allows no network, and without a namespace of its own the sandbox would have the host's network",
        f"set {ALLOW_SHARED_ENV}=1 in fence's environment",
        "the host's network; Landlock then blocks direct TCP connections where the kernel has ABI 4, but never UDP",
        instead="run where network namespaces can be created",
    )


def proxy_env(net_mode: str, opened: ProxySessionOpened, shared: bool = False) -> dict[str, str]:
    """HTTP_PROXY & co. for the command, pointing at its proxies (which deny everything in ``none`` mode).

    Empty only when the session has no proxy to point at (a shared network
    whose session opened no host listener).
    """
    if net_mode != RELAXED and not shared:
        http, socks = HTTP_PORT_INSIDE, SOCKS_PORT_INSIDE
    elif shared and opened.http_port:
        http, socks = opened.http_port, opened.socks_port
    else:
        return {}
    env = {}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[name] = f"http://127.0.0.1:{http}"
    if socks:
        env["ALL_PROXY"] = env["all_proxy"] = f"socks5h://127.0.0.1:{socks}"
    env["NO_PROXY"] = env["no_proxy"] = NO_PROXY
    return env


def attach_on_first_connection(attach, sandbox: str, listeners: list):
    """Hand ``listeners`` to the proxy only when the sandbox first connects; return a ``finish`` callable.

    Starting the proxy (asyncio + uvloop + proxy code, ~60 ms) costs nothing
    for commands that never use the network: until a connection is pending it
    waits in the listen backlog and a watcher thread sleeps in ``select``.
    Every run with its own network has these listeners (a no-network one's
    proxy denies all), so the watcher is a bare ``_thread`` (``threading``
    is imported only by the proxy it starts, and then takes the watcher for
    the main thread: nothing in fence asks it) and ``listeners`` are the
    bridge's ``_socket`` objects, made ``socket.socket`` (``bridge.as_socket``)
    only when handed over.  ``finish()`` (after the sandbox ended) stops the
    watcher and closes the listeners unless the proxy session already owns them.
    """
    import select  # lazy: only runs with proxies watch for a first connection (select, ~0.2 ms)

    wake_r, wake_w = os.pipe()
    lock = _thread.allocate_lock()
    state = {"attached": False, "finished": False}

    def watch() -> None:
        try:
            ready, _, _ = select.select([*listeners, wake_r], [], [])
        except (OSError, ValueError):
            return
        finally:
            os.close(wake_r)
        with lock:
            if state["finished"] or wake_r in ready:
                return
            state["attached"] = True
        try:
            from fence.executor.bridge import as_socket  # lazy: the bridge (and _socket) only for runs with listeners

            attach(sandbox, *[as_socket(sock) for sock in listeners])
        except Exception as e:  # the sandbox then sees refused connections; say why
            print(printable(f"[fence] Warning: proxy for sandbox {sandbox} failed to start: {e}"), file=sys.stderr)

    _start_without_signals(watch)

    def finish() -> None:
        with lock:
            state["finished"] = True
            attached = state["attached"]
        try:
            os.write(wake_w, b"x")
        except OSError:  # the watcher already left (and closed its end)
            pass
        if not attached:
            for sock in listeners:
                sock.close()
        os.close(wake_w)  # the watcher closes the read end as it leaves select

    return finish


def _start_without_signals(target) -> None:
    """Start ``target`` on a bare ``_thread`` that never receives signals (nor do threads it starts).

    fence waits for the sandbox in the main thread, blocked in ``waitpid``;
    a signal the kernel delivered to another thread would not interrupt it,
    so the Python handler that forwards it to the command would never run
    (a Ctrl-C then hung the run).  The mask is set before the thread exists,
    so there is no window, and put back at once in this thread.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        _thread.start_new_thread(target, ())  # daemonic: never joined, gone with the process
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
