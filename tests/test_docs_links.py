"""Every document the code, tests, docs or notebooks cite is in the repository, so a clone can look it up."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A citation: an upper-case document (DESIGN.md, STYLE.md, README.md), any path through docs/, or a markdown link.
CITED = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[A-Z][A-Z_-]*\.md|(?:[\w.-]+/)*docs/[\w./-]+\.md)\b")
LINK = re.compile(r"\]\(([^)\s#]+\.md)(?:#[^)]*)?\)")
# Prose pages: there a bare `name.md` is a citation too (in code it may be a file the code writes).
PAGES = ("docs/*.md", "README.md", "notebooks/*.ipynb", "notebooks/*.md")
SOURCES = ("collapsekit/**/*.py", "tests/**/*.py", "benchmarks/**/*.py", "analyses/**/*.py", "analyses/*.md",
           "docs/*.py", *PAGES)
BARE = re.compile(r"(?<![\w/.-])([a-z][\w-]*\.md)\b")


def tracked(patterns) -> list[Path]:
    """The files git tracks (or would: untracked, not ignored) that match any of `patterns`."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", *patterns], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return sorted({ROOT / line for line in out.splitlines() if (ROOT / line).is_file()})


def citations(path: Path, page: bool) -> set[str]:
    text = path.read_text(encoding="utf-8")
    found = set(CITED.findall(text)) | set(LINK.findall(text))
    return found | set(BARE.findall(text)) if page else found


def all_citations() -> dict[Path, set[str]]:
    pages = set(tracked(PAGES))
    return {path: citations(path, path in pages) for path in tracked(SOURCES)}


def resolves(cited: str, path: Path) -> bool:
    """True when `cited` names a file from the repository root or from the citing file's folder."""
    return any((base / cited).is_file() for base in (ROOT, path.parent))


def test_every_cited_document_is_in_the_repository():
    missing = [f"{path.relative_to(ROOT)} cites {cited}" for path, cited_there in all_citations().items()
               for cited in sorted(cited_there) if not resolves(cited, path)]
    assert not missing, "\n".join(missing)


def test_the_design_is_cited_and_numbers_every_invariant():
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    numbers = [int(n) for n in re.findall(r"^(\d+)\. \*\*", design.split("## Invariants", 1)[1].split("\n## ")[0],
                                          re.MULTILINE)]
    assert numbers == list(range(1, 12))  # the numbering code comments cite; a new invariant takes 12
    cited = set().union(*all_citations().values())
    assert "docs/design.md" in cited and not {"DESIGN.md", "STYLE.md"} & cited


def test_citation_patterns():
    page = ROOT / "docs" / "x.md"
    assert CITED.findall("see DESIGN.md, docs/design.md and collapsekit/table.md") == ["DESIGN.md", "docs/design.md"]
    assert LINK.findall("[the schema](report-schema.md#top) and [web](https://a.b/c)") == ["report-schema.md"]
    assert resolves("design.md", page) and resolves("docs/design.md", page) and not resolves("DESIGN.md", page)
