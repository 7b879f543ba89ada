"""``fence up``, ``fence status``, ``fence down``: the commands (``fence.cli`` dispatches here).

``fence up`` takes the lock and runs ``supervise.Supervisor`` in the
foreground; ``--detach`` starts that same command as a background process in a
new session with its output in the log, waits until ``supervisor.json`` shows
every component healthy, prints one summary line on stdout and exits 0, or
prints the supervisor's error and exits 1.  Status and down are quick readers
of ``supervisor.json``; ``status`` also pings every service over the bus as
the ``client`` user for live health.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time

import msgspec
import uvloop

from fence import runtime
from fence.natsbus import NatsBus
from fence.runtime import ComponentInfo, SupervisorInfo
from fence.supervisor.files import Lock, clean_stale, lock_holder, log_path, log_since, rotate_log
from fence.supervisor.natsconf import NATS
from fence.supervisor.output import error
from fence.supervisor.supervise import Supervisor
from fence.textsafe import printable

DETACH_TIMEOUT = 30.0


# --- fence up --------------------------------------------------------------------------------


def _up_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fence up",
        description="Start the supervisor: a loopback NATS bus and the "
        "config, proxy, executor and monitor services. Runs in the foreground until "
        "SIGINT/SIGTERM unless --detach.",
    )
    p.add_argument(
        "-d",
        "--detach",
        action="store_true",
        help=f"run in the background (log: {log_path()}); return once every component is healthy",
    )
    p.add_argument("--log", default="", help=argparse.SUPPRESS)  # set by --detach for the child
    return p


def main_up(argv: list[str]) -> int:
    args = _up_parser().parse_args(argv)
    running = runtime.find_supervisor()
    if running is not None:
        return error(f"a supervisor is already running (pid {running.pid})")
    rdir = runtime.runtime_dir()
    try:
        runtime.ensure_private_dir(rdir)
    except OSError as e:
        return error(f"cannot create the runtime directory {rdir}: {e}")
    holder = lock_holder(rdir)
    if holder:
        return error(f"a supervisor is already running (pid {holder})")
    if args.detach:
        return _detach()
    lock = Lock(os.path.join(rdir, runtime.LOCK_FILE))
    holder = lock.acquire()
    if holder:
        return error(f"a supervisor is already running (pid {holder})")
    try:
        clean_stale(rdir)

        return uvloop.run(Supervisor(rdir, log=args.log).run())
    finally:
        lock.release()
        try:
            os.rmdir(rdir)  # only when empty: never remove what others put there
        except OSError:
            pass


def _detach() -> int:
    """Start ``fence up`` in a new session with its output in the log; wait until it is healthy."""
    log = log_path()
    try:
        runtime.ensure_private_dir(os.path.dirname(log))
        rotate_log(log)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError as e:
        return error(f"cannot open the supervisor log {log}: {e}")
    offset = os.lseek(fd, 0, os.SEEK_END)
    t0 = time.monotonic()
    try:
        child = subprocess.Popen(
            [sys.executable, "-P", "-m", "fence.supervisor", "up", "--log", log],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
            cwd="/",
        )
    except OSError as e:
        return error(f"cannot start the supervisor: {e}")
    finally:
        os.close(fd)
    deadline = t0 + DETACH_TIMEOUT
    while time.monotonic() < deadline:
        code = child.poll()
        if code is not None:
            lines = log_since(log, offset)
            errors = [ln for ln in lines if ln.startswith("Error: ")]
            detail = errors[-1][len("Error: ") :] if errors else f"it exited with code {code}"
            return error(f"the supervisor failed to start: {detail} (log: {log})")
        info = runtime.read_info()
        if info is not None and info.pid == child.pid and info.components and all(c.healthy for c in info.components):
            services = [c.name for c in info.components if c.name != NATS]
            print(
                printable(
                    f"fence supervisor running (pid {info.pid}) on {info.nats_url}: {', '.join(services)} "
                    f"healthy in {time.monotonic() - t0:.2f}s; log {log}"
                ),
                flush=True,
            )
            return 0
        time.sleep(0.05)
    child.terminate()
    return error(f"the supervisor did not become healthy within {DETACH_TIMEOUT:.0f}s; stopped it (log: {log})")


# --- fence status ----------------------------------------------------------------------------


async def _live_pings(info: SupervisorInfo, timeout: float) -> dict[str, bool]:
    """Which services answer ``$SRV.PING`` right now, asked as the ``client`` user."""
    creds = runtime.client_credentials()
    bus = await asyncio.wait_for(
        NatsBus.connect(
            creds.url, user=creds.user, password=creds.password, inbox_prefix=creds.inbox_prefix, name="fence-status"
        ),
        timeout,
    )
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
            print(
                printable(f"warning: cannot ping the services over {info.nats_url}: {type(e).__name__}: {e}"),
                file=sys.stderr,
            )
    now = time.time()
    out = [f"fence supervisor pid {info.pid}, up {runtime.uptime(info.started_at, now)}, bus {info.nats_url}"]
    if info.log:
        out.append(printable(f"log {info.log}"))
    rows = [("COMPONENT", "PID", "UPTIME", "RESTARTS", "HEALTHY", "METRICS")]
    for c in info.components:
        healthy = c.healthy if live is None or c.name not in live else (c.healthy and live[c.name])
        rows.append(
            (
                c.name,
                str(c.pid),
                runtime.uptime(c.started_at, now) if c.started_at else "-",
                str(c.restarts),
                "yes" if healthy else "no",
                c.metrics_url or "-",
            )
        )
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
        return error(f"cannot stop the supervisor (pid {pid}): {e}")
    info_file = os.path.join(rdir, runtime.INFO_FILE)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not runtime.pid_alive(pid) and not os.path.exists(info_file):
            print(f"fence supervisor stopped (pid {pid})", file=sys.stderr)
            return 0
        time.sleep(0.05)
    return error(f"the supervisor (pid {pid}) did not stop within {args.timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    """``python -m fence.supervisor up|status|down ...`` (the ``fence`` CLI dispatches the same)."""
    args = sys.argv[1:] if argv is None else argv
    commands = {"up": main_up, "status": main_status, "down": main_down}
    if not args or args[0] not in commands:
        print("usage: python -m fence.supervisor {up [--detach] | status [--json] | down}", file=sys.stderr)
        return 2
    return commands[args[0]](args[1:])
