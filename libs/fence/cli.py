"""The ``fence`` command line.

Root form (Fence's, docs/compatibility.md#cli-flags): ``fence [flags] -- CMD...`` or ``fence -c "STRING"``;
``fence run [flags] -- CMD...`` is the same.  Subcommands: ``up``, ``status``,
``down`` (the supervisor); ``ps``, ``logs``, ``attach``, ``kill``, ``wait`` and
``fence run --detach`` (detached sandboxes, ``fence.fleetcli``; docs/fleet.md).

The root form is the hot path of every agent tool call, so its flags are
parsed by hand (argparse costs milliseconds we would pay on every run) and
nothing heavy is imported unless a supervisor is in use: a lone run drives the
services over the in-process bus without an event loop.  Flag parsing stops at
the first positional argument or ``--``, so ``fence ls -la`` works.
"""

from __future__ import annotations

import gc
import os
import sys

from fence import __version__

USAGE = """\
fence - lightweight, container-free sandbox for running untrusted commands

Usage:
  fence [flags] -- COMMAND [ARGS...]
  fence [flags] -c "COMMAND STRING"
  fence run [flags] -- COMMAND [ARGS...]
  fence up [--detach]       start the supervisor (NATS bus + services)
  fence status              show the supervisor's components
  fence down                stop the supervisor
  fence run --detach [-i] [--tty] [--label K=V] [--tail BYTES] [flags] -- COMMAND [ARGS...]
                            start a sandbox in the supervisor's executor; print its id
  fence ps [--json] | logs [-f] ID | attach ID | kill [-s SIG] ID | wait ID
                            detached sandboxes (docs/fleet.md)
  fence config show|init|schema|templates
  fence import --claude     translate Claude Code permissions into a fence config
  fence completion bash|zsh|fish

Flags:
  -c STRING                 run STRING with bash -c
      --shell bash|user     shell for -c: bash (default) or your validated $SHELL
  -s, --settings PATH       config file (JSON)
  -t, --template NAME       built-in template
  -d, --debug               verbose output on stderr
  -m, --monitor             report blocked operations on stderr
  -p, --port [ADDR:]PORT    expose the sandbox's 127.0.0.1:PORT on the host's ADDR:PORT
                            (default 127.0.0.1; repeatable)
      --force-new-session   always run the command in a new terminal session
      --bus URL             use the supervisor's NATS bus at URL
      --linux-features      report what this kernel and bwrap offer
  -v, --version             print the version
  -h, --help                this help
"""

SUPERVISOR_COMMANDS = ("up", "status", "down")
CONFIG_COMMANDS = ("config", "import", "completion")
FLEET_COMMANDS = ("ps", "logs", "attach", "kill", "wait")


class UsageError(Exception):
    pass


class RunOptions:
    """The root command's flags, parsed by hand (see the module docstring)."""

    def __init__(self) -> None:
        self.command_string: str | None = None
        self.command: list[str] = []
        self.settings = ""
        self.template = ""
        self.debug = False
        self.monitor = False
        self.force_new_session = False
        self.shell = "bash"
        self.bus_url = ""
        self.version = False
        self.linux_features = False
        self.help = False
        self.ports: list[tuple[str, int]] = []
        self.detach = False
        self.interactive = False
        self.tty = False
        self.labels: dict[str, str] = {}
        self.tail = 0


_VALUE_FLAGS = {
    "-c": "command_string",
    "-s": "settings",
    "--settings": "settings",
    "-t": "template",
    "--template": "template",
    "--bus": "bus_url",
    "--shell": "shell",
    "-p": "ports",
    "--port": "ports",
    "--label": "labels",
    "--tail": "tail",
}
_BOOL_FLAGS = {
    "-d": "debug",
    "--debug": "debug",
    "-m": "monitor",
    "--monitor": "monitor",
    "--force-new-session": "force_new_session",
    "-v": "version",
    "--version": "version",
    "--linux-features": "linux_features",
    "--detach": "detach",
    "-i": "interactive",
    "--interactive": "interactive",
    "--tty": "tty",
    "-h": "help",
    "--help": "help",
}


def parse_run_args(args: list[str]) -> RunOptions:
    opts = RunOptions()
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            opts.command = args[i + 1 :]
            return opts
        if not arg.startswith("-") or arg == "-":
            opts.command = args[i:]
            return opts
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in _BOOL_FLAGS and not eq:
            setattr(opts, _BOOL_FLAGS[name], True)
        elif name in _VALUE_FLAGS:
            if eq:
                value = inline
            elif len(arg) > 2 and not arg.startswith("--"):
                value = arg[2:]
            elif i + 1 < len(args):
                i += 1
                value = args[i]
            else:
                raise UsageError(f"flag needs an argument: {arg}")
            _set_value(opts, _VALUE_FLAGS[name], value)
        elif len(arg) > 2 and arg[1] != "-" and arg[:2] in _VALUE_FLAGS:  # -cSTRING, -sPATH
            _set_value(opts, _VALUE_FLAGS[arg[:2]], arg[2:])
        elif len(arg) > 2 and arg[1] != "-" and all(f"-{c}" in _BOOL_FLAGS for c in arg[1:]):  # -dm
            for c in arg[1:]:
                setattr(opts, _BOOL_FLAGS[f"-{c}"], True)
        else:
            raise UsageError(f"unknown flag: {arg}")
        i += 1
    return opts


def _set_value(opts: RunOptions, field: str, value: str) -> None:
    if field == "ports":
        opts.ports.append(parse_port(value))
    elif field == "labels":
        key, eq, label = value.partition("=")
        if not key or not eq:
            raise UsageError(f"invalid label (want KEY=VALUE): {value}")
        opts.labels[key] = label
    elif field == "tail":
        if not (value.isascii() and value.isdigit()):
            raise UsageError(f"invalid --tail (want a number of bytes): {value}")
        opts.tail = int(value)
    else:
        setattr(opts, field, value)


def parse_port(value: str) -> tuple[str, int]:
    """``PORT``, ``ADDR:PORT`` or ``[V6ADDR]:PORT`` -> (address, port); the address defaults to 127.0.0.1.

    The address must be an IP literal (no name is resolved); anything else is
    ``UsageError("invalid port: VALUE")``, in Fence's words (docs/compatibility.md#messages).
    """
    import socket  # lazy: only -p needs socket (~3 ms)

    addr, sep, port = value.rpartition(":")
    if not sep:
        addr = "127.0.0.1"
    elif addr.startswith("[") and addr.endswith("]"):
        addr = addr[1:-1]
    elif ":" in addr:
        raise UsageError(f"invalid port: {value}")  # a bare IPv6 address needs brackets
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise UsageError(f"invalid port: {value}")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)
    except OSError:
        raise UsageError(f"invalid port: {value}") from None
    return addr, int(port)


def print_version() -> None:
    print("fence - lightweight, container-free sandbox for running untrusted commands")
    print(f"  Version: {__version__}")
    print("  Built:   unknown")
    print("  Commit:  unknown")


def error(message: str) -> int:
    """``Error: MESSAGE`` on stderr, exit 1; escaped (``fence.textsafe``): messages quote commands and paths."""
    from fence.textsafe import printable_message  # lazy: only errors need it; --help/--version skip it (~0.1 ms)

    print(f"Error: {printable_message(message)}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in SUPERVISOR_COMMANDS:
        from fence import supervisor  # lazy: only up/status/down load the supervisor (asyncio and all, ~60 ms)

        return getattr(supervisor, f"main_{args[0]}")(args[1:])
    if args and args[0] in CONFIG_COMMANDS:
        from fence.config import commands  # lazy: only config/import/completion need argparse and the commands (~4 ms)

        return getattr(commands, f"main_{args[0]}")(args[1:])
    if args and args[0] in FLEET_COMMANDS:
        from fence import fleetcli  # lazy: only ps/logs/attach/kill/wait talk to the fleet (asyncio, uvloop: ~40 ms)

        return fleetcli.main(args[0], args[1:])
    if args and args[0] == "run":
        args = args[1:]
    try:
        opts = parse_run_args(args)
    except UsageError as e:
        return error(str(e))
    if opts.help:
        sys.stdout.write(USAGE)
        return 0
    if opts.version:
        print_version()
        return 0
    if not opts.detach and (opts.interactive or opts.tty or opts.labels or opts.tail):
        return error("-i/--interactive, --tty, --label and --tail are for fence run --detach")
    if opts.linux_features:
        from fence.executor.features import detect, report  # lazy: only --linux-features needs the report (~0.6 ms)

        sys.stdout.write(report(detect(probe=True)))
        return 0
    return run_command(opts)


def launch_environ() -> dict[str, str]:
    """The environment fence was started with: what the sandbox inherits (minus what the plan strips).

    Read back from ``/proc/self/environ`` rather than ``os.environ``: Python's
    start-up adds ``LC_CTYPE`` there when the locale is C (PEP 538), and the
    user's command must not see a variable the user never set.
    """
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return dict(os.environ)
    env = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep and name:
            env[os.fsdecode(name)] = os.fsdecode(value)
    return env


def _keep_inherited_fds_out() -> None:
    """Descriptors fence was started with, beyond stdin/stdout/stderr, never reach the sandbox.

    bwrap hands every inherited descriptor on to the command, so an agent's
    open sockets, pipes or files would be the sandboxed command's to use.
    Go's exec (the Go tool Fence) and Node's spawn (srt) pass only stdio too.
    """
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:  # the listing's own descriptor, already closed
                pass


def run_command(opts: RunOptions) -> int:
    # Start-up allocates only long-lived objects (modules, classes, the plan): a garbage collection
    # during it frees nothing and costs ~10 ms of every run.  The runner collects normally again
    # once the command runs (runner.run: gc.freeze + gc.enable), for the sandbox's whole life.
    gc.disable()
    _keep_inherited_fds_out()
    from fence.executor.host import HostError, host_facts, which  # lazy: no executor for --help/--version (~25 ms)
    from fence.executor.runner import FenceError, RunRequest, new_sandbox_id  # lazy: no executor for --help/--version

    if opts.command_string:
        from fence.executor.shell import ShellError, select_shell  # lazy: only -c picks a shell (~0.1 ms)

        try:
            shell = select_shell(opts.shell, os.environ, which)
        except ShellError as e:
            return error(str(e))
        command = [shell, "-c", opts.command_string]
    elif opts.command:
        command = opts.command
    else:
        return error("no command specified. Use -c <command> or provide command arguments")

    env = launch_environ()
    if not which(command[0], env.get("PATH", "")):
        error(f"command not found: {command[0]}")
        return 127
    if opts.detach:
        return _start_detached(opts, command, env)
    try:
        host = host_facts(masked_dirs=_private_dirs())
    except HostError as e:
        return error(str(e))
    req = RunRequest(
        command=command,
        sandbox=new_sandbox_id(),
        command_string=opts.command_string or "",
        cwd=os.getcwd(),
        env=env,
        settings=opts.settings,
        template=opts.template,
        debug=opts.debug,
        ports=opts.ports,
        force_new_session=opts.force_new_session,
    )
    try:
        bus_url, supervisor = _find_bus(opts)
        if opts.debug:
            print(route_line(bus_url, supervisor), file=sys.stderr)
        if bus_url:
            from fence.executor.remote import run_over_nats  # lazy: only a supervised run (asyncio, uvloop: ~30 ms)

            return run_over_nats(bus_url, supervisor, req, host, monitor=opts.monitor)
        return _run_lone(req, host, monitor=opts.monitor)
    except FenceError as e:
        return error(str(e))


def _start_detached(opts: RunOptions, command: list[str], env: dict[str, str]) -> int:
    """``fence run --detach``: the supervisor's executor starts and keeps the sandbox; print its id."""
    from fence import fleetcli  # lazy: only --detach talks to the fleet (asyncio, uvloop: ~40 ms)
    from fence.messages import ExecStartRequest  # lazy: loaded by the executor by now; kept off --help/--version

    if opts.ports or opts.debug or opts.monitor or opts.force_new_session:
        return error("-p/--port, -d, -m and --force-new-session are not available with --detach yet")
    try:
        url = fleetcli.bus_url(opts.bus_url)
    except fleetcli.CliError as e:
        return error(f"fence run --detach: {e}")
    return fleetcli.start_detached(
        url,
        ExecStartRequest(
            argv=command,
            cwd=os.getcwd(),
            env=env,
            template=opts.template,
            settings=opts.settings,
            command_string=opts.command_string or "",
            stdin=opts.interactive,
            tty=opts.tty,
            labels=opts.labels,
            tail_bytes=opts.tail,
        ),
    )


def _run_lone(req, host, monitor: bool) -> int:
    """Every service in this process over the in-process bus, no event loop."""
    from fence.bus import InProcessBus, run_sync  # lazy: loaded by the runner by now; kept off --help/--version
    from fence.config.service import ConfigService  # lazy: only a lone run hosts the config service
    from fence.executor.runner import run  # lazy: loaded by run_command; kept off --help/--version
    from fence.proxy.service import ProxyService  # lazy: only a lone run hosts the proxy service

    bus = InProcessBus()
    # host-loopback listeners only in relaxed mode; otherwise the sandbox's own (bridges) are attached
    proxy = ProxyService(loopback="relaxed")
    services = [ConfigService(), proxy]
    if req.debug or monitor:  # a lone run's monitor only prints; without -d/-m nobody reads its events
        from fence.monitor.service import MonitorService  # lazy: only -d/-m print events (~0.3 ms)

        services.append(MonitorService(console=sys.stderr, debug=req.debug, monitor=monitor))
    for service in services:
        run_sync(service.start(bus))
    return run_sync(run(bus, req, host, attach=proxy.attach))


def _private_dirs() -> tuple[str, ...]:
    """Directories a sandbox must never see: fence's runtime dir (bus credentials, caches).

    Created if missing so it can always be masked: a supervisor started while
    this sandbox runs must not write credentials into a directory it can read.
    Something planted there (a symlink, a file, another user's directory) stops
    the run with a message naming it (``HostError``): fence never follows it.
    """
    from fence.executor.host import HostError  # lazy: loaded by run_command; kept off --help/--version
    from fence.runtime import UnsafeDir, private_runtime_dirs  # lazy: loaded by now; kept off --help/--version (~18 ms)

    try:
        return private_runtime_dirs()
    except UnsafeDir as e:
        raise HostError(f"fence's runtime directory: {e}") from None


def route_line(bus_url: str, supervisor) -> str:
    """``-d``'s first line: whether this run goes through a supervisor (and which bus) or runs lone.

    Both modes print the same sandbox, so without this line nothing tells a
    user which config, proxy and monitor served the run.
    """
    if not bus_url:
        return "[fence] Lone run: no supervisor; the config, proxy and monitor services run in this process"
    where = f"supervisor pid {supervisor.pid}" if supervisor is not None else "--bus"
    return (
        f"[fence] Supervised run: through the bus at {bus_url} ({where}); the config, proxy and monitor "
        "services are the supervisor's"
    )


def _find_bus(opts: RunOptions):
    """The supervisor's bus URL (``--bus`` or its runtime file), or "" for a lone run."""
    if opts.bus_url:
        return opts.bus_url, None
    from fence.runtime import find_supervisor  # lazy: loaded by the executor by now; kept off --help/--version (~18 ms)

    info = find_supervisor()
    return (info.nats_url, info) if info is not None else ("", None)


if __name__ == "__main__":
    raise SystemExit(main())
