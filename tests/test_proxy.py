"""The filtering proxies with real clients (curl, raw sockets) against servers started here.

Every server listens on 127.0.0.1 (or ::1); the proxy's resolver hook maps
``*.test`` and ``localhost`` to 127.0.0.1 and refuses everything else, so no
test resolves a real name or sends a packet off this machine.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
import time

import pytest

from test_proxy_support import (
    EchoServer,
    ProxyFactory,
    Resolver,
    UpstreamProxy,
    body_of,
    connect_tunnel,
    curl,
    make_cert,
    raw_exchange,
    read_response,
    socks_connect,
    start_origin,
    status_of,
)

BLOCKED = "Connection blocked by network allowlist\n"


@pytest.fixture(scope="module")
def resolver():
    return Resolver()


@pytest.fixture(scope="module")
def factory(resolver):
    f = ProxyFactory(resolver)
    f.start(head_timeout=1.0, idle_timeout=5.0, half_open_timeout=0.5, dial_timeout=1.0)
    yield f
    f.stop()


@pytest.fixture(scope="module")
def origin():
    server = start_origin()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def echo():
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(factory):
    """A session: *.ok.test and 127.0.0.1 allowed, bad.ok.test denied."""
    p = factory.open(allowed_domains=["*.ok.test", "127.0.0.1", "exact.test"], denied_domains=["bad.ok.test"])
    yield p
    factory.close(p)


def json_body(result) -> dict:
    return json.loads(result.stdout)


# --- plain HTTP ------------------------------------------------------------------------------
def test_allowed_plain_http(proxy, origin):
    port = origin.server_address[1]
    r = curl("--proxy", proxy.url, f"http://a.ok.test:{port}/hello?x=1")
    assert r.returncode == 0, r.stderr
    got = json_body(r)
    assert got["path"] == "/hello?x=1" and got["host"] == f"a.ok.test:{port}"


def test_blocked_plain_http_exact_response(proxy, origin):
    port = origin.server_address[1]
    resp = raw_exchange(proxy.http_port, f"GET http://other.test:{port}/ HTTP/1.1\r\nHost: other.test\r\n\r\n".encode())
    head, body = resp.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"\r\nContent-Type: text/plain; charset=utf-8\r\n" in head
    assert b"\r\nX-Content-Type-Options: nosniff\r\n" in head
    assert body.decode() == BLOCKED + 'Add "other.test" to network.allowedDomains to allow it.\n'


def test_denied_wins_over_wildcard(proxy, origin):
    port = origin.server_address[1]
    r = curl("-i", "--proxy", proxy.url, f"http://bad.ok.test:{port}/")
    assert " 403 " in r.stdout.splitlines()[0]
    assert r.stdout.replace("\r", "").endswith(BLOCKED + '"bad.ok.test" is in network.deniedDomains.\n')
    assert curl("--proxy", proxy.url, f"http://good.ok.test:{port}/").returncode == 0


def test_wildcard_matches_subdomains_not_apex(proxy, origin):
    port = origin.server_address[1]
    for host, ok in (("a.ok.test", True), ("b.a.ok.test", True), ("ok.test", False), ("xok.test", False)):
        r = curl("-o", "/dev/null", "-w", "%{http_code}", "--proxy", proxy.url, f"http://{host}:{port}/")
        assert r.stdout == ("200" if ok else "403"), host


def test_case_insensitive(factory, origin):
    p = factory.open(allowed_domains=["*.OK.Test"])
    try:
        port = origin.server_address[1]
        resp = raw_exchange(p.http_port, f"GET http://A.Ok.TEST:{port}/ HTTP/1.1\r\n\r\n".encode())
        assert status_of(resp) == 200
        assert json.loads(body_of(resp))["host"] == f"a.ok.test:{port}"  # dialled and sent: the canonical form
    finally:
        factory.close(p)


def test_trailing_dot(proxy, origin, resolver):
    port = origin.server_address[1]
    resp = raw_exchange(proxy.http_port, f"GET http://exact.test.:{port}/ HTTP/1.1\r\n\r\n".encode())
    assert status_of(resp) == 200
    assert resolver.calls[-1] == "exact.test"
    resp = raw_exchange(proxy.http_port, f"GET http://bad.ok.test.:{port}/ HTTP/1.1\r\n\r\n".encode())
    assert status_of(resp) == 403


def test_idn(factory, origin, resolver):
    p = factory.open(allowed_domains=["bücher.test"], denied_domains=["ｅｖｉｌ.test"])
    try:
        port = origin.server_address[1]
        r = curl("--proxy", p.url, f"http://bücher.test:{port}/")  # curl sends the punycode (libidn2)
        assert r.returncode == 0, r.stderr
        assert json_body(r)["host"] == f"xn--bcher-kva.test:{port}"
        sock, head = connect_tunnel(p.http_port, f"BÜCHER.test:{port}".encode())  # raw UTF-8 in CONNECT
        sock.close()
        assert head.startswith(b"HTTP/1.1 200 ")
        assert resolver.calls[-1] == "xn--bcher-kva.test"
        resp = raw_exchange(p.http_port, f"GET http://evil.test:{port}/ HTTP/1.1\r\n\r\n".encode())
        assert status_of(resp) == 403 and b"deniedDomains" in resp
    finally:
        factory.close(p)


# --- canonicalisation: no spelling of a denied host gets through -------------------------------
IP_SPELLINGS = [
    "127.1",
    "2130706433",
    "0x7f.1",
    "0x7f000001",
    "0177.0.0.1",
    "127.0.0.1.",
    "127.000.0.1",
    "１２７.０.０.１",
    "127。0。0。1",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "127.0.0.1%00",
    "127.0.0.1 ",
    "0.0.0.0.127.0.0.1",
]


@pytest.mark.parametrize("spelling", IP_SPELLINGS)
def test_ip_spellings_of_a_denied_address_are_blocked(factory, origin, spelling):
    p = factory.open(allowed_domains=["*"], denied_domains=["127.0.0.1"])
    try:
        port = origin.server_address[1]
        before = len(origin.requests)
        for request in (
            f"GET http://{spelling}:{port}/ HTTP/1.1\r\n\r\n",
            f"CONNECT {spelling}:{port} HTTP/1.1\r\n\r\n",
        ):
            resp = raw_exchange(p.http_port, request.encode())
            assert status_of(resp) in (400, 403), (request, resp)
        assert len(origin.requests) == before
    finally:
        factory.close(p)


NAME_SPELLINGS = [
    "exa\u00admple.test",
    "example\u3002test",
    "example\uff0etest",
    "ｅｘａｍｐｌｅ.test",
    "EXAMPLE.TEST",
    "example.test.",
    "Example.Test.",
]


@pytest.mark.parametrize("spelling", NAME_SPELLINGS)
def test_name_spellings_are_canonicalised(factory, origin, resolver, spelling):
    """Each spelling is matched and dialled as example.test: denied when it is denied, allowed when allowed."""
    port = origin.server_address[1]
    denied = factory.open(allowed_domains=["*"], denied_domains=["example.test"])
    allowed = factory.open(allowed_domains=["example.test"])
    try:
        calls = len(resolver.calls)
        sock, head = connect_tunnel(denied.http_port, f"{spelling}:{port}".encode())
        sock.close()
        assert head.startswith(b"HTTP/1.1 403 "), head
        assert len(resolver.calls) == calls  # never looked up
        sock, head = connect_tunnel(allowed.http_port, f"{spelling}:{port}".encode())
        sock.close()
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert resolver.calls[-1] == "example.test"
    finally:
        factory.close(denied)
        factory.close(allowed)


def test_denied_name_is_never_resolved(proxy, origin, resolver):
    port = origin.server_address[1]
    resolver.calls.clear()
    curl("--proxy", proxy.url, f"http://bad.ok.test:{port}/")
    curl("-p", "--proxy", proxy.url, f"http://bad.ok.test:{port}/")
    curl("--proxy", proxy.url, f"http://unlisted.test:{port}/")
    curl("--socks5-hostname", f"127.0.0.1:{proxy.socks_port}", f"http://bad.ok.test:{port}/")
    assert resolver.calls == []
    curl("--proxy", proxy.url, f"http://fine.ok.test:{port}/")
    assert resolver.calls == ["fine.ok.test"]


def test_resolved_address_in_denied_list_is_blocked(factory, origin, resolver):
    p = factory.open(allowed_domains=["*.ok.test"], denied_domains=["127.0.0.1"])
    try:
        port = origin.server_address[1]
        resp = raw_exchange(p.http_port, f"GET http://a.ok.test:{port}/ HTTP/1.1\r\n\r\n".encode())
        assert status_of(resp) == 403
        assert b"resolves to 127.0.0.1" in resp and b"deniedDomains" in resp
    finally:
        factory.close(p)


# --- Host header, keep-alive, bodies -----------------------------------------------------------
def test_host_header_mismatch_bypasses_nothing(proxy, origin):
    port = origin.server_address[1]
    resp = raw_exchange(
        proxy.http_port,
        f"GET http://a.ok.test:{port}/x HTTP/1.1\r\nHost: bad.ok.test\r\n"
        f"Proxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\n\r\n".encode(),
    )
    got = json.loads(body_of(resp))
    assert got["host"] == f"a.ok.test:{port}"  # the URI's host, not the header's
    assert not any(k.lower().startswith("proxy-") for k in got["headers"])
    resp = raw_exchange(
        proxy.http_port, f"GET http://bad.ok.test:{port}/x HTTP/1.1\r\nHost: a.ok.test\r\n\r\n".encode()
    )
    assert status_of(resp) == 403


def test_keep_alive_client_and_upstream(proxy, origin):
    port = origin.server_address[1]
    before = len(origin.requests)
    with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=5) as s:
        for i in range(5):
            s.sendall(f"GET http://a.ok.test:{port}/n{i} HTTP/1.1\r\nHost: a.ok.test\r\n\r\n".encode())
            resp = read_response(s)
            assert status_of(resp) == 200 and json.loads(body_of(resp))["path"] == f"/n{i}"
        s.sendall(f"GET http://nope.test:{port}/ HTTP/1.1\r\n\r\n".encode())  # a block keeps the connection
        assert status_of(read_response(s)) == 403
        s.sendall(f"GET http://a.ok.test:{port}/last HTTP/1.1\r\n\r\n".encode())
        assert status_of(read_response(s)) == 200
    conns = {r["conn"] for r in origin.requests[before:]}
    assert len(conns) == 1  # one upstream connection, reused


def test_curl_reuses_the_connection(proxy, origin):
    port = origin.server_address[1]
    r = curl("-v", "--proxy", proxy.url, f"http://a.ok.test:{port}/1", f"http://a.ok.test:{port}/2")
    assert r.returncode == 0
    assert "Re-using existing connection" in r.stderr or "Reusing existing" in r.stderr


def test_request_bodies_and_chunked_responses(proxy, origin):
    port = origin.server_address[1]
    r = curl("--proxy", proxy.url, "--data-binary", "a=1&b=2", f"http://a.ok.test:{port}/post")
    assert json_body(r)["body"] == "a=1&b=2" and json_body(r)["method"] == "POST"
    r = curl(
        "--proxy",
        proxy.url,
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        "chunky",
        f"http://a.ok.test:{port}/post",
    )
    assert json_body(r)["body"] == "chunky"
    r = curl("--proxy", proxy.url, f"http://a.ok.test:{port}/chunked")
    assert r.stdout == "hello chunked world\n"
    r = curl("--proxy", proxy.url, "-o", "/dev/null", "-w", "%{size_download}", f"http://a.ok.test:{port}/big/3000000")
    assert r.stdout == "3000000"
    r = curl("-I", "--proxy", proxy.url, f"http://a.ok.test:{port}/head")
    assert r.returncode == 0 and " 200 " in r.stdout.splitlines()[0]


def test_dial_failure_is_502(proxy):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    resp = raw_exchange(proxy.http_port, f"GET http://a.ok.test:{port}/ HTTP/1.1\r\n\r\n".encode())
    assert status_of(resp) == 502 and b"connection refused" in resp
    sock, head = connect_tunnel(proxy.http_port, f"a.ok.test:{port}".encode())
    sock.close()
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")


def test_dial_timeout_is_502(factory):
    import asyncio

    async def slow(host, port):
        await asyncio.sleep(5)
        return []

    p = factory.open(allowed_domains=["slow.test"])
    p.session().resolver = slow  # dial_timeout is 1 s in these tests
    try:
        start = time.monotonic()
        resp = raw_exchange(p.http_port, b"CONNECT slow.test:443 HTTP/1.1\r\n\r\n")
        assert status_of(resp) == 502 and b"timed out after 1s" in resp
        assert time.monotonic() - start < 3
    finally:
        factory.close(p)


# --- CONNECT and TLS ---------------------------------------------------------------------------
def test_https_through_connect(proxy, tmp_path):
    cert, key = make_cert(str(tmp_path), "secure.ok.test")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = start_origin(ctx)
    try:
        port = server.server_address[1]
        r = curl("--cacert", cert, "--proxy", proxy.url, f"https://secure.ok.test:{port}/tls")
        assert r.returncode == 0, r.stderr
        assert json_body(r)["path"] == "/tls"
        r = curl("--cacert", cert, "--proxy", proxy.url, f"https://bad.ok.test:{port}/tls")
        assert r.returncode == 56 and "403" in r.stderr
    finally:
        server.shutdown()


def test_connect_blocked_curl_message(proxy, echo):
    r = curl("-p", "--proxy", proxy.url, f"http://nope.test:{echo.port}/")
    assert r.returncode == 56 and "CONNECT tunnel failed, response 403" in r.stderr


def test_connect_pipelined_bytes_and_half_close(proxy, echo):
    s = socket.create_connection(("127.0.0.1", proxy.http_port), timeout=5)
    s.sendall(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n\r\nearly bytes".encode())  # before the 200
    data = b""
    while not data.endswith(b"early bytes"):
        data += s.recv(4096)
    assert data.startswith(b"HTTP/1.1 200 Connection Established\r\n\r\n")
    s.sendall(b" and more")
    s.shutdown(socket.SHUT_WR)  # half-close: the echo still comes back, then EOF
    rest = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        rest += chunk
    assert rest == b" and more"
    s.close()


def test_half_open_tunnel_is_closed_after_timeout(factory):
    server = EchoServer(close_on_eof=False)  # never closes after our EOF
    p = factory.open(allowed_domains=["127.0.0.1"])
    try:
        sock, head = connect_tunnel(p.http_port, f"127.0.0.1:{server.port}".encode())
        assert head.startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        sock.shutdown(socket.SHUT_WR)
        start = time.monotonic()
        sock.settimeout(5)
        assert sock.recv(10) == b""  # the proxy closed the silent half-open tunnel (half_open_timeout 0.5 s)
        assert time.monotonic() - start < 4
        sock.close()
    finally:
        factory.close(p)
        server.close()


def test_bulk_through_tunnel(proxy, origin):
    port = origin.server_address[1]
    r = curl(
        "-p", "--proxy", proxy.url, "-o", "/dev/null", "-w", "%{size_download}", f"http://a.ok.test:{port}/big/20000000"
    )
    assert r.stdout == "20000000"


# --- hostile input -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"hello\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a.ok.test\r\n\r\n", 400),  # origin form: not a proxy request
        (b"GET https://a.ok.test/ HTTP/1.1\r\n\r\n", 400),
        (b"GET http://a.ok.test/ HTTP/2.0\r\n\r\n", 505),
        (b"GET http://a.ok.test/ HTTP/1.1\r\nX: a\r\n  folded\r\n\r\n", 400),
        (b"GET http://a.ok.test/ HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
        (b"POST http://a.ok.test/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc", 400),
        (b"POST http://a.ok.test/ HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc", 400),
        (b"POST http://a.ok.test/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET http://user@a.ok.test/ HTTP/1.1\r\n\r\n", 400),
        (b"GET http://a.ok.test:99999/ HTTP/1.1\r\n\r\n", 400),
        (b"GET http://a.ok.test:+80/ HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT a.ok.test:0x1bb HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT [::1 HTTP/1.1\r\n\r\n", 400),
        (b"GET http://a.ok.test/ HTTP/1.1\r\nX: \x00\r\n\r\n", 400),
    ],
)
def test_malformed_requests(proxy, request_bytes, status):
    resp = raw_exchange(proxy.http_port, request_bytes)
    assert status_of(resp) == status, resp


def test_huge_header_is_refused(proxy):
    with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=5) as s:
        s.sendall(b"GET http://a.ok.test/ HTTP/1.1\r\n")
        try:
            for _ in range(100):
                s.sendall(b"X-Filler: " + b"a" * 1000 + b"\r\n")
        except OSError:
            pass
        assert status_of(read_response(s)) == 431


def test_slowloris_is_cut_and_others_are_served(proxy, origin):
    port = origin.server_address[1]
    slow = socket.create_connection(("127.0.0.1", proxy.http_port), timeout=5)
    stop = threading.Event()
    cut = {}

    def drip():
        start = time.monotonic()
        try:
            for c in b"GET http://a.ok.test/ HTTP/1.1\r\nX-Slow: " + b"y" * 200:
                if stop.is_set():
                    return
                slow.sendall(bytes([c]))
                time.sleep(0.05)
        except OSError:
            pass
        cut["after"] = time.monotonic() - start

    t = threading.Thread(target=drip)
    t.start()
    for _ in range(5):  # served promptly meanwhile
        r = curl("--proxy", proxy.url, f"http://a.ok.test:{port}/meanwhile", timeout=5)
        assert r.returncode == 0
    t.join(8)
    stop.set()
    assert "after" in cut and cut["after"] < 4  # head_timeout is 1 s in these tests
    slow.close()


def test_garbage_flood_does_not_crash(proxy, origin):
    import random

    rnd = random.Random(5)
    for _ in range(50):
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=5) as s:
            s.sendall(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 400))) + b"\r\n\r\n")
            s.settimeout(3)
            try:
                s.recv(65536)
            except OSError:
                pass
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", proxy.socks_port), timeout=5) as s:
            s.settimeout(3)
            try:
                s.sendall(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 64))))
                s.shutdown(socket.SHUT_WR)
                s.recv(65536)
            except OSError:
                pass
    port = origin.server_address[1]
    assert curl("--proxy", proxy.url, f"http://a.ok.test:{port}/still-alive").returncode == 0


# --- SOCKS5 ------------------------------------------------------------------------------------
def test_socks5h_allowed_and_blocked(proxy, origin):
    port = origin.server_address[1]
    r = curl("--socks5-hostname", f"127.0.0.1:{proxy.socks_port}", f"http://a.ok.test:{port}/socks")
    assert r.returncode == 0 and json_body(r)["path"] == "/socks"
    r = curl("--socks5-hostname", f"127.0.0.1:{proxy.socks_port}", f"http://bad.ok.test:{port}/")
    assert r.returncode == 97
    r = curl("-x", f"socks5h://127.0.0.1:{proxy.socks_port}", f"http://nope.test:{port}/")
    assert r.returncode == 97


def test_socks5_ipv4(proxy, origin):
    port = origin.server_address[1]
    r = curl("--socks5", f"127.0.0.1:{proxy.socks_port}", f"http://127.0.0.1:{port}/v4")
    assert r.returncode == 0 and json_body(r)["path"] == "/v4"


def test_socks5_reply_codes(proxy, echo):
    s, reply = socks_connect(proxy.socks_port, 1, socket.inet_aton("127.0.0.1"), echo.port)
    assert reply[:2] == b"\x05\x00" and reply[3] == 1
    s.sendall(b"ping")
    assert s.recv(4) == b"ping"
    s.close()
    for cmd in (2, 3):  # BIND, UDP ASSOCIATE
        s, reply = socks_connect(proxy.socks_port, 3, b"a.ok.test", echo.port, cmd=cmd)
        s.close()
        assert reply[:2] == b"\x05\x07"
    s, reply = socks_connect(proxy.socks_port, 3, b"bad.ok.test", echo.port)
    s.close()
    assert reply[:2] == b"\x05\x02"
    s, reply = socks_connect(proxy.socks_port, 3, b"127.1", echo.port)
    s.close()
    assert reply[:2] == b"\x05\x02"
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    cport = closed.getsockname()[1]
    closed.close()
    s, reply = socks_connect(proxy.socks_port, 3, b"a.ok.test", cport)
    s.close()
    assert reply[:2] == b"\x05\x05"
    s, reply = socks_connect(proxy.socks_port, 3, b"a.ok.test", echo.port, methods=b"\x02")
    s.close()
    assert reply == b"\x05\xff"
    s, reply = socks_connect(proxy.socks_port, 9, b"", echo.port)
    s.close()
    assert reply[:2] == b"\x05\x08"


def test_socks5_ipv6(factory):
    try:
        server = EchoServer(host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    p = factory.open(allowed_domains=["*"], denied_domains=["127.0.0.2"])
    try:
        s, reply = socks_connect(p.socks_port, 4, socket.inet_pton(socket.AF_INET6, "::1"), server.port)
        assert reply[:2] == b"\x05\x00" and reply[3] == 4
        s.sendall(b"six")
        assert s.recv(3) == b"six"
        s.close()
        mapped = socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.2")  # canonicalised to the denied IPv4
        s, reply = socks_connect(p.socks_port, 4, mapped, server.port)
        s.close()
        assert reply[:2] == b"\x05\x02"
    finally:
        factory.close(p)
        server.close()


# --- upstreamProxy / defaultAction ---------------------------------------------------------------
@pytest.fixture
def upstream():
    u = UpstreamProxy()
    yield u
    u.close()


def test_grey_traffic_goes_through_upstream(factory, upstream, origin, resolver):
    p = factory.open(
        allowed_domains=["direct.test"],
        denied_domains=["never.test"],
        default_action="proxy",
        upstream_proxy=f"http://user:pw@127.0.0.1:{upstream.port}",
    )
    try:
        port = origin.server_address[1]
        resolver.calls.clear()
        r = curl("--proxy", p.url, f"http://grey.test:{port}/plain")
        assert r.returncode == 0, r.stderr
        assert json_body(r)["path"] == "/plain"
        r = curl("-p", "--proxy", p.url, f"http://grey.test:{port}/tunnel")
        assert r.returncode == 0 and json_body(r)["path"] == "/tunnel"
        assert [m for m, _, _ in upstream.log] == ["GET", "CONNECT"]
        assert upstream.log[0][1] == f"http://grey.test:{port}/plain"
        assert all("Proxy-Authorization: Basic dXNlcjpwdw==" in head for _, _, head in upstream.log)
        assert "grey.test" not in resolver.calls  # the upstream resolves grey names, not us
        # denied: never forwarded; allowed: direct
        r = curl("-o", "/dev/null", "-w", "%{http_code}", "--proxy", p.url, f"http://never.test:{port}/")
        assert r.stdout == "403"
        r = curl("--proxy", p.url, f"http://direct.test:{port}/d")
        assert r.returncode == 0
        assert len(upstream.log) == 2
        # SOCKS is never forwarded upstream
        r = curl("--socks5-hostname", f"127.0.0.1:{p.socks_port}", f"http://grey.test:{port}/")
        assert r.returncode == 97 and len(upstream.log) == 2
        # upstream refusal -> 403
        sock, head = connect_tunnel(p.http_port, f"refuse.test:{port}".encode())
        sock.close()
        assert head.startswith(b"HTTP/1.1 403 ")
        resp = raw_exchange(p.http_port, f"GET http://refuse.test:{port}/ HTTP/1.1\r\n\r\n".encode())
        assert status_of(resp) == 403
    finally:
        factory.close(p)


def test_upstream_unreachable_is_502(factory, origin):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    uport = closed.getsockname()[1]
    closed.close()
    p = factory.open(allowed_domains=[], default_action="proxy", upstream_proxy=f"http://127.0.0.1:{uport}")
    try:
        port = origin.server_address[1]
        sock, head = connect_tunnel(p.http_port, f"grey.test:{port}".encode())
        sock.close()
        assert head.startswith(b"HTTP/1.1 502 ")
        resp = raw_exchange(p.http_port, f"GET http://grey.test:{port}/ HTTP/1.1\r\n\r\n".encode())
        assert status_of(resp) == 502
    finally:
        factory.close(p)


# --- sessions, relaxed mode, events, lines, metrics ---------------------------------------------
def test_relaxed_mode_listens_on_loopback_and_still_denies(factory, origin):
    p = factory.open(allowed_domains=["*"], denied_domains=["*.bad.test"])
    try:
        assert p.opened.relaxed and p.opened.address == "127.0.0.1" and p.http_port and p.socks_port
        port = origin.server_address[1]
        assert curl("--proxy", p.url, f"http://anything.test:{port}/").returncode == 0
        r = curl("-o", "/dev/null", "-w", "%{http_code}", "--proxy", p.url, f"http://x.bad.test:{port}/")
        assert r.stdout == "403"
    finally:
        factory.close(p)


def test_no_listeners_when_nothing_can_be_allowed(factory):
    p = factory.open(allowed_domains=[], denied_domains=["x.test"])
    assert (p.http_port, p.socks_port, p.opened.address) == (0, 0, "")
    assert factory.close(p).existed


def test_close_stops_listeners_and_tunnels(factory, echo):
    p = factory.open(allowed_domains=["127.0.0.1"])
    sock, head = connect_tunnel(p.http_port, f"127.0.0.1:{echo.port}".encode())
    assert head.startswith(b"HTTP/1.1 200 ")
    factory.close(p)
    sock.settimeout(5)
    assert sock.recv(10) == b""  # the tunnel was cut
    sock.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p.http_port), timeout=2).recv(1)


def test_attach_serves_passed_in_listening_sockets(factory, origin):
    from fence.bus import run_sync
    from fence.messages import ProxySessionOpen, ProxySessionOpened
    from fence.policy import NetworkConfig
    from fence.subjects import PROXY_SESSION_OPEN

    # a policy that allows nothing gets no listeners of its own; the bridge brings them
    opened = run_sync(
        factory.bus.request(
            PROXY_SESSION_OPEN,
            ProxySessionOpen(sandbox="bridged01", network=NetworkConfig(denied_domains=["x.test"])),
            ProxySessionOpened,
            timeout=10,
        )
    )
    assert opened.http_port == 0
    lh, ls = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    factory.service.attach("bridged01", lh, ls)
    port = origin.server_address[1]
    resp = raw_exchange(lh.getsockname()[1], f"GET http://a.test:{port}/ HTTP/1.1\r\n\r\n".encode())
    assert status_of(resp) == 403 and b'Add "a.test"' in resp
    s, reply = socks_connect(ls.getsockname()[1], 3, b"a.test", port)
    s.close()
    assert reply[:2] == b"\x05\x02"
    from fence.messages import ProxySessionClose, ProxySessionClosed
    from fence.subjects import PROXY_SESSION_CLOSE

    run_sync(factory.bus.request(PROXY_SESSION_CLOSE, ProxySessionClose(sandbox="bridged01"), ProxySessionClosed))
    assert lh.fileno() == -1 and ls.fileno() == -1  # the session owned and closed them


def test_events_and_console_lines(proxy, origin):
    from fence.eventlines import net_lines

    port = origin.server_address[1]
    curl("--proxy", proxy.url, f"http://a.ok.test:{port}/ok")
    curl("-p", "--proxy", proxy.url, f"http://nope.test:{port}/")
    curl("--socks5-hostname", f"127.0.0.1:{proxy.socks_port}", f"http://bad.ok.test:{port}/")
    events = proxy.wait_events(3)
    assert [(e.proto, e.method, e.host, e.outcome, e.status) for e in events] == [
        ("http", "GET", "a.ok.test", "allowed", 200),
        ("http", "CONNECT", "nope.test", "blocked", 403),
        ("socks", "CONNECT", "bad.ok.test", "blocked", 2),
    ]
    assert all(e.sandbox == proxy.opened.sandbox for e in events)
    debug = [line for e in events for line in net_lines(e, debug=True)]
    t = r"\d\d:\d\d:\d\d"
    assert debug[0] == f"[fence:filter] Allowed by rule: a.ok.test:{port} (matched *.ok.test)"
    assert re.fullmatch(rf"\[fence:http\] {t} ✓ GET     200 a.ok.test http://a.ok.test:{port}/ok \(\d+ms\)", debug[1])
    assert debug[2] == f"[fence:filter] No matching rule, denying: nope.test:{port}"
    assert re.fullmatch(rf"\[fence:http\] {t} ✗ CONNECT 403 nope.test https://nope.test:{port} \(\d+ms\)", debug[3])
    assert debug[4] == f"[fence:filter] Denied by rule: bad.ok.test:{port} (matched bad.ok.test)"
    assert re.fullmatch(rf"\[fence:socks\] {t} ✗ CONNECT bad.ok.test:{port} BLOCKED", debug[5])
    monitor = [line for e in events for line in net_lines(e, monitor=True)]
    assert len(monitor) == 2 and all("✗" in line for line in monitor)
    assert net_lines(events[0]) == []


def test_long_urls_are_truncated_in_lines():
    from fence.eventlines import request_line
    from fence.messages import NetDecisionEvent

    ev = NetDecisionEvent(
        sandbox="s",
        ts=0,
        proto="http",
        method="GET",
        host="a.test",
        port=80,
        url="http://a.test/" + "x" * 100,
        status=403,
        outcome="blocked",
        duration_ms=0.4,
    )
    line = request_line(ev)
    assert line.endswith(" http://a.test/" + "x" * 43 + "... (0ms)")


def test_metrics_count_decisions_and_tunnels(resolver, origin, echo):
    from prometheus_client import REGISTRY

    from fence.metrics import Metrics

    def value(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    f = ProxyFactory(resolver)
    f.start(metrics=Metrics())
    try:
        p = f.open(allowed_domains=["127.0.0.1"])
        allowed0 = value("fence_proxy_requests_total", protocol="http", decision="allowed")
        blocked0 = value("fence_proxy_requests_total", protocol="socks", decision="blocked")
        up0 = value("fence_proxy_bytes_total", direction="up")
        sock, _ = connect_tunnel(p.http_port, f"127.0.0.1:{echo.port}".encode())
        sock.sendall(b"12345")
        assert sock.recv(5) == b"12345"
        deadline = time.monotonic() + 2
        while value("fence_proxy_open_tunnels") < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert value("fence_proxy_open_tunnels") >= 1
        sock.close()
        s, _ = socks_connect(p.socks_port, 3, b"no.test", 80)
        s.close()
        deadline = time.monotonic() + 2
        while value("fence_proxy_bytes_total", direction="up") < up0 + 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert value("fence_proxy_requests_total", protocol="http", decision="allowed") == allowed0 + 1
        assert value("fence_proxy_requests_total", protocol="socks", decision="blocked") == blocked0 + 1
        assert value("fence_proxy_bytes_total", direction="up") == up0 + 5
        f.close(p)
    finally:
        f.stop()


def test_upgrade_101_becomes_a_tunnel(proxy):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve():
        conn, _ = server.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
            while True:
                data = conn.recv(4096)
                if not data:
                    break
                conn.sendall(data.upper())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=5) as s:
            s.sendall(
                f"GET http://a.ok.test:{port}/ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n".encode()
            )
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(4096)
            assert head.startswith(b"HTTP/1.1 101 ")
            s.sendall(b"shout")
            assert s.recv(5) == b"SHOUT"
    finally:
        server.close()


def test_expect_100_continue(proxy, origin):
    port = origin.server_address[1]
    body = "z" * 5000
    start = time.monotonic()
    r = curl(
        "-v",
        "--proxy",
        proxy.url,
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        body,
        f"http://a.ok.test:{port}/expect",
    )
    assert r.returncode == 0, r.stderr
    assert json_body(r)["body"] == body
    assert "HTTP/1.1 100 Continue" in r.stderr
    assert time.monotonic() - start < 0.9  # relayed at once, not curl's 1 s fallback


def test_connection_cap_per_session(resolver, echo):
    f = ProxyFactory(resolver)
    f.start(max_connections=3, collect_events=False)
    try:
        p = f.open(allowed_domains=["127.0.0.1"])
        held = [socket.create_connection(("127.0.0.1", p.http_port), timeout=5) for _ in range(3)]
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", p.http_port), timeout=5)
        assert extra.recv(10) == b""  # accepted and closed at once
        extra.close()
        held.pop().close()
        time.sleep(0.2)
        sock, head = connect_tunnel(p.http_port, f"127.0.0.1:{echo.port}".encode())
        assert head.startswith(b"HTTP/1.1 200 ")
        sock.close()
        for s in held:
            s.close()
        f.close(p)
    finally:
        f.stop()


def test_fixed_port_in_use_is_unavailable(factory):
    from fence.bus import RemoteError

    busy = socket.create_server(("127.0.0.1", 0))
    try:
        with pytest.raises(RemoteError) as e:
            factory.open(allowed_domains=["a.test"], http_proxy_port=busy.getsockname()[1])
        assert e.value.code == "unavailable"
    finally:
        busy.close()
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    p = factory.open(allowed_domains=["a.test"], http_proxy_port=port)
    assert p.http_port == port
    factory.close(p)


def test_loopback_relaxed_only(resolver):
    from fence.bus import InProcessBus, run_sync
    from fence.messages import ProxySessionOpen, ProxySessionOpened
    from fence.policy import NetworkConfig
    from fence.proxy.service import ProxyService
    from fence.subjects import PROXY_SESSION_OPEN

    bus = InProcessBus()
    service = ProxyService(loopback="relaxed", resolver=resolver)
    run_sync(service.start(bus))
    try:
        strict = run_sync(
            bus.request(
                PROXY_SESSION_OPEN,
                ProxySessionOpen(sandbox="aa01", network=NetworkConfig(allowed_domains=["a.test"])),
                ProxySessionOpened,
            )
        )
        relaxed = run_sync(
            bus.request(
                PROXY_SESSION_OPEN,
                ProxySessionOpen(sandbox="aa02", network=NetworkConfig(allowed_domains=["*"])),
                ProxySessionOpened,
                timeout=10,
            )
        )
        assert strict.http_port == 0 and not strict.relaxed
        assert relaxed.http_port and relaxed.relaxed
    finally:
        run_sync(service.stop())


def test_listeners_only_when_the_intent_lets_something_through(resolver):
    """The service opens listeners exactly when ``fence.netintent`` says filtered or relaxed (as the executor)."""
    from fence.bus import InProcessBus, run_sync
    from fence.messages import ProxySessionOpen, ProxySessionOpened
    from fence.netintent import NONE, intent
    from fence.policy import NetworkConfig
    from fence.proxy.service import ProxyService
    from fence.subjects import PROXY_SESSION_OPEN

    bus = InProcessBus()
    service = ProxyService(resolver=resolver)
    run_sync(service.start(bus))
    try:
        for i, network in enumerate(
            (
                NetworkConfig(),
                NetworkConfig(denied_domains=["a.test"]),
                NetworkConfig(default_action="proxy"),  # no upstream: grey is denied
                NetworkConfig(upstream_proxy="http://127.0.0.1:9"),  # no defaultAction
                NetworkConfig(default_action="proxy", upstream_proxy="http://127.0.0.1:9"),
                NetworkConfig(allowed_domains=["a.test"]),
            )
        ):
            opened = run_sync(
                bus.request(
                    PROXY_SESSION_OPEN,
                    ProxySessionOpen(sandbox=f"bb{i:02d}", network=network),
                    ProxySessionOpened,
                    timeout=10,
                )
            )
            assert bool(opened.http_port) == (intent(network) != NONE), network
    finally:
        run_sync(service.stop())


def test_default_action_proxy_without_upstream_denies(factory, origin):
    p = factory.open(allowed_domains=["a.test"], default_action="proxy")  # invalid config: fail closed
    try:
        port = origin.server_address[1]
        resp = raw_exchange(p.http_port, f"GET http://grey.test:{port}/ HTTP/1.1\r\n\r\n".encode())
        assert status_of(resp) == 403 and b'Add "grey.test"' in resp
    finally:
        factory.close(p)
