"""The built book as a reader gets it: served over HTTP and opened in a real browser (Debian's chromium driven
by playwright).

Run after ``make book`` (``make test`` does). A local server (``http.server``) serves the built HTML, and:

- every page named in ``_toc.yml`` (and the first its globs match) loads (status 200) with no JavaScript error,
  no error on the console and no failed request, and its images decode; chapter pages show their figures, a
  verdict, and no executed cell shows an error;
- the search page finds a chapter (Sphinx's search loads ``searchindex.js``, which needs the site served);
- every internal link (and script, stylesheet, image) of every page, globbed ones included, resolves over HTTP,
  and its ``#fragment`` names an element of the target;
- every chapter's Colab button opens that chapter's notebook in the configured repository (``repository.url``
  of ``_config.yml``) at the branch or tag the build configured (the built copy ``_build/src/_config.yml``).

Requests that leave the local server (e.g. MathJax from its CDN) are answered with an empty body, so the
check is the same with or without a network and a console error is the site's own. ``WDLIB_BOOK_HTML``
points the check at another built book (default ``_build/html``; the pages and configuration are read from
``src/`` beside it when present, as ``tools/build_book.py`` lays it out). If chromium or the built book is
missing this fails loudly; set WDLIB_SKIP_BROWSER=1 to skip the browser part on purpose.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import threading
import urllib.error
import urllib.request
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = Path(os.environ.get("WDLIB_BOOK_HTML") or ROOT / "_build" / "html").resolve()
BUILT_SRC = HTML.parent / "src"  # the sources the book was built from (tools/build_book.py)
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
SEARCH_WORD = "decoupled"  # a word of chapter 1's text

pytestmark = pytest.mark.book

sys.path.insert(0, str(ROOT / "tools"))
from site_config import toc_entries, toc_files  # noqa: E402


def _built(name: str) -> Path:
    """The built copy of a book source file where there is one, else the repository's."""
    return BUILT_SRC / name if (BUILT_SRC / name).exists() else ROOT / name


PAGES = [f.removesuffix(".ipynb") for f in toc_files(_built("_toc.yml"))]
CHAPTERS = [p for p in PAGES if p.startswith("notebooks/")]
# the pages the globs of _toc.yml matched in the built book: each is fetched and its links checked, and the
# first (they share one template) is opened in the browser too
GLOBBED = sorted(
    {
        p.relative_to(HTML).with_suffix("").as_posix()
        for g in toc_entries(_built("_toc.yml"), "glob")
        for p in HTML.glob(f"{g}.html")
    }
    - set(PAGES)
)


def _need_book() -> None:
    if not (HTML / "index.html").exists():
        pytest.fail(f"no built book at {HTML}: run `make book` first (make test does)")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a tab closed before its favicon's 404 was sent
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def site():
    """The base URL (ending in /) of a local HTTP server serving the built book."""
    _need_book()
    server = _Server(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(HTML)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(site):
    if os.environ.get("WDLIB_SKIP_BROWSER") == "1":
        pytest.skip("WDLIB_SKIP_BROWSER=1: the browser check of the HTML book was skipped on purpose")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(
            f"chromium not found at {CHROMIUM}: install Debian's chromium (apt-get install chromium) "
            "or set WDLIB_SKIP_BROWSER=1 to skip the browser check knowingly"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        context = b.new_context()
        # only the local site is under test: anything else (a CDN) gets an empty answer, network or not
        context.route(lambda url: not url.startswith(site), lambda route: route.fulfill(status=200, body=""))
        yield context
        context.close()
        b.close()


class Opened:
    """A page opened in the browser, with what went wrong while it loaded: uncaught exceptions, errors on the
    console, and requests that failed or were answered with an error."""

    def __init__(self, context, url: str, path: str) -> None:
        self.path = path
        self.errors: list[str] = []
        self.page = context.new_page()
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("response", lambda r: self.errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
        self.page.on("requestfailed", lambda r: self.errors.append(f"failed: {r.url} ({r.failure})"))
        self.response = self.page.goto(url, wait_until="load")


@pytest.fixture(scope="module")
def opened(request, browser, site):
    """The page ``request.param``, opened once for every test of it (pytest groups the tests by page)."""
    o = Opened(browser, f"{site}{request.param}.html", request.param)
    yield o
    o.page.close()


@pytest.mark.parametrize("opened", PAGES + GLOBBED[:1], indirect=True)
def test_page_loads_over_http(opened):
    page, path = opened.page, opened.path
    assert opened.response is not None and opened.response.status == 200, f"{path} did not load over HTTP"
    assert page.locator("main h1").first.inner_text().strip(), f"{path} has no heading"
    assert not opened.errors, f"errors in the browser on {path}: {opened.errors}"
    images = page.locator("img")
    for i in range(images.count()):
        ok = images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0")
        assert ok, f"image {images.nth(i).get_attribute('src')} of {path} did not load"


@pytest.mark.parametrize("opened", CHAPTERS, indirect=True)
def test_chapter_shows_figures_and_no_errors(opened):
    page, chapter = opened.page, opened.path
    assert page.locator("div.cell_output img").count() >= 1, f"{chapter} shows no figure"
    stderr = page.locator("div.cell_output .output.stderr, div.cell_output .output.traceback").all_inner_texts()
    bad = [t for t in stderr if any(w in t for w in ("Traceback", "Error", "Warning"))]
    assert not bad, f"{chapter} shows an error or warning output: {bad[0][:500]}"
    verdicts = page.locator("div.cell_output").filter(has_text="margin (spreads)").count()
    assert verdicts >= 1, f"{chapter} shows no verdict"


@pytest.mark.parametrize("opened", ["book/ledger"], indirect=True)
def test_ledger_lists_every_catalogued_claim(opened):
    from wdlib.claims import catalogue

    page = opened.page
    summary = page.locator("main table").first.locator("tbody tr")
    cat = catalogue()
    assert summary.count() == len(cat), "the ledger's summary must list every catalogued claim"
    text = summary.all_inner_texts()
    for cid in cat:
        assert any(row.startswith(cid) for row in text), f"{cid} is missing from the ledger"
    assert not [row for row in text if "not run" in row], "a catalogued claim was not run in this build"
    for cid in cat:  # each claim has its own section with the rule
        assert page.locator(f"section#{cid.lower()}").count() == 1, f"no section for {cid}"


def test_search_finds_a_chapter(browser, site):
    search = Opened(browser, f"{site}search.html?q={SEARCH_WORD}", "search")
    try:
        assert not search.errors, f"errors in the browser on the search page: {search.errors}"
        results = search.page.locator("#search-results ul.search li a")
        results.first.wait_for(timeout=20_000)
        hrefs = [results.nth(i).get_attribute("href") or "" for i in range(results.count())]
        assert any(h.startswith("notebooks/") for h in hrefs), f"searching {SEARCH_WORD!r} found no chapter: {hrefs}"
        assert not search.errors, f"errors in the browser on the search page: {search.errors}"
    finally:
        search.page.close()


# ---- the site read as files over HTTP, without the browser: links and the Colab buttons ----


class _Links(HTMLParser):
    """The ids a page defines, the links it makes (``<a>``, ``<link>``) and the resources it loads."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name in ("id",) + (("name",) if tag == "a" else ()):
            if a.get(name):
                self.ids.add(a[name])
        ref = a.get("href") if tag in ("a", "link") else a.get("src") if tag in ("img", "script", "iframe") else None
        if ref:
            self.refs.append(ref)


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read(), r.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        return exc.code, b"", ""


def _parse(body: bytes) -> _Links:
    p = _Links()
    p.feed(body.decode("utf-8", errors="replace"))
    return p


@pytest.fixture(scope="module")
def pages_html(site) -> dict[str, tuple[str, _Links]]:
    """Every page of ``_toc.yml``, globbed ones included, fetched over HTTP: page -> (its URL, its parsed HTML)."""
    out = {}
    for path in PAGES + GLOBBED:
        url = f"{site}{path}.html"
        status, body, _ = _get(url)
        assert status == 200, f"{url} answered {status}"
        out[path] = (url, _parse(body))
    return out


def test_every_internal_link_resolves(site, pages_html):
    base = urlsplit(site)
    wanted: dict[str, list[tuple[str, str]]] = {}  # target URL -> [(page, fragment)]
    for path, (url, parsed) in pages_html.items():
        for ref in parsed.refs:
            target = urlsplit(urljoin(url, ref))
            if (target.scheme, target.netloc) != (base.scheme, base.netloc):
                continue  # another site, mailto:, javascript:, data:
            wanted.setdefault(target._replace(query="", fragment="").geturl(), []).append((path, target.fragment))
    assert wanted, "no internal link found"
    broken = []
    for target, uses in wanted.items():
        status, body, kind = _get(target)
        if status != 200:
            broken.append(f"{target} ({status}), linked from {sorted({p for p, _ in uses})}")
            continue
        fragments = {(p, unquote(f)) for p, f in uses if f}
        if fragments and kind == "text/html":
            ids = _parse(body).ids
            broken += [f"{target}#{f} (no such id), linked from {p}" for p, f in sorted(fragments) if f not in ids]
    assert not broken, f"{len(broken)} broken internal link(s):\n" + "\n".join(broken[:40])


def _repository() -> tuple[str, str, str]:
    """(owner, repository, branch) the Colab buttons must point at: the repository of ``_config.yml``, and the
    branch (or release tag) of the configuration the book was built with."""
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    owner, repo = urlsplit(url).path.strip("/").removesuffix(".git").split("/")[:2]
    branch = yaml.safe_load(_built("_config.yml").read_text())["repository"].get("branch", "main")
    return owner, repo, str(branch)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_colab_button_opens_the_chapter_in_the_configured_repository(pages_html, chapter):
    owner, repo, branch = _repository()
    path_to_book = str(yaml.safe_load(_built("_config.yml").read_text())["repository"].get("path_to_book") or "")
    notebook = "/".join(p for p in (path_to_book.strip("/"), f"{chapter}.ipynb") if p)
    colab = [r for r in pages_html[chapter][1].refs if urlsplit(r).netloc == "colab.research.google.com"]
    assert colab, f"{chapter} has no Colab button"
    assert (ROOT / notebook).exists(), f"{chapter}'s Colab button opens {notebook}, which the repository lacks"
    expected = f"/github/{owner}/{repo}/blob/{branch}/{notebook}"
    assert all(urlsplit(r).path == expected for r in colab), f"{chapter}: Colab links {colab}, expected {expected}"
