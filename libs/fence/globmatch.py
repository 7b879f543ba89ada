"""Glob matching that never backtracks: the one matcher for patterns or names a sandbox can choose.

Why this exists: a glob translated to a regular expression (``a.*b.*c``) is
matched by a backtracking engine, and ``*a*a*a*a*b`` against a host name of a
few hundred ``a`` already takes minutes (the engine retries every way of
splitting the text between the stars).  A sandboxed command picks the host it
ssh-es to and the words it runs, so that was a way to hang preflight.

How: a pattern is cut at its stars into *segments*, each of a fixed length
(a literal character, ``?`` and a bracket expression each stand for exactly
one character).  The text matches when the first segment matches at the
start, the last one at the end, and the ones between can be placed, in order
and without overlapping, in what is left.  Placing each middle segment at the
leftmost position it fits never loses a match: any match can slide that
segment left to the greedy position, since what follows it only needs room to
its right.  So one left-to-right pass decides, and the positions the middle
segments are tried at never overlap: at most ``len(text)`` starts, each checked
in at most ``len(segment)`` steps.  Worst case O(len(text) * len(pattern)),
no backtracking; literal segments are found with ``str.find``.

Two dialects, each exactly what its caller matched before:

``star_match(text, pattern)``
    only ``*`` is special (any string, newlines included); every other
    character is itself.  SSH host patterns (case is the caller's business).
``fnmatch_case(text, pattern)``
    the answers of ``fnmatch.fnmatchcase`` (Python 3.11+): ``*``, ``?`` (any one
    character) and bracket expressions ``[abc]``, ``[!abc]``, ``[a-z]``.  Its
    reading of odd brackets is kept too: a ``[`` with no closing ``]`` is a
    literal ``[``; ``]`` first (after an optional ``!``) is a member; a ``-``
    first, last, or right after a range is a member; a range whose ends are
    reversed (``z-a``) is dropped with both its ends; what remains is negated
    when it starts with ``!`` (so ``[!]`` after such a drop matches any
    character, and an empty set none).  Command words and path components.

Pure and import-free: ``fence run`` reaches it on every preflight.
"""

from __future__ import annotations

__all__ = ["Glob", "star_match", "fnmatch_case", "compile_star", "compile_fnmatch"]

_CACHE_LIMIT = 256
"""Compiled patterns kept per dialect; patterns come from sandboxed commands, so the cache is bounded."""


class _Set:
    """One bracket expression: member characters and ranges (inclusive, by code point), maybe negated."""

    __slots__ = ("chars", "ranges", "negated")

    def __init__(self, chars: frozenset[str], ranges: tuple[tuple[str, str], ...], negated: bool):
        self.chars, self.ranges, self.negated = chars, ranges, negated

    def has(self, c: str) -> bool:
        inside = c in self.chars or any(lo <= c <= hi for lo, hi in self.ranges)
        return inside is not self.negated


_ANY = _Set(frozenset(), (), True)
"""``?``: a negated empty set, any one character."""


class _Segment:
    """Fixed-length run of pattern between stars: literal strings and one-character sets, in order."""

    __slots__ = ("pieces", "size", "literal", "anchor", "anchor_at")

    def __init__(self, pieces: tuple):
        self.pieces = pieces
        self.size = sum(len(p) if p.__class__ is str else 1 for p in pieces)
        self.literal = pieces[0] if len(pieces) == 1 and pieces[0].__class__ is str else ("" if not pieces else None)
        # the longest literal run, to jump between candidate starts with str.find
        self.anchor, self.anchor_at = "", 0
        offset = 0
        for p in pieces:
            if p.__class__ is str:
                if len(p) > len(self.anchor):
                    self.anchor, self.anchor_at = p, offset
                offset += len(p)
            else:
                offset += 1

    def at(self, text: str, pos: int) -> bool:
        """Does the segment match ``text`` at ``pos``?  (The caller made sure it fits.)"""
        for p in self.pieces:
            if p.__class__ is str:
                if not text.startswith(p, pos):
                    return False
                pos += len(p)
            else:
                if p is not _ANY and not p.has(text[pos]):
                    return False
                pos += 1
        return True

    def find(self, text: str, lo: int, hi: int) -> int:
        """The leftmost start ``p >= lo`` where the segment matches and ends by ``hi``; -1 when none."""
        last = hi - self.size
        if last < lo:
            return -1
        if self.literal is not None:
            return text.find(self.literal, lo, hi)
        if not self.anchor:
            for p in range(lo, last + 1):
                if self.at(text, p):
                    return p
            return -1
        anchor, off = self.anchor, self.anchor_at
        end = last + off + len(anchor)
        while lo <= last:
            q = text.find(anchor, lo + off, end)
            if q < 0:
                return -1
            p = q - off
            if self.at(text, p):
                return p
            lo = p + 1
        return -1


class Glob:
    """A compiled pattern: ``head`` at the start, ``tail`` at the end, ``middle`` between.

    Without a star the pattern is one segment: ``head`` (and ``tail``, unused) is all of it.
    """

    __slots__ = ("head", "middle", "tail", "starred")

    def __init__(self, segments: list[_Segment], starred: bool):
        self.starred = starred
        self.head = segments[0]
        self.tail = segments[-1]
        self.middle = tuple(segments[1:-1])

    def match(self, text: str) -> bool:
        """Does the whole of ``text`` match?"""
        head = self.head
        if not self.starred:
            return len(text) == head.size and head.at(text, 0)
        tail = self.tail
        n = len(text)
        lo, hi = head.size, n - tail.size
        if hi < lo or not head.at(text, 0) or not tail.at(text, hi):
            return False
        for seg in self.middle:
            p = seg.find(text, lo, hi)
            if p < 0:
                return False
            lo = p + seg.size
        return True


def _glob(items: list) -> Glob:
    """A ``Glob`` from parsed items: characters (str of length 1), ``_Set``s and ``None`` for a star."""
    segments: list[_Segment] = []
    pieces: list = []
    run: list[str] = []
    starred = False
    for item in items:
        if item is None or item.__class__ is _Set:
            if run:
                pieces.append("".join(run))
                run = []
            if item is None:
                segments.append(_Segment(tuple(pieces)))
                pieces = []
                starred = True
            else:
                pieces.append(item)
        else:
            run.append(item)
    if run:
        pieces.append("".join(run))
    segments.append(_Segment(tuple(pieces)))
    if starred:  # consecutive stars (empty middle segments) mean one star
        segments = [segments[0], *(s for s in segments[1:-1] if s.size), segments[-1]]
    return Glob(segments, starred)


def _parse_star(pattern: str) -> list:
    return [None if c == "*" else c for c in pattern]


def _bracket(body: str) -> _Set:
    """The set ``[body]`` means to fnmatch (``body`` is what lies between ``[`` and the closing ``]``)."""
    negated = body[0] == "!"
    first = 1 if negated else 0
    # range hyphens: searched from the second member on; after one, the search resumes past its end
    # character's neighbour; a hyphen that is the last character is a member
    hyphens: set[int] = set()
    h = body.find("-", first + 1)
    while h >= 0:
        if h == len(body) - 1:
            break
        hyphens.add(h)
        h = body.find("-", h + 3)
    members: list = []  # characters and (lo, hi) pairs, in order
    t = first
    while t < len(body):
        if t + 1 in hyphens:
            lo, hi = body[t], body[t + 2]
            if lo <= hi:  # a reversed range is dropped, both ends with it
                members.append((lo, hi))
            t += 3
        else:
            members.append(body[t])
            t += 1
    if not negated and members and members[0][0] == "!":
        # fnmatch negates by what the set *starts with* once reversed ranges are gone
        negated = True
        head = members.pop(0)
        if head.__class__ is tuple:  # "!-x": the "-" and the "x" stay, as members
            members[:0] = ["-", head[1]]
    chars = frozenset(m for m in members if m.__class__ is str)
    ranges = tuple(m for m in members if m.__class__ is tuple)
    return _Set(chars, ranges, negated)


def _parse_fnmatch(pattern: str) -> list:
    items: list = []
    i, n = 0, len(pattern)
    unclosed_from = n + 1  # a "]" search from here or later already failed: no "]" there (keeps this linear)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if not items or items[-1] is not None:
                items.append(None)
        elif c == "?":
            items.append(_ANY)
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            close = -1 if j >= unclosed_from else pattern.find("]", j)
            if close < 0:
                unclosed_from = min(unclosed_from, j)
                items.append("[")
            else:
                items.append(_bracket(pattern[i:close]))
                i = close + 1
        else:
            items.append(c)
    return items


_star_cache: dict[str, Glob] = {}
_fnmatch_cache: dict[str, Glob] = {}


def _compiled(cache: dict[str, Glob], parse, pattern: str) -> Glob:
    glob = cache.get(pattern)
    if glob is None:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        glob = cache[pattern] = _glob(parse(pattern))
    return glob


def compile_star(pattern: str) -> Glob:
    """``pattern`` with only ``*`` special, compiled (cached)."""
    return _compiled(_star_cache, _parse_star, pattern)


def compile_fnmatch(pattern: str) -> Glob:
    """``pattern`` read as ``fnmatch.fnmatchcase`` reads it, compiled (cached)."""
    return _compiled(_fnmatch_cache, _parse_fnmatch, pattern)


def star_match(text: str, pattern: str) -> bool:
    """Does ``text`` match ``pattern``, where ``*`` is any string and every other character itself?"""
    return compile_star(pattern).match(text)


def fnmatch_case(text: str, pattern: str) -> bool:
    """``fnmatch.fnmatchcase(text, pattern)``, in time linear in ``text`` (times the pattern)."""
    return compile_fnmatch(pattern).match(text)
