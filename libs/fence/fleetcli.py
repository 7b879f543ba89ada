"""The CLI of detached sandboxes: ``fence run --detach``, ``ps``, ``logs``, ``attach``, ``kill``, ``wait``.

Each command is a client of the supervisor's executor service over NATS (the
``client`` user, as ``fence run`` under a supervisor): it finds the bus as
``fence run`` does (``--bus URL`` or the runtime file), asks, prints, exits.
Nothing here is on the hot path of a lone ``fence run``: asyncio, uvloop and
nats are imported only by these commands.

Errors say what happened in one line (``Error: ...``, exit 1): an unknown id
(or another tenant's: the same words), no supervisor, and ``executor lost``
when the executor holding a followed sandbox went away (the sandbox went with
it: it never outlives its executor).  ``attach`` and ``wait`` exit with the
sandbox's code as ``fence run`` would (128+N after signal N).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys
import termios
import threading
import time
import tty

import msgspec
import uvloop

from fence.bus import BusError, NoResponders, RemoteError, RequestTimeout
from fence.messages import (
    ExecAck,
    ExecListReply,
    ExecListRequest,
    ExecOutputReply,
    ExecOutputRequest,
    ExecSandboxRequest,
    ExecSignalRequest,
    ExecStartReply,
    ExecStdinRequest,
    ExecWaitReply,
    ExecWaitRequest,
    SandboxInfo,
)
from fence.natsbus import NatsBus
from fence.runtime import bus_credentials, find_supervisor, uptime
from fence.subjects import EXEC_INFO, EXEC_KILL, EXEC_LIST, EXEC_OUTPUT, EXEC_SIGNAL, EXEC_START, EXEC_STDIN, EXEC_WAIT

USAGE = """\
Usage:
  fence run --detach [-i] [--tty] [--label K=V]... [--tail BYTES] [flags] -- COMMAND [ARGS...]
  fence ps [--json]                 detached sandboxes: id, tenant, labels, command, state, age, exit
  fence logs [-f] ID                output retained so far (-f: then follow it to the end)
  fence attach ID                   output, stdin, signals; exits with the sandbox's code
  fence kill [-s SIGNAL] ID         SIGKILL the whole sandbox, or send SIGNAL to its command
  fence wait ID                     wait for the end; exits with the sandbox's code
Each takes --bus URL (default: the running supervisor).
"""

COMMANDS = ("ps", "logs", "attach", "kill", "wait")
FOLLOW_WAIT = 2.0
"""Seconds one ``output``/``wait`` request is held by the executor while nothing happens."""
GRACE = 3.0
"""More than ``FOLLOW_WAIT`` a reply may take before the executor counts as lost."""
START_TIMEOUT = 60.0
REQUEST_TIMEOUT = 10.0
FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
"""What ``attach`` passes on to the sandbox's command."""


class CliError(Exception):
    """Printed as ``Error: <message>``; exit 1."""


class ExecutorLost(CliError):
    def __init__(self, sandbox: str):
        super().__init__(f"executor lost: sandbox {sandbox} ended with it (its executor stopped or was killed)")


def main(command: str, args: list[str]) -> int:
    try:
        opts = _parse(command, args)
        if opts.get("help"):
            sys.stdout.write(USAGE)
            return 0
        return _run(_session(opts, command))
    except CliError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1


def start_detached(bus_url: str, start) -> int:
    """``fence run --detach``: start ``start`` (an ``ExecStartRequest``), print its id, return."""

    async def go(bus) -> int:
        reply = await _ask(bus, EXEC_START, start, ExecStartReply, START_TIMEOUT)
        for line in reply.warnings:
            print(line, file=sys.stderr)
        print(reply.sandbox, flush=True)
        return 0

    try:
        return _run(_with_bus(bus_url, go))
    except CliError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1


# --- parsing ------------------------------------------------------------------------


def _parse(command: str, args: list[str]) -> dict:
    opts: dict = {"bus": "", "json": False, "follow": False, "signal": "", "id": "", "help": False}
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-h", "--help"):
            opts["help"] = True
        elif arg == "--bus" or (arg == "-s" and command == "kill"):
            if i + 1 >= len(args):
                raise CliError(f"flag needs an argument: {arg}")
            i += 1
            opts["bus" if arg == "--bus" else "signal"] = args[i]
        elif arg.startswith("--bus="):
            opts["bus"] = arg.partition("=")[2]
        elif arg == "--json" and command == "ps":
            opts["json"] = True
        elif arg in ("-f", "--follow") and command == "logs":
            opts["follow"] = True
        elif arg.startswith("-") and arg != "-":
            raise CliError(f"unknown flag for fence {command}: {arg}")
        else:
            rest.append(arg)
        i += 1
    if opts["help"]:
        return opts
    if command == "ps":
        if rest:
            raise CliError(f"fence ps takes no arguments, got {rest[0]!r}")
    elif len(rest) != 1:
        raise CliError(f"fence {command} takes one sandbox id (see fence ps)")
    else:
        opts["id"] = rest[0]
    return opts


def bus_url(flag: str) -> str:
    """``--bus`` or the running supervisor's URL; a clear error when there is none."""
    if flag:
        return flag

    info = find_supervisor()
    if info is None:
        raise CliError(
            "no supervisor is running (start one with: fence up --detach); detached sandboxes "
            "live in the supervisor's executor"
        )
    return info.nats_url


# --- the commands -----------------------------------------------------------------------


def _session(opts: dict, command: str):
    async def go(bus) -> int:
        if command == "ps":
            return await _ps(bus, opts["json"])
        if command == "logs":
            return await _logs(bus, opts["id"], opts["follow"])
        if command == "attach":
            return await _attach(bus, opts["id"])
        if command == "kill":
            return await _kill(bus, opts["id"], opts["signal"])
        return await _wait(bus, opts["id"])

    return _with_bus(opts["bus"], go)


async def _ps(bus, as_json: bool) -> int:
    reply = await _ask(bus, EXEC_LIST, ExecListRequest(), ExecListReply)
    if as_json:
        rows = [msgspec.structs.asdict(info) for info in reply.sandboxes]
        for row in rows:
            row.pop("type", None)
            row.pop("v", None)
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        return 0
    sys.stdout.write(format_table(reply.sandboxes, time.time()))
    return 0


def format_table(sandboxes, now: float) -> str:
    """``fence ps``'s table: one line per sandbox, newest last."""
    rows = [("ID", "TENANT", "LABELS", "COMMAND", "STATE", "AGE", "EXIT")]
    for info in sandboxes:
        command = shlex.join(info.argv)
        rows.append(
            (
                info.sandbox,
                info.tenant or "-",
                ",".join(f"{k}={v}" for k, v in sorted(info.labels.items())) or "-",
                command if len(command) <= 40 else command[:37] + "...",
                info.state,
                uptime(info.started, now),
                "-" if info.exit_code is None else str(info.exit_code),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in rows
    )


async def _logs(bus, sandbox: str, follow: bool) -> int:
    await _follow(bus, sandbox, live=follow)
    return 0


async def _wait(bus, sandbox: str) -> int:
    await _known(bus, sandbox)
    while True:
        reply = await _ask(
            bus,
            EXEC_WAIT,
            ExecWaitRequest(sandbox=sandbox, timeout=FOLLOW_WAIT),
            ExecWaitReply,
            FOLLOW_WAIT + GRACE,
            lost=sandbox,
        )
        if reply.info.state == "exited":
            return reply.info.exit_code if reply.info.exit_code is not None else 1


async def _kill(bus, sandbox: str, signal: str) -> int:
    if signal:
        await _ask(bus, EXEC_SIGNAL, ExecSignalRequest(sandbox=sandbox, signal=signal), ExecAck)
    else:
        await _ask(bus, EXEC_KILL, ExecSandboxRequest(sandbox=sandbox), ExecAck)
    return 0


async def _attach(bus, sandbox: str) -> int:
    """Output (the retained tail, then live), our stdin to its stdin, our signals to its command."""
    info = await _known(bus, sandbox)
    loop = asyncio.get_running_loop()
    tasks: set = set()

    def forward(signum: int) -> None:
        task = loop.create_task(_ask(bus, EXEC_SIGNAL, ExecSignalRequest(sandbox=sandbox, signal=str(signum)), ExecAck))
        tasks.add(task)
        task.add_done_callback(_forgotten(tasks))

    for name in FORWARDED:
        loop.add_signal_handler(getattr(signal, name), forward, getattr(signal, name))
    feeder = None
    restore = _raw_terminal() if info.tty and info.state == "running" else None
    if info.stdin and info.state == "running":
        queue: asyncio.Queue = asyncio.Queue(maxsize=16)

        def read_stdin() -> None:  # a thread: stdin may be anything (a file, a pipe, a terminal)
            while True:
                try:
                    data = os.read(0, 65536)
                except OSError:
                    data = b""
                asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()
                if not data:
                    return

        async def feed() -> None:
            while True:
                data = await queue.get()
                while True:
                    try:
                        await _ask(bus, EXEC_STDIN, ExecStdinRequest(sandbox=sandbox, data=data, eof=not data), ExecAck)
                        break
                    except CliError as e:
                        if "is not reading" not in str(e):
                            return  # stdin closed, or the sandbox ended: the output loop says how
                        await asyncio.sleep(0.05)
                if not data:
                    return

        threading.Thread(target=read_stdin, name="fence-attach-stdin", daemon=True).start()
        feeder = loop.create_task(feed())
    try:
        final = await _follow(bus, sandbox, live=True)
    finally:
        for name in FORWARDED:
            loop.remove_signal_handler(getattr(signal, name))
        if feeder is not None:
            feeder.cancel()
        if restore is not None:
            restore()
    return final.exit_code if final is not None and final.exit_code is not None else 1


def _raw_terminal():
    """Our terminal in raw mode for a sandbox's PTY (every key, Ctrl-C too, goes to it); returns how to
    restore it, or None when stdin is no terminal."""
    try:
        saved = termios.tcgetattr(0)
    except (termios.error, OSError):
        return None
    tty.setraw(0, termios.TCSANOW)

    def restore() -> None:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)

    return restore


def _forgotten(tasks: set):
    """A done callback: drop the task, and read its outcome (a signal that could not go is not an error)."""

    def done(task) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()

    return done


async def _known(bus, sandbox: str):
    """The sandbox's ``SandboxInfo``: from here on, silence from the executor means it was lost."""
    return await _ask(bus, EXEC_INFO, ExecSandboxRequest(sandbox=sandbox), SandboxInfo)


async def _follow(bus, sandbox: str, live: bool):
    """Print the sandbox's output from the start of what is retained; with ``live`` until it ends.

    Returns the sandbox's last ``SandboxInfo``.  A ``dropped`` marker is said on stderr."""
    await _known(bus, sandbox)
    after = 0
    out, err = sys.stdout.buffer, sys.stderr.buffer
    while True:
        wait = FOLLOW_WAIT if live else 0.0
        reply = await _ask(
            bus,
            EXEC_OUTPUT,
            ExecOutputRequest(sandbox=sandbox, after=after, wait=wait),
            ExecOutputReply,
            wait + GRACE,
            lost=sandbox,
        )
        for chunk in reply.chunks:
            if chunk.stream == "dropped":
                out.flush()
                err.write(
                    f"[fence] {chunk.count} output chunk(s) of sandbox {sandbox} were dropped "
                    "(not retained: read too slowly or attached late)\n".encode()
                )
                err.flush()
            else:
                target = out if chunk.stream == "stdout" else err
                target.write(chunk.data)
                target.flush()
            after = chunk.seq
        if reply.ended or (not live and not reply.chunks):
            return reply.info


# --- the bus ------------------------------------------------------------------------------


def _run(coro) -> int:
    return uvloop.run(coro)


async def _with_bus(flag: str, go) -> int:
    url = bus_url(flag)
    creds = _credentials()
    try:
        bus = await NatsBus.connect_as(url, creds, f"fence-cli-{os.getpid()}")
    except BusError as e:
        raise CliError(f"cannot reach the supervisor's bus at {url}: {e}") from None
    try:
        return await go(bus)
    finally:
        await bus.close()


async def _ask(bus, subject: str, msg, reply_type, timeout: float = REQUEST_TIMEOUT, lost: str = ""):
    """One request; failures become one-line ``CliError``s.  ``lost``: the sandbox being followed, whose
    executor answered before; silence or "no such sandbox" now means that executor is gone."""
    try:
        return await bus.request(subject, msg, reply_type, timeout=timeout)
    except RemoteError as e:
        if lost and e.code == "not_found":
            raise ExecutorLost(lost) from None
        where = f" ({e.field})" if e.field and e.field not in e.message.split(":")[0] else ""
        raise CliError(f"{e.message}{where}") from None
    except (NoResponders, RequestTimeout) as e:
        if lost:
            raise ExecutorLost(lost) from None
        raise CliError(f"the supervisor's executor does not answer ({e}); see fence status") from None
    except BusError as e:
        raise CliError(f"supervisor bus: {e}") from None


def _credentials():
    """The ``client`` user's credentials: ``$FENCE_BUS_CREDS`` or the supervisor's runtime dir."""
    try:
        return bus_credentials()
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read the supervisor's client credentials: {e}") from None
