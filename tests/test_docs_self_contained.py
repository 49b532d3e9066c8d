"""The project stands alone: no file cites the private research notes it was built from, and every
link into ``docs/`` leads somewhere.

Kernel facts are cited by kernel file, function, commit and release, or by a section of
``docs/kernel-map.md``; never by the notes' own names.
"""

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# Built from pieces so that this file does not match itself.
FORBIDDEN = ("kernel" + "-facts", "seeds" + "/", "seed" + " 0")

# Documentation of external tools vendored into the tree, which may say what it likes (none today).
EXTERNAL_DOCS_DIRS = ()


def _tracked_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    return [name for name in out.decode().split("\0") if name]


def _allowed(name):
    return name.startswith(EXTERNAL_DOCS_DIRS + (".git/",))


def test_no_tracked_file_cites_the_research_notes():
    offenders = []
    for name in _tracked_files():
        if _allowed(name):
            continue
        path = ROOT / name
        if not path.is_file():
            continue  # deleted in the working tree
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        for number, line in enumerate(text.splitlines(), 1):
            lowered = line.lower()
            offenders += [f"{name}:{number}: {word!r}" for word in FORBIDDEN if word in lowered]
    assert not offenders, "cite the kernel or docs/kernel-map.md instead:\n" + "\n".join(offenders)


# -------------------------------------------------------------------------------- links into docs/

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading, seen):
    """GitHub's anchor for a heading: lower case, punctuation but ``-`` and ``_`` dropped, spaces
    to ``-``; a repeated slug gets ``-1``, ``-2``, ..."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    return slug if count == 0 else f"{slug}-{count}"


def _outside_code(text):
    """The lines of a Markdown text outside fenced code blocks."""
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield line


def _anchors(path):
    seen = {}
    return {_slug(line.lstrip("#"), seen) for line in _outside_code(path.read_text()) if re.match(r"#{1,6} ", line)}


def _links(path):
    for line in _outside_code(path.read_text()):
        for target in LINK.findall(line):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
                yield target


def _sources():
    return sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]


@pytest.mark.parametrize("source", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_into_docs_resolve(source):
    broken = []
    for target in _links(source):
        file_part, _, anchor = target.partition("#")
        dest = (source.parent / file_part).resolve() if file_part else source
        if DOCS not in dest.parents and dest != DOCS:
            continue  # not a link into docs/
        if not dest.is_file():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"broken links in {source.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_kernel_map_anchors_cited_in_the_tree_exist():
    """Comments and docstrings cite sections as ``docs/kernel-map.md#<section>`` (and then ``#<section>``
    alone for more sections of the same page); every such anchor must be a heading there."""
    anchors = _anchors(DOCS / "kernel-map.md")
    missing = []
    for name in _tracked_files():
        path = ROOT / name
        if not path.is_file() or path.suffix not in (".py", ".toml", ".md"):
            continue
        for match in re.finditer(r"docs/kernel-map\.md((?:#[\w-]+(?:\s+and\s+)?)+)", path.read_text()):
            for anchor in re.findall(r"#([\w-]+)", match.group(1)):
                if anchor not in anchors:
                    missing.append(f"{name}: #{anchor}")
    assert not missing, "no such section in docs/kernel-map.md:\n" + "\n".join(missing)


# ------------------------------------------------------------------ docs/kernel-map.md is complete

def test_kernel_map_names_every_module_and_hook():
    text = (DOCS / "kernel-map.md").read_text()
    modules = [p.name for p in sorted((ROOT / "vmemcore").glob("*.py"))]
    specs = ast.parse((ROOT / "vmemcore" / "hookspecs.py").read_text())
    hooks = [node.name for node in specs.body if isinstance(node, ast.FunctionDef) and node.name.startswith("vmemcore_")]
    assert hooks, "no hookspecs found"
    missing = [m for m in modules if m not in text] + [f"hook {h}" for h in hooks if f"`{h}`" not in text]
    assert not missing, "docs/kernel-map.md does not name: " + ", ".join(missing)
