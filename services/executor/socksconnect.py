"""ssh's ProxyCommand inside a filtered sandbox: ``python3 -I -S socksconnect.py HOST PORT``.

Inside the sandbox's network namespace the only way out is fence's SOCKS5
proxy at 127.0.0.1:1080 (a listener made inside the netns, served by the
run's proxy session).  ssh does not speak SOCKS, so fence's generated
ssh_config (``sshproxy.py``) makes ssh run this program, which:

1. connects to the proxy and asks, with no authentication, for a CONNECT to
   HOST:PORT **by name** (address type 0x03, also for IP literals): the proxy
   canonicalises, filters and resolves; nothing is resolved in here;
2. on reply 0x00 relays stdin -> socket and socket -> stdout until both
   directions have ended.  Half-close is kept: EOF on stdin becomes
   ``shutdown(SHUT_WR)`` on the socket and the other direction carries on
   (ssh, git and rsync rely on it); EOF from the socket closes stdout.
   One thread per direction with blocking I/O: a busy direction never stalls
   the other (a single loop doing blocking ``sendall`` could deadlock when
   both sides push bulk data at once);
3. on any other reply prints why on stderr (ssh shows it) and exits 1.

Standalone on purpose: run with ``-I -S`` (no site, no user paths, no fence
import), so it starts in ~25 ms and works for any user who can read the
interpreter and this file (the sandbox sees the host's root read-only).
``-x ADDR:PORT`` picks another proxy (tests).  No netcat needed.
"""

import os
import socket
import sys
import threading

PROXY = ("127.0.0.1", 1080)
CHUNK = 65536

REPLIES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset (fence network policy: the host is not in network.allowedDomains, "
    "or is denied)",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


class Failed(Exception):
    pass


def parse_args(argv: list) -> tuple:
    proxy = PROXY
    args = list(argv)
    if len(args) >= 2 and args[0] == "-x":
        host, sep, port = args[1].rpartition(":")
        if not sep or not port.isdigit():
            raise Failed(f"-x wants ADDR:PORT, not {args[1]!r}")
        proxy = (host.strip("[]"), int(port))
        args = args[2:]
    if len(args) != 2 or not args[1].isdigit() or not 0 < int(args[1]) < 65536:
        raise Failed("usage: socksconnect.py [-x ADDR:PORT] HOST PORT")
    host = args[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    name = host.encode("idna") if not host.isascii() else host.encode()
    if not 0 < len(name) < 256:
        raise Failed(f"host name {host!r} is empty or longer than 255 bytes")
    return proxy, name, int(args[1])


def read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise Failed("the SOCKS proxy closed the connection during the handshake")
        data += chunk
    return data


def handshake(sock: socket.socket, name: bytes, port: int) -> None:
    sock.sendall(b"\x05\x01\x00")
    if read_exact(sock, 2) != b"\x05\x00":
        raise Failed("the SOCKS proxy refused the no-authentication method")
    sock.sendall(b"\x05\x01\x00\x03" + bytes((len(name),)) + name + port.to_bytes(2, "big"))
    ver, rep, _rsv, atyp = read_exact(sock, 4)
    if ver != 5:
        raise Failed("the proxy did not answer as SOCKS5")
    if rep != 0:
        raise Failed(REPLIES.get(rep, f"SOCKS reply {rep}"))
    if atyp == 1:
        read_exact(sock, 4 + 2)
    elif atyp == 4:
        read_exact(sock, 16 + 2)
    elif atyp == 3:
        read_exact(sock, read_exact(sock, 1)[0] + 2)
    else:
        raise Failed(f"the proxy answered with address type {atyp}")


def upstream(sock: socket.socket) -> None:
    """stdin -> socket; EOF becomes a half-close (the reply direction keeps going)."""
    try:
        while True:
            data = os.read(0, CHUNK)
            if not data:
                break
            sock.sendall(data)
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def downstream(sock: socket.socket) -> None:
    """socket -> stdout; EOF closes stdout so the reader sees it."""
    try:
        while True:
            data = sock.recv(CHUNK)
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(1, view) :]
    except OSError:  # ssh went away (EPIPE) or the connection was reset
        pass
    try:
        os.close(1)
    except OSError:
        pass


def main(argv: list) -> int:
    try:
        proxy, name, port = parse_args(argv)
    except Failed as e:
        print(f"socksconnect: {e}", file=sys.stderr)
        return 2
    shown = f"{name.decode()}:{port}"
    try:
        sock = socket.create_connection(proxy, timeout=60)
        handshake(sock, name, port)
        sock.settimeout(None)
    except (OSError, Failed) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        print(f"fence: cannot reach {shown} through the SOCKS proxy at {proxy[0]}:{proxy[1]}: {why}", file=sys.stderr)
        return 1
    up = threading.Thread(target=upstream, args=(sock,), daemon=True)
    up.start()
    downstream(sock)
    up.join()
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
