"""Static view of a shell command: every simple command it would run, as argv.

``commands(string)`` parses a command string the way bash would split it and
returns a flat list of ``Command`` (argv + what is known about it), in source
order; ``commands_from_argv(argv)`` does the same for an exact argv (``fence
-- cmd args``) without re-parsing its quoting.  The command policy
(``fence.executor.preflight``) and the SSH policy (``fence.executor.sshpolicy``)
match rules against these; this module knows nothing about rules.

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
"""

from __future__ import annotations

import re

__all__ = ["Command", "ParseError", "commands", "commands_from_argv", "split_words", "basename",
           "MAX_DEPTH", "MAX_COMMANDS", "SHELLS", "WRAPPERS"]

MAX_DEPTH = 64
"""Deepest nesting of substitutions, nested shells, eval and brackets that is parsed."""
MAX_COMMANDS = 10000
"""Most commands one check may produce (brace expansion and nesting multiply them)."""
MAX_BRACE_WORDS = 1024
"""Most words one brace expansion may produce; the rest are dropped."""
MAX_BRACE_BYTES = 256 * 1024
"""Most text one brace expansion may produce (a long word gets fewer words)."""
PARSE_BUDGET = 64 * 1024
"""Nested scripts may add this much text to parse, plus three times the input (eval chains re-read it)."""

STDIN_PATHS = frozenset({"/dev/stdin", "/dev/fd/0", "/proc/self/fd/0", "-"})
"""Script file names that mean "read the script from stdin"."""

SHELLS = frozenset({"sh", "bash", "zsh", "ksh", "dash", "fish", "ash", "mksh", "lksh", "pdksh", "yash", "posh",
                    "rbash", "csh", "tcsh", "ksh93"})
"""Shells whose ``-c STRING`` (or stdin) is parsed as a nested script."""


class ParseError(ValueError):
    """The input is too deeply nested or too large to check."""


class Command:
    """One command the input would run.

    ``argv``: its words (unknown parts keep their source text, e.g. ``$x``);
    ``dynamic``: per word, True when its value is only known at run time;
    ``open_tail``: more arguments arrive at run time (``xargs``);
    ``env``: literal ``NAME=value`` assignments in effect for it (prefix
    assignments, ``env NAME=value``, earlier assignments in the script).
    """

    __slots__ = ("argv", "dynamic", "open_tail", "env")

    def __init__(self, argv: list[str], dynamic: list[bool] | None = None, open_tail: bool = False,
                 env: dict[str, str] | None = None):
        self.argv = argv
        self.dynamic = dynamic if dynamic is not None else [False] * len(argv)
        self.open_tail = open_tail
        self.env = env if env is not None else {}

    @property
    def name(self) -> str:
        """The executable's basename (what rules match on); "" when only known at run time.

        ``$HOME/bin/git`` is still ``git``: only its directory is unknown.
        """
        if not self.argv:
            return ""
        base = basename(self.argv[0])
        if self.dynamic[0] and ("$" in base or "`" in base or "(" in base or ")" in base):
            return ""
        return base

    def text(self) -> str:
        return " ".join(self.argv)

    def __repr__(self) -> str:
        flags = (" dyn" if any(self.dynamic) else "") + (" +stdin-args" if self.open_tail else "")
        return f"Command({self.argv!r}{flags})"

    def __eq__(self, other) -> bool:
        return (isinstance(other, Command) and self.argv == other.argv and self.dynamic == other.dynamic
                and self.open_tail == other.open_tail)


def basename(path: str) -> str:
    """``/usr/bin/git`` -> ``git``; ``../../bin/rm`` -> ``rm``; ``dir/`` stays ``dir/`` (not a program)."""
    i = path.rfind("/")
    if i < 0 or i == len(path) - 1:
        return path
    return path[i + 1:]


# --------------------------------------------------------------------------- lexing helpers

class _LazyRe:
    """A regex compiled on first use: ``fence -- cmd`` (no parsing) pays for none of them."""

    __slots__ = ("pattern", "rx")

    def __init__(self, pattern: str):
        self.pattern = pattern
        self.rx: re.Pattern[str] | None = None

    def __getattr__(self, name: str):
        if self.rx is None:
            self.rx = re.compile(self.pattern)
        return getattr(self.rx, name)


_BLANK = " \t"
_META = " \t\n;&|()<>"
_PLAIN = _LazyRe(r"[^ \t\n;&|()<>'\"\\$`{},*?\[=]+")
_DQ_PLAIN = _LazyRe(r'[^"\\$`]+')
_NAME = _LazyRe(r"[A-Za-z_][A-Za-z0-9_]*")
_FD_REDIR = _LazyRe(r"(?:[0-9]+|\{[A-Za-z_][A-Za-z0-9_]*\})(?=[<>])")
_ASSIGN_LHS = _LazyRe(r"[A-Za-z_][A-Za-z0-9_]*(?:\[[^\]]*\])?\+?\Z")
_ARITH_SCAN = _LazyRe(r"\(+|\)+|['\\]")
_SENTINEL_RE = _LazyRe("[\ue000-\ue002]")
_COPROC_NAME = _LazyRe(r"[ \t]*[A-Za-z_][A-Za-z0-9_]*[ \t\n]+(?=[{(])")
_SPECIAL_PARAMS = "@*#?$!-0123456789"

# unquoted brace-expansion characters are carried through a word as these
_LB, _COMMA, _RB = "\ue000", "\ue001", "\ue002"
_SENTINELS = {"{": _LB, ",": _COMMA, "}": _RB}
_UNSENTINEL = str.maketrans({_LB: "{", _COMMA: ",", _RB: "}"})

_KEYWORDS = frozenset({"!", "{", "}", "if", "then", "else", "elif", "fi", "while", "until", "do", "done", "for",
                       "select", "case", "esac", "function", "time", "[[", "coproc", "in"})
_OPENERS = {"if": "if", "while": "loop", "until": "loop", "{": "brace"}
_CLOSERS = {"fi": "if", "done": "loop", "esac": "case", "}": "brace"}

_EOF, _WORD, _OP, _REDIR = range(4)


class Word:
    """A word as read: literal text, or segments when parameters or substitutions are involved."""

    __slots__ = ("text", "btext", "segs", "quoted", "dynamic", "assign")

    def __init__(self, text: str, btext: str | None, segs: list | None, quoted: bool, dynamic: bool,
                 assign: str | None):
        self.text = text  # display / literal value (sentinels mapped back)
        self.btext = btext  # with brace sentinels, when brace expansion may apply
        self.segs = segs  # [(kind, value, quoted)] with kind "l" literal, "p" parameter, "d" unknown
        self.quoted = quoted
        self.dynamic = dynamic
        self.assign = assign  # "NAME" when the word is NAME=value (unquoted name and =)

    @property
    def literal(self) -> str | None:
        """The word's text if it is a plain unquoted literal (for keyword recognition)."""
        return None if (self.quoted or self.dynamic or self.segs) else self.text


class _Simple:
    """A simple command being read: assignments, words, redirections."""

    __slots__ = ("words", "assigns", "stdin", "heredoc_pending", "piped_from", "done")

    def __init__(self) -> None:
        self.words: list[Word] = []
        self.assigns: list[Word] = []
        self.stdin: str | None = None  # here-document body or here-string
        self.heredoc_pending = 0
        self.piped_from: _Simple | None = None
        self.done = False  # expanded (emitted)


class _Ctx:
    """Shared by every parser of one check: output, limits."""

    __slots__ = ("out", "budget", "chars")

    def __init__(self, size: int = 0) -> None:
        self.out: list[Command] = []
        self.budget = MAX_COMMANDS
        self.chars = 4 * size + PARSE_BUDGET

    def read(self, size: int) -> None:
        self.chars -= size
        if self.chars < 0:
            raise ParseError("nested scripts too large to check")

    def emit(self, cmd: Command) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise ParseError(f"more than {MAX_COMMANDS} commands")
        self.out.append(cmd)


class _Parser:
    """One source string.  Nested ``$( )`` share the cursor; nested scripts get their own parser."""

    def __init__(self, src: str, ctx: _Ctx, depth: int, params: dict[str, list[str]] | None = None):
        if depth > MAX_DEPTH:
            raise ParseError(f"nesting deeper than {MAX_DEPTH} levels")
        ctx.read(len(src))
        self.s = src
        self.n = len(src)
        self.i = 0
        self.ctx = ctx
        self.depth = depth
        self.params: dict[str, list[str]] = params if params is not None else {}
        self.heredocs: list[tuple[str, bool, bool, _Simple]] = []  # (delimiter, strip tabs, expand, command)
        self.awaiting: list[_Simple] = []  # finished commands waiting for a here-document body
        self.no_brace = _LB in src or _COMMA in src or _RB in src

    # ------------------------------------------------------------------ nesting
    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ParseError(f"nesting deeper than {MAX_DEPTH} levels")

    def _leave(self) -> None:
        self.depth -= 1

    def _subscript(self, text: str, params: dict[str, list[str]] | None = None, share: bool = False) -> None:
        """Parse ``text`` as a nested script (backticks, eval, sh -c ...)."""
        p = _Parser(text, self.ctx, self.depth + 1, self.params if share else params)
        p.parse()

    # ------------------------------------------------------------------ tokens
    def _skip_blanks(self) -> None:
        s, n, i = self.s, self.n, self.i
        while i < n:
            c = s[i]
            if c in _BLANK:
                i += 1
            elif c == "\\" and i + 1 < n and s[i + 1] == "\n":
                i += 2
            elif c == "#":
                j = s.find("\n", i)
                i = n if j < 0 else j
            else:
                break
        self.i = i

    def _next(self):
        self._skip_blanks()
        s, n, i = self.s, self.n, self.i
        if i >= n:
            return _EOF, None
        c = s[i]
        if c == "\n":
            self.i = i + 1
            return _OP, "\n"
        if c in ";&|()<>":
            if c in "<>" and i + 1 < n and s[i + 1] == "(":
                return _WORD, self._word()
            for op in _OPS_BY_CHAR[c]:
                if s.startswith(op, i):
                    self.i = i + len(op)
                    return (_REDIR if op in _REDIR_OPS else _OP), op
        m = _FD_REDIR.match(s, i)
        if m:
            j = m.end()
            for op in _OPS_BY_CHAR[s[j]]:
                if s.startswith(op, j) and op in _REDIR_OPS:
                    self.i = j + len(op)
                    return _REDIR, op
        return _WORD, self._word()

    def _word(self) -> Word:
        """Read one word at ``self.i`` (which is not blank and not an operator)."""
        s, n = self.s, self.n
        i = self.i
        buf: list[str] = []
        segs: list | None = None
        quoted = dynamic = has_brace = False
        assign: str | None = None
        while i < n:
            m = _PLAIN.match(s, i)
            if m:
                buf.append(m.group())
                i = m.end()
                continue
            c = s[i]
            if c in _META:
                if c in "<>" and i + 1 < n and s[i + 1] == "(":  # process substitution
                    self.i = i + 2
                    self._nested_list()
                    segs = self._flush(buf, segs)
                    segs.append(("d", s[i:self.i], False))
                    dynamic = True
                    i = self.i
                    continue
                if c == "(" and buf and buf[-1] and buf[-1][-1] in "@!+*?":  # extglob pattern
                    j = self._skip_balanced(i + 1, ")")
                    segs = self._flush(buf, segs)
                    segs.append(("d", s[i:j], False))
                    dynamic = True
                    i = j
                    continue
                if c == "(" and assign and s[i - 1] == "=" and not segs:  # name=(array)
                    self.i = i + 1
                    self._array_body()
                    segs = self._flush(buf, segs)
                    segs.append(("d", s[i:self.i], False))
                    dynamic = True
                    i = self.i
                    continue
                break
            if c == "\\":
                if i + 1 < n:
                    if s[i + 1] == "\n":
                        i += 2
                        continue
                    buf.append(s[i + 1])
                    quoted = True
                    i += 2
                else:
                    buf.append("\\")
                    i += 1
            elif c == "'":
                j = s.find("'", i + 1)
                if j < 0:
                    j = n
                buf.append(s[i + 1:j])
                quoted = True
                i = j + 1
            elif c == '"':
                quoted = True
                i, segs, d = self._dquote(i + 1, buf, segs)
                dynamic = dynamic or d
            elif c == "$":
                i, segs, d, q = self._dollar(i, buf, segs, False)
                dynamic = dynamic or d
                quoted = quoted or q
            elif c == "`":
                j = self._backtick(i + 1, False)
                segs = self._flush(buf, segs)
                segs.append(("d", s[i:j], False))
                dynamic = True
                i = j
            elif c in "{,}":
                if self.no_brace:
                    buf.append(c)
                else:
                    buf.append(_SENTINELS[c])
                    has_brace = has_brace or c == "{"
                i += 1
            elif c == "=":
                if assign is None and not quoted and not segs and not dynamic:
                    lhs = "".join(buf)
                    assign = lhs.split("[", 1)[0].rstrip("+") if _ASSIGN_LHS.match(lhs) else ""
                buf.append("=")
                i += 1
            else:  # * ? [  (glob characters: kept literally)
                buf.append(c)
                i += 1
        self.i = i
        if segs is not None:
            segs = self._flush(buf, segs)
            text = "".join(("$" + v if k == "p" else v) for k, v, _ in segs).translate(_UNSENTINEL)
            has_param = any(k == "p" for k, _, _ in segs)
            return Word(text, None, segs, quoted, dynamic or has_param, assign or None)
        raw = "".join(buf)
        text = raw.translate(_UNSENTINEL) if has_brace or "\ue001" in raw or "\ue002" in raw else raw
        return Word(text, raw if has_brace else None, None, quoted, dynamic, assign or None)

    @staticmethod
    def _flush(buf: list[str], segs: list | None) -> list:
        if segs is None:
            segs = []
        if buf:
            segs.append(("l", "".join(buf), False))
            buf.clear()
        return segs

    def _dquote(self, i: int, buf: list[str], segs: list | None):
        """Inside "...": returns (index after the closing quote, segs, dynamic)."""
        s, n = self.s, self.n
        dynamic = False
        while i < n:
            m = _DQ_PLAIN.match(s, i)
            if m:
                buf.append(m.group())
                i = m.end()
                continue
            c = s[i]
            if c == '"':
                return i + 1, segs, dynamic
            if c == "\\":
                if i + 1 < n and s[i + 1] in '$`"\\\n':
                    if s[i + 1] != "\n":
                        buf.append(s[i + 1])
                    i += 2
                else:
                    buf.append("\\")
                    i += 1
            elif c == "$":
                i, segs, d, _ = self._dollar(i, buf, segs, True)
                dynamic = dynamic or d
            else:  # backtick
                j = self._backtick(i + 1, True)
                segs = self._flush(buf, segs)
                segs.append(("d", s[i:j], True))
                dynamic = True
                i = j
        return n, segs, dynamic

    def _dollar(self, i: int, buf: list[str], segs: list | None, in_dq: bool):
        """At a ``$``: returns (next index, segs, dynamic, quoted)."""
        s, n = self.s, self.n
        nxt = s[i + 1] if i + 1 < n else ""
        if nxt == "'" and not in_dq:
            j = self._ansi_c(i + 2, buf)
            return j, segs, False, True
        if nxt == '"' and not in_dq:
            j, segs, d = self._dquote(i + 2, buf, segs)
            return j, segs, d, True
        if nxt == "(":
            if s.startswith("((", i + 1) and self._is_arith(i + 1):
                j = self._arith(i + 3)
            else:
                self.i = i + 2
                self._nested_list()
                j = self.i
            segs = self._flush(buf, segs)
            segs.append(("d", s[i:j], in_dq))
            return j, segs, True, False
        if nxt == "{" and s[i + 2:i + 3] in (" ", "\t", "\n", "|"):  # ${ cmd; } and ${| cmd; }: run in this shell
            self.i = i + 3
            self._nested_list("}")
            j = self.i
            segs = self._flush(buf, segs)
            segs.append(("d", s[i:j], in_dq))
            return j, segs, True, False
        if nxt == "{":
            j = self._param_body(i + 2)
            inner = s[i + 2:j - 1] if j - 1 >= i + 2 and s[j - 1:j] == "}" else s[i + 2:j]
            segs = self._flush(buf, segs)
            if _NAME.fullmatch(inner) or (len(inner) == 1 and inner in _SPECIAL_PARAMS) or inner.isdigit():
                segs.append(("p", inner, in_dq))
            else:
                segs.append(("d", s[i:j], in_dq))
            return j, segs, True, False
        m = _NAME.match(s, i + 1)
        if m:
            segs = self._flush(buf, segs)
            segs.append(("p", m.group(), in_dq))
            return m.end(), segs, True, False
        if nxt and nxt in _SPECIAL_PARAMS:
            segs = self._flush(buf, segs)
            segs.append(("p", nxt, in_dq))
            return i + 2, segs, True, False
        buf.append("$")
        return i + 1, segs, False, False

    def _ansi_c(self, i: int, buf: list[str]) -> int:
        s, n = self.s, self.n
        out: list[str] = []
        while i < n:
            c = s[i]
            if c == "'":
                buf.append("".join(out))
                return i + 1
            if c != "\\" or i + 1 >= n:
                out.append(c)
                i += 1
                continue
            e = s[i + 1]
            i += 2
            if e in _ANSI_SIMPLE:
                out.append(_ANSI_SIMPLE[e])
            elif e in "01234567":
                j = i - 1
                k = j
                while k < n and k < j + 3 and s[k] in "01234567":
                    k += 1
                out.append(chr(int(s[j:k], 8) & 0xFF))
                i = k
            elif e in "xuU":
                width = {"x": 2, "u": 4, "U": 8}[e]
                k = i
                while k < n and k < i + width and s[k] in "0123456789abcdefABCDEF":
                    k += 1
                if k == i:
                    out.append("\\" + e)
                else:
                    code = int(s[i:k], 16)
                    out.append(chr(code) if code <= 0x10FFFF else "\ufffd")
                    i = k
            elif e == "c" and i < n:
                out.append(chr(ord(s[i]) & 0x1F))
                i += 1
            else:
                out.append("\\" + e)
        buf.append("".join(out))
        return n

    def _backtick(self, i: int, in_dq: bool) -> int:
        """Read `...` from after the opening backtick; parse its content; return index after the closer."""
        s, n = self.s, self.n
        out = []
        while i < n:
            c = s[i]
            if c == "`":
                i += 1
                break
            if c == "\\" and i + 1 < n and (s[i + 1] in "$`\\" or (in_dq and s[i + 1] == '"')):
                out.append(s[i + 1])
                i += 2
                continue
            out.append(c)
            i += 1
        self._subscript("".join(out), share=True)
        return i

    def _scan(self, i: int, closer: str) -> int:
        """Skip to after ``closer`` at this level, parsing substitutions on the way (quotes respected)."""
        s, n = self.s, self.n
        while i < n:
            if s[i] == closer:
                return i + 1
            i = self._skip_unit(i)
        return n

    def _skip_unit(self, i: int) -> int:
        """Step over one unit at ``i``: an escape, a quoted string, or a substitution (parsed on the way)."""
        s, n = self.s, self.n
        c = s[i]
        if c == "\\":
            return i + 2
        if c == "'":
            j = s.find("'", i + 1)
            return n if j < 0 else j + 1
        if c == '"':
            return self._dquote(i + 1, [], None)[0]
        if c == "`":
            return self._backtick(i + 1, False)
        if c == "$":
            return self._dollar(i, [], None, False)[0]
        return i + 1

    def _param_body(self, i: int) -> int:
        self._enter()
        try:
            return self._scan(i, "}")
        finally:
            self._leave()

    def _is_arith(self, i: int) -> bool:
        """At ``((``: does it close as ``))`` (arithmetic) rather than as nested subshells?"""
        s = self.s
        depth = 0
        k = i + 2
        finder = _ARITH_SCAN.search
        while True:
            m = finder(s, k)
            if m is None:
                return False
            k = m.start()
            c = s[k]
            if c == "(":
                depth += m.end() - k
                k = m.end() - 1
            elif c == ")":
                run = m.end() - k
                if depth < run:  # closes at depth 0 inside this run of ")"
                    return s.startswith(")", k + depth + 1)
                depth -= run
                k = m.end() - 1
            elif c == "'":
                j = s.find("'", k + 1)
                if j < 0:
                    return False
                k = j
            else:  # backslash
                k += 1
            k += 1

    def _arith(self, i: int) -> int:
        """Inside ``((``...: skip to after ``))``, parsing substitutions; return the index after."""
        s, n = self.s, self.n
        self._enter()
        try:
            depth = 0
            while i < n:
                c = s[i]
                if c == "(":
                    depth += 1
                    i += 1
                elif c == ")":
                    if depth == 0:
                        return min(n, i + 2)
                    depth -= 1
                    i += 1
                else:
                    i = self._skip_unit(i)
            return n
        finally:
            self._leave()

    def _skip_balanced(self, i: int, closer: str) -> int:
        """Extglob ``@(a|b)``: skip to after the matching ``)`` (words inside are patterns)."""
        s, n = self.s, self.n
        depth = 0
        while i < n:
            c = s[i]
            if c == "\\":
                i += 2
                continue
            if c == "(":
                depth += 1
            elif c == ")":
                if depth == 0:
                    return i + 1
                depth -= 1
            elif c in "'\"`$":
                i = self._scan_one(i)
                continue
            i += 1
        return n

    def _scan_one(self, i: int) -> int:
        s = self.s
        c = s[i]
        if c == "'":
            j = s.find("'", i + 1)
            return self.n if j < 0 else j + 1
        if c == '"':
            return self._dquote(i + 1, [], None)[0]
        if c == "`":
            return self._backtick(i + 1, False)
        return self._dollar(i, [], None, False)[0]

    def _array_body(self) -> None:
        """``name=(a b c)``: words up to the closing parenthesis (substitutions in them are parsed)."""
        s, n = self.s, self.n
        while True:
            self._skip_blanks()
            if self.i >= n:
                return
            c = s[self.i]
            if c == ")":
                self.i += 1
                return
            if c == "\n":
                self.i += 1
                continue
            if c in ";&|(<>":
                self.i += 1
                continue
            self._word()

    def _nested_list(self, close: str = ")") -> None:
        """``$( ... )`` / ``<( ... )`` (or bash 5.3's ``${ ...; }``): parse a list up to the closer."""
        self._enter()
        try:
            self._parse_list(close=close)
        finally:
            self._leave()

    # ------------------------------------------------------------------ here-documents
    def _read_heredocs(self) -> None:
        """After a newline: read the bodies of pending here-documents."""
        s, n = self.s, self.n
        pending, self.heredocs = self.heredocs, []
        for delim, strip, expand, cmd in pending:
            lines = []
            i = self.i
            while i < n:
                j = s.find("\n", i)
                end = n if j < 0 else j
                line = s[i:end]
                i = n if j < 0 else j + 1
                check = line.lstrip("\t") if strip else line
                if check == delim:
                    break
                lines.append(check if strip else line)
            self.i = i
            body = "\n".join(lines) + ("\n" if lines else "")
            if expand and ("$" in body or "`" in body):
                self._expand_heredoc(body)
            cmd.stdin = body if cmd.stdin is None else cmd.stdin
            cmd.heredoc_pending -= 1
        self._flush_awaiting()

    def _expand_heredoc(self, body: str) -> None:
        """Substitutions in an unquoted here-document run: parse them (the text itself is data)."""
        p = _Parser(body, self.ctx, self.depth + 1, self.params)
        p._dquote_body()

    def _dquote_body(self) -> None:
        s, n = self.s, self.n
        i = 0
        while i < n:
            c = s[i]
            if c == "\\":
                i += 2
            elif c == "$":
                i = self._dollar(i, [], None, True)[0]
            elif c == "`":
                i = self._backtick(i + 1, True)
            else:
                i += 1

    def _flush_awaiting(self, force: bool = False) -> None:
        still = []
        for cmd in self.awaiting:
            if force or not _waits(cmd):
                self._expand(cmd)
            else:
                still.append(cmd)
        self.awaiting = still

    # ------------------------------------------------------------------ the grammar (forgiving)
    def parse(self) -> None:
        self._parse_list(close="")
        self._flush_awaiting(force=True)

    def _parse_list(self, close: str) -> None:
        s = self.s
        stack: list[str] = []
        expect = ""  # for_name, for_words, case_word, case_in, pattern, func_name, func_parens, time_opts
        cur: _Simple | None = None
        pipe_from: _Simple | None = None
        for_first = False

        def finish() -> _Simple | None:
            nonlocal cur
            done, cur = cur, None
            if done is None:
                return None
            self._finish(done)
            return done

        def at_command_start() -> bool:
            return cur is None or (not cur.words and not cur.assigns)

        while True:
            if at_command_start() and not expect:
                self._skip_blanks()
                if s.startswith("((", self.i) and self._is_arith(self.i):
                    self.i = self._arith(self.i + 2)
                    finish()
                    continue
            kind, val = self._next()
            if kind == _EOF:
                finish()
                return
            if kind == _WORD:
                w: Word = val
                lit = w.literal
                if expect:
                    if expect == "time_opts":
                        expect = ""
                        if lit in ("-p", "--"):
                            continue
                    elif expect == "for_name":
                        self.params.pop(w.text, None)
                        expect, for_first = "for_words", True
                        continue
                    elif expect == "for_words":
                        if for_first and lit == "do":
                            expect = ""
                        for_first = False
                        continue
                    elif expect == "case_word":
                        expect = "case_in"
                        continue
                    elif expect == "case_in":
                        if lit == "in":
                            stack.append("case")
                            self._check_depth(stack)
                            expect = "pattern"
                        continue
                    elif expect == "pattern":
                        if lit == "esac":
                            _pop(stack, "case")
                            expect = ""
                        continue
                    elif expect == "func_name":
                        expect = "func_parens"
                        continue
                    elif expect == "func_parens":
                        expect = ""
                if lit is not None and lit in _KEYWORDS and at_command_start():
                    cur = None
                    if lit in _OPENERS:
                        stack.append(_OPENERS[lit])
                        self._check_depth(stack)
                    elif lit in _CLOSERS:
                        if lit == "}" and close == "}" and "brace" not in stack:
                            return
                        _pop(stack, _CLOSERS[lit])
                    elif lit in ("for", "select"):
                        stack.append("loop")
                        self._check_depth(stack)
                        self._skip_blanks()
                        if s.startswith("((", self.i):
                            self.i = self._arith(self.i + 2)
                        else:
                            expect = "for_name"
                    elif lit == "case":
                        expect = "case_word"
                    elif lit == "function":
                        expect = "func_name"
                    elif lit == "time":
                        expect = "time_opts"
                    elif lit == "[[":
                        self._dbracket()
                    elif lit == "coproc":
                        m = _COPROC_NAME.match(s, self.i)
                        if m:
                            self.i = m.end()
                    continue
                if cur is None:
                    cur = _Simple()
                    if pipe_from is not None:
                        cur.piped_from, pipe_from = pipe_from, None
                if w.assign and not cur.words:
                    cur.assigns.append(w)
                else:
                    cur.words.append(w)
                continue
            if kind == _REDIR:
                if cur is None:
                    cur = _Simple()
                    if pipe_from is not None:
                        cur.piped_from, pipe_from = pipe_from, None
                self._redirect(val, cur)
                continue
            # operators
            op = val
            if op == "\n":
                if expect == "for_words":
                    expect = ""
                if cur is not None:
                    finish()
                    pipe_from = None
                if self.heredocs:
                    self._read_heredocs()
                continue
            if expect == "pattern":
                if op == ")":
                    expect = ""
                continue
            if op in ("|", "|&"):
                pipe_from = finish()
                continue
            if op in (";", "&", "&&", "||"):
                if expect == "for_words":
                    expect = ""
                finish()
                pipe_from = None
                continue
            if op in (";;", ";&", ";;&"):
                finish()
                pipe_from = None
                if stack and stack[-1] == "case":
                    expect = "pattern"
                continue
            if op == "(":
                if expect in ("func_parens", "case_in", "case_word"):
                    if expect == "func_parens":
                        self._skip_blanks()
                        if s.startswith(")", self.i):
                            self.i += 1
                        expect = ""
                    continue
                if cur is not None and len(cur.words) == 1 and not cur.assigns:
                    self._skip_blanks()
                    if s.startswith(")", self.i):  # name () body: a function definition
                        self.i += 1
                        cur = None
                        continue
                finish()
                pipe_from = None
                stack.append("paren")
                self._check_depth(stack)
                continue
            if op == ")":
                finish()
                pipe_from = None
                if "paren" in stack:
                    _pop(stack, "paren")
                    continue
                if close == ")":
                    return
                continue

    def _check_depth(self, stack: list[str]) -> None:
        if len(stack) + self.depth > MAX_DEPTH:
            raise ParseError(f"nesting deeper than {MAX_DEPTH} levels")

    def _dbracket(self) -> None:
        """``[[ ... ]]``: operands are words (substitutions parsed), nothing in it is a command."""
        s, n = self.s, self.n
        while True:
            self._skip_blanks()
            i = self.i
            if i >= n:
                return
            if s.startswith("]]", i) and (i + 2 >= n or s[i + 2] in _META):
                self.i = i + 2
                return
            c = s[i]
            if c == "\n":
                self.i = i + 1
                if self.heredocs:
                    self._read_heredocs()
                continue
            if c == ";":
                return
            if c in "()<>!&|":
                self.i = i + (2 if s.startswith(("&&", "||"), i) else 1)
                continue
            self._word()

    def _redirect(self, op: str, cur: _Simple) -> None:
        self._skip_blanks()
        if self.i >= self.n or self.s[self.i] in "\n;&|()":
            return
        if self.s[self.i] in "<>" and not (self.i + 1 < self.n and self.s[self.i + 1] == "("):
            return
        target = self._word()
        if op in ("<<", "<<-"):
            delim = target.text if not target.segs else "".join(v for _, v, _ in target.segs)
            expand = not target.quoted
            self.heredocs.append((delim, op == "<<-", expand, cur))
            cur.heredoc_pending += 1
        elif op == "<<<":
            if not target.dynamic and not target.segs:
                cur.stdin = target.text + "\n"
            else:
                fields = self._resolve(target)
                if fields is not None:
                    cur.stdin = " ".join(fields) + "\n"

    # ------------------------------------------------------------------ words -> argv
    def _resolve(self, w: Word) -> list[str] | None:
        """The fields a word expands to, or None when a part is unknown."""
        if w.segs is None:
            if w.btext is not None:
                return _brace_expand(w.btext)
            return [w.text]
        fields = [""]
        if len(w.segs) == 1 and w.segs[0][:2] == ("p", "@") and w.segs[0][2]:
            values = self.params.get("@")
            return None if values is None else list(values)
        for kind, val, quoted in w.segs:
            if kind == "l":
                fields[-1] += val.translate(_UNSENTINEL)
            elif kind == "d":
                return None
            else:
                values = self.params.get(val)
                if values is None:
                    return None
                if val == "@" and quoted:
                    if not values:
                        continue
                    fields[-1] += values[0]
                    fields.extend(values[1:])
                    continue
                text = " ".join(values)
                if quoted:
                    fields[-1] += text
                elif "IFS" in self.params:  # splitting on another IFS: not modelled
                    return None
                else:
                    pieces = text.split()
                    if pieces:
                        if text[:1].isspace() and fields[-1]:
                            fields.append("")
                        fields[-1] += pieces[0]
                        fields.extend(pieces[1:])
                        if text[-1:].isspace():
                            fields.append("")
        if len(fields) > 1 and fields[-1] == "":
            fields.pop()
        if fields == [""] and not w.quoted and all(k == "p" and not q for k, _, q in w.segs):
            return []
        return fields

    def _words(self, words: list[Word]) -> tuple[list[str], list[bool]]:
        argv: list[str] = []
        dyn: list[bool] = []
        for w in words:
            fields = self._resolve(w)
            if fields is None:
                argv.append(w.text)
                dyn.append(True)
            else:
                argv.extend(fields)
                dyn.extend([False] * len(fields))
        return argv, dyn

    def _finish(self, cmd: _Simple) -> None:
        if _waits(cmd):
            self.awaiting.append(cmd)
            return
        self._expand(cmd)

    def _expand(self, cmd: _Simple) -> None:
        if cmd.done:
            return
        cmd.done = True
        env: dict[str, str] = {}
        for a in cmd.assigns:
            name, value = _split_assign(a, self)
            if value is not None:
                env[name] = value
                if name in COMMAND_VARIABLES:
                    self._subscript(value)
            if not cmd.words:
                if value is None:
                    self.params.pop(name, None)
                else:
                    self.params[name] = [value]
        if not cmd.words:
            return
        argv, dyn = self._words(cmd.words)
        if not argv:
            return
        stdin = cmd.stdin
        if stdin is None and cmd.piped_from is not None:
            stdin = _producer_output(cmd.piped_from, self)
        self._declare(argv, dyn)
        _expand_command(self, argv, dyn, env, stdin, False)

    def _declare(self, argv: list[str], dyn: list[bool]) -> None:
        """``export``/``declare``/``local``/``readonly``/``typeset`` NAME=value, ``read NAME``, ``unset``."""
        name = argv[0]
        if name in ("export", "declare", "local", "readonly", "typeset"):
            for word, d in zip(argv[1:], dyn[1:], strict=True):
                lhs, eq, value = word.partition("=")
                if eq and _NAME.fullmatch(lhs):
                    if d:
                        self.params.pop(lhs, None)
                    else:
                        self.params[lhs] = [value]
                        if lhs in COMMAND_VARIABLES:
                            self._subscript(value)
        elif name in ("read", "unset", "mapfile", "readarray", "getopts", "printf"):
            for word in argv[1:]:
                if _NAME.fullmatch(word):
                    self.params.pop(word, None)


_OPS_BY_CHAR = {
    ";": (";;&", ";;", ";&", ";"),
    "&": ("&&", "&>>", "&>", "&"),
    "|": ("||", "|&", "|"),
    "(": ("(",),
    ")": (")",),
    "<": ("<<<", "<<-", "<<", "<>", "<&", "<"),
    ">": (">>", ">&", ">|", ">"),
}
_REDIR_OPS = frozenset({"&>>", "&>", "<<<", "<<-", "<<", "<>", "<&", "<", ">>", ">&", ">|", ">"})
_ANSI_SIMPLE = {"a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
                "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?"}


def _pop(stack: list[str], kind: str) -> None:
    for k in range(len(stack) - 1, -1, -1):
        if stack[k] == kind:
            del stack[k:]
            return


def _waits(cmd: _Simple) -> bool:
    if cmd.heredoc_pending > 0:
        return True
    prev = cmd.piped_from
    return prev is not None and not prev.done and _waits(prev)


def _split_assign(w: Word, p: _Parser) -> tuple[str, str | None]:
    fields = p._resolve(w)
    name = w.assign or ""
    if fields is None or len(fields) != 1:
        return name, None
    return name, fields[0].partition("=")[2]


def _brace_expand(btext: str) -> list[str]:
    """Bash brace expansion over a word whose unquoted braces/commas are sentinels."""
    out: list[str] = []
    if btext.count(_RB) > 4 * MAX_DEPTH:
        raise ParseError(f"more than {4 * MAX_DEPTH} braces in one word")
    limit = max(1, min(MAX_BRACE_WORDS, MAX_BRACE_BYTES // max(1, len(btext))))
    _brace(btext, out, limit, 0)
    return [w.translate(_UNSENTINEL) for w in out] or [""]


def _brace(text: str, out: list[str], limit: int, depth: int) -> None:
    """Expand the leftmost expandable brace (bash's order), recursively; at most ``limit`` words."""
    if len(out) >= limit:
        return
    if depth > MAX_DEPTH:
        raise ParseError(f"more than {MAX_DEPTH} brace expansions in one word")
    best = None  # (start, end, top-level commas) of the leftmost expandable pair
    stack: list[list] = []
    for m in _SENTINEL_RE.finditer(text):
        j = m.start()
        c = text[j]
        if c == _LB:
            stack.append([j, []])
        elif c == _COMMA:
            if stack:
                stack[-1][1].append(j)
        elif c == _RB and stack:
            start, commas = stack.pop()
            if best is not None and best[0] < start:
                continue
            if commas or _sequence(text[start + 1:j]) is not None:
                best = (start, j, commas)
    if best is None:
        out.append(text)
        return
    start, end, commas = best
    pre, post = text[:start], text[end + 1:]
    if commas:
        pieces, last = [], start + 1
        for c in commas:
            pieces.append(text[last:c])
            last = c + 1
        pieces.append(text[last:end])
    else:
        pieces = _sequence(text[start + 1:end]) or []
    for piece in pieces:
        _brace(pre + piece + post, out, limit, depth + 1)
        if len(out) >= limit:
            return


_SEQ = _LazyRe(r"(-?\d+|[A-Za-z])\.\.(-?\d+|[A-Za-z])(?:\.\.(-?\d+))?\Z")


def _sequence(body: str) -> list[str] | None:
    m = _SEQ.match(body)
    if not m:
        return None
    a, b, step = m.group(1), m.group(2), m.group(3)
    inc = abs(int(step)) if step and step.lstrip("-").isdigit() and int(step) != 0 else 1
    if a.lstrip("-").isdigit() and b.lstrip("-").isdigit():
        x, y = int(a), int(b)
        rng = range(x, y + 1, inc) if x <= y else range(x, y - 1, -inc)
        return [str(v) for v in rng[:MAX_BRACE_WORDS]]
    if len(a) == 1 and len(b) == 1 and a.isascii() and b.isascii() and a.isalpha() and b.isalpha():
        x, y = ord(a), ord(b)
        rng = range(x, y + 1, inc) if x <= y else range(x, y - 1, -inc)
        return [chr(v) for v in rng]
    return None


def _producer_output(prod: _Simple, p: _Parser) -> str | None:
    """What ``echo``/``printf``/``cat`` (with literal arguments) write into a pipe."""
    if not prod.words:
        return None
    argv, dyn = p._words(prod.words)
    if not argv or any(dyn):
        return None
    name = basename(argv[0])
    args = argv[1:]
    if name == "echo":
        while args and args[0] in ("-n", "-e", "-E", "-ne", "-en"):
            args = args[1:]
        return " ".join(args) + "\n"
    if name == "printf" and args:
        fmt, rest = args[0], args[1:]
        if fmt in ("%s\n", "%s\\n", "%s", "%b\n", "%b\\n", "%b"):
            sep = "" if fmt in ("%s", "%b") else "\n"
            return sep.join(rest) + sep
        if "%" not in fmt:
            return fmt.replace("\\n", "\n")
        return None
    if name == "cat" and not args:
        return prod.stdin
    return None


# --------------------------------------------------------------------------- unwrapping

COMMAND_VARIABLES = frozenset({
    "GIT_SSH_COMMAND", "GIT_PAGER", "PAGER", "GIT_EDITOR", "EDITOR", "VISUAL", "GIT_SEQUENCE_EDITOR",
    "GIT_EXTERNAL_DIFF", "GIT_PROXY_COMMAND", "GIT_ASKPASS", "SSH_ASKPASS", "PROMPT_COMMAND", "MANPAGER",
    "SYSTEMD_PAGER", "RSYNC_RSH", "BROWSER",
})
"""Environment variables whose value is a command line some program runs: parsed as nested scripts."""

_GIT_COMMAND_KEYS = _LazyRe(
    r"(core\.(sshcommand|pager|editor|askpass|gitproxy|fsmonitor)|sequence\.editor|diff\.external|"
    r"gpg(\.[^.]+)?\.program|pager\..+|diff\..+\.(textconv|command)|filter\..+\.(clean|smudge|process)|"
    r"merge\..+\.driver|credential(\..+)?\.helper|alias\..+|uploadpack\.packobjectshook|"
    r"sendemail\..*(cmd|command)|web\.browser|browser\..+\.cmd|(diff|merge)tool\..+\.cmd)\Z")


class _Spec:
    """How a wrapper's options look: which take a value, which mean "no command follows"."""

    __slots__ = ("short_arg", "long_arg", "skip", "stops", "assigns", "long_stops")

    def __init__(self, short_arg: str = "", long_arg: tuple[str, ...] = (), skip: int = 0, stops: str = "",
                 assigns: bool = False, long_stops: tuple[str, ...] = ()):
        self.short_arg = short_arg  # short options taking a value (attached or next word)
        self.long_arg = frozenset(long_arg)  # long options taking a value (=value or next word)
        self.skip = skip  # operands before the command (timeout DURATION, chroot DIR)
        self.stops = stops  # short options after which no command runs (command -v)
        self.assigns = assigns  # NAME=value words may follow the options (env, sudo)
        self.long_stops = frozenset(long_stops)


WRAPPERS: dict[str, _Spec] = {
    "env": _Spec("uCSP", ("--unset", "--chdir", "--split-string"), assigns=True),
    "exec": _Spec("a"),
    "command": _Spec("", stops="vV"),
    "builtin": _Spec(),
    "nohup": _Spec(),
    "nice": _Spec("n", ("--adjustment",)),
    "timeout": _Spec("sk", ("--signal", "--kill-after"), skip=1),
    "time": _Spec("fo", ("--format", "--output")),
    "stdbuf": _Spec("ioe", ("--input", "--output", "--error")),
    "setsid": _Spec(),
    "xargs": _Spec("adEILnPs", ("--arg-file", "--delimiter", "--max-args", "--max-procs", "--max-chars",
                                "--process-slot-var")),
    "sudo": _Spec("ugCDhprtTU", ("--user", "--group", "--close-from", "--chdir", "--host", "--prompt", "--role",
                                 "--type", "--command-timeout", "--other-user"), stops="elvVK", assigns=True,
                  long_stops=("--edit", "--list", "--validate", "--version", "--remove-timestamp")),
    "doas": _Spec("uC", stops="L"),
    "pkexec": _Spec("", ("--user",)),
    "busybox": _Spec(),
    "ionice": _Spec("cn", ("--class", "--classdata"), stops="pPu", long_stops=("--pid", "--pgid", "--uid")),
    "chrt": _Spec("TPD", ("--sched-runtime", "--sched-period", "--sched-deadline"), skip=1, stops="pm",
                  long_stops=("--pid", "--max")),
    "taskset": _Spec("", (), skip=1, stops="p", long_stops=("--pid",)),
    "chroot": _Spec("", ("--userspec", "--groups"), skip=1),
    "unshare": _Spec("SGRw", ("--setuid", "--setgid", "--root", "--wd", "--map-user", "--map-group",
                              "--propagation", "--setgroups", "--kill-child")),
    "nsenter": _Spec("tSGrwT", ("--target", "--setuid", "--setgid")),
    "fakeroot": _Spec("lsib", ("--lib", "--faked", "-s", "-i", "-b")),
    "unbuffer": _Spec(),
    "torsocks": _Spec("upaP"),
    "proxychains": _Spec("f"),
    "proxychains4": _Spec("f"),
    "strace": _Spec("abeEIoOpPsSuUX", ("--output", "--trace", "--signal", "--attach", "--user", "--env")),
    "ltrace": _Spec("aAeEFlLnopsuwxX", ("--output", "--library")),
    "catchsegv": _Spec(),
    "prlimit": _Spec("p", ("--pid",)),
    "firejail": _Spec(),
    "systemd-run": _Spec("pEMHu", ("--property", "--setenv", "--machine", "--host", "--unit", "--description",
                                   "--slice", "--uid", "--gid", "--nice", "--working-directory")),
    "runcon": _Spec("turl", ("--type", "--user", "--role", "--range")),
    "ifne": _Spec(),
    "chronic": _Spec(),
    "lckdo": _Spec("w", skip=1),
    "caffeinate": _Spec("tw"),
}
"""Programs that run another program given as their remaining arguments."""

_STRING_RUNNERS = {"su": "csgGw", "runuser": "csgGuw", "script": "cEIOBTmo"}
"""Programs taking a command *string* with ``-c``/``--command`` (short options with a value listed)."""


def _options_end(argv: list[str], start: int, spec: _Spec) -> tuple[int, bool, list[str]]:
    """Skip a wrapper's options: (index of the wrapped command, command runs?, split-string words)."""
    i = start
    n = len(argv)
    runs = True
    extra: list[str] = []
    while i < n:
        w = argv[i]
        if w == "--":
            i += 1
            break
        if w == "-" and spec.assigns:  # env - (same as -i)
            i += 1
            continue
        if w.startswith("--") and len(w) > 2:
            name, eq, value = w.partition("=")
            if name in spec.long_stops:
                runs = False
            if name in spec.long_arg and not eq:
                value = argv[i + 1] if i + 1 < n else ""
                i += 1
            if name == "--split-string":
                extra = split_words(value)
            i += 1
            continue
        if w.startswith("-") and len(w) > 1:
            j = 1
            while j < len(w):
                ch = w[j]
                if ch in spec.stops:
                    runs = False
                if ch in spec.short_arg:
                    value = w[j + 1:]
                    if not value:
                        value = argv[i + 1] if i + 1 < n else ""
                        i += 1
                    if ch == "S" and spec is WRAPPERS["env"]:
                        extra = split_words(value)
                    break
                j += 1
            i += 1
            continue
        break
    return i, runs, extra


def _expand_command(p: _Parser, argv: list[str], dyn: list[bool], env: dict[str, str], stdin: str | None,
                    open_tail: bool) -> None:
    """Report ``argv`` and everything it runs in turn (wrapped commands, nested scripts)."""
    p.ctx.emit(Command(argv, dyn, open_tail, env))
    if dyn[0]:
        return
    name = basename(argv[0])
    n = len(argv)

    def inner(start: int, tail: bool = open_tail, more_env: dict[str, str] | None = None,
              extra: list[str] | None = None) -> None:
        if extra:
            sub, sdyn = extra + argv[start:], [False] * len(extra) + dyn[start:]
        else:
            sub, sdyn = argv[start:], dyn[start:]
        if sub:
            e = env if not more_env else {**env, **more_env}
            _nested_command(p, sub, sdyn, e, tail)

    def script(text: str, params: dict[str, list[str]] | None = None, share: bool = False) -> None:
        p._subscript(text, params, share)

    if name in SHELLS:
        _shell(p, argv, dyn, stdin, name)
        return
    if name in ("source", ".") and n > 1 and argv[1] in STDIN_PATHS:
        if stdin:
            p._subscript(stdin, share=True)
        return
    if name in ("eval",):
        if n > 1 and not any(dyn[1:]):
            script(" ".join(argv[1:]), share=True)
        return
    if name == "trap":
        if n > 2 and not dyn[1] and argv[1] not in ("-", "-p", "-l", "--") and not argv[1].isdigit():
            script(argv[1], share=True)
        return
    if name == "alias":
        for w, d in zip(argv[1:], dyn[1:], strict=True):
            _lhs, eq, value = w.partition("=")
            if eq and not d:
                script(value, share=True)
        return
    if name in ("find", "fd", "fdfind"):
        _find_exec(p, argv, dyn, env, name)
        return
    if name == "watch":
        i, runs, _ = _options_end(argv, 1, _Spec("nqd", ("--interval", "--differences", "--chgexit")))
        if i < n:
            if "-x" in argv[1:i] or "--exec" in argv[1:i]:
                inner(i)
            elif not any(dyn[i:]):
                script(" ".join(argv[i:]))
        return
    if name in _STRING_RUNNERS:
        _string_runner(p, argv, dyn, _STRING_RUNNERS[name])
        return
    if name == "sg":  # sg [-] GROUP [-c] COMMAND...  (run with /bin/sh -c)
        i = 1
        while i < n and argv[i] == "-":
            i += 1
        i += 1
        if i < n and argv[i] == "-c":
            i += 1
        if i < n and not any(dyn[i:]):
            script(" ".join(argv[i:]))
        return
    if name == "flock":
        i, _, _ = _options_end(argv, 1, _Spec("wEc", ("--timeout", "--wait", "--conflict-exit-code")))
        for k in range(1, min(i, n)):
            if argv[k] in ("-c", "--command") and k + 1 < n and not dyn[k + 1]:
                script(argv[k + 1])
            elif argv[k].startswith("--command="):
                script(argv[k].partition("=")[2])
        if i + 1 < n:
            if argv[i + 1] in ("-c", "--command"):
                if i + 2 < n and not dyn[i + 2]:
                    script(argv[i + 2])
            elif not argv[i].isdigit():
                inner(i + 1)
        return
    if name == "xargs":
        i, runs, _ = _options_end(argv, 1, WRAPPERS["xargs"])
        if i < n:
            inner(i, tail=True)
        return
    if name in ("ssh", "scp", "sftp"):
        _ssh_local_commands(p, argv, dyn, name)
        return
    if name == "rsync":
        _rsync_local_commands(p, argv, dyn, env)
        return
    if name == "git":
        _git_local_commands(p, argv, dyn, env)
        return
    spec = WRAPPERS.get(name)
    if spec is None:
        return
    i, runs, extra = _options_end(argv, 1, spec)
    if not runs:
        return
    more: dict[str, str] = {}
    if spec.assigns:
        while i < n and not dyn[i] and "=" in argv[i] and _NAME.fullmatch(argv[i].partition("=")[0]):
            var, _, v = argv[i].partition("=")
            more[var] = v
            if var in COMMAND_VARIABLES:
                script(v)
            i += 1
    if name == "busybox" and i < n and argv[i].startswith("--"):
        return
    i += spec.skip
    if i < n or extra:
        inner(i, more_env=more, extra=extra)


def _nested_command(p: _Parser, argv: list[str], dyn: list[bool], env: dict[str, str], open_tail: bool) -> None:
    """A command run by another one: one level deeper (wrappers count towards MAX_DEPTH)."""
    p._enter()
    try:
        _expand_command(p, argv, dyn, env, None, open_tail)
    finally:
        p._leave()


def _shell(p: _Parser, argv: list[str], dyn: list[bool], stdin: str | None, name: str) -> None:
    """``sh -c STRING [NAME ARGS...]``, ``bash --norc -lc STRING``, ``fish -c STRING``, or a script on stdin."""
    n = len(argv)
    i = 1
    has_c = has_s = False
    strings: list[tuple[str, bool]] = []  # fish -c / -C values
    while i < n:
        w = argv[i]
        if w in ("--", "-"):
            i += 1
            break
        if w.startswith("--"):
            opt, eq, value = w.partition("=")
            if opt in ("--rcfile", "--init-file") and not eq:
                i += 1
            elif name == "fish" and opt in ("--command", "--init-command"):
                if not eq:
                    i += 1
                    value = argv[i] if i < n else ""
                strings.append((value, dyn[i] if i < n else False))
                has_c = has_c or opt == "--command"
            i += 1
            continue
        if len(w) > 1 and w[0] in "-+":
            takes = 0
            j = 1
            while j < len(w):
                ch = w[j]
                if name == "fish" and ch in "cC":
                    value = w[j + 1:]
                    k = i
                    if not value:
                        k = i + 1 + takes
                        value = argv[k] if k < n else ""
                        takes += 1
                    strings.append((value, dyn[k] if k < n else False))
                    has_c = has_c or ch == "c"
                    break
                if ch == "c":
                    has_c = True
                elif ch == "s":
                    has_s = True
                elif ch in "oO":
                    takes += 1
                j += 1
            i += 1 + takes
            continue
        break
    if name == "fish":
        for text, d in strings:
            if not d:
                p._subscript(text)
        if has_c or i < n:
            return
    elif has_c:
        if i < n and not dyn[i]:
            params = {"0": [argv[i + 1]] if i + 1 < n else [argv[0]]}
            rest = argv[i + 2:]
            if not any(dyn[i + 1:]):
                for k, v in enumerate(rest, 1):
                    params[str(k)] = [v]
                params["@"] = rest
                params["*"] = rest
                params["#"] = [str(len(rest))]
            else:
                params = {}
            p._subscript(argv[i], params)
        return
    if i < n and not has_s and argv[i] not in STDIN_PATHS:
        return  # a script file: its content is not known here
    if stdin:
        p._subscript(stdin)


def _string_runner(p: _Parser, argv: list[str], dyn: list[bool], short_arg: str) -> None:
    """su/runuser/script: ``-c``/``--command`` strings; ``runuser -u USER [--] CMD...`` runs CMD directly."""
    n = len(argv)
    i = 1
    direct = basename(argv[0]) == "runuser" and any(w == "-u" or w.startswith(("-u", "--user")) for w in argv[1:])
    while i < n:
        w = argv[i]
        if w == "--" or (direct and not w.startswith("-")):
            if direct:
                k = i + 1 if w == "--" else i
                if k < n:
                    _nested_command(p, argv[k:], dyn[k:], {}, False)
            break
        if w in ("--command", "--session-command") or w.startswith(("--command=", "--session-command=")):
            _opt, eq, value = w.partition("=")
            k = i
            if not eq:
                k = i + 1
                value = argv[k] if k < n else ""
                i += 1
            if k < n and not dyn[k]:
                p._subscript(value)
        elif w.startswith("-") and not w.startswith("--") and len(w) > 1:
            options, i = option_cluster(argv, i, short_arg)
            for ch, arg, k in options:
                if ch == "c" and arg is not None and k < n and not dyn[k]:
                    p._subscript(arg)
            continue
        i += 1


def option_cluster(argv: list[str], i: int, arg_chars: str) -> tuple[list[tuple[str, str | None, int]], int]:
    """The options of one clustered short-option word ``argv[i]`` (``-abc``, ``-ovalue``, ``-o value``).

    Returns ``([(char, value, k)], next index)``: ``value`` is None for a flag,
    else the option's argument, read from the rest of the word or from the
    next word; ``k`` is the index of the word it came from (so callers can
    tell a literal from one only known at run time).  As getopt does, the
    first option in ``arg_chars`` ends the word.
    """
    word = argv[i]
    out: list[tuple[str, str | None, int]] = []
    for j in range(1, len(word)):
        ch = word[j]
        if ch not in arg_chars:
            out.append((ch, None, i))
            continue
        if j + 1 < len(word):
            out.append((ch, word[j + 1:], i))
            return out, i + 1
        out.append((ch, argv[i + 1] if i + 1 < len(argv) else "", i + 1))
        return out, i + 2
    return out, i + 1


def _find_exec(p: _Parser, argv: list[str], dyn: list[bool], env: dict[str, str], name: str) -> None:
    """``find ... -exec CMD ... ;`` (also -execdir, -ok, -okdir) and ``fd -x/-X CMD``."""
    n = len(argv)
    starters = ("-exec", "-execdir", "-ok", "-okdir") if name == "find" else ("-x", "--exec", "-X", "--exec-batch")
    i = 1
    while i < n:
        if argv[i] in starters:
            j = i + 1
            while j < n and argv[j] not in (";", "+", "\\;") and not (name != "find" and argv[j] in starters):
                j += 1
            if j > i + 1:
                _nested_command(p, argv[i + 1:j], dyn[i + 1:j], env, False)
            i = j + 1
        else:
            i += 1


_SSH_SHORT_ARG = "bcDEeFIiJLlmOoPpQRSWw"
_LOCAL_COMMAND_OPTIONS = ("proxycommand", "localcommand", "knownhostscommand")


def ssh_option(value: str) -> tuple[str, str]:
    """``-o`` value -> (lowercase key, value): ``Key=Value``, ``Key Value``, ``Key = "Value"``."""
    text = value.strip()
    m = re.match(r"([A-Za-z0-9]+)\s*(?:=\s*|\s+|$)", text)
    if not m:
        return text.lower(), ""
    rest = text[m.end():].strip()
    if len(rest) >= 2 and rest[0] == rest[-1] == '"':
        rest = rest[1:-1]
    return m.group(1).lower(), rest


def _ssh_local_commands(p: _Parser, argv: list[str], dyn: list[bool], name: str) -> None:
    """Commands ssh/scp/sftp run *locally*: ``-o ProxyCommand=`` and friends, ``-S``/``-D`` programs."""
    n = len(argv)
    short_arg = _SSH_SHORT_ARG if name == "ssh" else ("cDFiJlopPSsXbBR" if name == "sftp" else "cDFiJlopPSX")
    i = 1
    while i < n:
        w = argv[i]
        if w == "--":
            break
        if w.startswith("-") and len(w) > 1:
            options, i = option_cluster(argv, i, short_arg)
            for ch, value, k in options:
                if value is None or (k < n and dyn[k]):
                    continue
                if ch == "o":
                    key, val = ssh_option(value)
                    if key in _LOCAL_COMMAND_OPTIONS and val.lower() != "none":
                        p._subscript(_ssh_percent(val))
                elif name != "ssh" and ch in "SD" and value:
                    p._subscript(value)
            continue
        elif name == "ssh":
            # ssh re-parses options after the destination; the first other word starts the remote command
            j = i + 1
            while j < n and argv[j].startswith("-") and argv[j] != "--":
                j += 1
                if argv[j - 1][-1:] in short_arg and len(argv[j - 1]) == 2:
                    j += 1
            if j > i + 1:
                _ssh_local_commands(p, [argv[0]] + argv[i + 1:j], [False] + dyn[i + 1:j], name)
            return
        i += 1


def _ssh_percent(text: str) -> str:
    """ssh expands %h, %p, %r... in ProxyCommand/LocalCommand: stand-ins keep the words' shape."""
    return re.sub(r"%(.)", lambda m: "%" if m.group(1) == "%" else "X", text)


def _rsync_local_commands(p: _Parser, argv: list[str], dyn: list[bool], env: dict[str, str]) -> None:
    """``rsync -e CMD`` / ``--rsh=CMD``: the remote shell program runs locally."""
    n = len(argv)
    for k in range(1, n):
        w = argv[k]
        if dyn[k]:
            continue
        value = None
        if w == "-e" or w == "--rsh":
            if k + 1 < n and not dyn[k + 1]:
                value = argv[k + 1]
        elif w.startswith("--rsh="):
            value = w[6:]
        elif w.startswith("-") and not w.startswith("--") and "e" in w[1:]:
            j = w.index("e", 1)
            if w[1:j].isalpha():
                value = w[j + 1:] or (argv[k + 1] if k + 1 < n and not dyn[k + 1] else None)
        if value:
            p._subscript(value)


_GIT_GLOBAL_ARG = frozenset({"-C", "-c", "--git-dir", "--work-tree", "--namespace", "--super-prefix",
                             "--config-env", "--exec-path", "--list-cmds", "--attr-source"})


def git_globals(argv: list[str]) -> tuple[int, list[str]]:
    """Skip git's global options: (index of the subcommand, ``-c`` values in order)."""
    n = len(argv)
    i = 1
    configs = []
    while i < n:
        w = argv[i]
        if not w.startswith("-") or w == "-":
            break
        if w == "--":
            i += 1
            break
        opt, eq, value = w.partition("=")
        if opt in _GIT_GLOBAL_ARG and not eq and opt != "--exec-path":
            value = argv[i + 1] if i + 1 < n else ""
            i += 1
        elif opt.startswith("-c") and len(opt) > 2 and not opt.startswith("--"):
            value = w[2:]
            opt = "-c"
        if opt == "-c":
            configs.append(value)
        i += 1
    return i, configs


def _git_local_commands(p: _Parser, argv: list[str], dyn: list[bool], env: dict[str, str]) -> None:
    """Commands git runs from ``-c KEY=VALUE`` (pager, sshCommand, ``!``-aliases...) and ``ext::`` URLs,
    and the command an alias given with ``-c alias.NAME=...`` expands to."""
    i, configs = git_globals(argv)
    aliases: dict[str, str] = {}
    for item in configs:
        key, eq, value = item.partition("=")
        key = key.lower()
        if not eq or not _GIT_COMMAND_KEYS.match(key):
            continue
        if key.startswith("alias."):
            aliases[key[6:]] = value
            if value.startswith("!"):
                p._subscript(value[1:])
        elif key.endswith(".helper") and not value.startswith("!"):
            if value and not value.startswith("/"):
                p._subscript("git credential-" + value)
            elif value:
                p._subscript(value)
        elif key == "core.fsmonitor" and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0", ""):
            continue
        else:
            p._subscript(value[1:] if value.startswith("!") else value)
    for k in range(i, len(argv)):
        if not dyn[k] and argv[k].startswith("ext::"):
            p._subscript(argv[k][5:].replace("%%", "%").replace("% ", " "))
    if i < len(argv) and not dyn[i] and argv[i].lower() in aliases:
        value = aliases[argv[i].lower()]
        rest = argv[i + 1:]
        if value.startswith("!"):
            p._subscript(value[1:] + "".join(" " + _quote(r) for r in rest))
        else:
            words = split_words(value)
            if words:
                sub = argv[:i] + words + rest
                _nested_command(p, sub, dyn[:i] + [False] * len(words) + dyn[i + 1:], env, False)


def _quote(word: str) -> str:
    if word and re.fullmatch(r"[A-Za-z0-9_./=:@%+,-]+", word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


# --------------------------------------------------------------------------- public API

def split_words(text: str) -> list[str]:
    """Split like the shell splits one simple command's words (quotes, escapes); no expansion."""
    ctx = _Ctx(len(text))
    p = _Parser(text, ctx, 0)
    out: list[str] = []
    while True:
        p._skip_blanks()
        if p.i >= p.n:
            return out
        c = p.s[p.i]
        if c in _META and not (c in "<>" and p.s[p.i + 1:p.i + 2] == "("):
            out.append(c)
            p.i += 1
            continue
        w = p._word()
        out.append(w.text)


def commands(text: str) -> list[Command]:
    """Every command ``text`` (a shell command string) would run, in source order."""
    ctx = _Ctx(len(text))
    _Parser(text, ctx, 0).parse()
    return ctx.out


def commands_from_argv(argv: list[str], env: dict[str, str] | None = None) -> list[Command]:
    """Every command an exact argv would run: itself, what it wraps, nested ``sh -c`` scripts."""
    ctx = _Ctx(sum(len(a) + 1 for a in argv))
    if not argv:
        return []
    p = _Parser("", ctx, 0)
    _expand_command(p, list(argv), [False] * len(argv), dict(env or {}), None, False)
    p._flush_awaiting(force=True)
    return ctx.out
