"""Words as bash reads them: the lexer (operators and words), and brace expansion.

A word is read as bash reads it: quotes, backslashes, ``$'...'``, ``$"..."``,
line continuations, parameters (kept as segments to substitute later),
unquoted braces marked for brace expansion, and every substitution in it
(``$( )``, backticks, ``<( )``, ``${ }``, ``$(( ))``) *parsed* on the way,
because a substitution runs commands even inside a word.  Parsing those is
the grammar's job: ``Lexer`` is the base of ``grammar.Parser``, which provides
``_nested_list`` and ``script``.

Every pattern of the package is a ``LazyRe``: ``fence -- cmd`` (an exact
argv, nothing to lex) runs on every sandbox start and must not pay for
compiling them.
"""

from __future__ import annotations

import re

from .command import MAX_DEPTH, ParseError


class LazyRe:
    """A regex compiled on first use: ``fence -- cmd`` (no parsing) pays for none of them."""

    __slots__ = ("pattern", "rx")

    def __init__(self, pattern: str):
        self.pattern = pattern
        self.rx: re.Pattern[str] | None = None

    def __getattr__(self, name: str):
        if self.rx is None:
            self.rx = re.compile(self.pattern)
        return getattr(self.rx, name)


BLANK = " \t"
META = " \t\n;&|()<>"
_PLAIN = LazyRe(r"[^ \t\n;&|()<>'\"\\$`{},*?\[=]+")
_DQ_PLAIN = LazyRe(r'[^"\\$`]+')
NAME = LazyRe(r"[A-Za-z_][A-Za-z0-9_]*")
_FD_REDIR = LazyRe(r"(?:[0-9]+|\{[A-Za-z_][A-Za-z0-9_]*\})(?=[<>])")
_ASSIGN_LHS = LazyRe(r"[A-Za-z_][A-Za-z0-9_]*(?:\[[^\]]*\])?\+?\Z")
_ARITH_SCAN = LazyRe(r"\(+|\)+|['\\]")
_SPECIAL_PARAMS = "@*#?$!-0123456789"

OPS_BY_CHAR = {
    ";": (";;&", ";;", ";&", ";"),
    "&": ("&&", "&>>", "&>", "&"),
    "|": ("||", "|&", "|"),
    "(": ("(",),
    ")": (")",),
    "<": ("<<<", "<<-", "<<", "<>", "<&", "<"),
    ">": (">>", ">&", ">|", ">"),
}
REDIR_OPS = frozenset({"&>>", "&>", "<<<", "<<-", "<<", "<>", "<&", "<", ">>", ">&", ">|", ">"})
_ANSI_SIMPLE = {
    "a": "\a",
    "b": "\b",
    "e": "\x1b",
    "E": "\x1b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "?": "?",
}

# unquoted brace-expansion characters are carried through a word as these
LB, COMMA, RB = "\ue000", "\ue001", "\ue002"
SENTINELS = {"{": LB, ",": COMMA, "}": RB}
UNSENTINEL = str.maketrans({LB: "{", COMMA: ",", RB: "}"})

END, WORD, OP, REDIR = range(4)
"""Token kinds returned by ``Lexer._next``."""


class Word:
    """A word as read: literal text, or segments when parameters or substitutions are involved."""

    __slots__ = ("text", "btext", "segs", "quoted", "dynamic", "assign")

    def __init__(
        self, text: str, btext: str | None, segs: list | None, quoted: bool, dynamic: bool, assign: str | None
    ):
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


class Lexer:
    """Reads tokens from one source string; ``i`` is the cursor the grammar shares.

    ``depth`` counts nesting (substitutions, brackets) towards ``MAX_DEPTH``;
    ``no_brace``: the source already holds the sentinel characters, so
    brace expansion is off for it (they could not be told apart).
    """

    def __init__(self, src: str, depth: int):
        self.s = src
        self.n = len(src)
        self.i = 0
        self.depth = depth
        self.no_brace = LB in src or COMMA in src or RB in src

    # ------------------------------------------------------------------ provided by the grammar
    def _nested_list(self, close: str = ")") -> None:
        """Parse a list of commands up to ``close`` (``$( )``, ``<( )``, ``${ ...; }``)."""
        raise NotImplementedError

    def script(self, text: str, params: dict[str, list[str]] | None = None, share: bool = False) -> None:
        """Parse ``text`` as a nested script (backticks here)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ nesting
    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ParseError(f"nesting deeper than {MAX_DEPTH} levels")

    def _leave(self) -> None:
        self.depth -= 1

    # ------------------------------------------------------------------ tokens
    def _skip_blanks(self) -> None:
        s, n, i = self.s, self.n, self.i
        while i < n:
            c = s[i]
            if c in BLANK:
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
            return END, None
        c = s[i]
        if c == "\n":
            self.i = i + 1
            return OP, "\n"
        if c in ";&|()<>":
            if c in "<>" and i + 1 < n and s[i + 1] == "(":
                return WORD, self._word()
            for op in OPS_BY_CHAR[c]:
                if s.startswith(op, i):
                    self.i = i + len(op)
                    return (REDIR if op in REDIR_OPS else OP), op
        m = _FD_REDIR.match(s, i)
        if m:
            j = m.end()
            for op in OPS_BY_CHAR[s[j]]:
                if s.startswith(op, j) and op in REDIR_OPS:
                    self.i = j + len(op)
                    return REDIR, op
        return WORD, self._word()

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
            if c in META:
                if c in "<>" and i + 1 < n and s[i + 1] == "(":  # process substitution
                    self.i = i + 2
                    self._nested_list()
                    segs = self._flush(buf, segs)
                    segs.append(("d", s[i : self.i], False))
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
                    segs.append(("d", s[i : self.i], False))
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
                buf.append(s[i + 1 : j])
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
                    buf.append(SENTINELS[c])
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
            text = "".join(("$" + v if k == "p" else v) for k, v, _ in segs).translate(UNSENTINEL)
            has_param = any(k == "p" for k, _, _ in segs)
            return Word(text, None, segs, quoted, dynamic or has_param, assign or None)
        raw = "".join(buf)
        text = raw.translate(UNSENTINEL) if has_brace or "\ue001" in raw or "\ue002" in raw else raw
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
        if nxt == "{" and s[i + 2 : i + 3] in (" ", "\t", "\n", "|"):  # ${ cmd; } and ${| cmd; }: run in this shell
            self.i = i + 3
            self._nested_list("}")
            j = self.i
            segs = self._flush(buf, segs)
            segs.append(("d", s[i:j], in_dq))
            return j, segs, True, False
        if nxt == "{":
            j = self._param_body(i + 2)
            inner = s[i + 2 : j - 1] if j - 1 >= i + 2 and s[j - 1 : j] == "}" else s[i + 2 : j]
            segs = self._flush(buf, segs)
            if NAME.fullmatch(inner) or (len(inner) == 1 and inner in _SPECIAL_PARAMS) or inner.isdigit():
                segs.append(("p", inner, in_dq))
            else:
                segs.append(("d", s[i:j], in_dq))
            return j, segs, True, False
        m = NAME.match(s, i + 1)
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
        self.script("".join(out), share=True)
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


# --------------------------------------------------------------------------- brace expansion
# (``{git,push}`` is ``git push``, ``{1..3}``): over a word whose unquoted braces and commas the
# lexer marked with the sentinels, so that quoted ones stay literal; bounded, so that
# ``{a,b}{a,b}...`` cannot multiply without end.

MAX_BRACE_WORDS = 1024
"""Most words one brace expansion may produce; the rest are dropped."""
MAX_BRACE_BYTES = 256 * 1024
"""Most text one brace expansion may produce (a long word gets fewer words)."""

_SENTINEL_RE = LazyRe("[\ue000-\ue002]")


def brace_expand(btext: str) -> list[str]:
    """Bash brace expansion over a word whose unquoted braces/commas are sentinels."""
    out: list[str] = []
    if btext.count(RB) > 4 * MAX_DEPTH:
        raise ParseError(f"more than {4 * MAX_DEPTH} braces in one word")
    limit = max(1, min(MAX_BRACE_WORDS, MAX_BRACE_BYTES // max(1, len(btext))))
    _brace(btext, out, limit, 0)
    return [w.translate(UNSENTINEL) for w in out] or [""]


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
        if c == LB:
            stack.append([j, []])
        elif c == COMMA:
            if stack:
                stack[-1][1].append(j)
        elif c == RB and stack:
            start, commas = stack.pop()
            if best is not None and best[0] < start:
                continue
            if commas or _sequence(text[start + 1 : j]) is not None:
                best = (start, j, commas)
    if best is None:
        out.append(text)
        return
    start, end, commas = best
    pre, post = text[:start], text[end + 1 :]
    if commas:
        pieces, last = [], start + 1
        for c in commas:
            pieces.append(text[last:c])
            last = c + 1
        pieces.append(text[last:end])
    else:
        pieces = _sequence(text[start + 1 : end]) or []
    for piece in pieces:
        _brace(pre + piece + post, out, limit, depth + 1)
        if len(out) >= limit:
            return


_SEQ = LazyRe(r"(-?\d+|[A-Za-z])\.\.(-?\d+|[A-Za-z])(?:\.\.(-?\d+))?\Z")


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
