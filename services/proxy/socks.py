"""The SOCKS5 proxy (RFC 1928): no-auth, CONNECT to a domain, IPv4 or IPv6 address.

* Greeting: version 5 with the no-auth method (0x00) offered, else
  ``05 FF`` and close.
* Request: CONNECT only; BIND and UDP ASSOCIATE get reply 0x07 (command not
  supported), an unknown address type 0x08.
* The host (the FQDN as sent, with ``socks5h://``; else the address) is
  canonicalised and decided by the session's filter, the port ignored.
  Denied, grey (SOCKS is never forwarded to an upstream proxy) or a host that
  does not canonicalise -> 0x02 (connection not allowed by ruleset).
* Dial failure: refused 0x05, network unreachable 0x03, host unreachable /
  timeout / no DNS answer 0x04, anything else 0x01.
* Success: 0x00 with the upstream socket's local address, then the splice relay.
"""

from __future__ import annotations

import ipaddress
import socket
import time

from fence.domains import ALLOW, HostError, display_host
from fence.proxy.conn import Conn, DeadlineExceeded, PeerClosed
from fence.proxy.session import DialError

SUCCEEDED, GENERAL_FAILURE, NOT_ALLOWED, NET_UNREACHABLE, HOST_UNREACHABLE, REFUSED = 0, 1, 2, 3, 4, 5
COMMAND_NOT_SUPPORTED, ADDRESS_NOT_SUPPORTED = 7, 8
_DIAL_REPLY = {
    "refused": REFUSED,
    "net": NET_UNREACHABLE,
    "host": HOST_UNREACHABLE,
    "timeout": HOST_UNREACHABLE,
    "dns": HOST_UNREACHABLE,
    "denied": NOT_ALLOWED,
}
_COMMANDS = {1: "CONNECT", 2: "BIND", 3: "UDP"}


def reply(code: int, bound: tuple | None = None) -> bytes:
    if bound is None:
        return bytes((5, code, 0, 1, 0, 0, 0, 0, 0, 0))
    ip = ipaddress.ip_address(bound[0])
    atyp = 1 if ip.version == 4 else 4
    return bytes((5, code, 0, atyp)) + ip.packed + bound[1].to_bytes(2, "big")


async def handle_socks(session, sock) -> None:
    conn = Conn(session.loop, sock)
    handed = False
    try:
        handed = await _serve(session, conn)
    except (OSError, PeerClosed, DeadlineExceeded):
        pass
    finally:
        if not handed:
            conn.close()


async def _serve(session, conn: Conn) -> bool:
    started = time.monotonic()
    conn.deadline = session.loop.time() + session.head_timeout  # the whole handshake (slowloris)
    ver, nmethods = await conn.read_exact(2)
    if ver != 5:
        return False
    methods = await conn.read_exact(nmethods) if nmethods else b""
    if 0 not in methods:
        await conn.sendall(b"\x05\xff")
        return False
    await conn.sendall(b"\x05\x00")
    ver, cmd, _rsv, atyp = await conn.read_exact(4)
    if ver != 5:
        return False
    if atyp == 1:
        raw_host = socket.inet_ntop(socket.AF_INET, await conn.read_exact(4))
    elif atyp == 4:
        raw_host = socket.inet_ntop(socket.AF_INET6, await conn.read_exact(16))
    elif atyp == 3:
        (length,) = await conn.read_exact(1)
        name = await conn.read_exact(length)
        try:
            raw_host = name.decode("utf-8")
        except UnicodeDecodeError:
            raw_host = name.decode("latin-1")
            atyp = -1  # not a name: refused below
    else:
        await conn.sendall(reply(ADDRESS_NOT_SUPPORTED))
        return False
    port = int.from_bytes(await conn.read_exact(2), "big")
    conn.deadline = None
    method = _COMMANDS.get(cmd, f"CMD{cmd}")
    if cmd != 1:
        session.record(
            "socks",
            method,
            raw_host,
            port,
            "",
            None,
            COMMAND_NOT_SUPPORTED,
            "blocked",
            started,
            "only CONNECT is supported",
            reason="unsupported",
        )
        await conn.sendall(reply(COMMAND_NOT_SUPPORTED))
        return False
    try:
        if atyp == -1:
            raise HostError(f"{raw_host!r} is not UTF-8")
        host, decision = session.check(raw_host)
    except HostError as e:
        session.record(
            "socks", method, raw_host, port, "", None, NOT_ALLOWED, "blocked", started, str(e), reason="invalid"
        )
        await conn.sendall(reply(NOT_ALLOWED))
        return False
    url = f"{display_host(host)}:{port}"
    if decision.action != ALLOW:  # SOCKS traffic is never forwarded to the upstream proxy
        session.record(
            "socks",
            method,
            host,
            port,
            url,
            decision,
            NOT_ALLOWED,
            "blocked",
            started,
            "SOCKS5 is never forwarded to the upstream proxy" if decision.action == "proxy" else "",
        )
        await conn.sendall(reply(NOT_ALLOWED))
        return False
    try:
        upstream = await session.dial(host, port)
    except DialError as e:
        code = _DIAL_REPLY.get(e.kind, GENERAL_FAILURE)
        if e.kind == "denied":
            session.record(
                "socks",
                method,
                host,
                port,
                url,
                decision,
                code,
                "blocked",
                started,
                e.message,
                reason="resolved-denied",
                rule=e.rule,
            )
        else:
            session.record("socks", method, host, port, url, decision, code, "error", started, e.message)
        await conn.sendall(reply(code))
        return False
    session.record("socks", method, host, port, url, decision, SUCCEEDED, "allowed", started)
    try:
        bound = upstream.getsockname()
        await conn.sendall(reply(SUCCEEDED, (bound[0], bound[1])))
        if conn.buf:
            await Conn(session.loop, upstream).sendall(conn.buf)
            conn.buf = b""
    except OSError:
        upstream.close()
        return False
    session.relay(conn.sock, upstream)
    return True
