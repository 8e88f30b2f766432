"""The README and the pages under docs/ point at things that exist.

Every relative link (``[text](path)``, ``[text](path#anchor)``, ``[text](#anchor)``) resolves to a
file, and an anchor to a heading of the target page (GitHub's slug); every ``make <target>`` named
in a code span or block is a target of the Makefile; and the README stays a day-one read.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT

README_MAX_LINES = 250
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
MAKE = re.compile(r"(?<![\w-])make[ \t]+([A-Za-z0-9][\w.-]*)")


def prose(text: str) -> str:
    """The text outside fenced blocks and code spans: where links and headings live."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def code(text: str) -> list[str]:
    """The fenced blocks and code spans: where commands live."""
    blocks = [m.group(0) for m in FENCE.finditer(text)]
    return blocks + [m.group(2) for m in CODE_SPAN.finditer(FENCE.sub("", text))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)  # code spans count by their text
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links by their text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor on a page; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http(s), mailto, ...
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    return broken


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):(?!=)", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE))


def make_targets_named(page: Path) -> set[str]:
    return {target for snippet in code(page.read_text()) for target in MAKE.findall(snippet)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_make_target_named_exists(page: Path) -> None:
    assert make_targets_named(page) - makefile_targets() == set()


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {
        (REPO_ROOT / target.partition("#")[0]).resolve()
        for target in LINK.findall(prose((REPO_ROOT / "README.md").read_text()))
    }
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


def test_the_readme_is_a_day_one_read() -> None:
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move depth to docs/"


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    """The helpers themselves: a broken file link, a broken anchor, an unknown make target."""
    (tmp_path / "other.md").write_text("# A `code` title, with punctuation!\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-code-title-with-punctuation) [ok](other.md#twice-1) [ok](#top) [web](https://x.invalid)\n"
        "[gone](missing.md) [bad anchor](other.md#nowhere) `[not a link](nowhere.md)`\n\n# Top\n\n"
        "```bash\nmake test\nmake no-such-target VERSION=1\n```\n"
    )
    assert broken_links(page) == [
        f"missing.md: no file {tmp_path / 'missing.md'}",
        "other.md#nowhere: no heading #nowhere in other.md",
    ]
    assert make_targets_named(page) - makefile_targets() == {"no-such-target"}
