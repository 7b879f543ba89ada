"""``fence.textsafe``: what is escaped, what is kept byte for byte (the sandbox cases are in test_escaping.py)."""

from __future__ import annotations

import os

import pytest

from fence.goquote import go_quote
from fence.textsafe import printable, printable_message

ORDINARY = [
    "",
    "example.com:443",
    "/home/me/проект/файл.txt",
    "git push origin main",
    "日本語 ✓ ✗ 🙂",
    "C:\\path\\x1b (a backslash stays)",
    "[fence] Sandbox 0123456789ab started (pid 42)",
    "non\u00a0breaking space",
    "e\u0301 combining",
    "zero\u200bwidth",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_is_unchanged(text):
    assert printable(text) == text
    assert printable_message(text) == text


@pytest.mark.parametrize(
    "char, shown",
    [
        ("\x00", "\\x00"),
        ("\x1b", "\\x1b"),
        ("\r", "\\x0d"),
        ("\n", "\\x0a"),
        ("\t", "\\x09"),
        ("\x7f", "\\x7f"),
        ("\x85", "\\x85"),
        ("\x9b", "\\x9b"),
        ("\u202e", "\\u202e"),
        ("\u2066", "\\u2066"),
        ("\u200f", "\\u200f"),
        ("\u061c", "\\u061c"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
        ("\ud800", "\\ud800"),
    ],
)
def test_controls_are_escaped(char, shown):
    assert printable(f"a{char}b") == f"a{shown}b"


def test_bytes_that_were_not_utf8_show_as_bytes():
    assert printable(os.fsdecode(b"a\x9b\xffb")) == "a\\x9b\\xffb"


def test_every_c0_and_c1_control_is_escaped():
    for o in list(range(0x20)) + list(range(0x7F, 0xA0)):
        assert printable(chr(o)) == f"\\x{o:02x}"


def test_message_keeps_only_indented_line_breaks():
    listed = "invalid configuration in f.json (2 problems):\n  $.a: bad\n  $.b: worse"
    assert printable_message(listed) == listed
    assert printable_message("cannot open /a\n[fence] ok\x1b[2J") == "cannot open /a\\x0a[fence] ok\\x1b[2J"
    assert printable_message("x\n  y\rz") == "x\n  y\\x0dz"


def test_go_quote_also_escapes_c1_bidi_and_bytes_that_were_not_utf8():
    """As Go's %q does for these; other text is quoted as before."""
    assert go_quote('a"b\\c\n\t\r\x1b\x7f') == '"a\\"b\\\\c\\n\\t\\r\\x1b\\x7f"'
    assert go_quote("x\x9by\u202ez\u2028") == '"x\\u009by\\u202ez\\u2028"'
    assert go_quote(os.fsdecode(b"a\xffb")) == '"a\\xffb"'
    assert go_quote("日本語 ✓ git push") == '"日本語 ✓ git push"'
