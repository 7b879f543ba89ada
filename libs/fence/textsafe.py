"""Text fence prints, made safe for a terminal and for anything that reads fence's stderr line by line.

Host names, paths and argv that fence prints come, sooner or later, from
the sandboxed command (a SOCKS5 domain is arbitrary bytes, a file it made may
have a newline in its name, an exec's argv is whatever it chose) or from the
agent that wrote the command line.  Printed raw, a newline followed by
``[fence] ...`` forges a line fence never wrote, and an escape sequence can
recolour, erase or move the cursor over fence's own lines.  So every such
piece of text goes through ``printable`` before it is printed
(docs/compatibility.md#escaped-text):

* C0 controls (NUL, ESC, CR, LF, TAB, ...), DEL and C1 controls
  (U+0080-U+009F, which some terminals act on like ESC sequences) become
  ``\\xNN``;
* the bidirectional controls (U+061C, U+200E, U+200F, U+202A-U+202E,
  U+2066-U+2069, which reorder what a line *shows*) and the Unicode line and
  paragraph separators (U+2028, U+2029) become ``\\uNNNN``;
* bytes that were not UTF-8 (decoded with ``surrogateescape``:
  U+DC80-U+DCFF) become ``\\xNN`` of the byte, other lone surrogates
  ``\\uNNNN``;
* everything else, valid UTF-8 included, is kept, so ordinary text prints
  byte for byte as before.  A backslash is kept too: this is a display
  escape, not a reversible encoding.

Pure string work, no imports: it is on the hot path of every run.
"""

from __future__ import annotations

_SHOWN_AS_U = frozenset("\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Not controls to Python's ``str.isprintable`` either way, but they reorder or break what a line shows."""


def escape_char(c: str) -> str:
    """One character as ``printable`` shows it: itself, or its ``\\xNN`` / ``\\uNNNN`` escape."""
    o = ord(c)
    if o < 0x20 or 0x7F <= o < 0xA0:
        return f"\\x{o:02x}"
    if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{o - 0xDC00:02x}"
    if 0xD800 <= o <= 0xDFFF or c in _SHOWN_AS_U:
        return f"\\u{o:04x}"
    return c


def printable(text: str) -> str:
    """``text`` as one line that moves no cursor and forges no line (see the module docstring)."""
    if text.isprintable():  # every character escaped above is non-printable to Python: the common case
        return text
    return "".join(map(escape_char, text))


def printable_message(text: str) -> str:
    """An ``Error:`` message, escaped like ``printable`` except for the line breaks fence itself puts there.

    fence's only multi-line messages (a config error listing its problems)
    indent every continuation line, and escape what they interpolate; a line
    break followed by two spaces is kept, every other one is escaped, so no
    line of a message can start the way a line fence writes (``[fence``,
    ``Error:``) does.
    """
    if text.isprintable():
        return text
    first, *rest = text.split("\n")
    out = [printable(first)]
    for line in rest:
        out.append("\n" + printable(line) if line.startswith("  ") else "\\x0a" + printable(line))
    return "".join(out)
