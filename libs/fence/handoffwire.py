"""The sandbox-socket hand-off as both ends speak it: ``fence run`` → a supervisor's proxy process.

Under a supervisor the listening sockets a run made inside its sandbox's
netns go to the proxy process over a unix socket (``SOCK_SEQPACKET``, in
the runtime dir): one ``ProxyHandoff{sandbox, token, listeners}`` message
with the descriptors attached (SCM_RIGHTS), answered ``ProxyHandoffDone`` or
``ErrorReply``.  The client is ``fence.executor.handoff``, the server
``fence.proxy.handoff``; what they must agree on lives here, so neither
imports the other's service: the socket type, the listener names and
limits, the messages' encoding, and who may be at the other end (each side
checks its peer's ``SO_PEERCRED`` uid: our own or root).

Stdlib and msgspec only; no event loop.
"""

from __future__ import annotations

import os
import socket
import struct

import msgspec

from fence.messages import ErrorReply, ProxyHandoff, ProxyHandoffDone

SOCK_TYPE = socket.SOCK_SEQPACKET
"""One message per send: a hand-off and its descriptors arrive whole, or not at all."""
LISTENER_NAMES = ("http", "socks")
"""What each passed descriptor is, in this order."""
MAX_FDS = len(LISTENER_NAMES)
"""More descriptors in one message is a refused hand-off."""
MAX_MESSAGE = 4096
"""The largest message either side reads."""
TIMEOUT = 5.0
"""Seconds a hand-off may take, on either side."""

_PEERCRED = struct.Struct("3i")
_handoff = msgspec.json.Decoder(ProxyHandoff)
_answer = msgspec.json.Decoder(ProxyHandoffDone | ErrorReply)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a unix socket (as it was at connect time)."""
    return _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))[1]


def trusted_uids() -> tuple[int, int]:
    """The peers a hand-off may come from or go to: this process's own user, and root."""
    return os.geteuid(), 0


def handoff_message(sandbox: str, token: str, count: int) -> bytes:
    """The encoded ``ProxyHandoff`` for ``count`` listeners (HTTP first, then SOCKS5)."""
    return msgspec.json.encode(ProxyHandoff(sandbox=sandbox, token=token, listeners=list(LISTENER_NAMES[:count])))


def decode_handoff(data: bytes) -> ProxyHandoff:
    """A received hand-off; raises ``msgspec.DecodeError`` / ``ValidationError``."""
    return _handoff.decode(data)


def encode_answer(answer: ProxyHandoffDone | ErrorReply) -> bytes:
    return msgspec.json.encode(answer)


def decode_answer(data: bytes) -> ProxyHandoffDone | ErrorReply:
    """The proxy's answer; raises ``msgspec.DecodeError`` / ``ValidationError``."""
    return _answer.decode(data)
