"""Handing a sandbox's proxy listeners to a supervisor's proxy process (the client side).

Under a supervisor the proxy service is another process; the listening
sockets ``fence run`` made inside the sandbox's netns (127.0.0.1:3128 and
:1080, ``bridge.py``) go to it over the unix socket its ``session.open``
reply named (``ProxySessionOpened.handoff``): one ``ProxyHandoff`` message
with the descriptors attached (SCM_RIGHTS), answered ``ProxyHandoffDone`` or
``ErrorReply`` (``fence.proxy.handoff`` is the other end; the protocol both
speak is ``fence.handoffwire``).

It happens while bwrap still waits on ``--block-fd``: a hand-off that fails
stops the run before the command starts (fail closed, with the reason).
The returned connection must stay open until the sandbox ends: the proxy
closes the session when it closes, so a ``fence run`` that dies leaves
nothing behind.

The peer is checked too (``SO_PEERCRED``): the sockets only go to a process
of our own user or root, whatever path a reply named.  Stdlib and msgspec
only; no event loop (the exchange is one small message each way on a local
socket, with a timeout).
"""

from __future__ import annotations

import os
import socket

import msgspec

from fence import handoffwire
from fence.messages import ErrorReply, ProxySessionOpened


class HandoffError(Exception):
    pass


def hand_over(
    opened: ProxySessionOpened, listeners: list[socket.socket], timeout: float = handoffwire.TIMEOUT
) -> socket.socket:
    """Give ``listeners`` (HTTP, SOCKS5) to the proxy process holding ``opened``'s session.

    Returns the open hand-off connection (close it when the sandbox has
    ended); our copies of the listeners are closed, the proxy owns them now.
    Raises HandoffError naming what went wrong.
    """
    path = opened.handoff
    if not path:
        raise HandoffError(
            "the supervisor's proxy service takes no sandbox sockets (its session.open reply names "
            "no hand-off socket); restart the supervisor with this fence (fence down; fence up)"
        )
    if not os.path.isabs(path):
        raise HandoffError(f"the proxy named a relative hand-off socket path {path!r}; refusing it")
    conn = socket.socket(socket.AF_UNIX, handoffwire.SOCK_TYPE | socket.SOCK_CLOEXEC)
    try:
        conn.settimeout(timeout)
        try:
            conn.connect(path)
        except OSError as e:
            raise HandoffError(f"cannot reach the supervisor's proxy at {path}: {e.strerror or e}") from None
        uid = handoffwire.peer_uid(conn)
        if uid not in handoffwire.trusted_uids():
            raise HandoffError(
                f"the process behind {path} runs as uid {uid}, not as this user or root; "
                "sandbox sockets are not handed to it"
            )
        message = handoffwire.handoff_message(opened.sandbox, opened.token, len(listeners))
        try:
            socket.send_fds(conn, [message], [s.fileno() for s in listeners])
            answer = conn.recv(handoffwire.MAX_MESSAGE)
        except OSError as e:  # includes the timeout
            raise HandoffError(f"hand-off to the proxy at {path} failed: {e.strerror or e}") from None
        try:
            reply = handoffwire.decode_answer(answer)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise HandoffError(
                f"the proxy at {path} answered the hand-off with {'nothing' if not answer else 'an unreadable message'}"
            ) from None
        if isinstance(reply, ErrorReply):
            raise HandoffError(f"the proxy refused the sandbox's sockets: {reply.message}")
        if reply.sandbox != opened.sandbox:
            raise HandoffError(f"the proxy answered for sandbox {reply.sandbox}, not {opened.sandbox}")
    except BaseException:
        conn.close()
        raise
    conn.settimeout(None)
    for sock in listeners:
        sock.close()
    return conn
