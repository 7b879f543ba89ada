"""Go's ``%q`` quoting, for messages that must read like the Go tool Fence's.

Fence (Go) quotes commands and rules with ``%q`` in its block
messages and exec lines; scripts written against it match those texts, so
preflight, the SSH policy, the runtime exec supervisor and the monitor's
console lines all quote through this one function.
"""

from __future__ import annotations


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
        else:
            out.append(c)
    out.append('"')
    return "".join(out)
