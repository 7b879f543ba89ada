"""Loading one config: JSONC, syntax errors with positions, bad input, any bytes."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fence.config import jsonc
from fence.config.errors import ConfigError
from fence.config.load import MAX_CONFIG_BYTES, load_file, parse
from fence.policy import Policy


def load_text(tmp_path, text: str | bytes, name: str = "fence.json") -> Policy | None:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return load_file(str(path))


def error_of(tmp_path, text, name: str = "fence.json") -> str:
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, text, name)
    assert e.value.code == "invalid_config"
    return e.value.message


# --- JSONC -----------------------------------------------------------------------------


def test_comments_and_trailing_commas_in_any_file(tmp_path):
    text = """// leading comment
    {
      /* block
         comment */ "network": {
        "allowedDomains": ["github.com", "a//b.example.com".replace("//", "") ],
      },
    }"""
    text = text.replace('"a//b.example.com".replace("//", "") ', '"x.example.com", // "y.com"\n')
    for name in ("fence.json", "fence.jsonc"):
        policy = load_text(tmp_path, text, name)
        assert policy is not None
        assert policy.network.allowed_domains == ["github.com", "x.example.com"]


def test_comment_markers_inside_strings_are_kept(tmp_path):
    policy = load_text(tmp_path, '{"filesystem": {"allowWrite": ["/a//b", "/*x*/", "~/.cache/**"]}}')
    assert policy is not None
    assert policy.filesystem.allow_write == ["/a//b", "/*x*/", "~/.cache/**"]


def test_comment_that_mentions_a_bracket_does_not_eat_a_real_comma(tmp_path):
    # regression: a trailing-comma lookahead used to backtrack into "// ... ]"
    text = '{"network": {"allowLocalBinding": true,\n // ports, e.g. [5432, 6379]\n "allowLocalOutbound": true}}'
    policy = load_text(tmp_path, text)
    assert policy is not None
    assert policy.network.allow_local_binding and policy.network.allow_local_outbound


def test_strip_keeps_offsets():
    data = b'{"a": 1, // c\n/* d\ne */ "b": [1,],}'
    out = jsonc.strip(data)
    assert len(out) == len(data) and out.count(b"\n") == data.count(b"\n")
    assert json.loads(out) == {"a": 1, "b": [1]}


@pytest.mark.parametrize(
    "text, line, column, what",
    [
        ('{\n  "network": {\n    "allowedDomains": [}\n}', 3, 24, "unexpected '}'"),
        ('{"allowPty": tru}', 1, 14, "'tru'"),
        ('{\n  "allowPty": true\n  "extends": "code"\n}', 3, 3, "expected ',' or '}'"),
        ('{"network": {"allowedDomains": ["a.com"]', 1, 13, "never closed"),
        ('{"extends": "code', 1, 13, "unterminated string"),
        ('{"extends": /* x', 1, 13, "unterminated /* comment"),
        ("{'extends': 'code'}", 1, 2, "double quotes"),
        ('{"allowPty": true} x', 1, 20, "after the end"),
        ('{"extends": "a\nb"}', 1, 15, "control character"),
        ('{"extends": "héé", x}', 1, 20, "'x'"),
    ],
)
def test_syntax_errors_name_file_line_and_column(tmp_path, text, line, column, what):
    message = error_of(tmp_path, text)
    path = str(tmp_path / "fence.json")
    assert message.startswith(f"invalid JSON in config file {path}: line {line}, column {column}: "), message
    assert what in message


def test_json5_only_syntax_gets_a_hint_but_is_refused(tmp_path):
    message = error_of(tmp_path, "{allowPty: true, extends: 'code'}")
    assert "valid JSON5 but fence reads JSONC" in message


# --- blank and odd files -------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   \n\t", "// only a comment\n", "/* all */", "\ufeff"])
def test_blank_or_comment_only_file_means_defaults(tmp_path, text):
    assert load_text(tmp_path, text) is None


def test_missing_file_means_defaults(tmp_path):
    assert load_file(str(tmp_path / "nope.json")) is None
    assert load_file(str(tmp_path / "file" / "below-a-missing-dir.json")) is None


def test_utf8_bom_is_accepted(tmp_path):
    policy = load_text(tmp_path, b'\xef\xbb\xbf{"allowPty": true}')
    assert policy is not None and policy.allow_pty


def test_directory(tmp_path):
    d = tmp_path / "fence.json"
    d.mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        load_file(str(d))


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fence.json"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_file(str(fifo))


def test_unreadable(tmp_path, monkeypatch):
    path = tmp_path / "fence.json"
    path.write_text("{}")

    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(ConfigError, match="permission denied"):
        load_file(str(path))


def test_binary(tmp_path):
    message = error_of(tmp_path, b"\x7fELF\x02\x01\x01\x00\x00\x00")
    assert "invalid JSON" in message and "binary" in message and "line 1, column 8" in message


def test_not_utf8(tmp_path):
    message = error_of(tmp_path, b'{\n  "extends": "caf\xe9"\n}')
    assert "invalid JSON" in message and "not UTF-8" in message and "line 2, column 18" in message


def test_huge_file_is_capped(tmp_path):
    path = tmp_path / "fence.json"
    with open(path, "wb") as f:
        f.write(b'{"network": {"allowedDomains": [' + b'"a.example.com",' * (50 * 1024 * 1024 // 16) + b'"b.com"]}}')
    with pytest.raises(ConfigError) as e:
        load_file(str(path))
    assert f"stops reading configs at {MAX_CONFIG_BYTES} bytes" in e.value.message


@pytest.mark.parametrize(
    "text",
    [
        "[" * 10000,
        '{"network": ' * 10000,
        '{"network": {"allowedDomains": ' + "[" * 10000 + "]" * 10000 + "}}",
        '{"bogus": ' + "[" * 100000,
        '{"bogus": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"bogus": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + "}",
    ],
)
def test_deep_nesting_is_a_clean_error(tmp_path, text):
    error_of(tmp_path, text)


# --- types and unknown keys ------------------------------------------------------------------


def test_wrong_type_names_the_json_path(tmp_path):
    message = error_of(tmp_path, '{"network": {"allowedDomains": "github.com"}}')
    path = tmp_path / "fence.json"
    assert message == (
        f"invalid configuration in {path}: $.network.allowedDomains: expected `array`, got `str`; "
        "network.allowedDomains is a list of strings"
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"allowPty": "yes"}', "$.allowPty: expected `bool`, got `str`; allowPty is true or false"),
        ('{"network": {"httpProxyPort": "80"}}', "$.network.httpProxyPort: expected `int`, got `str`"),
        ('{"network": {"allowLocalOutbound": 1}}', "true, false or null"),
        ('{"network": {"allowLocalOutboundPorts": ["80"]}}', "$.network.allowLocalOutboundPorts[0]: expected `int`"),
        ('{"network": []}', "$.network: expected `object`, got `array`; network is an object"),
        ("[]", "$: expected `object`, got `array`; a fence config is a JSON object"),
    ],
)
def test_type_errors(tmp_path, text, expected):
    assert expected in error_of(tmp_path, text)


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            '{"network": {"allowedDomain": []}}',
            '$.network.allowedDomain: unknown key "allowedDomain"; did you mean "allowedDomains"?',
        ),
        ('{"filesystem": {"allow_write": []}}', 'did you mean "allowWrite"?'),
        ('{"Network": {}}', 'did you mean "network"?'),
        ('{"allowedDomains": ["a.com"]}', 'unknown key "allowedDomains"; it belongs at network.allowedDomains'),
        ('{"zzz": 1}', 'unknown key "zzz"; remove it (keys allowed here: $schema, extends, network'),
        ('{"macos": {"mach": {"lookups": []}}}', '$.macos.mach.lookups: unknown key "lookups"; did you mean "lookup"?'),
    ],
)
def test_unknown_keys_with_suggestions(tmp_path, text, expected):
    assert expected in error_of(tmp_path, text)


def test_every_unknown_key_is_reported_at_once(tmp_path):
    message = error_of(tmp_path, '{"netwrk": {}, "command": {"denny": []}, "ssh": {"allowedHost": []}}')
    assert "(3 problems)" in message
    for key in ("$.netwrk", "$.command.denny", "$.ssh.allowedHost"):
        assert key in message


def test_schema_key_is_allowed(tmp_path):
    assert load_text(tmp_path, '{"$schema": "https://example.com/s.json"}') is not None


def test_strict_deny_read_implies_default_deny_read(tmp_path):
    policy = load_text(tmp_path, '{"filesystem": {"strictDenyRead": true}}')
    assert policy is not None
    assert policy.filesystem.default_deny_read and policy.filesystem.strict_deny_read


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_policy_or_a_clean_error(data):
    try:
        result = parse(data, "/x/fence.json")
    except ConfigError as e:
        assert e.message and "/x/fence.json" in e.message
    else:
        assert result is None or isinstance(result, Policy)


_fragments = st.sampled_from(
    [
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        '"network"',
        '"allowedDomains"',
        '"a.com"',
        "true",
        "null",
        "1",
        "//",
        "/*",
        "*/",
        "\n",
        " ",
        '"',
        "\\",
        '"allowPty"',
        "é",
        "\x00",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_fragments, max_size=40).map("".join))
def test_any_jsonish_text_gives_a_policy_or_a_clean_error(text):
    try:
        parse(text.encode(), "/x/fence.json")
    except ConfigError as e:
        assert "/x/fence.json" in e.message


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=15,
)
_comment = st.sampled_from(["", " ", '// c ] } , " \n', "/* ] , } */", "/* multi\nline */", "\n"])


def _render(value, draw_comment) -> str:
    """JSON text of ``value`` with comments between tokens and random trailing commas."""
    c = draw_comment
    if isinstance(value, list):
        items = [c() + _render(v, c) + c() for v in value]
        trailing = "," + c() if items and c() == "" else ""
        return "[" + ",".join(items) + trailing + "]"
    if isinstance(value, dict):
        items = [c() + json.dumps(k) + c() + ":" + c() + _render(v, c) + c() for k, v in value.items()]
        trailing = "," + c() if items and c() == " " else ""
        return "{" + ",".join(items) + trailing + "}"
    return json.dumps(value)


@settings(max_examples=300, deadline=None)
@given(_json, st.data())
def test_jsonc_decodes_like_json_with_comments_removed(value, data):
    text = _render(value, lambda: data.draw(_comment))
    assert jsonc.decode(text.encode()) == value
    assert len(jsonc.strip(text.encode())) == len(text.encode())


def test_fast_path_decodes_plain_json_without_stripping(monkeypatch):
    def boom(data):
        raise AssertionError("strip called for plain JSON")

    monkeypatch.setattr(jsonc, "strip", boom)
    assert jsonc.decode(b'{"allowPty": true}', Policy).allow_pty


def test_json5_is_not_imported_on_the_happy_path():
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from fence.config.resolve import resolve\n"
        "from fence.messages import ConfigResolveRequest as R\n"
        "resolve(R(cwd='/', template='code-strict', home='/nonexistent'))\n"
        "print([m for m in ('json5', 'difflib', 'argparse') if m in sys.modules])\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "[]", r.stderr
