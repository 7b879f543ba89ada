"""Citations in code must point at documents a maintainer has: this repository's docs/ pages.

Comments used to cite "reference §x.y", a study of the Go tool Fence kept outside the
repository; whoever cloned the project could not follow them.  They now cite
docs/compatibility.md and the other docs/ pages, by anchor (``docs/network.md#local-ports``)
or by quoted heading (``(docs/compatibility.md, "Exit codes")``).  These tests keep it so:
no citation of the outside document comes back, and no cited page, anchor or heading
disappears without the citation being updated (the anchor is the heading as GitHub
renders it: lower case, punctuation dropped, spaces as hyphens).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("libs", "services", "tests", "bench", "scripts", "deploy")
THIS_FILE = Path(__file__).resolve()

OUTSIDE_CITATION = re.compile(
    r"reference\s*§"  # "reference §4.2", "Reference §9.1"
    r"|\bthe reference\b"  # "as the reference", "the reference's order", "the reference tool"
    r"|\breference (?:tool|content|wording|shape)\b"  # "Reference content:", "reference wording"
    r"|\bshared/spec\b|\breference(?:-v[\d.]+)?\.md\b",  # its path and file names
    re.IGNORECASE,
)

SKIP_OUTSIDE_CITATIONS: tuple[str, ...] = ()
"""Paths (a module also covers the package it becomes) exempt while they are being rewritten: none now."""

DOC_LINK = re.compile(r"(?<![\w/.-])docs/((?:[\w-]+/)*[\w-]+(?:\.[\w-]+)*\.(?:md|json))(?:#([\w-]+))?")
DOC_HEADING = re.compile(r"(?<![\w/.-])docs/((?:[\w-]+/)*[\w-]+\.md),\s*\"([^\"\n]+)\"")


def code_files():
    """Every text file under the code directories (rel path, text)."""
    for top in CODE_DIRS:
        for path in sorted((ROOT / top).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts or path.resolve() == THIS_FILE:
                continue
            if any(part.startswith(".") or part == "node_modules" for part in path.relative_to(ROOT).parts):
                continue  # tools installed in the tree (bench/.srt: node_modules), not our code
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # binary or unreadable: nothing a person reads as a comment
            yield path.relative_to(ROOT).as_posix(), text


def skipped(rel: str) -> bool:
    return any(rel == entry or rel.startswith(entry.removesuffix(".py") + "/") for entry in SKIP_OUTSIDE_CITATIONS)


def headings(page: Path) -> tuple[set[str], set[str]]:
    """(heading texts, GitHub anchors) of a Markdown page, ignoring fenced code blocks."""
    texts: set[str] = set()
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        text = m.group(1)
        texts.add(text)
        slug = anchor_of(text)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return texts, anchors


def anchor_of(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def test_anchor_of_follows_github():
    assert anchor_of("Exit codes") == "exit-codes"
    assert anchor_of("`fence import --claude`") == "fence-import---claude"
    assert anchor_of("What is denied, and why") == "what-is-denied-and-why"
    assert anchor_of("TMPDIR and XDG_RUNTIME_DIR") == "tmpdir-and-xdg_runtime_dir"


def test_no_code_cites_the_outside_reference():
    found = []
    for rel, text in code_files():
        if skipped(rel):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            m = OUTSIDE_CITATION.search(line)
            if m:
                found.append(f"{rel}:{number}: {m.group(0)!r} in {line.strip()[:100]}")
    assert not found, (
        "cite docs/compatibility.md (or the docs/ page that describes the behaviour) "
        "instead of the outside reference document:\n" + "\n".join(found)
    )


def test_cited_docs_pages_anchors_and_headings_exist():
    cache: dict[str, tuple[set[str], set[str]]] = {}
    broken = []
    for rel, text in code_files():
        for number, line in enumerate(text.splitlines(), 1):
            for m in DOC_LINK.finditer(line):
                page, anchor = m.group(1), m.group(2)
                path = ROOT / "docs" / page
                if not path.is_file():
                    broken.append(f"{rel}:{number}: docs/{page} does not exist")
                elif anchor:
                    if page not in cache:
                        cache[page] = headings(path)
                    if anchor not in cache[page][1]:
                        broken.append(f"{rel}:{number}: docs/{page} has no heading with anchor #{anchor}")
            for m in DOC_HEADING.finditer(line):
                page, heading = m.group(1), m.group(2)
                path = ROOT / "docs" / page
                if not path.is_file():
                    continue  # reported above
                if page not in cache:
                    cache[page] = headings(path)
                texts, anchors = cache[page]
                if heading not in texts and anchor_of(heading) not in anchors:
                    broken.append(f'{rel}:{number}: docs/{page} has no heading "{heading}"')
    assert not broken, "citations of docs that are not there:\n" + "\n".join(broken)


@pytest.mark.parametrize("anchor", ["cli-flags", "config-fields", "messages", "exit-codes", "deliberate-deviations"])
def test_compatibility_page_keeps_its_stable_sections(anchor):
    """The sections the brief of the page promises (and code cites) stay where they are."""
    assert anchor in headings(ROOT / "docs" / "compatibility.md")[1]
