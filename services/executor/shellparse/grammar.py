"""The grammar: lists, pipelines, compound commands, here-documents, redirections.

``Parser`` reads one source string (on ``words.Lexer``'s tokens) the way
bash would split it into simple commands -- forgiving: unbalanced or unknown
syntax never stops it, and keywords never hide the command after them.  Each
simple command's words are expanded to an argv (brace expansion, variables
assigned literal values earlier in the script, ``"$@"`` of an ``sh -c``
script) and handed to ``wrappers.expand_command``, which reports it and
whatever it runs in turn.  What those programs run comes back here through
the few methods they call on the parser: ``script`` (a nested script),
``nested_command`` (a wrapped argv) and ``split``.

``commands``, ``commands_from_argv`` and ``split_words`` are the entry points.
"""

from __future__ import annotations

from .command import MAX_COMMANDS, MAX_DEPTH, Command, ParseError
from .tools import COMMAND_VARIABLES
from .words import END, META, NAME, REDIR, UNSENTINEL, WORD, LazyRe, Lexer, Word, brace_expand
from .wrappers import expand_command, producer_output

PARSE_BUDGET = 64 * 1024
"""Nested scripts may add this much text to parse, plus three times the input (eval chains re-read it)."""

_COPROC_NAME = LazyRe(r"[ \t]*[A-Za-z_][A-Za-z0-9_]*[ \t\n]+(?=[{(])")

_KEYWORDS = frozenset(
    {
        "!",
        "{",
        "}",
        "if",
        "then",
        "else",
        "elif",
        "fi",
        "while",
        "until",
        "do",
        "done",
        "for",
        "select",
        "case",
        "esac",
        "function",
        "time",
        "[[",
        "coproc",
        "in",
    }
)
_OPENERS = {"if": "if", "while": "loop", "until": "loop", "{": "brace"}
_CLOSERS = {"fi": "if", "done": "loop", "esac": "case", "}": "brace"}


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


class Parser(Lexer):
    """One source string.  Nested ``$( )`` share the cursor; nested scripts get their own parser."""

    def __init__(self, src: str, ctx: _Ctx, depth: int, params: dict[str, list[str]] | None = None):
        if depth > MAX_DEPTH:
            raise ParseError(f"nesting deeper than {MAX_DEPTH} levels")
        ctx.read(len(src))
        super().__init__(src, depth)
        self.ctx = ctx
        self.params: dict[str, list[str]] = params if params is not None else {}
        self.heredocs: list[tuple[str, bool, bool, _Simple]] = []  # (delimiter, strip tabs, expand, command)
        self.awaiting: list[_Simple] = []  # finished commands waiting for a here-document body

    # ------------------------------------------------------------------ what programs run, back into the parser
    def script(self, text: str, params: dict[str, list[str]] | None = None, share: bool = False) -> None:
        """Parse ``text`` as a nested script (backticks, eval, sh -c ...)."""
        p = Parser(text, self.ctx, self.depth + 1, self.params if share else params)
        p.parse()

    def nested_command(self, argv: list[str], dyn: list[bool], env: dict[str, str], open_tail: bool) -> None:
        """A command run by another one: one level deeper (wrappers count towards MAX_DEPTH)."""
        self._enter()
        try:
            expand_command(self, argv, dyn, env, None, open_tail)
        finally:
            self._leave()

    @staticmethod
    def split(text: str) -> list[str]:
        """``split_words`` for the programs that take a command line as one string (``env -S``)."""
        return split_words(text)

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
        p = Parser(body, self.ctx, self.depth + 1, self.params)
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
            if kind == END:
                finish()
                return
            if kind == WORD:
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
            if kind == REDIR:
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
            if s.startswith("]]", i) and (i + 2 >= n or s[i + 2] in META):
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
                return brace_expand(w.btext)
            return [w.text]
        fields = [""]
        if len(w.segs) == 1 and w.segs[0][:2] == ("p", "@") and w.segs[0][2]:
            values = self.params.get("@")
            return None if values is None else list(values)
        for kind, val, quoted in w.segs:
            if kind == "l":
                fields[-1] += val.translate(UNSENTINEL)
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
                    self.script(value)
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
            stdin = self._piped_output(cmd.piped_from)
        self._declare(argv, dyn)
        expand_command(self, argv, dyn, env, stdin, False)

    def _piped_output(self, prod: _Simple) -> str | None:
        """What the command before a ``|`` writes into the pipe, when that is known (``wrappers.producer_output``)."""
        if not prod.words:
            return None
        argv, dyn = self._words(prod.words)
        if not argv or any(dyn):
            return None
        return producer_output(argv, prod.stdin)

    def _declare(self, argv: list[str], dyn: list[bool]) -> None:
        """``export``/``declare``/``local``/``readonly``/``typeset`` NAME=value, ``read NAME``, ``unset``."""
        name = argv[0]
        if name in ("export", "declare", "local", "readonly", "typeset"):
            for word, d in zip(argv[1:], dyn[1:], strict=True):
                lhs, eq, value = word.partition("=")
                if eq and NAME.fullmatch(lhs):
                    if d:
                        self.params.pop(lhs, None)
                    else:
                        self.params[lhs] = [value]
                        if lhs in COMMAND_VARIABLES:
                            self.script(value)
        elif name in ("read", "unset", "mapfile", "readarray", "getopts", "printf"):
            for word in argv[1:]:
                if NAME.fullmatch(word):
                    self.params.pop(word, None)


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


def _split_assign(w: Word, p: Parser) -> tuple[str, str | None]:
    fields = p._resolve(w)
    name = w.assign or ""
    if fields is None or len(fields) != 1:
        return name, None
    return name, fields[0].partition("=")[2]


# --------------------------------------------------------------------------- entry points


def split_words(text: str) -> list[str]:
    """Split like the shell splits one simple command's words (quotes, escapes); no expansion."""
    ctx = _Ctx(len(text))
    p = Parser(text, ctx, 0)
    out: list[str] = []
    while True:
        p._skip_blanks()
        if p.i >= p.n:
            return out
        c = p.s[p.i]
        if c in META and not (c in "<>" and p.s[p.i + 1 : p.i + 2] == "("):
            out.append(c)
            p.i += 1
            continue
        w = p._word()
        out.append(w.text)


def commands(text: str) -> list[Command]:
    """Every command ``text`` (a shell command string) would run, in source order."""
    ctx = _Ctx(len(text))
    Parser(text, ctx, 0).parse()
    return ctx.out


def commands_from_argv(argv: list[str], env: dict[str, str] | None = None) -> list[Command]:
    """Every command an exact argv would run: itself, what it wraps, nested ``sh -c`` scripts."""
    ctx = _Ctx(sum(len(a) + 1 for a in argv))
    if not argv:
        return []
    p = Parser("", ctx, 0)
    expand_command(p, list(argv), [False] * len(argv), dict(env or {}), None, False)
    p._flush_awaiting(force=True)
    return ctx.out
