"""fence.globmatch: the same answers as the matchers it replaced, and no backtracking.

Equivalence is checked against reference implementations on small inputs
(Hypothesis): ``fnmatch.fnmatchcase`` for ``fnmatch_case``, and the regex the
SSH host check used to build (``.*`` between escaped pieces) for
``star_match``.  Texts are drawn both at random and by filling in a pattern
(a star becomes a random string, ``?`` a random character), so matches are
common, not just misses.  The alphabets hold every character with a meaning
in a pattern (``* ? [ ] ! - ^ \\``) so malformed brackets are tried too.

The hang guards (``within``, from tests/test_linear_patterns.py) bound the adversarial shapes of
issue 14: a generous wall-clock limit, not a benchmark.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fence.globmatch import compile_fnmatch, fnmatch_case, star_match
from test_linear_patterns import ADVERSARIAL, within

MANY = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PATTERN_CHARS = "ab-!]^[*?\\z&|~\n."
TEXT_CHARS = "ab-!]^[*?\\z&\n.cÅ"

patterns = st.text(PATTERN_CHARS, max_size=12)
texts = st.text(TEXT_CHARS, max_size=10)


@st.composite
def pattern_and_filled_text(draw, pattern_strategy=patterns):
    """A pattern and a text made from it: stars filled in, some characters replaced or dropped."""
    pattern = draw(pattern_strategy)
    out = []
    for c in pattern:
        how = draw(st.sampled_from(["keep", "keep", "keep", "swap", "drop"]))
        if c == "*":
            out.append(draw(st.text(TEXT_CHARS, max_size=4)))
        elif how == "swap" or c == "?":
            out.append(draw(st.sampled_from(TEXT_CHARS)))
        elif how == "keep":
            out.append(c)
    return pattern, "".join(out)


def reference_fnmatch(text: str, pattern: str) -> bool:
    with warnings.catch_warnings():  # "possible nested set" for a "[" inside brackets: not our business
        warnings.simplefilter("ignore")
        return fnmatch.fnmatchcase(text, pattern)


def reference_star(text: str, pattern: str) -> bool:
    """What sshpolicy.host_matches compiled before (case folding apart)."""
    rx = re.compile(".*".join(re.escape(p) for p in pattern.split("*")) + r"\Z", re.S)
    return rx.match(text) is not None


@MANY
@given(patterns, texts)
def test_fnmatch_case_agrees_with_fnmatchcase(pattern, text):
    assert fnmatch_case(text, pattern) == reference_fnmatch(text, pattern)


@MANY
@given(pattern_and_filled_text())
def test_fnmatch_case_agrees_on_texts_made_from_the_pattern(case):
    pattern, text = case
    assert fnmatch_case(text, pattern) == reference_fnmatch(text, pattern)


brackety = st.lists(
    st.sampled_from(["[", "]", "!", "-", "a", "z", "b", "^", "\\", "*", "?", "[!", "a-z", "z-a", "!-~", "]-a"]),
    max_size=8,
).map("".join)


@MANY
@given(pattern_and_filled_text(brackety))
def test_fnmatch_case_agrees_on_bracket_soup(case):
    pattern, text = case
    assert fnmatch_case(text, pattern) == reference_fnmatch(text, pattern)


dense_patterns = st.text("ab*?", max_size=10)
dense_texts = st.text("ab", max_size=8)


@MANY
@given(dense_patterns, dense_texts)
def test_two_letters_and_wildcards(pattern, text):
    """Few letters: many near-misses where segments would overlap or a star would have to give back."""
    assert fnmatch_case(text, pattern) == reference_fnmatch(text, pattern)
    literal_question = pattern.replace("?", "b")
    assert star_match(text, literal_question) == reference_star(text, literal_question)


def words(alphabet: str, longest: int) -> list[str]:
    out = [""]
    for size in range(1, longest + 1):
        out += ["".join(w) for w in itertools.product(alphabet, repeat=size)]
    return out


def test_every_small_pattern_over_two_letters():
    """Exhaustive where random draws are thin: every pattern of up to 5 of ``ab*?`` against every text of
    up to 6 of ``ab`` (each candidate start, each overlap, each give-back a star could need)."""
    ab = words("ab", 6)
    for pattern in words("ab*?", 5):
        want = [reference_fnmatch(text, pattern) for text in ab]
        assert [fnmatch_case(text, pattern) for text in ab] == want, pattern
        if "?" not in pattern:
            assert [star_match(text, pattern) for text in ab] == want, pattern


@MANY
@given(patterns, texts)
def test_star_match_agrees_with_the_old_host_regex(pattern, text):
    assert star_match(text, pattern) == reference_star(text, pattern)


@MANY
@given(pattern_and_filled_text())
def test_star_match_agrees_on_texts_made_from_the_pattern(case):
    pattern, text = case
    assert star_match(text, pattern) == reference_star(text, pattern)


@pytest.mark.parametrize(
    "pattern,text,want",
    [
        ("[!]", "[!]", True),  # no closing bracket after "!]": all literal
        ("[]]", "]", True),  # "]" first is a member
        ("[!]]", "a", True),
        ("[!]]", "]", False),
        ("[a-]", "-", True),  # "-" last is a member
        ("[-a]", "-", True),  # "-" first too
        ("[a-c-e]", "-", True),  # "-" right after a range is a member
        ("[a-c-e]", "d", False),
        ("[a-c--e]", ".", True),  # ... but the next "-" may start a range again ("-" to "e")
        ("[z-a]", "z", False),  # a reversed range is dropped ...
        ("[z-a]", "-", False),  # ... and the empty set matches nothing
        ("[z-ab]", "b", True),
        ("[!z-a]", "q", True),  # negated empty set: any character
        ("[z-a!]", "q", True),  # fnmatch negates what starts with "!" once the range is gone
        ("[z-a!x]", "x", False),
        ("[z-a!-~]", "-", False),  # "!-~" became "^-~": "-" and "~" excluded
        ("[z-a!-~]", "a", True),
        ("[^a]", "^", True),  # "^" is a member, not a negation
        ("?", "\n", True),
        ("*", "a\nb", True),
        ("a*b*", "ab", True),
        ("*a*a", "aa", True),
        ("*a*a", "a", False),
        ("[", "[", True),
        ("a[b", "a[b", True),
    ],
)
def test_bracket_readings_match_fnmatch(pattern, text, want):
    assert reference_fnmatch(text, pattern) is want  # the table itself is fnmatch's reading
    assert fnmatch_case(text, pattern) is want


@pytest.mark.parametrize("match", [star_match, fnmatch_case])
def test_stars_do_not_backtrack(match):
    text = "a" * 10_000
    with within(2):
        assert not match(text, ADVERSARIAL)
        assert match(text + "b", ADVERSARIAL)
        assert not match(text, "*" + "a*" * 500 + "b")
        assert not match(text, "*?a" * 200 + "*b")


def test_long_patterns_compile_in_linear_time():
    """A sandboxed command word is a pattern too: many unclosed "[" must not rescan the rest each time."""
    with within(2):
        assert not fnmatch_case("git", "[" * 200_000)
        assert not fnmatch_case("git", "[!" * 100_000)
    with within(2):
        assert fnmatch_case("[" * 20_000, "[" * 20_000)
        assert not fnmatch_case("git", "*a" * 20_000)
        assert compile_fnmatch("[a-c]" * 20_000).match("b" * 20_000)
