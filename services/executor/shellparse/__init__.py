"""Static view of a shell command: every simple command it would run, as argv.

``commands(string)`` parses a command string the way bash would split it and
returns a flat list of ``Command`` (argv + what is known about it), in source
order; ``commands_from_argv(argv)`` does the same for an exact argv (``fence
-- cmd args``) without re-parsing its quoting.  The command policy
(``fence.executor.preflight``) and the SSH policy (``fence.executor.sshpolicy``)
match rules against these; this package knows nothing about rules.

What it sees (the details and the limits are in docs/command-policy.md):

* lists and pipelines: ``;`` ``&`` ``&&`` ``||`` ``|`` ``|&`` newlines;
  compound commands (``( )``, ``{ }``, ``if``/``while``/``until``/``for``/
  ``select``/``case``, ``[[ ]]``, ``(( ))``, functions, ``coproc``): keywords
  never hide the command after them;
* words as bash reads them: quotes, backslashes, ``$'...'``, ``$"..."``, line
  continuations, brace expansion (``{git,push}`` is ``git push``), comments;
* every substitution is looked into: ``$( )``, backticks, ``<( )``/``>( )``,
  ``${ }``, ``$(( ))``, unquoted-delimiter here-document bodies;
* nested scripts: ``sh|bash|zsh|ksh|dash|fish|... -c STRING`` (any flag
  cluster, long options first), a shell fed a here-document, a here-string or
  ``echo``/``printf``/``cat`` through a pipe, ``eval``, ``trap``, ``alias``,
  ``su -c``, ``script -c``, ``flock -c``, ``watch``, ``ssh -o ProxyCommand=``,
  ``rsync -e``, ``git -c core.sshCommand=`` and other command-valued git
  settings and environment variables (``GIT_SSH_COMMAND``, ``PAGER``, ...);
* wrappers unwrapped (the wrapper *and* the wrapped command are both
  reported): ``env``, ``VAR=x``, ``exec``, ``command``, ``builtin``, ``nohup``,
  ``nice``, ``timeout``, ``time``, ``stdbuf``, ``setsid``, ``xargs``, ``sudo``,
  ``doas``, ``find -exec``, ``busybox`` and more (``WRAPPERS``);
* variables assigned literal values earlier in the same script, and a
  ``sh -c`` script's positional parameters, are substituted.

What cannot be known before the command runs (``$(cat f)`` as a command
name, ``eval "$x"``, ``base64 -d | sh``, a script file) is reported as a
``Command`` whose ``dynamic`` flag is set for the unknown words; runtime
exec enforcement is the layer for those.

Never raises on any input except ``ParseError`` when the input nests deeper
than ``MAX_DEPTH`` (substitutions, nested shells, brackets) or expands to more
than ``MAX_COMMANDS`` commands: callers treat that as "cannot be checked".

The package, one job per module (each imports only those above it):

* ``command``  -- ``Command``, ``ParseError``, ``basename``, the limits;
* ``words``    -- the lexer (operators; words with quoting, parameters, substitutions)
  and brace expansion;
* ``tools``    -- programs whose options or settings run commands (su -c, find -exec,
  ssh, rsync, git) and command-valued environment variables;
* ``wrappers`` -- the dispatch for every command found: wrappers (env, sudo, xargs...),
  shells running ``-c`` or stdin, builtins running strings (eval, trap...);
* ``grammar``  -- lists, pipelines, compound commands, here-documents, redirections,
  words to argv; the entry points.
"""

from __future__ import annotations

from .command import MAX_COMMANDS, MAX_DEPTH, Command, ParseError, basename
from .grammar import PARSE_BUDGET, commands, commands_from_argv, split_words
from .tools import COMMAND_VARIABLES, git_globals, option_cluster, ssh_option
from .words import MAX_BRACE_BYTES, MAX_BRACE_WORDS, Word
from .wrappers import SHELLS, STDIN_PATHS, WRAPPERS

__all__ = [
    "Command",
    "ParseError",
    "commands",
    "commands_from_argv",
    "split_words",
    "basename",
    "MAX_DEPTH",
    "MAX_COMMANDS",
    "SHELLS",
    "WRAPPERS",
    # also read by the SSH policy and the tests
    "MAX_BRACE_WORDS",
    "MAX_BRACE_BYTES",
    "PARSE_BUDGET",
    "STDIN_PATHS",
    "COMMAND_VARIABLES",
    "Word",
    "git_globals",
    "option_cluster",
    "ssh_option",
]
