"""JSONC: JSON with ``//`` and ``/* */`` comments and trailing commas.

This is on the hot path (``fence run`` resolves its config on every agent
tool call), so it is built for speed:

* ``strip`` blanks comments and trailing commas with one compiled regex that
  alternates strings | comments | trailing commas.  Blanked bytes become
  spaces (newlines inside block comments are kept), so every byte offset in
  the result is an offset in the original file and error positions stay
  exact.  ~20 us per KB.
* ``decode`` first tries ``msgspec.json.decode`` on the raw bytes (a file with
  no comments is plain JSON: ~1.5 us per KB) and only strips when that fails
  with a syntax error.  msgspec then decodes straight into the typed model.
* On a syntax error the line and column are computed here from msgspec's byte
  offset, and a short description of what was found is written
  (``describe_syntax_error``).

Why json5 is not used on the hot path: the ``json5`` package is pure Python
and parses at ~6 ms per KB on this machine (a 10 KB config would cost 60 ms
per run; the ``code`` template 25 ms), and importing it costs more than the
whole fast path.  It is used exactly once, lazily, on the error path: when
the fast path rejects a file where JSON5 syntax may be the cause (a bare
word, a single quote, a leading ``+`` or ``.``), json5 gets a second look at
files up to ``JSON5_HINT_LIMIT`` bytes.  If json5 *accepts* the file, the user wrote
JSON5 (unquoted keys, single quotes, hex numbers, ``Infinity``...), which
fence does not read, and the error says so -- that is the one thing json5
knows that a JSON parser cannot tell.  Its own error positions add nothing
over ours, so they are not used.
"""

from __future__ import annotations

import re

import msgspec

_STR = rb'"[^"\\\n]*(?:\\.[^"\\\n]*)*"'
_LINE = rb"//[^\n]*+"
_BLOCK = rb"/\*[^*]*\*+(?:[^/*][^*]*\*+)*/"
_TRAILING_COMMA = rb",(?=(?:\s|" + _LINE + rb"|" + _BLOCK + rb")*[}\]])"
_TOKENS = _STR + rb"|" + _LINE + rb"|" + _BLOCK + rb"|" + _TRAILING_COMMA
_tokens: re.Pattern | None = None
"""Compiled on first use (~0.3 ms): runs with no config or a plain-JSON one never pay it."""

JSON5_HINT_LIMIT = 64 * 1024
"""Largest file json5 is asked about on the error path (it costs ~6 ms per KB)."""


def _blank(m: re.Match) -> bytes:
    token = m.group()
    if token[0] == 34:  # a string: keep
        return token
    if token[0] == 44:  # a trailing comma
        return b" "
    return re.sub(rb"[^\n]", b" ", token) if b"\n" in token else b" " * len(token)


def strip(data: bytes) -> bytes:
    """``data`` with comments and trailing commas replaced by spaces (same length)."""
    global _tokens
    if _tokens is None:
        _tokens = re.compile(_TOKENS)
    return _tokens.sub(_blank, data)


class JSONCSyntaxError(ValueError):
    """Not JSONC.  ``line``/``column`` are 1-based (column in characters)."""

    def __init__(self, what: str, line: int, column: int):
        super().__init__(f"line {line}, column {column}: {what}")
        self.what, self.line, self.column = what, line, column


def decode(data: bytes, type=object):
    """Decode JSONC ``data`` (valid UTF-8) into ``type``.

    Raises ``JSONCSyntaxError`` for bad syntax and lets ``msgspec.ValidationError``
    (wrong types, unknown keys) through.
    """
    try:
        return msgspec.json.decode(data, type=type)
    except msgspec.ValidationError:
        raise
    except msgspec.DecodeError:
        pass
    stripped = strip(data)
    try:
        return msgspec.json.decode(stripped, type=type)
    except msgspec.ValidationError:
        raise
    except msgspec.DecodeError as e:
        raise syntax_error(data, stripped, str(e)) from None


def position(data: bytes, offset: int) -> tuple[int, int]:
    """1-based (line, column) of byte ``offset``; the column counts characters."""
    offset = max(0, min(offset, len(data)))
    line = data.count(b"\n", 0, offset) + 1
    start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[start:offset].decode("utf-8", "replace")) + 1
    return line, column


_BYTE = r"\(byte (\d+)\)"
_OPENERS = _STR + rb'|"|[{}\[\]]'


def syntax_error(original: bytes, stripped: bytes, message: str) -> JSONCSyntaxError:
    """Turn msgspec's ``DecodeError`` text into a positioned, readable error."""
    m = re.search(_BYTE, message)
    reason = re.sub(_BYTE, "", message.replace("JSON is malformed: ", "")).strip()
    if m is None:  # "Input data was truncated": say what is left open
        what, offset = _unclosed(stripped)
        return JSONCSyntaxError(what, *position(original, offset))
    what, offset = describe(stripped, int(m.group(1)), reason)
    at = stripped[offset : offset + 1]
    json5_syntax = at in (b"'", b"+", b".") or at.isalnum() or reason.startswith("object keys")
    hint = _json5_hint(original) if json5_syntax else ""
    if hint:
        what = f"{what}; {hint}"
    return JSONCSyntaxError(what, *position(original, offset))


_WORD = rb"[A-Za-z0-9_$.+-]+"
_WORD_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_$.+-")


def _word_near(buf: bytes, offset: int) -> tuple[bytes, int] | None:
    """The bare word at ``offset``, or ending just before it (msgspec reports keyword errors
    a few bytes late); None when there is none."""
    for at in range(min(offset, len(buf) - 1), max(-1, offset - 5), -1):
        if buf[at] in _WORD_CHARS:
            start = at
            while start > 0 and buf[start - 1] in _WORD_CHARS:
                start -= 1
            word = re.compile(_WORD).match(buf, start)
            assert word is not None  # buf[start] is a word character
            return word.group(), start
        if at < offset and buf[at] in b" \t\r\n,:[{":
            break
    return None


def describe(stripped: bytes, offset: int, reason: str) -> tuple[str, int]:
    """What is wrong at ``offset`` and where exactly, in words a config author can act on."""
    if reason.startswith("trailing characters"):
        at = len(stripped[:offset].rstrip()) - 1
        while at > 0 and stripped[at - 1 : at] not in b" \t\r\n}]":
            at -= 1
        shown = stripped[at : at + 1].decode("utf-8", "replace")
        return f"unexpected {shown!r} after the end of the config (a file holds one JSON object)", at
    if reason == "invalid character" and offset < len(stripped) and stripped[offset] < 0x20:
        return (
            f"raw control character 0x{stripped[offset]:02x} (a line break or tab inside a string must be "
            f"written as \\n or \\t)"
        ), offset
    if reason.startswith("object keys must be strings"):
        near = _word_near(stripped, offset)
        if near is not None and near[1] <= offset:
            return f"unexpected {near[0].decode()!r}: keys need double quotes", near[1]
    if reason == "invalid character" or reason == "invalid number":
        near = _word_near(stripped, offset)
        if near is not None and near[0][:1].isalpha():
            word = near[0].decode()
            if word.lower() in ("true", "false", "null") or word.lower().startswith(("tru", "fals", "nul")):
                return f"unexpected {word!r} (the literals are true, false and null, lowercase)", near[1]
            return f"unexpected {word!r}: keys and strings need double quotes", near[1]
        if near is not None and reason == "invalid number":
            return f"invalid number {near[0].decode()!r}", near[1]
    if "escape" in reason or "surrogate" in reason or "utf" in reason:
        return f"{reason} (in a string)", min(offset, len(stripped.rstrip()) - 1)
    if offset >= len(stripped.rstrip()):
        return "unexpected end of file", len(stripped.rstrip())
    ch = stripped[offset : offset + 1]
    shown = stripped[offset : offset + 4].decode("utf-8", "replace")[:1]
    if ch == b"/":
        if stripped[offset : offset + 2] == b"/*":
            return "unterminated /* comment (no closing */)", offset
        return "unexpected '/' (comments are // to the end of the line or /* ... */)", offset
    if ch == b"'":
        return 'unexpected "\'": strings and keys need double quotes', offset
    if ch == b",":
        return "unexpected ',' (a value is missing)", offset
    if ch in b"}]":
        return f"unexpected '{shown}' (a value is missing before it)", offset
    if ch == b'"' and reason.startswith("expected"):
        return f"{reason} before this string (a missing comma?)", offset
    if reason.startswith("expected") or "escape" in reason or "string" in reason:
        return reason, offset
    return f"unexpected {shown!r}", offset


def _unclosed(stripped: bytes) -> tuple[str, int]:
    """For a truncated document: the innermost opener never closed (or the unterminated string)."""
    stack: list[tuple[bytes, int]] = []
    for m in re.finditer(_OPENERS, stripped):
        tok = m.group()
        if tok == b'"':
            line_end = stripped.find(b"\n", m.start())
            if line_end == -1 or stripped.find(b'"', m.start() + 1, line_end) == -1:
                return 'unterminated string (missing closing ")', m.start()
            continue
        if tok in (b"{", b"["):
            stack.append((tok, m.start()))
        elif tok in (b"}", b"]") and stack:
            stack.pop()
    if stack:
        tok, at = stack[-1]
        closer = "}" if tok == b"{" else "]"
        return f"unexpected end of file: this '{tok.decode()}' is never closed (add '{closer}')", at
    if not stripped.strip():
        return "no JSON value (only comments)", 0
    surrogate = re.search(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}", stripped)
    if surrogate:
        return "a \\uD800-\\uDFFF escape must be half of a surrogate pair", surrogate.start()
    return "unexpected end of file", len(stripped.rstrip())


def _json5_hint(original: bytes) -> str:
    """Ask json5 (lazily imported, small files only) whether the file is JSON5 rather than JSONC."""
    if len(original) > JSON5_HINT_LIMIT:
        return ""
    try:
        import json5  # lazy: only a file that fails to parse asks json5 (~2 ms)

        json5.loads(original.decode("utf-8"))
    except Exception:  # json5 rejects it too (or cannot tell): our message stands
        return ""
    return (
        "the file is valid JSON5 but fence reads JSONC (JSON plus comments and trailing commas): "
        "double-quote every key and string, no single quotes, hex numbers, NaN or Infinity"
    )
