"""The supervisor's life: start nats-server and the services, watch them, restart them, stop them.

What it promises (the module ``fence.supervisor`` tells the whole story):

* a service that exits is restarted with the backoff of ``child.Child``; a
  service that stays alive but stops answering ``$SRV.PING`` for
  ``HUNG_AFTER`` checks is killed and restarted the same way ("nothing a
  sandbox does can stall a shared service" also means the supervisor does
  not trust a live pid);
* **nats-server crash policy**: nats-server is restarted with the same
  backoff on the *same* port with the same config and passwords, so the
  client credentials and the URL in ``supervisor.json`` stay valid and the
  services' NATS clients simply reconnect (one that does not is caught by the
  ping check and restarted).  If it cannot be brought back (the port was
  taken meanwhile, the binary fails), the supervisor stops everything and
  exits 1 with an error rather than run a half-working bus;
* SIGINT/SIGTERM/SIGHUP stop it: ``supervisor.json`` goes first (no new
  client picks the bus), then SIGTERM to the services, then to nats-server,
  SIGKILL after a grace period, all within ``STOP_BUDGET`` seconds; every
  file it created in the runtime dir is removed.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import time
from typing import TYPE_CHECKING

import msgspec

from fence import runtime
from fence.natsbus import NatsBus
from fence.runtime import Credentials, SupervisorInfo
from fence.serve import COMPONENTS
from fence.supervisor.child import BACKOFF_MAX, Child
from fence.supervisor.files import clear_cache, data_dir, unlink
from fence.supervisor.natsconf import NATS, NatsPorts, nats_config, nats_server_binary
from fence.supervisor.output import StartFailed, error, say
from fence.supervisor.permissions import USERS, inbox_prefix
from fence.textsafe import printable

if TYPE_CHECKING:
    from fence.natsbus import NatsBus

START_TIMEOUT = 10.0
"""Seconds for nats-server plus every service to answer ``$SRV.PING`` at ``fence up``."""
NATS_READY_TIMEOUT = 5.0
HEALTH_INTERVAL = 2.0
"""Seconds between live ``$SRV.PING`` checks of every service."""
HUNG_AFTER = 5
"""Consecutive failed checks after which a live but silent service is killed and restarted."""
SERVICE_GRACE, NATS_GRACE = 1.5, 1.0
"""SIGTERM-to-SIGKILL grace for services, then for nats-server."""
STOP_BUDGET = 5.0


_background: set = set()


async def bounded(coro, seconds: float, cancel: bool = True) -> bool:
    """Await ``coro`` for at most ``seconds``, then abandon it: cancelled (or, with
    ``cancel=False``, left to finish in the background), never awaited.

    ``asyncio.wait_for`` is no deadline: on timeout it waits for the cancelled
    task to finish, and a ``close()`` whose cleanup awaits a dead connection
    never does.  True when ``coro`` finished in time (errors are swallowed:
    this is for best-effort shutdown steps).
    """
    task = asyncio.ensure_future(coro)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no "never retrieved" noise
    done, _ = await asyncio.wait({task}, timeout=seconds) if seconds > 0 else (set(), set())
    if done:
        return True
    if cancel:
        task.cancel()
    else:
        _background.add(task)
        task.add_done_callback(_background.discard)
    return False


class Supervisor:
    def __init__(self, rdir: str, log: str = ""):
        self.rdir = rdir
        self.log = log
        self.creds_dir = os.path.join(rdir, runtime.CREDS_DIR)
        self.conf = os.path.join(rdir, runtime.NATS_CONF)
        self.store_dir = data_dir()  # nats-server appends "jetstream": the store is <data_dir>/jetstream
        self.passwords = {u: secrets.token_urlsafe(32) for u in USERS}
        self.url = ""
        self.port = -1
        self.started_at = time.time()
        self.nats = Child(NATS)
        self.services = {name: Child(name, micro) for name, (_, _, micro) in COMPONENTS.items()}
        self.bus: NatsBus | None = None
        self.stop_event: asyncio.Event | None = None
        self.exit_code = 0
        self.fatal = ""
        self.tasks: list[asyncio.Task] = []
        self.nats_restarting = False
        self.info_written = False
        self.ports_files: set[str] = set()

    # files ------------------------------------------------------------------------
    def write_info(self) -> None:
        if self.stopping:
            return
        info = SupervisorInfo(
            pid=os.getpid(),
            started_at=self.started_at,
            nats_url=self.url,
            log=self.log,
            components=[self.nats.info, *(c.info for c in self.services.values())],
        )
        runtime.write_struct(os.path.join(self.rdir, runtime.INFO_FILE), info)
        self.info_written = True

    def write_config(self) -> None:
        runtime.ensure_private_dir(self.store_dir)
        runtime.write_private(self.conf, nats_config(self.passwords, self.rdir, self.store_dir, self.port).encode())

    def write_credentials(self) -> None:
        runtime.ensure_private_dir(self.creds_dir)
        for user in USERS:
            runtime.write_struct(
                os.path.join(self.creds_dir, f"{user}.json"),
                Credentials(url=self.url, user=user, password=self.passwords[user], inbox_prefix=inbox_prefix(user)),
            )

    def cleanup(self) -> None:
        """Remove every file this supervisor created, then the dirs if nothing else is there."""
        unlink(os.path.join(self.rdir, runtime.INFO_FILE))
        unlink(self.conf)
        unlink(os.path.join(self.rdir, runtime.PROXY_HANDOFF))  # the proxy removes it; not if it was killed
        for path in self.ports_files:
            unlink(path)
        for user in USERS:
            unlink(os.path.join(self.creds_dir, f"{user}.json"))
        for d in (self.creds_dir,):
            try:
                os.rmdir(d)
            except OSError:
                pass
        clear_cache(os.path.join(self.rdir, "cache"))

    @property
    def stopping(self) -> bool:
        return self.stop_event is not None and self.stop_event.is_set()

    def request_stop(self, code: int = 0, fatal: str = "") -> None:
        if fatal and not self.fatal:
            self.fatal, self.exit_code = fatal, code or 1
        if self.stop_event is not None and not self.stop_event.is_set():
            self.stop_event.set()
            # no client may pick up a bus that is going away
            unlink(os.path.join(self.rdir, runtime.INFO_FILE))

    # nats-server --------------------------------------------------------------------
    async def start_nats(self) -> None:
        binary = nats_server_binary()
        self.write_config()
        proc = await asyncio.create_subprocess_exec(
            binary,
            "-c",
            self.conf,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            cwd="/",
        )
        self.nats.proc = proc
        self.nats.info.pid = proc.pid
        self.nats.info.started_at = time.time()
        lines: list[str] = []
        self.tasks.append(asyncio.get_running_loop().create_task(self._forward_nats_log(proc, lines)))
        ports = os.path.join(self.rdir, f"{NATS}_{proc.pid}.ports")
        self.ports_files.add(ports)
        deadline = time.monotonic() + NATS_READY_TIMEOUT
        urls: list[str] = []
        while True:
            try:
                with open(ports, "rb") as f:
                    urls = msgspec.json.decode(f.read(), type=NatsPorts).nats
                if urls:
                    break
            except (OSError, msgspec.DecodeError, msgspec.ValidationError):
                pass  # not written yet (or half written): poll again
            if proc.returncode is not None:
                await asyncio.sleep(0.05)  # let the log forwarder catch the last lines
                detail = "; ".join(lines[-3:]) or "no output"
                raise StartFailed(f"{NATS} exited with code {proc.returncode}: {detail}")
            if time.monotonic() > deadline:
                raise StartFailed(f"{NATS} did not report its port within {NATS_READY_TIMEOUT:.0f}s")
            await asyncio.sleep(0.02)
        os.chmod(ports, 0o600)  # nats-server writes it 0644; nothing in here is for others
        url = urls[0]
        if self.url and url != self.url:
            raise StartFailed(f"{NATS} came back on {url}, not {self.url}")
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])
        self.nats.mark_healthy(True)

    async def _forward_nats_log(self, proc, lines: list[str]) -> None:
        """Drain nats-server's log (a full pipe would stall it); pass on errors and warnings."""
        assert proc.stderr is not None
        while True:
            raw = await proc.stderr.readline()
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            del lines[:-20]
            if ("[ERR]" in line or "[FTL]" in line or "[WRN]" in line) and "Plaintext passwords" not in line:
                print(f"[fence:{NATS}] {printable(line)}", file=sys.stderr, flush=True)

    async def connect_bus(self) -> None:
        try:
            self.bus = await asyncio.wait_for(
                NatsBus.connect(
                    self.url,
                    user="supervisor",
                    password=self.passwords["supervisor"],
                    inbox_prefix=inbox_prefix("supervisor"),
                    name=f"fence-supervisor-{os.getpid()}",
                ),
                START_TIMEOUT,
            )
        except Exception as e:
            raise StartFailed(f"cannot connect to {self.url} as supervisor: {type(e).__name__}: {e}") from None

    async def close_bus(self, grace: float = 0.5) -> None:
        """Close the supervisor's connection; one that takes longer finishes in the background
        (a cancelled nats-py close could leave its reconnect loop running)."""
        bus, self.bus = self.bus, None
        if bus is not None:
            await bounded(bus.close(), grace, cancel=False)

    # services -----------------------------------------------------------------------
    async def spawn(self, child: Child) -> None:
        env = dict(os.environ)
        env["FENCE_BUS_CREDS"] = os.path.join(self.creds_dir, f"{child.name}.json")
        env["FENCE_SUPERVISOR_PID"] = str(os.getpid())
        if child.name == "proxy":
            env["FENCE_PROXY_HANDOFF"] = os.path.join(self.rdir, runtime.PROXY_HANDOFF)
        child.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",
            "-m",
            "fence.serve",
            child.name,
            stdin=asyncio.subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            cwd="/",
        )
        child.info.pid = child.proc.pid
        child.info.started_at = time.time()
        child.info.metrics_url = ""  # the new process serves on a new port, known once it answers INFO
        child.mark_healthy(False)
        child.failed_checks = 0

    async def ping(self, child: Child, timeout: float, verb: str = "PING") -> dict | None:
        """The service's ``$SRV.<verb>`` answer if the process we started gave it, else None."""
        bus = self.bus
        if bus is None or not child.alive():
            return None
        try:
            data = await bus.request_raw(f"$SRV.{verb}.{child.service}", b"", timeout=timeout)
            reply = msgspec.json.decode(data)
        except Exception:
            return None
        if not isinstance(reply, dict):
            return None
        meta = reply.get("metadata") or {}
        if meta.get("pid") != str(child.info.pid):
            return None  # another instance answered (an old one still connected): not ours yet
        return reply

    async def wait_healthy(self, child: Child, timeout: float) -> None:
        """Until ``child`` answers PING and INFO; raises StartFailed on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if not child.alive():
                code = child.proc.returncode if child.proc else None
                raise StartFailed(
                    f"the {child.name} service exited with code {code} before answering $SRV.PING.{child.service}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise StartFailed(
                    f"the {child.name} service did not answer $SRV.PING.{child.service} within {timeout:.0f}s"
                )
            if await self.ping(child, min(0.5, left)) is not None:
                info = await self.ping(child, min(1.0, max(left, 0.2)), "INFO")
                if info is not None:
                    child.info.metrics_url = str((info.get("metadata") or {}).get("metrics_url", ""))
                    child.mark_healthy(True)
                    child.starting = False
                    return
            await asyncio.sleep(0.05)

    # watching ------------------------------------------------------------------------
    async def supervise(self, child: Child) -> None:
        """Restart ``child`` whenever it exits, with backoff, until the supervisor stops."""
        while True:
            assert child.proc is not None
            code = await child.proc.wait()
            if self.stopping:
                return
            child.starting = True
            child.mark_healthy(False)
            delay = child.next_backoff()
            how = f"signal {-code}" if code < 0 else f"code {code}"
            say(f"{child.name} service (pid {child.info.pid}) exited with {how}; restarting in {delay:.1f}s")
            self.write_info()
            if await self.sleep_or_stop(delay):
                return
            child.info.restarts += 1
            try:
                await self.spawn(child)
                self.write_info()
                await self.wait_healthy(child, START_TIMEOUT)
                say(f"{child.name} service healthy again (pid {child.info.pid}, restart {child.info.restarts})")
            except StartFailed as e:
                say(f"restart failed: {e}")
                if child.alive():
                    child.proc.kill()
            except OSError as e:
                say(f"cannot start the {child.name} service: {e}")
                await self.sleep_or_stop(BACKOFF_MAX)
                continue  # proc is the old, finished one: wait() returns at once and we retry
            self.write_info()

    async def supervise_nats(self) -> None:
        """Bring nats-server back on the same port (see the module docstring), or stop with an error."""
        while True:
            assert self.nats.proc is not None
            code = await self.nats.proc.wait()
            if self.stopping:
                return
            self.nats_restarting = True
            self.nats.mark_healthy(False)
            for child in self.services.values():
                child.mark_healthy(False)
            delay = self.nats.next_backoff()
            how = f"signal {-code}" if code < 0 else f"code {code}"
            say(f"{NATS} (pid {self.nats.info.pid}) exited with {how}; restarting on port {self.port} in {delay:.1f}s")
            self.write_info()
            await self.close_bus(0.0)  # its connection is dead: a fresh one follows the restart
            if await self.sleep_or_stop(delay):
                return
            self.nats.info.restarts += 1
            try:
                await self.start_nats()
                await self.connect_bus()
            except (StartFailed, OSError) as e:
                self.request_stop(1, f"{NATS} died and could not be restarted: {e}")
                return
            say(f"{NATS} is back (pid {self.nats.info.pid}) on {self.url}")
            self.nats_restarting = False
            self.write_info()

    async def health_loop(self) -> None:
        """Live checks: healthy means answering PING now; a silent live service is restarted."""
        while not self.stopping:
            if await self.sleep_or_stop(HEALTH_INTERVAL):
                return
            if self.nats_restarting:
                continue
            checked = [c for c in self.services.values() if not c.starting and c.alive()]
            results = await asyncio.gather(*(self.ping(c, 1.0) for c in checked))
            changed = False
            for child, reply in zip(checked, results, strict=True):
                if child.starting or not child.alive():
                    continue
                changed |= child.mark_healthy(reply is not None)
                if reply is None:
                    child.failed_checks += 1
                    if child.failed_checks >= HUNG_AFTER:
                        say(
                            f"{child.name} service (pid {child.info.pid}) has not answered $SRV.PING for "
                            f"{child.failed_checks} checks; killing it"
                        )
                        child.starting = True
                        assert child.proc is not None  # alive() above
                        child.proc.kill()
            if changed:
                self.write_info()

    async def sleep_or_stop(self, seconds: float) -> bool:
        """Sleep; True when the supervisor was asked to stop meanwhile."""
        assert self.stop_event is not None
        try:
            await asyncio.wait_for(self.stop_event.wait(), seconds)
            return True
        except TimeoutError:
            return False

    # stopping -----------------------------------------------------------------------------
    @staticmethod
    async def _terminate(children: list[Child], grace: float) -> None:
        live = [(c, c.proc) for c in children if c.proc is not None and c.alive()]
        for _, proc in live:
            try:
                proc.terminate()
            except ProcessLookupError:
                pass
        if not live:
            return
        _, pending = await asyncio.wait([asyncio.ensure_future(proc.wait()) for _, proc in live], timeout=grace)
        for c, proc in live:
            if c.alive():
                say(f"{c.name} (pid {c.info.pid}) did not stop within {grace:.1f}s; killing it")
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
        if pending:
            await asyncio.wait(pending, timeout=0.5)

    async def stop_all(self) -> None:
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        await self._terminate(list(self.services.values()), SERVICE_GRACE)
        await self.close_bus()
        await self._terminate([self.nats], NATS_GRACE)

    # the whole life ---------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        await self.start_nats()
        self.write_credentials()
        await self.connect_bus()
        for child in self.services.values():
            await self.spawn(child)
        left = START_TIMEOUT - (time.monotonic() - t0)
        waits = [loop.create_task(self.wait_healthy(c, left)) for c in self.services.values()]
        try:
            for done in asyncio.as_completed(waits):
                await done
        finally:
            for w in waits:
                w.cancel()
        self.write_info()
        names = ", ".join(self.services)
        say(f"supervisor ready (pid {os.getpid()}) on {self.url}: {names} healthy in {time.monotonic() - t0:.2f}s")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            starting = loop.create_task(self.start())
            stopper = loop.create_task(self.stop_event.wait())
            await asyncio.wait([starting, stopper], return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():  # a signal during start-up: abandon it and stop cleanly
                starting.cancel()
                try:
                    await starting
                except (asyncio.CancelledError, Exception):
                    pass
            else:
                stopper.cancel()
                starting.result()  # raises StartFailed
                self.tasks += [loop.create_task(self.supervise(c)) for c in self.services.values()]
                self.tasks += [loop.create_task(self.supervise_nats()), loop.create_task(self.health_loop())]
                await self.stop_event.wait()
        except StartFailed as e:
            self.exit_code, self.fatal = 1, str(e)
        except Exception as e:  # a supervisor bug still stops everything it started
            self.exit_code, self.fatal = 1, f"supervisor failed: {type(e).__name__}: {e}"
        finally:
            t0 = time.monotonic()
            if self.stop_event is not None:
                self.stop_event.set()
            unlink(os.path.join(self.rdir, runtime.INFO_FILE))
            if not await bounded(self.stop_all(), STOP_BUDGET - 0.3):
                for c in (*self.services.values(), self.nats):
                    if c.proc is not None and c.alive():
                        c.proc.kill()
            self.cleanup()
            if self.fatal:
                error(self.fatal)
            else:
                say(f"supervisor stopped in {time.monotonic() - t0:.2f}s")
        return self.exit_code
