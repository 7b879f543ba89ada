"""Load without leaks: 1000 concurrent tunnels and 10^4 sequential requests leave no fd or memory growth.

Not timed.  The proxy runs in this process (thread mode, as in a lone run),
so ``/proc/self/fd`` and ``tracemalloc`` see its descriptors and
allocations; each measurement is taken after a warm-up round, between
identical rounds, once the proxy reports every connection and tunnel gone.
"""

from __future__ import annotations

import gc
import resource
import socket
import time
import tracemalloc

import pytest

from test_proxy_support import EchoServer, ProxyFactory, Resolver, fd_count, read_response, start_origin, status_of

TUNNELS = 1000


@pytest.fixture(scope="module")
def env():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))
        except (ValueError, OSError):
            pytest.skip(f"needs 8192 file descriptors (limit {soft})")
    factory = ProxyFactory(Resolver())
    factory.start(collect_events=False)  # events are still published on the bus, nobody keeps them
    echo = EchoServer()
    origin = start_origin(record=False)
    proxy = factory.open(allowed_domains=["127.0.0.1", "*.ok.test"])
    yield factory, proxy, echo, origin
    factory.close(proxy)
    origin.shutdown()
    echo.close()
    factory.stop()


def settle(proxy, timeout: float = 15.0) -> None:
    """Wait until the session holds no connection and no tunnel."""
    session = proxy.session()
    end = time.monotonic() + timeout
    while (session.connections or session.relays or session.tasks) and time.monotonic() < end:
        time.sleep(0.02)
    assert not session.relays and not session.connections, (len(session.relays), session.connections)


def measure() -> tuple[int, int]:
    gc.collect()
    return fd_count(), tracemalloc.get_traced_memory()[0]


def assert_no_growth(fds0: int, mem0: int, fds1: int, mem1: int) -> None:
    """Same fd count (the in-process servers may still be closing their side under load: a leak never
    converges, lag does) and less than 256 KiB more traced memory."""
    end = time.monotonic() + 5
    while fds1 != fds0 and time.monotonic() < end:
        time.sleep(0.05)
        fds1 = fd_count()
    assert fds1 == fds0
    assert mem1 - mem0 < 256 * 1024, f"traced memory grew by {mem1 - mem0} bytes"


def concurrent_tunnels(proxy, echo) -> None:
    socks = []
    try:
        for _ in range(TUNNELS):
            s = socket.create_connection(("127.0.0.1", proxy.http_port), timeout=20)
            s.sendall(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n\r\n".encode())
            socks.append(s)
        for s in socks:
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(4096)
            assert head.startswith(b"HTTP/1.1 200 ")
        end = time.monotonic() + 5  # the proxy hands a tunnel to its relay just after sending the 200
        while len(proxy.session().relays) < TUNNELS and time.monotonic() < end:
            time.sleep(0.01)
        assert len(proxy.session().relays) == TUNNELS  # all open at once
        for i, s in enumerate(socks):
            s.sendall(b"%d;" % i)
        for i, s in enumerate(socks):
            want = b"%d;" % i
            got = b""
            while len(got) < len(want):
                got += s.recv(64)
            assert got == want
    finally:
        for s in socks:
            s.close()


def test_1000_concurrent_tunnels_leave_nothing_behind(env):
    _factory, proxy, echo, _origin = env
    concurrent_tunnels(proxy, echo)  # warm-up: buffers, caches, free lists
    settle(proxy)
    tracemalloc.start()
    try:
        concurrent_tunnels(proxy, echo)
        settle(proxy)
        fds0, mem0 = measure()
        concurrent_tunnels(proxy, echo)
        settle(proxy)
        fds1, mem1 = measure()
    finally:
        tracemalloc.stop()
    assert_no_growth(fds0, mem0, fds1, mem1)


def sequential(proxy, origin, n: int) -> None:
    port = origin.server_address[1]
    allowed = f"GET http://a.ok.test:{port}/seq HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    blocked = f"GET http://blocked.test:{port}/seq HTTP/1.1\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=20) as keep:
        for i in range(n):
            if i % 10 == 0:  # every tenth on a connection of its own
                with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=20) as s:
                    s.sendall(blocked)
                    assert status_of(read_response(s)) == 403
            else:
                keep.sendall(allowed if i % 2 else blocked)
                assert status_of(read_response(keep)) == (200 if i % 2 else 403)


def test_10k_sequential_requests_leave_nothing_behind(env):
    _factory, proxy, _echo, origin = env
    sequential(proxy, origin, 1000)  # warm-up
    settle(proxy)
    rss0 = _rss()
    tracemalloc.start()
    try:
        sequential(proxy, origin, 1000)
        settle(proxy)
        fds0, mem0 = measure()
        sequential(proxy, origin, 10_000)
        settle(proxy)
        fds1, mem1 = measure()
    finally:
        tracemalloc.stop()
    assert_no_growth(fds0, mem0, fds1, mem1)
    assert _rss() - rss0 < 32 * 1024 * 1024


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
