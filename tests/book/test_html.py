"""The built book, opened in a real browser (Debian's chromium driven by playwright).

Run after ``make book`` (``make test`` does): every page named in ``_toc.yml`` loads, chapter pages
show their figures (decoded images), and no executed cell shows an error. If chromium or the built
book is missing this fails loudly; set WDLIB_SKIP_BROWSER=1 to skip it on purpose.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
CHROMIUM = os.environ.get("WDLIB_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]

pytestmark = pytest.mark.book

sys.path.insert(0, str(ROOT / "tools"))
from build_book import toc_files  # noqa: E402

PAGES = [f.removesuffix(".ipynb") for f in toc_files(ROOT / "_toc.yml")]
CHAPTERS = [p for p in PAGES if p.startswith("notebooks/")]


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("WDLIB_SKIP_BROWSER") == "1":
        pytest.skip("WDLIB_SKIP_BROWSER=1: the browser check of the HTML book was skipped on purpose")
    if not (HTML / "index.html").exists():
        pytest.fail(f"no built book at {HTML}: run `make book` first (make test does)")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(
            f"chromium not found at {CHROMIUM}: install Debian's chromium (apt-get install chromium) "
            "or set WDLIB_SKIP_BROWSER=1 to skip the browser check knowingly"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def _open(browser, page_path: str):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    response = page.goto((HTML / f"{page_path}.html").as_uri(), wait_until="load")
    return page, response, errors


@pytest.mark.parametrize("page_path", PAGES)
def test_page_loads(browser, page_path):
    page, response, errors = _open(browser, page_path)
    try:
        assert response is None or response.ok, f"{page_path} did not load"
        title = page.locator("main h1").first.inner_text()
        assert title.strip(), f"{page_path} has no heading"
        assert not errors, f"JavaScript errors on {page_path}: {errors}"
    finally:
        page.close()


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_shows_figures_and_no_errors(browser, chapter):
    page, _, _ = _open(browser, chapter)
    try:
        images = page.locator("div.cell_output img")
        count = images.count()
        assert count >= 1, f"{chapter} shows no figure"
        for i in range(count):
            ok = images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0")
            assert ok, f"figure {i} of {chapter} did not decode"
        stderr = page.locator("div.cell_output .output.stderr, div.cell_output .output.traceback").all_inner_texts()
        bad = [t for t in stderr if any(w in t for w in ("Traceback", "Error", "Warning"))]
        assert not bad, f"{chapter} shows an error or warning output: {bad[0][:500]}"
        verdicts = page.locator("div.cell_output").filter(has_text="margin (spreads)").count()
        assert verdicts >= 1, f"{chapter} shows no verdict"
    finally:
        page.close()


def test_ledger_lists_every_catalogued_claim(browser):
    from wdlib.claims import catalogue

    page, _, _ = _open(browser, "book/ledger")
    try:
        summary = page.locator("main table").first.locator("tbody tr")
        cat = catalogue()
        assert summary.count() == len(cat), "the ledger's summary must list every catalogued claim"
        text = summary.all_inner_texts()
        for cid in cat:
            assert any(row.startswith(cid) for row in text), f"{cid} is missing from the ledger"
        assert not [row for row in text if "not run" in row], "a catalogued claim was not run in this build"
        for cid in cat:  # each claim has its own section with the rule
            assert page.locator(f"section#{cid.lower()}").count() == 1, f"no section for {cid}"
    finally:
        page.close()
