"""Bridges without socat: listeners created inside a sandbox's network namespace."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from fence.executor.bridge import as_socket
from fence.executor.host import host_facts
from fence.executor.launch import Sandbox
from fence.executor.plan import NetPlan, RunPlan, render

pytestmark = pytest.mark.sandbox

CLIENT = (
    "import socket,sys\n"
    "for port in (3128, 1080):\n"
    "    s = socket.create_connection(('127.0.0.1', port), timeout=5)\n"
    "    s.sendall(b'hello %d' % port)\n"
    "    print(s.recv(100).decode())\n"
)


def _serve_once(listener: socket.socket, out: list) -> None:
    conn, _ = listener.accept()
    with conn:
        data = conn.recv(100)
        out.append(data)
        conn.sendall(b"host saw " + data)


def test_listeners_inside_the_netns_reach_the_host(tmp_path, capfd):
    plan = render(
        RunPlan(
            command=["python3", "-c", CLIENT],
            cwd="/",
            env=dict(os.environ),
            host=host_facts(),
            network=NetPlan(proxy_listen=(("127.0.0.1", 3128), ("127.0.0.1", 1080))),
        )
    )
    assert "--block-fd" in plan.argv and "--unshare-net" in plan.argv
    sandbox = Sandbox(plan).start()
    assert len(sandbox.listeners) == 2
    seen: list = []
    listeners = [as_socket(sock) for sock in sandbox.listeners]  # the bridge's _socket objects, to accept on
    threads = [threading.Thread(target=_serve_once, args=(sock, seen)) for sock in listeners]
    for t in threads:
        t.start()
    code = sandbox.wait()
    for t in threads:
        t.join(5)
    for sock in listeners:
        sock.close()
    out = capfd.readouterr().out
    assert code == 0
    assert sorted(seen) == [b"hello 1080", b"hello 3128"]
    assert out.splitlines() == ["host saw hello 3128", "host saw hello 1080"]


def test_listener_is_not_on_the_host_loopback():
    # The sandbox's 127.0.0.1:PORT lives in its own netns: the host's port stays free.
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    plan = render(
        RunPlan(
            command=["true"],
            cwd="/",
            env=dict(os.environ),
            host=host_facts(),
            network=NetPlan(proxy_listen=(("127.0.0.1", port),)),
        )
    )
    sandbox = Sandbox(plan).start()
    try:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))  # would fail with EADDRINUSE if it were the host's
    finally:
        sandbox.wait()
        for sock in sandbox.listeners:
            sock.close()


def test_failed_prepare_stops_the_sandbox_before_its_command():
    """A hand-off that fails while bwrap waits on --block-fd: the command never runs (fail closed).

    Regression: killing bwrap alone let its child, released by the block
    pipe's EOF, run the command.
    """
    from conftest import session_dir
    from fence.executor.launch import LaunchError

    work = str(session_dir("fence-prepare-"))  # not /tmp: private inside
    marker = os.path.join(work, "ran")
    plan = render(
        RunPlan(
            command=["sh", "-c", f"echo > {marker}"],
            cwd="/",
            env=dict(os.environ),
            host=host_facts(),
            network=NetPlan(proxy_listen=(("127.0.0.1", 3128),)),
        )
    )
    at = plan.argv.index("--chdir")
    plan.argv[at:at] = ["--bind", work, work]  # the one place the command could leave a trace
    seen = []

    def prepare(listeners):
        seen.extend(listeners)
        raise RuntimeError("proxy unreachable")

    with pytest.raises(LaunchError, match="proxy unreachable"):
        Sandbox(plan).start(prepare)
    assert len(seen) == 1 and seen[0].fileno() == -1  # the listener was closed too
    import time

    time.sleep(0.3)
    ran = os.path.exists(marker)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    assert not ran


SIOCGSKNS = 0x894C
"""ioctl: a descriptor for the network namespace a socket lives in."""


def _netns_of(sock) -> int:
    import fcntl

    fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


@pytest.mark.parametrize("way", ["this thread (root)", "a forked child"])
def test_listeners_live_in_the_sandbox_netns_and_the_caller_stays_out(way):
    """Both ways of making listeners: root's thread enters the netns and comes back; a child joins for others."""
    from fence.executor import bridge

    if way.startswith("this thread") and os.geteuid() != 0:
        pytest.skip("only root enters the netns from its own thread")
    plan = render(
        RunPlan(
            command=["sleep", "5"],
            cwd="/",
            env=dict(os.environ),
            host=host_facts(),
            network=NetPlan(proxy_listen=(("127.0.0.1", 3128),)),
        )
    )
    own = os.stat("/proc/thread-self/ns/net").st_ino
    sandbox = Sandbox(plan).start()
    try:
        inside = os.stat(f"/proc/{sandbox.init_pid}/ns/net").st_ino
        setns = bridge._setns_function()
        extra = (
            bridge._listen_from_this_thread(sandbox.init_pid, [("127.0.0.1", 4000), ("::1", 4000)], setns)
            if way.startswith("this thread")
            else bridge._listen_from_a_child(sandbox.init_pid, [("127.0.0.1", 4000), ("::1", 4000)], setns)
        )
        assert extra is not None and len(extra) == 2
        made = [s for s in [*sandbox.listeners, *extra] if s is not None]
        assert inside != own and [_netns_of(s) for s in made] == [inside] * len(made)
        assert os.stat("/proc/thread-self/ns/net").st_ino == own  # back home
        with socket.socket() as probe:  # this thread's own loopback again: the host's port 4000 is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", 4000))
        for s in made:
            s.close()
    finally:
        os.kill(sandbox.init_pid, 9)  # the pid namespace's init: everything inside goes with it
        sandbox.wait()
