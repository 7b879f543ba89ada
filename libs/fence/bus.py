"""The bus: typed request/reply and publish/subscribe between fence's services.

Two transports share one contract (``tests/test_bus_contract.py`` runs the same
suite against both):

* ``InProcessBus`` (here): services in one process, as in a lone ``fence run``.
  It still encodes every message to bytes and back, so size limits, decoding
  errors and typed error replies behave exactly as over NATS.
* ``NatsBus`` (``fence.natsbus``): the same calls over a nats-server.  It lives
  in its own module because importing nats-py costs ~100 ms, which a lone run
  must never pay.

Semantics (both transports):

* ``request`` sends one message and waits for the first reply, raising
  ``NoResponders`` when nobody listens, ``RequestTimeout`` after ``timeout``
  seconds and ``RemoteError`` when the responder answered with an
  ``ErrorReply``.
* ``serve`` answers requests on a subject; each request runs in its own task,
  so one slow request never stalls the others.  Undecodable, wrongly typed,
  unknown-version or oversized requests get an ``ErrorReply`` and the service
  carries on; a handler that raises gets ``internal``; a reply over
  ``max_payload`` is replaced by ``too_large``.
* ``subscribe`` receives published messages in order, one at a time per
  subscription; a message that does not decode is dropped and counted, never
  raised into the publisher.
* ``close`` drains: delivery stops, in-flight request handlers get
  ``DRAIN_GRACE`` seconds to answer, requests still waiting fail with
  ``BusError("bus is closed")``, as does every later call.
* Subjects use NATS syntax: ``.``-separated tokens, ``*`` matches one token,
  ``>`` matches one or more trailing tokens.  Subscribers sharing a non-empty
  ``queue`` name split the messages between them (one delivery per group).

A lone run drives the in-process bus without an event loop (``run_sync``):
nothing in it awaits real I/O, and ``import asyncio`` alone costs ~47 ms.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any, Protocol, TypeVar

import msgspec

from fence.messages import PROTOCOL_VERSION, ErrorReply, Message
from fence.textsafe import printable

T = TypeVar("T")

MAX_PAYLOAD = 1024 * 1024
"""Largest message either transport carries (nats-server is configured to match)."""

MAX_REQUEST = 256 * 1024
"""Default largest request a handler accepts; larger ones get ``too_large``."""

PENDING_LIMIT = 65536
"""Messages a subscription may have waiting before new ones are dropped (as NATS)."""

DRAIN_GRACE = 2.0
"""Seconds ``close`` lets in-flight request handlers finish and answer."""


# --- errors -------------------------------------------------------------------


class BusError(Exception):
    """Base of every bus failure."""


class RequestTimeout(BusError):
    pass


class NoResponders(BusError):
    pass


class PayloadTooLarge(BusError):
    pass


class BadSubject(BusError):
    pass


class PermissionDenied(BusError):
    """The server refused a publish or subscribe (NATS user permissions); never raised in-process."""


class ServiceError(Exception):
    """Raised by a handler to answer with a typed ``ErrorReply`` (code + message, verbatim)."""

    code = "failed"

    def __init__(self, message: str, code: str = "", field: str = ""):
        super().__init__(message)
        self.message = message
        self.field = field
        """The request field that was wrong ("" when none is): sent in ``ErrorReply.field``."""
        if code:
            self.code = code


class RemoteError(BusError):
    """The responder answered with an ``ErrorReply``."""

    def __init__(self, code: str, message: str, subject: str = "", field: str = ""):
        super().__init__(f"{subject}: {code}: {message}" if subject else f"{code}: {message}")
        self.code = code
        self.message = message
        self.subject = subject
        self.field = field


# --- the interface --------------------------------------------------------------

Handler = Callable[[Any], Awaitable[Message]]
EventHandler = Callable[[Any], Awaitable[None]]
RawResponder = Callable[[bytes], Awaitable[bytes]]
RawHandler = Callable[[bytes], Awaitable[None]]
Observer = Callable[[str, str, float], None]
"""Called after each request with (subject, outcome, seconds); outcome is "ok" or an error code."""


class Subscription(Protocol):
    async def unsubscribe(self) -> None: ...


class Bus(Protocol):
    """What services and clients use.  Transports implement the ``*_raw`` four."""

    max_payload: int

    async def request(self, subject: str, msg: Message, reply_type: type[T], timeout: float = 2.0) -> T: ...

    async def publish(self, subject: str, msg: Message) -> None: ...

    async def serve(
        self,
        subject: str,
        request_type: Any,
        handler: Handler,
        *,
        queue: str = "",
        max_request: int = MAX_REQUEST,
        observe: Observer | None = None,
    ) -> Subscription: ...

    async def subscribe(
        self, subject: str, msg_type: Any, handler: EventHandler, *, queue: str = ""
    ) -> Subscription: ...

    async def publish_raw(self, subject: str, data: bytes) -> None: ...

    async def request_raw(self, subject: str, data: bytes, timeout: float = 2.0) -> bytes: ...

    async def serve_raw(self, subject: str, respond: RawResponder, *, queue: str = "") -> Subscription: ...

    async def subscribe_raw(self, subject: str, handler: RawHandler, *, queue: str = "") -> Subscription: ...

    async def close(self) -> None: ...


# --- shared by both transports ---------------------------------------------------

_encoder = msgspec.json.Encoder()


def encode(msg: Message, limit: int = MAX_PAYLOAD) -> bytes:
    try:
        data = _encoder.encode(msg)
    except UnicodeEncodeError:  # an OS string that is not UTF-8 (argv, a path the sandbox made)
        data = _encoder.encode(_wire_text(msgspec.to_builtins(msg)))
    if len(data) > limit:
        raise PayloadTooLarge(f"{type(msg).__name__} is {len(data)} bytes; the limit is {limit}")
    return data


def _wire_text(value: Any) -> Any:
    """``value`` with every string made valid UTF-8: bytes Python kept as surrogates (``os.fsdecode`` of
    ``x\\xff``) become the text ``\\xff``.  Lossy on purpose and only for such bytes: an event about
    a command whose argv is not UTF-8 must still be sent, not crash the run after bwrap started."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {_wire_text(k): _wire_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wire_text(v) for v in value]
    return value


@lru_cache(maxsize=4096)
def check_subject(subject: str, wildcards: bool = False) -> None:
    """Reject subjects NATS would reject (or, without ``wildcards``, treat as patterns).

    Cached (a bad subject raises and is not cached): a proxy publishes an event
    per connection on a handful of subjects."""
    if not subject or any(c in subject for c in " \t\r\n"):
        raise BadSubject(f"invalid subject {subject!r}")
    tokens = subject.split(".")
    for i, tok in enumerate(tokens):
        if not tok:
            raise BadSubject(f"invalid subject {subject!r}: empty token")
        if ("*" in tok or ">" in tok) and (
            not wildcards or tok not in ("*", ">") or (tok == ">" and i != len(tokens) - 1)
        ):
            raise BadSubject(f"invalid subject {subject!r}: misplaced wildcard")


@lru_cache(maxsize=4096)
def subject_matches(pattern: str, subject: str) -> bool:
    """NATS matching (``*`` one token, ``>`` the rest); cached, it runs for every subscription per publish."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def decoder_for(msg_type: Any) -> msgspec.json.Decoder:
    return msgspec.json.Decoder(msg_type)


def _warn(line: str) -> None:
    """A bus warning on stderr, escaped: an exception's text may quote what a peer sent (``fence.textsafe``)."""
    print(printable(line), file=sys.stderr)


def _error(code: str, message: str, field: str = "") -> bytes:
    return _encoder.encode(ErrorReply(code=code, message=message, field=field))


def fit_reply(subject: str, data: bytes, limit: int) -> bytes:
    """A reply the transport can carry: one over ``limit`` becomes a ``too_large`` ErrorReply."""
    if len(data) <= limit:
        return data
    return _error("too_large", f"{subject}: reply is {len(data)} bytes; the limit is {limit}")


def make_responder(
    subject: str, request_type: Any, handler: Handler, max_request: int, observe: Observer | None
) -> Callable[[bytes], Awaitable[bytes]]:
    """Wrap a typed handler into bytes -> bytes, turning every failure into an ErrorReply.

    This is the one place where bad input meets a service, for both transports.
    """
    decoders: list = []  # built on the first request: a lone run starts endpoints it never calls

    async def respond(data: bytes) -> bytes:
        start = time.perf_counter()
        outcome = "ok"
        try:
            if len(data) > max_request:
                outcome = "too_large"
                return _error("too_large", f"{subject}: request is {len(data)} bytes; the limit is {max_request}")
            try:
                if not decoders:
                    decoders.append(decoder_for(request_type))
                req = decoders[0].decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                outcome = "bad_request"
                return _error("bad_request", f"{subject}: {e}")
            if getattr(req, "v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
                outcome = "bad_request"
                return _error("bad_request", f"{subject}: unsupported message version {req.v}")
            try:
                reply = await handler(req)
                return encode(reply)
            except (RemoteError, ServiceError) as e:  # a typed verdict: pass it on verbatim
                outcome = e.code
                return _error(e.code, e.message, getattr(e, "field", ""))
            except Exception as e:  # a handler bug must never kill the service
                outcome = "internal"
                return _error("internal", f"{subject}: {type(e).__name__}: {e}")
        finally:
            if observe is not None:
                observe(subject, outcome, time.perf_counter() - start)

    return respond


def decode_reply(subject: str, data: bytes, reply_type: type[T]) -> T:
    try:
        reply = msgspec.json.decode(data, type=reply_type | ErrorReply)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise BusError(f"{subject}: undecodable reply: {e}") from None
    if isinstance(reply, ErrorReply):
        raise RemoteError(reply.code, reply.message, subject, reply.field)
    return reply


def _running_loop():
    """The running asyncio loop, or None, without importing asyncio."""
    asyncio = sys.modules.get("asyncio")
    return asyncio._get_running_loop() if asyncio is not None else None


def run_sync(coro: Awaitable[T]) -> T:
    """Drive a coroutine that never awaits real I/O to completion without a loop.

    A lone ``fence run`` uses this to call the services over the in-process
    bus at no event-loop cost.  A coroutine that does await real I/O is a
    programming error here and raises rather than silently blocking.
    """
    try:
        coro.send(None)  # type: ignore[attr-defined]
    except StopIteration as done:
        return done.value
    coro.close()  # type: ignore[attr-defined]
    raise RuntimeError("run_sync: the coroutine awaited real I/O; run it on an event loop")


class TypedBus:
    """The typed half of the contract, written once on top of a transport's raw calls."""

    max_payload: int = MAX_PAYLOAD

    async def publish(self, subject: str, msg: Message) -> None:
        check_subject(subject)
        await self.publish_raw(subject, encode(msg, self.max_payload))

    async def request(self, subject: str, msg: Message, reply_type: type[T], timeout: float = 2.0) -> T:
        check_subject(subject)
        data = await self.request_raw(subject, encode(msg, self.max_payload), timeout)
        return decode_reply(subject, data, reply_type)

    async def serve(
        self,
        subject: str,
        request_type: Any,
        handler: Handler,
        *,
        queue: str = "",
        max_request: int = MAX_REQUEST,
        observe: Observer | None = None,
    ):
        return await self.serve_raw(
            subject, make_responder(subject, request_type, handler, max_request, observe), queue=queue
        )

    async def subscribe(self, subject: str, msg_type: Any, handler: EventHandler, *, queue: str = ""):
        decoder = decoder_for(msg_type)
        stats = {"dropped": 0}

        async def on_raw(data: bytes) -> None:
            try:
                msg = decoder.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                stats["dropped"] += 1  # an event that does not decode is dropped, never raised
                return
            try:
                await handler(msg)
            except Exception as e:  # a subscriber bug must not reach the publisher
                _warn(f"[fence:bus] subscriber on {subject} failed: {type(e).__name__}: {e}")

        sub = await self.subscribe_raw(subject, on_raw, queue=queue)
        sub.undecodable = stats
        return sub

    # transports provide these
    async def publish_raw(self, subject: str, data: bytes) -> None:
        raise NotImplementedError

    async def request_raw(self, subject: str, data: bytes, timeout: float = 2.0) -> bytes:
        raise NotImplementedError

    async def serve_raw(self, subject: str, respond: RawResponder, *, queue: str = ""):
        raise NotImplementedError

    async def subscribe_raw(self, subject: str, handler: RawHandler, *, queue: str = ""):
        raise NotImplementedError


# --- in-process transport ----------------------------------------------------------


class _Sub:
    """One in-process subscription: a callback on (bytes, reply), with its ordered backlog."""

    def __init__(
        self,
        bus: InProcessBus,
        pattern: str,
        queue: str,
        deliver: Callable[[bytes, Callable[[bytes], None] | None], Awaitable[None]],
    ):
        self.bus, self.pattern, self.queue, self.deliver = bus, pattern, queue, deliver
        self.pending: deque = deque()
        self.worker = None
        self.dropped = 0
        self.active = True

    async def unsubscribe(self) -> None:
        self.active = False
        if self in self.bus._subs:
            self.bus._subs.remove(self)
        if self.worker is not None:
            self.worker.cancel()

    def push(self, data: bytes, reply: Callable[[bytes], None] | None) -> Awaitable[None] | None:
        """Queue a message; without an event loop, return a coroutine to run it inline."""
        loop = _running_loop()
        if loop is None:
            return self._deliver(data, reply)
        if len(self.pending) >= PENDING_LIMIT:
            self.dropped += 1  # a slow consumer loses messages, as with NATS; the publisher never waits
            return None
        self.pending.append((data, reply))
        if self.worker is None or self.worker.done():
            self.worker = loop.create_task(self._drain())
        return None

    async def _drain(self) -> None:
        while self.pending and self.active:
            data, reply = self.pending.popleft()
            await self._deliver(data, reply)

    async def _deliver(self, data: bytes, reply: Callable[[bytes], None] | None) -> None:
        try:
            await self.deliver(data, reply)
        except Exception as e:  # a raw subscriber bug must not stop later deliveries (nor reach the publisher)
            _warn(f"[fence:bus] subscriber on {self.pattern} failed: {type(e).__name__}: {e}")


class InProcessBus(TypedBus):
    """The bus inside one process; same contract as NatsBus, no server needed."""

    def __init__(self, max_payload: int = MAX_PAYLOAD):
        self.max_payload = max_payload
        self._subs: list[_Sub] = []
        self._rr = 0
        self._tasks: set = set()
        self._waiting: set = set()
        self.closed = False

    def _route(self, subject: str) -> list[_Sub]:
        chosen: list[_Sub] = []
        groups: dict[str, list[_Sub]] = {}
        for sub in self._subs:
            if sub.active and subject_matches(sub.pattern, subject):
                if sub.queue:
                    groups.setdefault(sub.queue, []).append(sub)
                else:
                    chosen.append(sub)
        for members in groups.values():
            self._rr += 1
            chosen.append(members[self._rr % len(members)])
        return chosen

    async def _dispatch(self, subject: str, data: bytes, reply: Callable[[bytes], None] | None) -> int:
        if self.closed:
            raise BusError("bus is closed")
        check_subject(subject)
        if len(data) > self.max_payload:
            raise PayloadTooLarge(f"message is {len(data)} bytes; the limit is {self.max_payload}")
        targets = self._route(subject)
        for sub in targets:
            inline = sub.push(data, reply)
            if inline is not None:
                await inline
        return len(targets)

    async def publish_raw(self, subject: str, data: bytes) -> None:
        await self._dispatch(subject, data, None)

    async def request_raw(self, subject: str, data: bytes, timeout: float = 2.0) -> bytes:
        loop = _running_loop()
        if loop is None:  # driven by run_sync: every responder ran inline
            replies: list[bytes] = []
            if not await self._dispatch(subject, data, replies.append):
                raise NoResponders(f"no responders on {subject}")
            if not replies:
                raise RequestTimeout(f"request on {subject} got no reply")
            return replies[0]
        import asyncio  # lazy: only when an event loop drives this bus, never in a lone run (~35 ms)

        future = loop.create_future()

        def on_reply(payload: bytes) -> None:
            if not future.done():
                future.set_result(payload)

        if not await self._dispatch(subject, data, on_reply):
            raise NoResponders(f"no responders on {subject}")
        self._waiting.add(future)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise RequestTimeout(f"request on {subject} timed out after {timeout}s") from None
        finally:
            self._waiting.discard(future)

    async def serve_raw(self, subject: str, respond: RawResponder, *, queue: str = "") -> _Sub:
        if self.closed:
            raise BusError("bus is closed")
        check_subject(subject, wildcards=True)

        async def deliver(data: bytes, reply: Callable[[bytes], None] | None) -> None:
            if reply is None:  # a plain publish on a request subject: nothing to answer
                return
            loop = _running_loop()
            if loop is None:
                reply(fit_reply(subject, await respond(data), self.max_payload))
                return

            async def run() -> None:
                try:
                    reply(fit_reply(subject, await respond(data), self.max_payload))
                except Exception as e:  # a raw responder bug: no reply, as over NATS
                    _warn(f"[fence:bus] responder on {subject} failed: {type(e).__name__}: {e}")

            task = loop.create_task(run())  # concurrent: a slow request stalls no other
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        sub = _Sub(self, subject, queue, deliver)
        self._subs.append(sub)
        return sub

    async def subscribe_raw(self, subject: str, handler: RawHandler, *, queue: str = "") -> _Sub:
        if self.closed:
            raise BusError("bus is closed")
        check_subject(subject, wildcards=True)

        async def deliver(data: bytes, reply: Callable[[bytes], None] | None) -> None:
            await handler(data)

        sub = _Sub(self, subject, queue, deliver)
        self._subs.append(sub)
        return sub

    async def close(self) -> None:
        """Drain, as NatsBus: stop delivery, let in-flight handlers answer, fail requests still waiting."""
        for sub in list(self._subs):
            await sub.unsubscribe()
        if self._tasks:
            import asyncio  # lazy: only when an event loop drives this bus, never in a lone run (~35 ms)

            await asyncio.wait(list(self._tasks), timeout=DRAIN_GRACE)
        for task in list(self._tasks):
            task.cancel()
        self.closed = True
        for future in list(self._waiting):
            if not future.done():
                future.set_exception(BusError("bus is closed"))
