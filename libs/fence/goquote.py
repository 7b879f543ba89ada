"""Go's ``%q`` quoting, for messages that must read like the Go tool Fence's.

Fence (Go) quotes commands and rules with ``%q`` in its block
messages and exec lines; scripts written against it match those texts, so
preflight, the SSH policy, the runtime exec supervisor and the monitor's
console lines all quote through this one function.

Like Go, it also escapes what would reorder or break the line on a terminal
(C1 controls, bidirectional controls, bytes that were not UTF-8): the quoted
text comes from the sandbox or the agent (``fence.textsafe``).
"""

from __future__ import annotations

from fence.textsafe import escape_char


def go_quote(text: str) -> str:
    """Quote like Go's %q (Fence's messages use it)."""
    out = ['"']
    for c in text:
        if c == '"' or c == "\\":
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif ord(c) < 0x20 or c == "\x7f":
            out.append(f"\\x{ord(c):02x}")
        elif 0x80 <= ord(c) < 0xA0:  # C1 controls: Go writes \u0080..\u009f
            out.append(f"\\u{ord(c):04x}")
        elif not c.isprintable():  # bidi controls, line separators, bytes that were not UTF-8
            out.append(escape_char(c))
        else:
            out.append(c)
    out.append('"')
    return "".join(out)
