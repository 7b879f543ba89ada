"""Detached sandboxes: started, fed, signalled, followed and reaped by the executor service.

A detached sandbox belongs to the executor service process, not to a
client: ``fence.exec.start`` runs the same start sequence as ``fence run``
(``runner.start``: resolve, admit, gather, proxy session, decide, reserve,
render, launch, hand-off) with pipes for bwrap's stdio, and everything after
that happens on the service's event loop without blocking it:

* stdout and stderr are read as soon as they are readable (``add_reader``)
  into the sandbox's ``OutputLog`` (sequence-numbered chunks, a bounded ring):
  no reader, slow or gone, can ever fill a pipe and stall the command;
* stdin (when asked for) is a non-blocking pipe fed from a bounded buffer; a
  client that sends faster than the command reads is told ``busy``;
* bwrap's end is seen on its pidfd; the pipes are then drained, the
  ``exited`` event published and the run closed (placeholders, quarantine,
  proxy session), exactly as ``fence run`` does.

bwrap runs with ``--die-with-parent``, tied to the loop's thread that spawned
it: if this process dies, every sandbox it started dies with it.  The
registry keeps running sandboxes and the most recent ended ones (for
``wait``, ``ps`` and ``logs``).  A sandbox of another tenant is answered as
an unknown one, with the same message.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal as signals
import struct
import termios
import time
from collections import OrderedDict

import msgspec

from fence.bus import Bus, BusError, ServiceError
from fence.executor import runner
from fence.executor.errors import FenceError
from fence.executor.host import HostError, host_facts, which
from fence.executor.launch import exit_code
from fence.executor.outputlog import DEFAULT_TAIL, MAX_TAIL, OutputLog
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
from fence.runtime import UnsafeDir, ensure_private_dir, masked_path, private_runtime_dirs, runtime_dir, write_private

MAX_SANDBOXES = 512
"""Running detached sandboxes one executor holds at most (each holds a few fds and a proxy session)."""
MAX_ENDED = 128
"""Ended sandboxes kept for ``wait``/``ps``/``logs``; the oldest is forgotten first."""
MAX_WAIT = 30.0
"""Longest a ``wait`` or ``output`` request is held open (the client asks again)."""
READ_SIZE = 65536
DEFAULT_READ = 256 * 1024
MAX_READ = 512 * 1024
"""Output bytes per ``output`` reply (base64 in JSON: well under the bus's 1 MiB payload)."""
ENV_LIMIT = 128 * 1024
"""Bytes of ``env`` a start may add (names, values, separators)."""
ARGV_LIMIT = 128 * 1024
STDIN_BUFFER = 1024 * 1024
"""Bytes of stdin waiting for the command to read them; beyond this a client is told ``busy``."""
DRAIN_AFTER_EXIT = 2.0
"""Seconds the pipes may still deliver after bwrap ended (everything inside died with its init)."""
INLINE_DIR = "inline"
"""Where inline configs wait (in the runtime dir) for the config service to read them."""
TTY_ROWS, TTY_COLUMNS = 24, 80
"""The window size a detached PTY starts with."""
OWN_VARIABLES = ("FENCE_BUS_CREDS", "FENCE_SUPERVISOR_PID", "FENCE_PROXY_HANDOFF")
"""The service process's own settings from the supervisor: never a sandbox's environment."""


def unknown(sandbox: str) -> ServiceError:
    """One message for an id nobody has and for another tenant's: which ids exist is not told."""
    return ServiceError(f"no sandbox {sandbox!r}", "not_found", "sandbox")


def check_start(req: ExecStartRequest, env: dict[str, str]) -> None:
    """Refuse a malformed start before anything is made, naming the field (``env``: the sandbox's)."""
    if not req.argv or not req.argv[0]:
        raise ServiceError("argv is empty: nothing to run", "invalid", "argv")
    if any("\0" in a for a in req.argv) or sum(len(a) + 1 for a in req.argv) > ARGV_LIMIT:
        raise ServiceError(f"argv must hold no NUL byte and at most {ARGV_LIMIT} bytes", "invalid", "argv")
    if not os.path.isabs(req.cwd):
        raise ServiceError(f"cwd must be an absolute path, got {req.cwd!r}", "invalid", "cwd")
    if not os.path.isdir(req.cwd):
        raise ServiceError(f"cwd {req.cwd} is not a directory this executor can enter", "invalid", "cwd")
    size = sum(len(k) + len(v) + 2 for k, v in req.env.items())
    if size > ENV_LIMIT:
        raise ServiceError(f"env adds {size} bytes; the limit is {ENV_LIMIT}", "invalid", "env")
    bad = next((k for k, v in req.env.items() if not k or "=" in k or "\0" in k or "\0" in v), None)
    if bad is not None:
        raise ServiceError(
            f"env: invalid variable {bad!r} (a name holds no '=' or NUL, a value no NUL)", "invalid", "env"
        )
    if req.config is not None and (req.template or req.settings):
        raise ServiceError("give the policy as one of template, settings or config", "invalid", "config")
    if req.tail_bytes < 0 or req.tail_bytes > MAX_TAIL:
        raise ServiceError(f"tail_bytes must be between 0 and {MAX_TAIL}", "invalid", "tail_bytes")
    if any(not k or any(c in k for c in "\0=") or "\0" in v for k, v in req.labels.items()):
        raise ServiceError("labels: a key is non-empty without '=' or NUL, a value holds no NUL", "invalid", "labels")
    command = req.argv[0] if "/" not in req.argv[0] else os.path.join(req.cwd, req.argv[0])
    if not which(command, env.get("PATH", "")):
        raise ServiceError(f"command not found: {req.argv[0]}", "invalid", "argv")


def base_environment() -> dict[str, str]:
    """What a detached sandbox's environment starts from: this service's own, minus its bus settings."""
    return {k: v for k, v in os.environ.items() if k not in OWN_VARIABLES}


class Detached:
    """One detached sandbox: its run, its output log, its stdin, and how it ended."""

    def __init__(self, sandbox: str, req: ExecStartRequest):
        self.id, self.req = sandbox, req
        self.log = OutputLog(req.tail_bytes or DEFAULT_TAIL)
        self.state = "starting"
        self.started = time.time()
        self.ended = 0.0
        self.exit_code: int | None = None
        self.running: runner.Running | None = None
        self.readers: dict[int, str] = {}
        self.stdin_fd = -1
        self.stdin_buffer = bytearray()
        self.stdin_eof = False
        self.tty = -1
        """The PTY's master of a ``tty`` sandbox (its output is read there too), else -1."""
        self.pidfd = -1
        self.done = asyncio.Event()
        self._changed = asyncio.Event()
        self._drained = asyncio.Event()

    # output -------------------------------------------------------------------------
    def changed(self) -> asyncio.Event:
        """Set at the next new chunk or end (take it before looking, then wait on it)."""
        return self._changed

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def on_readable(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.log.append(self.readers[fd], data)
        else:
            self._close_reader(fd)
        self._notify()

    def _close_reader(self, fd: int) -> None:
        asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)
        del self.readers[fd]
        if not self.readers:
            self._drained.set()

    # stdin ----------------------------------------------------------------------------
    def write_stdin(self, data: bytes, eof: bool) -> None:
        if self.stdin_fd < 0 and not self.stdin_eof:
            raise ServiceError(f"sandbox {self.id} was started without stdin", "invalid", "stdin")
        if self.stdin_eof:
            if data:
                raise ServiceError(f"stdin of sandbox {self.id} is closed", "closed", "stdin")
            return
        if eof and self.tty >= 0:  # a terminal stays open: its end of input is the EOF character (Ctrl-D)
            data, eof = data + b"\x04", False
        if len(self.stdin_buffer) + len(data) > STDIN_BUFFER:
            raise ServiceError(
                f"stdin of sandbox {self.id}: the command is not reading; {len(self.stdin_buffer)} bytes wait already",
                "busy",
                "stdin",
            )
        self.stdin_buffer += data
        self.stdin_eof = eof
        self._flush_stdin()

    def _flush_stdin(self) -> None:
        loop = asyncio.get_running_loop()
        while self.stdin_buffer and self.stdin_fd >= 0:
            try:
                n = os.write(self.stdin_fd, self.stdin_buffer)
            except BlockingIOError:
                loop.add_writer(self.stdin_fd, self._on_writable)
                return
            except OSError:  # the command closed its stdin (EPIPE): what it did not read is gone
                self.stdin_buffer.clear()
                self.stdin_eof = True
                break
            del self.stdin_buffer[:n]
        if self.stdin_fd >= 0:
            loop.remove_writer(self.stdin_fd)
            if self.stdin_eof:
                os.close(self.stdin_fd)
                self.stdin_fd = -1

    def _on_writable(self) -> None:
        asyncio.get_running_loop().remove_writer(self.stdin_fd)
        self._flush_stdin()

    def _close_stdin(self) -> None:
        if self.stdin_fd >= 0:
            asyncio.get_running_loop().remove_writer(self.stdin_fd)
            os.close(self.stdin_fd)
            self.stdin_fd = -1
        self.stdin_eof = True
        self.stdin_buffer.clear()

    # signals and the end ------------------------------------------------------------------
    def signal(self, signum: int) -> None:
        """``signum`` to the command's process group (``Sandbox.deliver``: as a terminal would)."""
        if self.state != "running" or self.running is None or self.running.sandbox is None:
            return
        if self.tty >= 0:  # as a terminal would: to the PTY's foreground group, once the command has one
            try:
                group = os.tcgetpgrp(self.tty)
            except OSError:
                group = 0
            if group > 0 and group != self.running.sandbox.pid:
                try:
                    os.killpg(group, signum)
                    return
                except OSError:
                    pass
        self.running.sandbox.deliver(signum)

    def kill(self) -> None:
        """The whole sandbox, now: SIGKILL to its init and bwrap (reaped by ``on_exit``)."""
        sandbox = self.running.sandbox if self.running is not None else None
        if self.state != "running" or sandbox is None:
            return
        for pid in (sandbox.init_pid, sandbox.pid):
            if pid:
                try:
                    os.kill(pid, signals.SIGKILL)
                except OSError:
                    pass

    async def watch(self, fleet: Fleet) -> None:
        """Wait for bwrap's end, drain the pipes, publish ``exited``, close the run."""
        assert self.running is not None and self.running.sandbox is not None
        sandbox = self.running.sandbox
        loop = asyncio.get_running_loop()
        exited = loop.create_future()
        try:
            self.pidfd = os.pidfd_open(sandbox.pid)
            loop.add_reader(self.pidfd, _settle, exited)
            await exited
            loop.remove_reader(self.pidfd)
            _, status = os.waitpid(sandbox.pid, 0)
        except ChildProcessError:
            status = 0x100 * 255
        finally:
            if self.pidfd >= 0:
                os.close(self.pidfd)
                self.pidfd = -1
        code = exit_code(status)
        try:
            await asyncio.wait_for(self._drained.wait(), DRAIN_AFTER_EXIT)
        except TimeoutError:
            pass
        for fd in list(self.readers):
            self._close_reader(fd)
        self._close_stdin()
        self.exit_code, self.ended, self.state = code, time.time(), "exited"
        try:
            await self.running.exited(code)
        except BusError:
            pass
        try:
            await self.running.close()
        finally:
            self._notify()
            self.done.set()
            fleet.ended(self)

    def info(self) -> SandboxInfo:
        code = self.exit_code
        return SandboxInfo(
            sandbox=self.id,
            argv=self.req.argv,
            cwd=self.req.cwd,
            state=self.state,
            started=self.started,
            pid=self.running.pid if self.running is not None else 0,
            tenant=self.req.tenant,
            labels=self.req.labels,
            ended=self.ended,
            exit_code=code,
            signal=code - 128 if code is not None and code > 128 else None,
            output_chunks=self.log.last,
            output_bytes=self.log.total_bytes,
            stdin=self.req.stdin or self.req.tty,
            tty=self.req.tty,
        )


class Fleet:
    """Every detached sandbox of this executor, by id."""

    def __init__(self) -> None:
        self.sandboxes: OrderedDict[str, Detached] = OrderedDict()
        self._tasks: set[asyncio.Task] = set()

    def get(self, sandbox: str, tenant: str) -> Detached:
        found = self.sandboxes.get(sandbox)
        if found is None or found.req.tenant != tenant:
            raise unknown(sandbox)
        return found

    async def start(self, bus: Bus, req: ExecStartRequest) -> ExecStartReply:
        env = {**base_environment(), **req.env}
        check_start(req, env)
        if sum(d.state != "exited" for d in self.sandboxes.values()) >= MAX_SANDBOXES:
            raise ServiceError(f"this executor runs {MAX_SANDBOXES} sandboxes already", "busy")
        try:
            host = host_facts(masked_dirs=_masked_dirs(env))
        except HostError as e:
            raise ServiceError(str(e), "unavailable") from None
        sandbox = runner.new_sandbox_id()
        detached = Detached(sandbox, req)
        inline = _write_inline(req.config, sandbox) if req.config is not None else ""
        run_req = runner.RunRequest(
            command=list(req.argv),
            cwd=req.cwd,
            env=env,
            sandbox=sandbox,
            command_string=req.command_string,
            settings=inline or req.settings,
            template=req.template,
            terminal=req.tty,
        )
        theirs, ours = _stdio(req.stdin, req.tty)
        warnings: list[str] = []
        try:
            detached.running = await runner.start(
                bus, run_req, host, relay_signals=False, stdio=theirs, report=warnings.extend
            )
        except runner.StartRefused as e:
            _close(ours)
            field = (
                e.field
                if e.field != "policy"
                else "template"
                if req.template
                else "settings"
                if req.settings
                else "config"
                if inline
                else "policy"
            )
            message = str(e).replace(inline, "the inline config") if inline else str(e)
            raise ServiceError(message, "refused", field) from None
        except FenceError as e:
            _close(ours)
            raise ServiceError(str(e), "refused") from None
        except BusError as e:
            _close(ours)
            raise ServiceError(f"a service the start needs failed: {e}", "unavailable") from None
        except BaseException:
            _close(ours)
            raise
        finally:
            _close(tuple(dict.fromkeys(theirs)))  # a PTY's slave is all three
            if inline:
                _remove(inline)
        if req.tty:
            detached.tty = ours[1]
        self._adopt(detached, ours)
        return ExecStartReply(sandbox=sandbox, pid=detached.running.pid, warnings=warnings)

    def _adopt(self, detached: Detached, ours: tuple[int, int, int]) -> None:
        """The sandbox runs: read its output, feed its stdin, watch for its end."""
        loop = asyncio.get_running_loop()
        stdin, stdout, stderr = ours
        detached.stdin_fd = stdin
        detached.readers = {fd: name for fd, name in ((stdout, "stdout"), (stderr, "stderr")) if fd >= 0}
        for fd in detached.readers:
            loop.add_reader(fd, detached.on_readable, fd)
        detached.state = "running"
        self.sandboxes[detached.id] = detached
        task = loop.create_task(detached.watch(self))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def ended(self, detached: Detached) -> None:
        """Forget the oldest ended sandboxes beyond ``MAX_ENDED``."""
        done = [k for k, d in self.sandboxes.items() if d.state == "exited"]
        for key in done[: max(0, len(done) - MAX_ENDED)]:
            del self.sandboxes[key]

    async def output(self, req: ExecOutputRequest) -> ExecOutputReply:
        detached = self.get(req.sandbox, req.tenant)
        max_bytes = min(req.max_bytes or DEFAULT_READ, MAX_READ)
        deadline = time.monotonic() + min(max(req.wait, 0.0), MAX_WAIT)
        while True:
            changed = detached.changed()
            chunks = detached.log.after(req.after, max_bytes)
            exited = detached.state == "exited"
            left = deadline - time.monotonic()
            if chunks or exited or left <= 0:
                last = chunks[-1].seq if chunks else req.after
                return ExecOutputReply(
                    sandbox=detached.id, chunks=chunks, info=detached.info(), ended=exited and last >= detached.log.last
                )
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                pass

    async def wait(self, req: ExecWaitRequest) -> ExecWaitReply:
        detached = self.get(req.sandbox, req.tenant)
        if detached.state != "exited" and req.timeout > 0:
            try:
                await asyncio.wait_for(detached.done.wait(), min(req.timeout, MAX_WAIT))
            except TimeoutError:
                pass
        return ExecWaitReply(info=detached.info())

    def stdin(self, req: ExecStdinRequest) -> ExecAck:
        self.get(req.sandbox, req.tenant).write_stdin(req.data, req.eof)
        return ExecAck(sandbox=req.sandbox)

    def signal(self, req: ExecSignalRequest) -> ExecAck:
        signum = parse_signal(req.signal)
        self.get(req.sandbox, req.tenant).signal(signum)
        return ExecAck(sandbox=req.sandbox)

    def kill(self, req: ExecSandboxRequest) -> ExecAck:
        self.get(req.sandbox, req.tenant).kill()
        return ExecAck(sandbox=req.sandbox)

    def info(self, req: ExecSandboxRequest) -> SandboxInfo:
        return self.get(req.sandbox, req.tenant).info()

    def list(self, req: ExecListRequest) -> ExecListReply:
        return ExecListReply(
            sandboxes=[
                d.info()
                for d in self.sandboxes.values()
                if d.req.tenant == req.tenant and all(d.req.labels.get(k) == v for k, v in req.labels.items())
            ]
        )

    async def stop(self) -> None:
        """The service stops: every sandbox goes with it (as it would if this process died)."""
        for detached in self.sandboxes.values():
            detached.kill()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1.0)


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def parse_signal(value: str) -> int:
    """``15``, ``TERM`` or ``SIGTERM`` -> 15; anything else names the field."""
    text = value.strip().upper()
    if text.isdigit():
        number = int(text)
        if 0 < number < signals.NSIG:
            return number
    else:
        name = text if text.startswith("SIG") else f"SIG{text}"
        found = getattr(signals.Signals, name, None) if name.isalnum() else None
        if isinstance(found, signals.Signals):
            return int(found)
    raise ServiceError(f"unknown signal {value!r}", "invalid", "signal")


def _write_inline(config: dict, sandbox: str) -> str:
    """An inline config as the config service reads configs: a file (0600, in this executor's runtime
    dir, which no sandbox sees), named for the sandbox and removed once the start is over."""
    path = os.path.join(ensure_private_dir(os.path.join(runtime_dir(), INLINE_DIR)), f"{sandbox}.json")
    write_private(path, msgspec.json.encode(config))
    return path


def _remove(path: str) -> None:
    try:
        os.unlink(path)
        os.rmdir(os.path.dirname(path))  # only when no other start is using it
    except OSError:
        pass


def _masked_dirs(env: dict[str, str]) -> tuple[str, ...]:
    """fence's runtime dirs a sandbox must never see: this supervisor's (its credentials; checked private,
    as ``fence run`` checks its own) and the client's, when that is another one that exists."""
    try:
        own = private_runtime_dirs()
    except UnsafeDir as e:
        raise ServiceError(f"fence's runtime directory: {e}", "unavailable") from None
    theirs = masked_path(runtime_dir(env))
    return tuple(dict.fromkeys((*own, theirs) if os.path.isdir(theirs) else own))


def _stdio(with_stdin: bool, tty: bool) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(bwrap's ends, ours) of the sandbox's stdio: pipes (stdin /dev/null unless asked); ours non-blocking.

    With ``tty``: a new PTY, its slave as all three, and ours the master (twice: stdin is written to a
    copy of it, output read from it; no stderr of its own, a terminal has one stream).  Every end sits
    above 10, close-on-exec: bwrap gets its copies as 0, 1, 2 by dup2."""
    made: list[int] = []
    if tty:
        try:
            master, slave = os.openpty()
            master, slave = _high(master, made), _high(slave, made)
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", TTY_ROWS, TTY_COLUMNS, 0, 0))
            os.set_blocking(master, False)
            writer = _high(os.dup(master), made)
        except BaseException:
            _close(tuple(made))
            raise
        return (slave, slave, slave), (writer, master, -1)
    try:
        if with_stdin:
            stdin_read, stdin_write = _pipe(made)
            os.set_blocking(stdin_write, False)
        else:
            stdin_read, stdin_write = _high(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), made), -1
        out_read, out_write = _pipe(made)
        err_read, err_write = _pipe(made)
    except BaseException:
        _close(tuple(made))
        raise
    for fd in (out_read, err_read):
        os.set_blocking(fd, False)
    return (stdin_read, out_write, err_write), (stdin_write, out_read, err_read)


def _pipe(made: list[int]) -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    return _high(read_end, made), _high(write_end, made)


def _high(fd: int, made: list[int]) -> int:
    try:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    finally:
        os.close(fd)
    made.append(high)
    return high


def _close(fds: tuple[int, ...]) -> None:
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
