"""``NatsBus``: the bus contract of ``fence.bus`` over a nats-server (nats-py).

Why a module of its own: importing nats-py costs ~100 ms (it pulls in its
JetStream, KV and micro packages), and a lone ``fence run`` over the
in-process bus must never pay it.  ``fence.bus`` therefore never imports this
module; only processes that really talk to a server (``fence up``, its
services, a ``fence run`` that found a supervisor) do.  Even here nats is
imported inside ``NatsBus.connect``, so importing ``fence.natsbus`` is cheap.

Semantics are those of ``InProcessBus`` (``tests/test_bus_contract.py`` runs
one suite against both):

* ``request_raw`` raises ``NoResponders`` when nobody listens (the server's
  503 status reply), ``RequestTimeout`` after ``timeout``, ``PayloadTooLarge``
  over the server's ``max_payload`` (read from its INFO at connect, checked
  before sending: an oversized PUB would make the server drop the
  connection), ``BadSubject`` for invalid subjects, ``BusError("bus is
  closed")`` after ``close``.  Replies come to one wildcard subscription under
  ``inbox_prefix`` (``<prefix>.<nuid>.*``), so a per-user prefix such as
  ``_INBOX.client`` works with permissions that allow only that inbox.
* ``serve_raw`` runs each request in its own task, at most ``MAX_INFLIGHT``
  per subscription: beyond that the subscription stops taking messages
  (backpressure) and they wait in its pending queue, never dropped while it
  has room.  A reply larger than ``max_payload`` becomes a ``too_large``
  ``ErrorReply``.  A raw responder that raises is logged and sends no reply.
* ``subscribe_raw`` delivers in order, one message at a time per
  subscription (nats-py's per-subscription task).  A subscription holds at
  most ``PENDING_LIMIT`` messages / ``PENDING_BYTES`` bytes waiting; beyond
  that new messages are dropped and counted in ``sub.dropped``, as NATS does
  (and as the in-process bus does).  A handler that raises is logged.
* ``close`` drains: subscriptions stop, in-flight request handlers get up to
  ``drain_grace`` seconds to answer (their replies are flushed), then the
  requests this bus is still waiting for fail with ``BusError`` and the
  connection closes.
* nats-py exceptions never reach callers: they are mapped to ``fence.bus``
  errors (``BusError`` when nothing more precise applies), connection
  failures in ``connect`` included.

Permissions (the supervisor gives each NATS user its own subjects and inbox).
nats-py reports a refused publish or subscribe only through the error
callback (``nats: permissions violation for publish to "x"``), never from the
call itself.  What is mapped to ``PermissionDenied``:

* a request whose publish is refused: the error callback names the subject
  while the request waits, so it fails with ``PermissionDenied`` as soon as
  the server's ``-ERR`` arrives (one round trip), not after the timeout.  If
  the ``-ERR`` arrived only after the timeout, it is a ``RequestTimeout``.
* ``serve_raw``/``subscribe_raw`` on a subject the user may not subscribe to:
  after SUB the call does one PING/PONG round trip; the server's ``-ERR``
  precedes the PONG, so a refusal is known before the call returns.
* ``connect`` with an ``inbox_prefix`` the user may not subscribe to (every
  request would otherwise time out).

What is not mapped, and why:

* ``publish_raw`` to a refused subject returns normally: a publish is
  fire-and-forget and the ``-ERR`` arrives after it returned (knowing would
  cost a round trip per event).  It is counted in ``permission_errors`` and
  printed once per subject.
* a responder whose reply is refused (its user lacks ``allow_responses``):
  the requester sees ``RequestTimeout``; the responder's bus logs it.
* nats-py lowercases server errors, so subjects are matched
  case-insensitively: concurrent requests on ``A.b`` and ``a.b`` would both
  fail if one is refused.
* a subscription refused when nats-py replays it after a reconnect (the
  server's permissions changed meanwhile) is only logged.

Connecting fails fast (one attempt, ``BusError`` naming the cause); once
connected, nats-py reconnects up to ``max_reconnect_attempts`` times.

The event loop is the caller's: processes that connect run it on uvloop
(``fence.natsbus.run`` or ``uvloop.run``); nothing here installs a policy.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import uvloop

from fence.bus import (
    DRAIN_GRACE,
    PENDING_LIMIT,
    BadSubject,
    BusError,
    NoResponders,
    PayloadTooLarge,
    PermissionDenied,
    RawHandler,
    RawResponder,
    RequestTimeout,
    TypedBus,
    check_subject,
    fit_reply,
)
from fence.textsafe import printable

if TYPE_CHECKING:
    from fence.runtime import Credentials

T = TypeVar("T")

MAX_INFLIGHT = 256
"""Request handlers one ``serve`` subscription runs at once; more wait in its pending queue."""

PENDING_BYTES = 64 * 1024 * 1024
"""Bytes a subscription may have waiting before new messages are dropped (with ``PENDING_LIMIT``)."""

RECONNECT_WAIT = 2.0
CONNECT_TIMEOUT = 2.0
FLUSH_TIMEOUT = 5.0

_DENIED = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"')


def run(main: Awaitable[T]) -> T:
    """Run ``main`` on a uvloop event loop (what every NATS-connected process uses)."""
    return uvloop.run(main)  # type: ignore[arg-type]


def _log(text: str) -> None:
    print(f"[fence:bus] {printable(text)}", file=sys.stderr, flush=True)


def _bus_error(e: BaseException, subject: str = "") -> BusError:
    """The ``fence.bus`` error for a nats-py (or socket) exception."""
    if isinstance(e, BusError):
        return e
    from nats import errors as ne  # lazy: nats-py is loaded by connect(); importing fence.natsbus stays cheap (~60 ms)

    where = f"{subject}: " if subject else ""
    if isinstance(e, ne.MaxPayloadError):
        return PayloadTooLarge(f"{where}message exceeds the server's max_payload")
    if isinstance(e, ne.BadSubjectError):
        return BadSubject(f"invalid subject {subject!r}")
    if isinstance(e, (ne.ConnectionClosedError, ne.ConnectionDrainingError)):
        return BusError("bus is closed")
    if isinstance(e, ne.NoRespondersError):
        return NoResponders(f"no responders on {subject}")
    if isinstance(e, ne.OutboundBufferLimitError):
        return BusError(f"{where}bus is disconnected and its outbound buffer is full")
    if isinstance(e, ne.ConnectionReconnectingError):
        return BusError(f"{where}bus is reconnecting")
    if isinstance(e, ne.AuthorizationError) or "authorization violation" in str(e).lower():
        return BusError(f"{where}authorization violation (wrong user or password)")
    if isinstance(e, (ne.TimeoutError, asyncio.TimeoutError)):
        return RequestTimeout(f"{where}timed out")
    text = str(e) or type(e).__name__
    return BusError(f"{where}{text}")


class NatsSubscription:
    """A subscription on a ``NatsBus``; ``dropped`` counts messages lost to a full pending queue."""

    def __init__(self, bus: NatsBus, sub: Any, subject: str, queue: str):
        self.bus, self._sub, self.subject, self.queue = bus, sub, subject, queue
        self.dropped = 0
        self.active = True

    async def unsubscribe(self, _confirm: bool = True) -> None:
        """Stop delivery; on return the server has forgotten the subscription (one round trip)."""
        if not self.active:
            return
        self.active = False
        self.bus._subs.pop(self._sub, None)
        try:
            await self._sub.unsubscribe()
            if _confirm and self.bus._nc.is_connected:
                await self.bus._roundtrip()
        except Exception:  # closed, draining or cut off: the server forgets it anyway
            pass


class NatsBus(TypedBus):
    """The bus over NATS; same contract as ``InProcessBus``.  Build it with ``await NatsBus.connect(url)``."""

    def __init__(self, nc: Any, url: str = "", name: str = "fence"):
        self._nc = nc
        self.url, self.name = url, name
        self.max_payload = 0
        self.closed = False
        self.drain_grace = DRAIN_GRACE
        self.permission_errors = 0
        self._closing = False
        self._connecting = True
        self._connect_error: BaseException | None = None
        self._subs: dict[Any, NatsSubscription] = {}
        self._tasks: set[asyncio.Task] = set()
        self._waiting: dict[str, tuple[asyncio.Future, str, str]] = {}  # token -> (future, subject lowered, subject)
        self._sub_checks: list[tuple[str, list[str]]] = []
        self._reported: set[tuple[str, str]] = set()
        self._mux = ""
        self._mux_sub: NatsSubscription | None = None
        self._next = 0

    @classmethod
    async def connect_as(cls, url: str, creds: Credentials, name: str) -> NatsBus:
        """``connect`` as the user ``creds`` name (a ``fence.runtime.Credentials``), with its reply inbox."""
        return await cls.connect(
            url, user=creds.user, password=creds.password, inbox_prefix=creds.inbox_prefix, name=name
        )

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        user: str = "",
        password: str = "",
        inbox_prefix: str = "_INBOX",
        name: str = "fence",
        max_reconnect_attempts: int = 60,
    ) -> NatsBus:
        """Connect (one attempt, failing fast with ``BusError``) and set up the reply inbox."""
        check_subject(inbox_prefix)
        # lazy: nats-py (~60 ms) only once connecting: importing fence.natsbus stays cheap
        from nats.aio.client import Client

        nc = Client()
        bus = cls(nc, url, name)
        try:
            await nc.connect(
                url,
                user=user or None,
                password=password or None,
                name=name,
                inbox_prefix=inbox_prefix,
                error_cb=bus._on_error,
                disconnected_cb=bus._on_disconnected,
                reconnected_cb=bus._on_reconnected,
                # nats-py annotates connect_timeout as int, but only passes it to wait_for
                closed_cb=bus._on_closed,
                connect_timeout=CONNECT_TIMEOUT,  # type: ignore[arg-type]
                # fail fast on the first connect; reconnection is enabled below
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
            )
        except Exception as e:
            cause = bus._connect_error if type(e).__name__ == "NoServersError" and bus._connect_error else e
            await bus._abort()
            detail = str(_bus_error(cause)) if not isinstance(cause, OSError) else f"{type(cause).__name__}: {cause}"
            raise BusError(f"cannot connect to {url}" + (f" as {user}" if user else "") + f": {detail}") from None
        nc.options.update(
            allow_reconnect=True, max_reconnect_attempts=max_reconnect_attempts, reconnect_time_wait=RECONNECT_WAIT
        )
        bus._connecting = False
        bus.max_payload = nc.max_payload
        bus._mux = nc.new_inbox() + "."
        try:
            bus._mux_sub = await bus._subscribe(bus._mux + "*", "", bus._on_reply)
        except BusError as e:
            await bus._abort()
            if isinstance(e, PermissionDenied):
                raise PermissionDenied(
                    f"{user or 'this user'} may not subscribe to its reply inbox {inbox_prefix}.>: {e}"
                ) from None
            raise
        bus._subs.pop(bus._mux_sub._sub, None)  # close() unsubscribes the reply inbox last
        return bus

    async def _abort(self) -> None:
        self._closing = self.closed = True
        try:
            await self._nc.close()
        except Exception:
            pass

    # --- the four primitives ---------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise BusError("bus is closed")

    async def publish_raw(self, subject: str, data: bytes) -> None:
        self._check_open()
        check_subject(subject)
        if len(data) > self.max_payload:
            raise PayloadTooLarge(f"message is {len(data)} bytes; the limit is {self.max_payload}")
        try:
            await self._nc.publish(subject, data)
        except Exception as e:
            raise _bus_error(e, subject) from None

    async def request_raw(self, subject: str, data: bytes, timeout: float = 2.0) -> bytes:
        self._check_open()
        check_subject(subject)
        if len(data) > self.max_payload:
            raise PayloadTooLarge(f"message is {len(data)} bytes; the limit is {self.max_payload}")
        self._next += 1
        token = str(self._next)
        future = asyncio.get_running_loop().create_future()
        self._waiting[token] = (future, subject.lower(), subject)
        try:
            await self._nc.publish(subject, data, reply=self._mux + token)
            return await asyncio.wait_for(future, timeout)
        except BusError:
            raise
        except TimeoutError:
            raise RequestTimeout(f"request on {subject} timed out after {timeout}s") from None
        except Exception as e:
            raise _bus_error(e, subject) from None
        finally:
            self._waiting.pop(token, None)

    async def serve_raw(self, subject: str, respond: RawResponder, *, queue: str = "") -> NatsSubscription:
        self._check_open()
        if self._closing:
            raise BusError("bus is closed")
        check_subject(subject, wildcards=True)
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(MAX_INFLIGHT)
        nc, tasks = self._nc, self._tasks

        async def answer(msg: Any) -> None:
            try:
                out = fit_reply(subject, await respond(msg.data), self.max_payload)
                await nc.publish(msg.reply, out)
            except Exception as e:
                if not self.closed:
                    _log(f"responder on {subject} failed: {type(e).__name__}: {e}")
            finally:
                slots.release()

        async def on_msg(msg: Any) -> None:
            if not msg.reply:  # a plain publish on a request subject: nothing to answer
                return
            await slots.acquire()  # backpressure: later requests wait in the pending queue
            task = loop.create_task(answer(msg))  # concurrent: a slow request stalls no other
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        return await self._subscribe(subject, queue, on_msg)

    async def subscribe_raw(self, subject: str, handler: RawHandler, *, queue: str = "") -> NatsSubscription:
        self._check_open()
        if self._closing:
            raise BusError("bus is closed")
        check_subject(subject, wildcards=True)

        async def on_msg(msg: Any) -> None:
            try:
                await handler(msg.data)
            except Exception as e:  # a subscriber bug must not stop later deliveries
                _log(f"subscriber on {subject} failed: {type(e).__name__}: {e}")

        return await self._subscribe(subject, queue, on_msg)

    async def _subscribe(self, subject: str, queue: str, cb: Callable[[Any], Awaitable[None]]) -> NatsSubscription:
        """SUB, then one round trip so a permissions refusal is known before returning."""
        refused: list[str] = []
        check = (subject.lower(), refused)
        self._sub_checks.append(check)
        sub = wrapper = None
        try:
            sub = await self._nc.subscribe(
                subject, queue=queue, cb=cb, pending_msgs_limit=PENDING_LIMIT, pending_bytes_limit=PENDING_BYTES
            )
            wrapper = NatsSubscription(self, sub, subject, queue)
            self._subs[sub] = wrapper
            await self._roundtrip()
        except Exception as e:
            if wrapper is not None:
                await wrapper.unsubscribe(_confirm=False)
            raise _bus_error(e, subject) from None
        finally:
            self._sub_checks.remove(check)
        if refused:
            await wrapper.unsubscribe(_confirm=False)
            raise PermissionDenied(
                f"subscribe to {subject}" + (f" (queue {queue})" if queue else "") + " refused by the server"
            )
        return wrapper

    async def _roundtrip(self) -> None:
        """One PING/PONG after everything queued so far has reached the server.

        nats-py's ``flush()`` writes its PING straight to the socket, ahead of
        commands still queued for its flusher task, so the PONG can come back
        before the server has seen a SUB sent just before (nats-py 2.16: about
        one subscription in 30 was not yet known to the server when ``flush``
        returned, and a request from another connection got "no responders").
        So the queue is written out first.
        """
        flush_pending = getattr(self._nc, "_flush_pending", None)
        if flush_pending is not None:
            await flush_pending(force_flush=True)
        await self._nc.flush(FLUSH_TIMEOUT)

    # --- nats-py callbacks -----------------------------------------------------------------

    async def _on_reply(self, msg: Any) -> None:
        entry = self._waiting.get(msg.subject[len(self._mux) :])
        if entry is None or entry[0].done():
            return  # late reply to a request that timed out
        headers = msg.headers
        if headers and headers.get("Status") == "503":
            entry[0].set_exception(NoResponders(f"no responders on {entry[2]}"))
        else:
            entry[0].set_result(msg.data)

    async def _on_error(self, e: Exception) -> None:
        # lazy: nats-py is loaded by connect(); importing fence.natsbus stays cheap (~60 ms)
        from nats import errors as ne

        if isinstance(e, ne.SlowConsumerError):
            wrapper = self._subs.get(e.sub)
            if wrapper is not None:
                wrapper.dropped += 1
                if wrapper.dropped == 1:
                    _log(f"subscriber on {wrapper.subject} is too slow: dropping messages")
            return
        m = _DENIED.search(str(e))
        if m:
            self._refused(m.group(1), m.group(2))
            return
        if self._connecting:
            self._connect_error = e
            return
        if self._closing or self._nc.is_reconnecting:
            return  # each failed reconnect attempt would repeat the disconnect notice
        _log(f"{self.name}: {type(e).__name__}: {e}")

    def _refused(self, kind: str, subject: str) -> None:
        """The server refused a publish or a subscription on ``subject`` (lowercased by nats-py)."""
        self.permission_errors += 1
        hit = False
        if kind == "publish":
            for future, lowered, original in list(self._waiting.values()):
                if lowered == subject and not future.done():
                    future.set_exception(PermissionDenied(f"publish to {original} refused by the server"))
                    hit = True
        else:
            for lowered, refused in self._sub_checks:
                if lowered == subject:
                    refused.append(subject)
                    hit = True
        if not hit and (kind, subject) not in self._reported and len(self._reported) < 1000:
            self._reported.add((kind, subject))
            _log(f"{self.name}: permission denied: {kind} to {subject!r}")

    async def _on_disconnected(self) -> None:
        if not self._closing and not self._connecting:
            _log(f"{self.name}: disconnected from {self.url}; reconnecting")

    async def _on_reconnected(self) -> None:
        self.max_payload = self._nc.max_payload
        _log(f"{self.name}: reconnected to {self.url}")

    async def _on_closed(self) -> None:
        if self._closing or self._connecting:
            return
        _log(f"{self.name}: connection to {self.url} lost for good")
        self.closed = True
        self._fail_waiting()

    def _fail_waiting(self) -> None:
        for future, _, _ in list(self._waiting.values()):
            if not future.done():
                future.set_exception(BusError("bus is closed"))

    # --- shutdown ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Drain: stop taking messages, let in-flight handlers answer (``drain_grace``), then close."""
        if self._closing:
            return
        self._closing = True
        try:
            for wrapper in list(self._subs.values()):
                await wrapper.unsubscribe(_confirm=False)
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=self.drain_grace)
        finally:
            for task in list(self._tasks):
                task.cancel()
            self.closed = True
            self._fail_waiting()
            try:
                await self._nc.close()  # flushes what the handlers published
            except Exception:
                pass
