"""The API reference: one page per public wdlib module (tools/api_pages.py), built with the book.

The first tests are fast and need no build: every module of the package gets a page, the table of contents
lists them, and the book's build generates them. The ``book``-marked ones read the built HTML (``make book``).
"""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
API = HTML / "book" / "api"
sys.path.insert(0, str(ROOT / "tools"))

import api_pages  # noqa: E402

# a function per layer whose docstring the built page must show: (module, name, words of its docstring)
KNOWN = [
    ("wdlib.timescale", "tau_iter", "the EMA timescale in iterations"),
    ("wdlib.optim", "AdamW", None),
    ("wdlib.runs", "run_many", None),
    ("wdlib.claims", "Ledger", None),
]


def _public_modules_on_disk() -> set[str]:
    """wdlib's public modules read from the file tree, independently of pkgutil."""
    found = {"wdlib"}
    for path in (ROOT / "wdlib").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts):
            continue
        found.add(".".join(parts))
    return found


def test_every_module_has_a_page(tmp_path):
    """A new module gets a page without anyone listing it, and its page documents it with autodoc."""
    modules = api_pages.modules()
    assert set(modules) == _public_modules_on_disk()
    assert len(modules) == len(set(modules))
    (tmp_path / "index.md").write_text((ROOT / "book" / "api" / "index.md").read_text())
    pages = {p.stem: p.read_text() for p in api_pages.write_pages(tmp_path)}
    assert set(pages) == set(modules)
    for name, text in pages.items():
        assert f".. automodule:: {name}\n" in text, name
        assert text.startswith(f"# `{name}`"), name
    index = (tmp_path / "index.md").read_text()
    assert api_pages.MARKER not in index
    for name in modules:
        assert f"]({name}.md)" in index, f"the API index does not link {name}"


def test_every_module_has_a_docstring_and_a_layer():
    import importlib

    for name in api_pages.modules():
        doc = importlib.import_module(name).__doc__
        assert doc and doc.strip(), f"{name} has no module docstring: its API page would be empty"
        assert api_pages.layer_of(name) in (0, 1, 2)


def test_reexports_are_linked_not_documented_twice():
    page = api_pages.page("wdlib")
    assert ":exclude-members:" in page and "AdamW" in page.split(":exclude-members:")[1].splitlines()[0]
    assert ":py:class:`AdamW <wdlib.optim.AdamW>`" in page
    # a name defined in a private module (wdlib.experiments._scaffold has no page) is documented where exported
    assert ":exclude-members:" not in api_pages.page("wdlib.experiments")


def test_toc_lists_the_api_pages():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    part = next(p for p in toc["parts"] if p.get("caption") == "API reference")
    index = part["chapters"][0]
    assert index["file"] == "book/api/index"
    globs = [s["glob"] for s in index["sections"]]
    assert all(any(Path(f"book/api/{m}").match(g) for g in globs) for m in api_pages.modules())


def test_book_build_generates_the_api_pages():
    """tools/build_book.py writes the pages into the build tree (they are not committed)."""
    source = (ROOT / "tools" / "build_book.py").read_text()
    assert "api_pages.write_pages(" in source


def test_intro_links_to_the_api_reference():
    assert "](api/index.md)" in (ROOT / "book" / "intro.md").read_text()


def _text(path: Path) -> str:
    """A page's text without tags, its whitespace collapsed and Sphinx's smart quotes made plain again."""
    text = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", path.read_text())))
    return text.translate(str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'}))


@pytest.fixture(scope="module")
def built():
    if not (API / "index.html").exists():
        pytest.fail(f"no API reference at {API}: run `make book` first (make test does)")
    return API


@pytest.mark.book
@pytest.mark.parametrize("module", api_pages.modules())
def test_built_page_per_module(built, module):
    page = built / f"{module}.html"
    assert page.exists(), f"no API page for {module}"
    summary = api_pages._summary(__import__("importlib").import_module(module).__doc__)
    first_words = re.sub(r"[`*{}]|py:\w+", "", summary).split()[:4]
    assert " ".join(first_words) in _text(page), f"{module}'s page does not show its docstring"


@pytest.mark.book
@pytest.mark.parametrize(("module", "name", "words"), KNOWN)
def test_built_page_documents_known_objects(built, module, name, words):
    text = (built / f"{module}.html").read_text()
    assert f'id="{module}.{name}"' in text, f"{module}.{name} is not documented on its page"
    if words is not None:
        assert words in _text(built / f"{module}.html")


@pytest.mark.book
def test_built_intro_and_index_link_the_api(built):
    intro = (HTML / "book" / "intro.html").read_text()
    assert 'href="api/index.html"' in intro
    index = (built / "index.html").read_text()
    for module in api_pages.modules():
        assert f'href="{module}.html"' in index, f"the API index does not link {module}"
