"""The configuration subcommands: ``fence config ...``, ``fence import ...``, ``fence completion ...``.

Each ``main_*`` takes the arguments after its subcommand and returns the exit
code; ``fence.cli`` dispatches to them.  These are not on the run path, so
argparse is fine here.  Errors print ``Error: ...`` on stderr and exit 1
(config problems as ``Error: failed to load config: ...``, like ``fence run``).
Paths and rules printed on stderr are escaped (``fence.textsafe``): a
directory name or a rule may hold a newline or an escape sequence.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NoReturn

import msgspec

from fence.config import discover, jsonc, templates
from fence.config.completion import SHELLS, script
from fence.config.errors import ConfigError, SettingsFileMissing
from fence.config.importer import translate_claude
from fence.config.load import parse
from fence.config.merge import set_fields
from fence.config.resolve import resolve
from fence.config.schema import SCHEMA_ID, render
from fence.messages import ConfigResolveRequest
from fence.textsafe import printable, printable_message


def _error(message: str) -> int:
    print(f"Error: {printable_message(message)}", file=sys.stderr)
    return 1


def _say(line: str) -> None:
    print(printable(line), file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as ``Error: ...`` / exit 2 instead of its own format."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"Error: {printable_message(message)}", file=sys.stderr)
        raise SystemExit(2)


def _run(parser: argparse.ArgumentParser, argv: list[str], handler) -> int:
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return int(e.code or 0)
    return _handle(handler, args)


def _handle(handler, args) -> int:
    """Run a subcommand: config errors become ``Error: failed to load config: ...``; a closed pipe is fine."""
    try:
        return handler(args)
    except SettingsFileMissing as e:
        return _error(e.message)
    except ConfigError as e:
        return _error(f"failed to load config: {e.message}")
    except BrokenPipeError:
        return 0


def _request(settings: str = "", template: str = "") -> ConfigResolveRequest:
    return ConfigResolveRequest(
        cwd=os.getcwd(),
        settings=settings,
        template=template,
        home=os.environ.get("HOME", ""),
        env_xdg_config_home=os.environ.get("XDG_CONFIG_HOME", ""),
    )


def _user_config_path() -> str:
    return discover.default_user_config_path(os.environ.get("HOME", ""), os.environ.get("XDG_CONFIG_HOME", ""))


def _prune(value):
    """Builtins without empty sections (what a config file would need to say)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = _prune(v)
            if v != {}:
                out[k] = v
        return out
    return value


def policy_json(policy) -> str:
    return json.dumps(_prune(msgspec.to_builtins(policy)), indent=2) + "\n"


# --- fence config -------------------------------------------------------------------


def main_config(argv: list[str]) -> int:
    parser = _Parser(prog="fence config", description="Show, initialise or describe fence's configuration.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    show = sub.add_parser("show", help="print the resolved config as JSON (the chain of sources on stderr)")
    which = show.add_mutually_exclusive_group()
    which.add_argument("-s", "--settings", default="", metavar="FILE", help="config file instead of discovery")
    which.add_argument("-t", "--template", default="", metavar="NAME", help="built-in template")
    show.add_argument("--explain", action="store_true", help="also say which source set each field (stderr)")
    init = sub.add_parser("init", help="write a commented starter config at the user config path")
    init.add_argument("-t", "--template", default="", metavar="NAME", help="template the starter extends")
    init.add_argument("--force", action="store_true", help="overwrite an existing user config")
    sub.add_parser("schema", help="print the JSON Schema of fence configs")
    sub.add_parser("templates", help="list the built-in templates")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    handler = {"show": _config_show, "init": _config_init, "schema": _config_schema, "templates": _config_templates}[
        args.command
    ]
    return _handle(handler, args)


def _config_show(args) -> int:
    reply = resolve(_request(args.settings, args.template))
    _say("Active config chain:")
    for i, source in enumerate(reply.sources):
        _say(f"  {'  ' * i}{'-> ' if i else ''}{source}")
    if args.explain:
        _say("Field sources:")
        paths = [p for p, _ in set_fields(reply.policy)]
        if not paths:
            _say("  (nothing set: built-in defaults)")
        width = max((len(p) for p in paths), default=0)
        for path in paths:
            _say(f"  {path:<{width}}  {reply.provenance.get(path, 'built-in defaults')}")
    sys.stdout.write(policy_json(reply.policy))
    return 0


STARTER = """\
// fence user config: used by `fence` when no project fence.json(c) is found.
// Fields, merge rules and validation: docs/configuration.md; the JSON Schema: `fence config schema`.
// Check it with `fence config show --explain`; list templates with `fence config templates`.
{{
  "$schema": "{schema}",
{extends}
  // Network: domains the sandbox may reach (empty: no network at all).
  // Patterns: "example.com", "*.example.com" (subdomains), "localhost", "*" (everything).
  "network": {{
    "allowedDomains": [
      // "github.com",
    ],
    // Always blocked, even when allowed above.
    "deniedDomains": [
      // "169.254.169.254",
    ]
  }},

  // Filesystem: nothing is writable unless listed; "." is the working directory.
  "filesystem": {{
    "allowWrite": [
      // ".",
    ],
    // Never readable (globs and ~ allowed).
    "denyRead": [
      // "~/.ssh/id_*",
    ]
  }},

  // Commands blocked before they run (prefix match: "git push" blocks "git push origin main").
  "command": {{
    "deny": [
      // "git push",
    ]
  }}
}}
"""


def starter(template: str = "") -> str:
    if template:
        extends = (
            f'  // Start from the built-in "{template}" template: lists below are added to its lists.\n'
            f'  "extends": "{template}",\n'
        )
    else:
        extends = '  // Build on a built-in template (lists are appended, switches ORed):\n  // "extends": "code",\n'
    return STARTER.format(schema=SCHEMA_ID, extends=extends)


def _config_init(args) -> int:
    template = ""
    if args.template:
        if templates.path_of(args.template) is None:
            return _error(templates.unknown_message(args.template))
        template = templates.canonical(args.template)
    path = _user_config_path()
    if os.path.lexists(path) and not args.force:
        return _error(f"{path} already exists; use --force to overwrite it")
    text = starter(template)

    parse(text.encode(), "the starter config")  # never write a config fence would reject
    _write(path, text)
    _say(f"Wrote {path}")
    return 0


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _config_schema(args) -> int:
    sys.stdout.write(render())
    return 0


def _config_templates(args) -> int:
    names = templates.names()
    width = max((len(n) for n in names), default=0)
    for name in names:
        print(f"{name:<{width}}  {templates.description(name)}")
    return 0


# --- fence import -----------------------------------------------------------------------


def main_import(argv: list[str]) -> int:
    parser = _Parser(prog="fence import", description="Import another tool's permission rules as a fence config.")
    parser.add_argument("--claude", action="store_true", help="import Claude Code settings (permissions)")
    parser.add_argument(
        "-f", "--file", default="", metavar="FILE", help="settings file to read (default: ~/.claude/settings.json)"
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--save", action="store_true", help="write the result to the user config path")
    out.add_argument("-o", "--output", default="", metavar="FILE", help="write the result to FILE")
    base = parser.add_mutually_exclusive_group()
    base.add_argument(
        "--extend", default="code", metavar="TEMPLATE", help="template the result extends (default: code)"
    )
    base.add_argument("--no-extend", action="store_true", help="do not extend a template")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    return _run(parser, argv, _import)


def _import(args) -> int:
    if not args.claude:
        return _error("say what to import: --claude (the only importer so far)")
    extends = "" if args.no_extend else args.extend
    if extends:
        if templates.path_of(extends) is None:
            return _error(templates.unknown_message(extends))
        extends = templates.canonical(extends)
    path = args.file or os.path.join(os.environ.get("HOME") or os.path.expanduser("~"), ".claude", "settings.json")
    try:
        with open(path, "rb") as f:
            data = f.read(4 * 1024 * 1024)
    except FileNotFoundError:
        return _error(f"cannot read Claude Code settings: {path}: no such file (give one with -f FILE)")
    except IsADirectoryError:
        return _error(f"cannot read Claude Code settings: {path}: is a directory")
    except OSError as e:
        return _error(f"cannot read Claude Code settings: {path}: {e.strerror or e}")
    try:
        data.decode("utf-8")
        settings = jsonc.decode(data) if data.strip() else {}
    except (jsonc.JSONCSyntaxError, UnicodeDecodeError, RecursionError) as e:
        return _error(f"invalid JSON in Claude Code settings {path}: {e}")
    result = translate_claude(settings, path)
    config = result.config(extends)
    text = json.dumps(config, indent=2) + "\n"
    parse(text.encode(), "the imported config")  # the translation must give a config fence accepts
    rules = sum(len(v) for section in result.sections.values() for v in section.values())
    _say(
        f"Imported {rules} rule{'s' if rules != 1 else ''} from {path}"
        + (f" on top of template {extends!r}" if extends else "")
    )
    if result.skipped:
        _say(f"Not translated ({len(result.skipped)}):")
        for line in result.skipped:
            _say(f"  {line}")
    target = _user_config_path() if args.save else args.output
    if not target:
        sys.stdout.write(text)
        return 0
    if os.path.lexists(target) and not args.force:
        return _error(f"{target} already exists; use --force to overwrite it")
    _write(target, text)
    _say(f"Wrote {target}")
    return 0


# --- fence completion ----------------------------------------------------------------------


def main_completion(argv: list[str]) -> int:
    parser = _Parser(prog="fence completion", description="Print a shell completion script.")
    parser.add_argument("shell", choices=SHELLS)
    return _run(parser, argv, lambda args: sys.stdout.write(script(args.shell)) and 0)
