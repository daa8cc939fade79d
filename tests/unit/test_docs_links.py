"""Every relative link in README.md and docs/*.md reaches a file, and every #anchor a heading (its
GitHub slug) or an <a id> in it: the README's history moved to docs/ once, and a renamed heading
silently breaks the links that quote it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors (a repeated heading gets -1, -2, ...) and explicit <a id>s."""
    text = path.read_text()
    out, seen = set(re.findall(r'<a id="([^"]+)"', text)), {}
    for line in re.sub(r"```.*?```", "", text, flags=re.S).splitlines():
        m = re.match(r"^#{1,6} (.*)", line)
        if m:
            s = _slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def broken_links(doc: Path) -> list[str]:
    bad = []
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)  # code blocks hold no links
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        path, _, frag = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif frag and dest.suffix == ".md" and frag not in anchors(dest):
            bad.append(f"{target}: no such anchor")
    return bad


def test_readme_and_docs_links_reach_their_files_and_anchors(tmp_path):
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(docs) > 10
    bad = {str(d.relative_to(ROOT)): b for d in docs if (b := broken_links(d))}
    assert not bad, bad
    # the check itself: a renamed heading and a moved file are found
    (tmp_path / "a.md").write_text('# One heading\n\n## Twice\n## Twice\n<a id="x"></a>\n')
    (tmp_path / "b.md").write_text(
        "[ok](a.md#one-heading) [ok](a.md#twice-1) [ok](a.md#x) [ok](#c) [web](https://x.org/y)\n"
        "# C\n[bad](a.md#two-headings) [bad](gone.md)\n```\n[code](nowhere.md)\n```\n"
    )
    assert broken_links(tmp_path / "b.md") == ["a.md#two-headings: no such anchor", "gone.md: no such file"]
