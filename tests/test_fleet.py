"""Detached sandboxes (docs/fleet.md): the executor API on the bus, the CLI, and the faults.

A real ``fence up --detach`` in private XDG dirs, as root and as the
unprivileged ``fence-test`` user (each with its own supervisor); real bwrap
sandboxes started by the supervisor's executor service; the test process
talks to it as the ``client`` bus user (the API) or runs the ``fence`` CLI as
the supervisor's user.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import msgspec
import pytest

from conftest import FenceRunner
from fence.bus import RemoteError
from fence.messages import (
    ExecAck,
    ExecListReply,
    ExecListRequest,
    ExecOutputReply,
    ExecOutputRequest,
    ExecSandboxRequest,
    ExecSignalRequest,
    ExecStartReply,
    ExecStartRequest,
    ExecStdinRequest,
    ExecWaitReply,
    ExecWaitRequest,
    SandboxInfo,
)
from fence.natsbus import NatsBus
from fence.runtime import Credentials, SupervisorInfo, pid_alive
from fence.subjects import (
    EXEC_FLEET,
    EXEC_INFO,
    EXEC_KILL,
    EXEC_LIST,
    EXEC_OUTPUT,
    EXEC_SIGNAL,
    EXEC_START,
    EXEC_STDIN,
    EXEC_WAIT,
)
from test_run_supervised_net import _add_supervisor_packages

pytestmark = [pytest.mark.nats, pytest.mark.sandbox]


class Fleet:
    """One supervisor of the runner's user, and ways to reach its executor."""

    def __init__(self, runner: FenceRunner, root: Path, env: dict[str, str]):
        self.runner, self.root, self.env = runner, root, env
        self.rdir = root / "run" / "fence"

    def fence(self, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.runner.run(*args, env=self.env, cwd=str(self.root), input=input, timeout=timeout)

    def popen(self, *args: str, **kw) -> subprocess.Popen:
        return self.runner.popen(*args, env=self.env, cwd=str(self.root), **kw)

    def info(self) -> SupervisorInfo:
        return msgspec.json.decode((self.rdir / "supervisor.json").read_bytes(), type=SupervisorInfo)

    def executor_pid(self) -> int:
        return next(c.pid for c in self.info().components if c.name == "executor")

    def creds(self) -> Credentials:
        return msgspec.json.decode((self.rdir / "creds" / "client.json").read_bytes(), type=Credentials)

    def api(self, scenario):
        """Run ``scenario(bus)`` on a client connection of this supervisor's bus."""
        creds = self.creds()

        async def main():
            bus = await NatsBus.connect(
                creds.url, user=creds.user, password=creds.password, inbox_prefix=creds.inbox_prefix
            )
            try:
                return await scenario(bus)
            finally:
                await bus.close()

        return asyncio.run(main())

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        self.runner.own(path)
        return path


@pytest.fixture(scope="module", params=["self", "unprivileged"])
def fleet(request):
    runner: FenceRunner = request.getfixturevalue(f"{request.param}_runner")
    extra = _add_supervisor_packages(runner) if runner.user else {}
    root = runner.workdir()
    (root / "run").mkdir(mode=0o700)
    runner.own(root / "run")
    env = runner.env(
        XDG_RUNTIME_DIR=str(root / "run"), XDG_DATA_HOME=str(root / "data"), XDG_STATE_HOME=str(root / "state"), **extra
    )
    up = runner.run("up", "--detach", env=env, cwd=str(root), timeout=60)
    assert up.returncode == 0, up.stderr
    f = Fleet(runner, root, env)
    try:
        yield f
    finally:
        pids = [f.info().pid, *(c.pid for c in f.info().components)]
        down = runner.run("down", env=env, cwd=str(root), timeout=30)
        leftover = [os.path.join(d, n) for d, dirs, files in os.walk(root / "run") for n in dirs + files]
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        assert down.returncode == 0 and leftover == [], (down.stderr, leftover)


async def start(bus, fleet: Fleet, argv: list[str], **kw) -> ExecStartReply:
    return await bus.request(
        EXEC_START, ExecStartRequest(argv=argv, cwd=str(fleet.root), **kw), ExecStartReply, timeout=60
    )


async def wait_for(bus, sandbox: str, timeout: float = 30) -> SandboxInfo:
    deadline = time.monotonic() + timeout
    while True:
        reply = await bus.request(EXEC_WAIT, ExecWaitRequest(sandbox=sandbox, timeout=2), ExecWaitReply, timeout=10)
        if reply.info.state == "exited" or time.monotonic() > deadline:
            return reply.info


async def read_all(bus, sandbox: str, after: int = 0):
    """Every chunk from ``after`` to the end, following the sandbox (long polls)."""
    chunks = []
    while True:
        reply = await bus.request(
            EXEC_OUTPUT, ExecOutputRequest(sandbox=sandbox, after=after, wait=2), ExecOutputReply, timeout=10
        )
        chunks += reply.chunks
        if reply.chunks:
            after = reply.chunks[-1].seq
        if reply.ended:
            return chunks


def text_of(chunks, stream: str = "stdout") -> str:
    return b"".join(c.data for c in chunks if c.stream == stream).decode()


async def error_of(bus, subject: str, msg, reply_type) -> RemoteError:
    with pytest.raises(RemoteError) as caught:
        await bus.request(subject, msg, reply_type, timeout=30)
    return caught.value


# --- the API ------------------------------------------------------------------------------------


def test_start_list_info_wait_and_ordered_output(fleet):
    async def scenario(bus):
        started = await start(
            bus, fleet, ["sh", "-c", "echo out1; echo err1 >&2; seq 1 500; exit 3"], labels={"job": "t1"}
        )
        listed = await bus.request(EXEC_LIST, ExecListRequest(labels={"job": "t1"}), ExecListReply)
        info = await bus.request(EXEC_INFO, ExecSandboxRequest(sandbox=started.sandbox), SandboxInfo)
        ended = await wait_for(bus, started.sandbox)
        chunks = await read_all(bus, started.sandbox)
        others = await bus.request(EXEC_LIST, ExecListRequest(labels={"job": "other"}), ExecListReply)
        return started, listed, info, ended, chunks, others

    started, listed, info, ended, chunks, others = fleet.api(scenario)
    assert len(started.sandbox) == 12 and started.pid > 0
    assert [s.sandbox for s in listed.sandboxes] == [started.sandbox] and others.sandboxes == []
    assert info.argv[0] == "sh" and info.labels == {"job": "t1"} and info.cwd == str(fleet.root)
    assert (ended.state, ended.exit_code) == ("exited", 3)
    assert [c.seq for c in chunks] == list(range(1, len(chunks) + 1))  # numbered in order, nothing missing
    assert text_of(chunks) == "out1\n" + "".join(f"{i}\n" for i in range(1, 501))
    assert text_of(chunks, "stderr") == "err1\n"


def test_policy_by_template_settings_or_inline_config(fleet):
    """The three ways to name a policy give the sandbox that policy (here: its network mode)."""
    cfg = fleet.write("filtered.json", json.dumps({"network": {"allowedDomains": ["blocked.invalid"]}}))
    # every sandbox with a netns has its proxies now (they deny all without allowedDomains): what shows a
    # filtered policy is ssh's route through them (the generated ssh_config, or GIT_SSH_COMMAND without one)
    probe = [
        "sh",
        "-c",
        "if grep -qs 'Generated by fence' /etc/ssh/ssh_config || [ -n \"$GIT_SSH_COMMAND\" ]; "
        "then echo network=filtered; else echo network=none; fi",
    ]

    async def scenario(bus):
        out = {}
        for name, how in (
            ("template", {"template": "disable-telemetry"}),
            ("settings", {"settings": str(cfg)}),
            ("config", {"config": {"network": {"allowedDomains": ["blocked.invalid"]}}}),
            ("defaults", {}),
        ):
            started = await start(bus, fleet, probe, **how)
            out[name] = text_of(await read_all(bus, started.sandbox))
        return out

    out = fleet.api(scenario)
    assert out["settings"] == out["config"] == "network=filtered\n", out
    assert out["defaults"] == "network=none\n", out
    assert out["template"].startswith("network="), out  # ran under the template (a template that writes
    # nothing: one that reserves placeholders leaves its lock files in the runtime dir after fence down)


def test_stdin_round_trip(fleet):
    async def scenario(bus):
        started = await start(bus, fleet, ["cat"], stdin=True)
        for part in (b"hello ", b"sandbox\n", b"bye\n"):
            await bus.request(EXEC_STDIN, ExecStdinRequest(sandbox=started.sandbox, data=part), ExecAck)
        await bus.request(EXEC_STDIN, ExecStdinRequest(sandbox=started.sandbox, eof=True), ExecAck)
        ended = await wait_for(bus, started.sandbox)
        chunks = await read_all(bus, started.sandbox)
        closed = await error_of(bus, EXEC_STDIN, ExecStdinRequest(sandbox=started.sandbox, data=b"more"), ExecAck)
        no_stdin = await start(bus, fleet, ["cat"])  # without stdin: /dev/null, cat ends at once
        return ended, chunks, closed, await wait_for(bus, no_stdin.sandbox)

    ended, chunks, closed, no_stdin = fleet.api(scenario)
    assert ended.exit_code == 0 and text_of(chunks) == "hello sandbox\nbye\n"
    assert closed.code == "closed" and closed.field == "stdin"
    assert no_stdin.exit_code == 0


def test_signal_reaches_the_command_and_kill_ends_the_sandbox(fleet):
    script = "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done"

    async def scenario(bus):
        polite = await start(bus, fleet, ["sh", "-c", script])
        reply = await bus.request(
            EXEC_OUTPUT, ExecOutputRequest(sandbox=polite.sandbox, wait=10), ExecOutputReply, timeout=20
        )
        assert text_of(reply.chunks) == "ready\n"
        await bus.request(EXEC_SIGNAL, ExecSignalRequest(sandbox=polite.sandbox, signal="TERM"), ExecAck)
        polite_end = await wait_for(bus, polite.sandbox)
        rude = await start(bus, fleet, ["sleep", "300"])
        bad = await error_of(bus, EXEC_SIGNAL, ExecSignalRequest(sandbox=rude.sandbox, signal="NOPE"), ExecAck)
        await bus.request(EXEC_KILL, ExecSandboxRequest(sandbox=rude.sandbox), ExecAck)
        rude_end = await wait_for(bus, rude.sandbox)
        return polite_end, text_of(await read_all(bus, polite.sandbox)), bad, rude, rude_end

    polite_end, out, bad, rude, rude_end = fleet.api(scenario)
    assert polite_end.exit_code == 7 and out == "ready\ngot TERM\n"
    assert (bad.code, bad.field) == ("invalid", "signal")
    assert (rude_end.exit_code, rude_end.signal) == (137, 9)
    assert not pid_alive(rude.pid)


def test_late_reader_gets_the_tail_then_the_live_stream(fleet):
    """A client that comes late gets what is retained (a dropped marker for what is not), then live lines."""
    gate = fleet.root / f"gate-{os.urandom(3).hex()}"
    script = (
        f"seq 1 40000; echo early-end; "  # 229 kB: over 3 reads of 64 KiB, so the ring must drop some
        f"while [ ! -e {gate} ]; do sleep 0.05; done; echo live-line"
    )

    async def scenario(bus):
        started = await start(bus, fleet, ["sh", "-c", script], tail_bytes=4096)
        await read_until(bus, started.sandbox, "early-end", timeout=60)  # all before the gate is printed
        first = await bus.request(EXEC_OUTPUT, ExecOutputRequest(sandbox=started.sandbox), ExecOutputReply)
        follow = asyncio.ensure_future(read_all(bus, started.sandbox, after=first.chunks[-1].seq))
        await asyncio.sleep(0.3)
        gate.touch()
        return first, await follow

    try:
        first, live = fleet.api(scenario)
    finally:
        gate.unlink(missing_ok=True)
    marker, *tail = first.chunks
    assert marker.stream == "dropped" and marker.count > 0  # the start is gone, and said so
    assert sum(len(c.data) for c in tail) <= 4096 + 65536
    assert marker.count == marker.seq and tail[0].seq == marker.seq + 1  # every chunk before the tail counted
    assert text_of(tail).endswith("early-end\n") and not text_of(tail).startswith("1\n2\n")
    assert text_of(live) == "live-line\n" and not first.ended


def test_a_reader_that_stops_reading_stalls_nothing(fleet):
    """A flood nobody reads finishes anyway (the executor drains its pipes); the loss is counted, and a small
    sandbox started beside it answers at once."""

    async def scenario(bus):
        flood = await start(
            bus, fleet, ["sh", "-c", "head -c 30000000 /dev/zero | tr '\\0' x; echo; echo last"], tail_bytes=65536
        )
        await bus.request(
            EXEC_OUTPUT, ExecOutputRequest(sandbox=flood.sandbox, wait=5), ExecOutputReply, timeout=10
        )  # read once, then never again
        t0 = time.monotonic()
        small = await start(bus, fleet, ["echo", "beside"])
        small_out = text_of(await read_all(bus, small.sandbox))
        small_took = time.monotonic() - t0
        ended = await wait_for(bus, flood.sandbox, timeout=60)
        reply = await bus.request(EXEC_OUTPUT, ExecOutputRequest(sandbox=flood.sandbox, after=1), ExecOutputReply)
        return small_out, small_took, ended, reply

    small_out, small_took, ended, reply = fleet.api(scenario)
    assert small_out == "beside\n" and small_took < 20
    assert ended.exit_code == 0 and ended.output_bytes == 30000000 + len("\nlast\n")
    marker = reply.chunks[0]
    assert marker.stream == "dropped" and marker.count > 100
    assert text_of(reply.chunks).endswith("x\nlast\n")


async def read_until(bus, sandbox: str, text: str, timeout: float = 20) -> str:
    """The output from the start until ``text`` appears in it."""
    seen, after = b"", 0
    deadline = time.monotonic() + timeout
    while text.encode() not in seen:
        assert time.monotonic() < deadline, f"{text!r} never came: {seen!r}"
        reply = await bus.request(
            EXEC_OUTPUT, ExecOutputRequest(sandbox=sandbox, after=after, wait=2), ExecOutputReply, timeout=10
        )
        seen += b"".join(c.data for c in reply.chunks)
        after = reply.chunks[-1].seq if reply.chunks else after
        assert not reply.ended or text.encode() in seen, seen
    return seen.decode(errors="replace")


def test_a_tty_sandbox_gets_a_terminal_and_with_allow_pty_owns_it(fleet):
    """``tty``: a PTY as stdio; with ``allowPty`` the command's controlling terminal, so a Ctrl-C byte
    written to it is SIGINT for the foreground group, and EOF is Ctrl-D."""
    cfg = fleet.write("pty.json", json.dumps({"allowPty": True}))
    script = (
        "test -t 0 && test -t 1 && echo is-a-tty; (: < /dev/tty) 2>/dev/null && echo has-ctty; "
        "trap 'echo INT-seen; exit 4' INT; read line; echo got:$line; while :; do sleep 0.05; done"
    )

    async def scenario(bus):
        owned = await start(bus, fleet, ["sh", "-c", script], tty=True, settings=str(cfg))
        await read_until(bus, owned.sandbox, "is-a-tty")
        await bus.request(EXEC_STDIN, ExecStdinRequest(sandbox=owned.sandbox, data=b"hello\n"), ExecAck)
        await read_until(bus, owned.sandbox, "got:hello")
        await bus.request(EXEC_STDIN, ExecStdinRequest(sandbox=owned.sandbox, data=b"\x03"), ExecAck)
        owned_end = await wait_for(bus, owned.sandbox)
        owned_out = text_of(await read_all(bus, owned.sandbox))
        plain = await start(
            bus,
            fleet,
            ["sh", "-c", "test -t 1 && echo is-a-tty; (: < /dev/tty) 2>/dev/null && echo has-ctty; cat"],
            tty=True,
        )
        await bus.request(EXEC_STDIN, ExecStdinRequest(sandbox=plain.sandbox, data=b"typed\n", eof=True), ExecAck)
        plain_end = await wait_for(bus, plain.sandbox)
        return owned_end, owned_out, plain_end, text_of(await read_all(bus, plain.sandbox))

    owned_end, owned_out, plain_end, plain_out = fleet.api(scenario)
    assert owned_end.tty and owned_end.exit_code == 4, owned_out
    assert "is-a-tty" in owned_out and "has-ctty" in owned_out and "INT-seen" in owned_out
    assert "hello\r\n" in owned_out  # the terminal echoes what is typed, with its line discipline
    assert plain_end.exit_code == 0 and "is-a-tty" in plain_out and "has-ctty" not in plain_out, plain_out
    assert plain_out.count("typed") == 2  # echoed, then cat's copy


# --- typed errors ----------------------------------------------------------------------------------


def test_bad_start_requests_get_typed_errors_naming_the_field(fleet):
    bad_config = fleet.write("bad.json", '{"network": {"allowedDomains": ["*.com"]}}')
    deny = fleet.write("deny.json", json.dumps({"command": {"deny": ["git push"]}}))

    async def scenario(bus):
        root = str(fleet.root)
        cases = {
            "empty argv": ExecStartRequest(argv=[], cwd=root),
            "not found": ExecStartRequest(argv=["no-such-command-xyz"], cwd=root),
            "relative cwd": ExecStartRequest(argv=["true"], cwd="relative/dir"),
            "missing cwd": ExecStartRequest(argv=["true"], cwd=root + "/missing-dir"),
            "oversized env": ExecStartRequest(argv=["true"], cwd=root, env={"BIG": "x" * 200_000}),
            "bad env name": ExecStartRequest(argv=["true"], cwd=root, env={"A=B": "c"}),
            "unknown template": ExecStartRequest(argv=["true"], cwd=root, template="no-such-template"),
            "bad policy": ExecStartRequest(argv=["true"], cwd=root, settings=str(bad_config)),
            "missing settings": ExecStartRequest(argv=["true"], cwd=root, settings="missing.json"),
            "blocked command": ExecStartRequest(argv=["git", "push"], cwd=root, settings=str(deny)),
            "tail": ExecStartRequest(argv=["true"], cwd=root, tail_bytes=-1),
            "bad inline config": ExecStartRequest(argv=["true"], cwd=root, config={"bogus": 1}),
            "two policies": ExecStartRequest(argv=["true"], cwd=root, config={}, template="code"),
            "label": ExecStartRequest(argv=["true"], cwd=root, labels={"": "x"}),
        }
        found = {name: await error_of(bus, EXEC_START, msg, ExecStartReply) for name, msg in cases.items()}
        listed = await bus.request(EXEC_LIST, ExecListRequest(), ExecListReply)
        return found, listed

    before = fleet.api(lambda bus: bus.request(EXEC_LIST, ExecListRequest(), ExecListReply))
    found, listed = fleet.api(scenario)
    fields = {name: (e.code, e.field) for name, e in found.items()}
    assert fields == {
        "empty argv": ("invalid", "argv"),
        "not found": ("invalid", "argv"),
        "relative cwd": ("invalid", "cwd"),
        "missing cwd": ("invalid", "cwd"),
        "oversized env": ("invalid", "env"),
        "bad env name": ("invalid", "env"),
        "unknown template": ("refused", "template"),
        "bad policy": ("refused", "settings"),
        "missing settings": ("refused", "settings"),
        "blocked command": ("refused", "argv"),
        "tail": ("invalid", "tail_bytes"),
        "label": ("invalid", "labels"),
        "bad inline config": ("refused", "config"),
        "two policies": ("invalid", "config"),
    }, {n: e.message for n, e in found.items()}
    assert "command not found: no-such-command-xyz" in found["not found"].message
    assert "*.com" in found["bad policy"].message and "missing.json" in found["missing settings"].message
    assert 'in the inline config: $.bogus: unknown key "bogus"' in found["bad inline config"].message
    assert not (fleet.rdir / "inline").exists()  # the inline config's file went with its start
    assert len(listed.sandboxes) == len(before.sandboxes)  # nothing was started


def test_unknown_ids_get_one_answer_on_every_subject(fleet):
    async def scenario(bus):
        ghost = "0123456789ab"
        asks = [
            (EXEC_INFO, ExecSandboxRequest(sandbox=ghost), SandboxInfo),
            (EXEC_KILL, ExecSandboxRequest(sandbox=ghost), ExecAck),
            (EXEC_SIGNAL, ExecSignalRequest(sandbox=ghost, signal="TERM"), ExecAck),
            (EXEC_WAIT, ExecWaitRequest(sandbox=ghost), ExecWaitReply),
            (EXEC_STDIN, ExecStdinRequest(sandbox=ghost, data=b"x"), ExecAck),
            (EXEC_OUTPUT, ExecOutputRequest(sandbox=ghost), ExecOutputReply),
            # another tenant's view of a real sandbox: the same words as for no sandbox at all
            (EXEC_INFO, ExecSandboxRequest(sandbox="REAL", tenant="someone-else"), SandboxInfo),
        ]
        real = await start(bus, fleet, ["true"])
        out = []
        for subject, msg, reply in asks:
            if getattr(msg, "sandbox", "") == "REAL":
                msg = msgspec.structs.replace(msg, sandbox=real.sandbox)
            out.append(await error_of(bus, subject, msg, reply))
        await wait_for(bus, real.sandbox)
        return real, out

    real, errors = fleet.api(scenario)
    assert {(e.code, e.field) for e in errors} == {("not_found", "sandbox")}
    assert {e.message for e in errors[:-1]} == {"no sandbox '0123456789ab'"}
    assert errors[-1].message == f"no sandbox '{real.sandbox}'"


def test_garbage_on_every_exec_subject_changes_nothing(fleet):
    """1000 garbage messages on each exec subject (as requests and as plain publishes): every request is
    answered with an error, the executor process is the same one, and a normal start still works."""
    import random

    pid = fleet.executor_pid()
    rng = random.Random(11)
    samples = [
        b"",
        b"{",
        b"null",
        b"[]",
        b'{"type":"ExecStartRequest"}',
        b'{"type":"ExecStartRequest","argv":"x"}',
        b'{"type":"ExecOutputRequest","sandbox":1}',
        b'{"type":"ExecStdinRequest","sandbox":"x","data":"@@"}',
        b'{"type":"ExecWaitRequest","sandbox":"x","v":99}',
        b"\xff\xfe" * 40,
    ]

    async def scenario(bus):
        before = await bus.request(EXEC_LIST, ExecListRequest(), ExecListReply)
        answers = []
        for subject in EXEC_FLEET:
            for i in range(1000):
                noise = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
                data = samples[i % len(samples)] if i % 2 else noise
                if i % 4 == 3:
                    await bus.publish_raw(subject, data)
                else:
                    answers.append(await bus.request_raw(subject, data, timeout=10))
        after = await bus.request(EXEC_LIST, ExecListRequest(), ExecListReply)
        ok = await start(bus, fleet, ["echo", "still-fine"])
        return before, answers, after, text_of(await read_all(bus, ok.sandbox))

    before, answers, after, out = fleet.api(scenario)
    decoded = [msgspec.json.decode(a) for a in answers]
    assert all(d.get("type") == "ErrorReply" for d in decoded if d.get("type") != "ExecListReply"), [
        d for d in decoded if d.get("type") not in ("ErrorReply", "ExecListReply")
    ][:3]
    assert {d["code"] for d in decoded if d.get("type") == "ErrorReply"} <= {"bad_request", "invalid", "not_found"}
    assert [s.sandbox for s in after.sandboxes] == [s.sandbox for s in before.sandboxes]
    assert out == "still-fine\n" and fleet.executor_pid() == pid


# --- the CLI ---------------------------------------------------------------------------------------


def test_cli_run_detach_ps_logs_wait(fleet):
    r = fleet.fence("run", "--detach", "--label", "role=cli", "--", "sh", "-c", "echo from-cli; echo oops >&2; exit 4")
    assert r.returncode == 0, r.stderr
    sandbox = r.stdout.strip()
    assert len(sandbox) == 12
    waited = fleet.fence("wait", sandbox)
    assert waited.returncode == 4, waited.stderr
    logs = fleet.fence("logs", sandbox)
    assert (logs.returncode, logs.stdout, logs.stderr) == (0, "from-cli\n", "oops\n")
    ps = fleet.fence("ps")
    line = next(row for row in ps.stdout.splitlines() if row.startswith(sandbox))
    assert "role=cli" in line and "exited" in line and line.split()[-1] == "4"
    assert ps.stdout.splitlines()[0].split() == ["ID", "TENANT", "LABELS", "COMMAND", "STATE", "AGE", "EXIT"]
    rows = json.loads(fleet.fence("ps", "--json").stdout)
    row = next(row for row in rows if row["sandbox"] == sandbox)
    assert row["labels"] == {"role": "cli"} and row["exit_code"] == 4 and row["state"] == "exited"


def test_cli_logs_follow_attach_and_kill(fleet):
    r = fleet.fence("run", "--detach", "--", "sh", "-c", "echo one; sleep 1; echo two; exit 2")
    sandbox = r.stdout.strip()
    followed = fleet.fence("logs", "-f", sandbox)
    assert (followed.returncode, followed.stdout) == (0, "one\ntwo\n"), followed.stderr
    r = fleet.fence("run", "--detach", "-i", "--", "sh", "-c", "read line; echo got:$line; exit 5")
    attached = fleet.fence("attach", r.stdout.strip(), input="typed\n")
    assert (attached.returncode, attached.stdout) == (5, "got:typed\n"), attached.stderr
    r = fleet.fence("run", "--detach", "--", "sleep", "300")
    sandbox = r.stdout.strip()
    attach = fleet.popen("attach", sandbox, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    assert fleet.fence("kill", sandbox).returncode == 0
    _, err = attach.communicate(timeout=30)
    assert attach.returncode == 137, err
    assert fleet.fence("wait", sandbox).returncode == 137
    r = fleet.fence("run", "--detach", "--", "sh", "-c", "trap 'exit 9' TERM; while :; do sleep 0.05; done")
    sandbox = r.stdout.strip()
    time.sleep(0.5)
    assert fleet.fence("kill", "-s", "TERM", sandbox).returncode == 0
    assert fleet.fence("wait", sandbox).returncode == 9


def test_attach_forwards_signals(fleet):
    r = fleet.fence(
        "run",
        "--detach",
        "--",
        "sh",
        "-c",
        "trap 'echo INT-seen; exit 11' INT; echo armed; while :; do sleep 0.05; done",
    )
    attach = fleet.popen("attach", r.stdout.strip(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert attach.stdout.readline() == "armed\n"
    attach.send_signal(signal.SIGINT)
    out, err = attach.communicate(timeout=30)
    assert (attach.returncode, out) == (11, "INT-seen\n"), err


def test_cli_attach_to_a_tty_sandbox_from_a_terminal(fleet):
    """``fence attach`` on a real terminal: raw mode while attached (keys, Ctrl-C too, go to the sandbox's
    PTY), the terminal restored after, the sandbox's exit code."""
    cfg = fleet.write("pty-cli.json", json.dumps({"allowPty": True}))
    script = "trap 'echo INT-seen; exit 6' INT; read line; echo got:$line; while :; do sleep 0.05; done"
    r = fleet.fence("run", "--detach", "--tty", "-s", str(cfg), "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    with fleet.runner.terminal("attach", r.stdout.strip(), env=fleet.env, cwd=str(fleet.root)) as term:
        before = term.modes()
        time.sleep(1)
        term.send(b"typed\r")
        term.expect("got:typed")
        term.send(b"\x03")
        term.expect("INT-seen")
        assert term.wait() == 6
        assert term.modes() == before


def test_cli_errors(fleet):
    ghost = "0123456789ab"
    for args in (("logs", ghost), ("attach", ghost), ("kill", ghost), ("kill", "-s", "TERM", ghost), ("wait", ghost)):
        r = fleet.fence(*args)
        assert (r.returncode, r.stderr) == (1, f"Error: no sandbox '{ghost}'\n"), args
    r = fleet.fence("run", "--detach", "--", "no-such-command-xyz")
    assert r.returncode == 127 and "command not found" in r.stderr
    for flags in (("--label", "a=b"), ("--tty",), ("-i",), ("--tail", "10")):
        r = fleet.fence("run", *flags, "--", "true")
        assert r.returncode == 1 and "are for fence run --detach" in r.stderr, flags
    r = fleet.fence("logs")
    assert r.returncode == 1 and "one sandbox id" in r.stderr


def test_cli_without_a_supervisor(fleet):
    lone = fleet.runner.workdir()
    (lone / "run").mkdir(mode=0o700)
    fleet.runner.own(lone / "run")
    env = fleet.runner.env(XDG_RUNTIME_DIR=str(lone / "run"), **{k: v for k, v in fleet.env.items() if k == "PATH"})
    for args in (("ps",), ("wait", "0123456789ab"), ("run", "--detach", "--", "true")):
        r = fleet.runner.run(*args, env=env, cwd=str(lone))
        assert r.returncode == 1 and "no supervisor is running" in r.stderr, (args, r.stderr)


# --- faults ------------------------------------------------------------------------------------------


def test_a_client_killed_mid_stream_leaves_its_sandbox_running(fleet):
    r = fleet.fence("run", "--detach", "--", "sh", "-c", "while :; do echo tick; sleep 0.05; done")
    sandbox = r.stdout.strip()
    attach = fleet.popen("attach", sandbox, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert attach.stdout.readline() == b"tick\n"
    attach.kill()
    attach.communicate(timeout=10)
    time.sleep(0.5)

    async def scenario(bus):
        info = await bus.request(EXEC_INFO, ExecSandboxRequest(sandbox=sandbox), SandboxInfo)
        await bus.request(EXEC_KILL, ExecSandboxRequest(sandbox=sandbox), ExecAck)
        return info, await wait_for(bus, sandbox)

    info, ended = fleet.api(scenario)
    assert info.state == "running" and ended.exit_code == 137


def test_executor_killed_takes_its_sandboxes_and_tells_clients(fleet):
    """SIGKILL the executor service: its sandboxes die with it, a following client is told "executor lost",
    the supervisor restarts it and a new start works."""
    pids = []
    ids = []
    for _ in range(2):
        r = fleet.fence("run", "--detach", "--", "sh", "-c", "echo up; sleep 300")
        ids.append(r.stdout.strip())
    info = fleet.api(lambda bus: bus.request(EXEC_LIST, ExecListRequest(), ExecListReply))
    pids = [s.pid for s in info.sandboxes if s.sandbox in ids]
    assert len(pids) == 2 and all(pid_alive(p) for p in pids)
    attach = fleet.popen("attach", ids[0], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    follower = fleet.popen("logs", "-f", ids[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert attach.stdout.readline() == "up\n" and follower.stdout.readline() == "up\n"  # both follow now
    old = fleet.executor_pid()
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in pids), "a sandbox outlived its executor"
    _, err = attach.communicate(timeout=30)
    assert attach.returncode == 1 and f"Error: executor lost: sandbox {ids[0]}" in err, err
    _, err = follower.communicate(timeout=30)
    assert follower.returncode == 1 and f"Error: executor lost: sandbox {ids[1]}" in err, err
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        component = next(c for c in fleet.info().components if c.name == "executor")
        if component.pid != old and component.healthy:
            break
        time.sleep(0.1)
    r = fleet.fence("run", "--detach", "--", "echo", "after-restart")
    assert r.returncode == 0, r.stderr
    assert fleet.fence("wait", r.stdout.strip()).returncode == 0
    assert fleet.fence("logs", r.stdout.strip()).stdout == "after-restart\n"
    assert fleet.fence("logs", ids[0]).stderr == f"Error: no sandbox '{ids[0]}'\n"  # the new executor never knew it
