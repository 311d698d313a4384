"""The README is the front door and docs/ holds the rest: short, linked both ways, no dead links.

Links are checked the way GitHub renders them: a relative link must name a file of the repository,
and a ``#fragment`` must be the anchor GitHub gives one of that file's headings.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 300
QUICKSTARTS = (
    "## Quickstart 1: the demo",
    "## Quickstart 2: your own tenant, on one machine",
    "## Quickstart 3: Azure",
)

FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target), target up to the first space or ')'; reference definitions too.
INLINE_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")


def documents() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, inline code spans blanked."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(INLINE_CODE.sub("", line))
    return lines


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: its text, lower-cased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts as its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "").replace("~", "")
    text = text.lower().strip()
    kept = "".join(
        ch for ch in text
        if ch in " -_" or unicodedata.category(ch)[0] in {"L", "N", "M"}
    )
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of *path*, with GitHub's -1, -2 suffixes for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if not m:
            continue
        base = github_anchor(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[str]:
    targets = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        targets += INLINE_LINK.findall(line)
        m = REFERENCE_DEF.match(line)
        if m:
            targets.append(m.group(1))
    return targets


def is_relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) and not target.startswith("//")


def test_github_anchor_matches_github() -> None:
    assert github_anchor("Normalisation and the `Quality` column") == "normalisation-and-the-quality-column"
    assert github_anchor("1. The platform (once)") == "1-the-platform-once"
    assert github_anchor("Deploying to Azure (infra/)") == "deploying-to-azure-infra"
    assert github_anchor("host.json") == "hostjson"
    assert github_anchor("Quickstart 2: your own tenant, on one machine") == (
        "quickstart-2-your-own-tenant-on-one-machine"
    )
    assert github_anchor("Fields that changed type (schema drift)") == "fields-that-changed-type-schema-drift"


def test_readme_is_the_front_door() -> None:
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
    assert "make run" in text and "make test" in text
    for heading in QUICKSTARTS:
        assert heading in lines, f"README.md has no '{heading}' heading"


def test_the_two_commands_are_stated_as_the_contract() -> None:
    text = README.read_text(encoding="utf-8")
    assert "make run    # sets everything up (.venv), then runs the local demo" in text
    assert "make test   # sets everything up, lints, type-checks and runs the whole suite" in text


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target in links(doc):
        if not is_relative(target):
            continue
        path_part, _, fragment = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}")
            continue
        if not dest.is_relative_to(REPO):
            broken.append(f"{target}: outside the repository")
            continue
        if fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading #{fragment} in {dest.relative_to(REPO)}")
    assert not broken, f"{doc.relative_to(REPO)}: broken links:\n" + "\n".join(broken)


def test_every_doc_is_linked_from_the_readme() -> None:
    linked = {
        (README.parent / t.partition("#")[0]).resolve()
        for t in links(README)
        if is_relative(t) and t.partition("#")[0]
    }
    docs = sorted(DOCS.glob("*.md"))
    assert docs, "docs/ holds no page"
    unlinked = [str(p.relative_to(REPO)) for p in docs if p.resolve() not in linked]
    assert not unlinked, f"not linked from README.md: {unlinked}"
