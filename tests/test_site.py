"""The built site, visited in a real browser with no network: every page loads, renders its formulas and
images, links only to pages that exist, and asks nothing of any host but the one serving it.

Run after `make book` (``make test`` does both). Drives Debian's chromium through Playwright's Python package.
"""

from __future__ import annotations

import functools
import html
import http.server
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_build" / "html"
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-default-apps", "--disable-extensions"]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
SCREENSHOT_PAGE = "book/02_queries_keys_values.html"

pytestmark = pytest.mark.slow

# Collected in the page, after load: what the tests below check.
PAGE_REPORT_JS = r"""
() => {
  const images = [...document.images].map(img => ({src: img.currentSrc || img.src, complete: img.complete,
                                                   width: img.naturalWidth}));
  const links = [...document.querySelectorAll("a[href]")].map(a => a.href);
  // A captioned figure whose cell produced no image still renders its caption: look inside each one.
  const figures = [...document.querySelectorAll("figure")].map(f => ({
    id: f.id || (f.querySelector("figcaption") || {textContent: ""}).textContent.trim().slice(0, 60),
    loaded: [...f.querySelectorAll("img")].some(img => img.complete && img.naturalWidth > 0)}));
  const mathElements = [...document.querySelectorAll(".math")];
  const unrendered = mathElements.filter(el => !el.querySelector("mjx-container")).map(el => el.textContent.slice(0, 80));
  const clone = document.body.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, textarea, mjx-container").forEach(el => el.remove());
  const text = clone.textContent;
  const raw = (text.match(/\$\$|\\\(|\\\[/g) || []).length;
  // Code or a formula wider than its column hides its end behind a scroll bar (STYLE rule 14).
  const longest = el => el.textContent.split("\n").reduce((a, b) => b.length > a.length ? b : a, "");
  const hidden = [...document.querySelectorAll("pre")].filter(p => p.scrollWidth > p.clientWidth + 1)
    .map(p => longest(p).slice(0, 100));
  const wideMath = [...document.querySelectorAll('mjx-container[display="true"]')]
    .filter(m => m.scrollWidth > m.clientWidth + 1).map(m => m.textContent.slice(0, 80));
  return {images, links, figures, mathCount: mathElements.length, unrendered, raw, hidden, wideMath,
          mjx: document.querySelectorAll("mjx-container").length};
}
"""


def _pages() -> list[str]:
    return sorted(p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html")
                  if not p.relative_to(SITE).parts[0].startswith("_"))


@pytest.fixture(scope="module")
def site_url():
    if not (SITE / "index.html").is_file():
        pytest.fail(f"the site is not built: {SITE} has no index.html. Run `make book` first.")
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest's output readable
        pass


@pytest.fixture(scope="module")
def visits(site_url):
    """Visit every page once; return {page: report} with what each page did and showed."""
    from playwright import sync_api  # in requirements.txt: missing, it must fail, not skip

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing; run `make system-deps` (Debian's chromium package)")
    reports: dict[str, dict] = {}
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        external: list[str] = []

        def guard(route):
            url = route.request.url
            host = urllib.parse.urlsplit(url).hostname
            if url.startswith(("http://", "https://", "ws://", "wss://")) and host not in LOCAL_HOSTS:
                external.append(url)
                route.abort()
            else:
                route.continue_()

        context.route("**/*", guard)
        page = context.new_page()
        for name in _pages():
            errors: list[str] = []
            failed_local: list[str] = []
            external.clear()
            on_console = lambda msg, errors=errors: msg.type == "error" and errors.append(msg.text)  # noqa: E731
            on_pageerror = lambda exc, errors=errors: errors.append(f"uncaught: {exc}")  # noqa: E731
            on_response = lambda r, bad=failed_local: r.status >= 400 and bad.append(f"{r.status} {r.url}")  # noqa: E731
            page.on("console", on_console)
            page.on("pageerror", on_pageerror)
            page.on("response", on_response)
            page.goto(site_url + name, wait_until="load")
            try:  # MathJax typesets after load; give it time on pages that have formulas
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.math')].every(el => el.querySelector('mjx-container'))",
                    timeout=20_000)
            except sync_api.TimeoutError:
                pass  # reported below as unrendered formulas
            # the long chapters typeset a few hundred formulas: on a busy machine that takes a while
            page.wait_for_load_state("networkidle", timeout=90_000)
            report = page.evaluate(PAGE_REPORT_JS)
            report.update(errors=list(errors), failed=list(failed_local), external=list(external))
            reports[name] = report
            if name == SCREENSHOT_PAGE:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "chapter-2.png"), full_page=True)
            page.remove_listener("console", on_console)
            page.remove_listener("pageerror", on_pageerror)
            page.remove_listener("response", on_response)
        browser.close()
    return reports


def test_site_has_the_chapters(visits):
    pages = set(visits)
    for chapter in ("index.html", "book/intro.html", "book/notation.html", "book/references.html",
                    "book/01_weighted_average.html", SCREENSHOT_PAGE, *CHAPTERS_WITH_FIGURES,
                    "book/09_exercises.html", *INSTRUCTOR_PAGES):
        assert chapter in pages, f"{chapter} is not in the built site ({len(pages)} pages)"


def test_no_page_needs_the_network(visits):
    bad = {page: r["external"] for page, r in visits.items() if r["external"]}
    assert not bad, f"pages requested other hosts (the site must work offline): {bad}"


def test_no_console_errors_or_missing_files(visits):
    bad = {page: r["errors"] + r["failed"] for page, r in visits.items() if r["errors"] or r["failed"]}
    assert not bad, f"console errors or failed local requests: {bad}"


def test_every_image_loads(visits):
    bad = {page: [i["src"] for i in r["images"] if not i["complete"] or i["width"] == 0]
           for page, r in visits.items()}
    bad = {page: srcs for page, srcs in bad.items() if srcs}
    assert not bad, f"images that did not load: {bad}"


CHAPTERS_WITH_FIGURES = [f"book/{name}.html" for name in (
    "01_weighted_average", "02_queries_keys_values", "03_masked_multihead", "04_decoder", "05_kv_cache",
    "06_bounded_memory", "07_todays_models", "08_torch_decoder")]
INSTRUCTOR_PAGES = [f"book/instructor/{name}.html" for name in
                    ("release_collect", "grading", "sandbox", "large_course")]
# Figures the chapters must show, by the name their caption cell gives them (issue 19's list among them).
NAMED_FIGURES = {
    "book/02_queries_keys_values.html": ["fig-softmax-sharpness"],
    "book/03_masked_multihead.html": ["fig-two-heads", "fig-heads-column-blocks"],
    "book/04_decoder.html": ["fig-decoder-diagram", "fig-trained-attention"],
    "book/05_kv_cache.html": ["fig-prefill-decode", "fig-cache-filling"],
    "book/06_bounded_memory.html": ["fig-sliding-window"],
    "book/07_todays_models.html": ["fig-llama-step-time", "fig-llama-cache-bytes"],
}


def test_every_figure_shows_its_image(visits):
    """A figure is a caption around an image the chapter's code drew: the caption alone means the code's
    plot never reached the page (an Agg backend in the build, say)."""
    empty = {page: [f["id"] for f in r["figures"] if not f["loaded"]] for page, r in visits.items()}
    empty = {page: ids for page, ids in empty.items() if ids}
    assert not empty, f"figures without a loaded image: {empty}"
    for page in CHAPTERS_WITH_FIGURES:
        drawn = [f for f in visits[page]["figures"] if f["loaded"]]
        assert drawn, f"{page} shows no figure"


def test_named_figures_are_drawn(visits):
    """Each figure the issue asked for is on its page with its image loaded (a figure's id is its name)."""
    missing = {}
    for page, names in NAMED_FIGURES.items():
        loaded = {f["id"] for f in visits[page]["figures"] if f["loaded"]}
        lost = [name for name in names if name not in loaded]
        if lost:
            missing[page] = lost
    assert not missing, f"figures missing or not drawn: {missing}"


def test_instructors_guide_is_reached_from_the_table_of_contents(visits, site_url):
    """The guide's pages are in the site's navigation (the table of contents every page carries), and the
    introduction links to them."""
    for page in ("book/intro.html", "book/09_exercises.html"):
        links = {href.split("#")[0] for href in visits[page]["links"]}
        unreached = [p for p in INSTRUCTOR_PAGES if site_url + p not in links]
        assert not unreached, f"{page} does not link to {unreached}"
    for p in INSTRUCTOR_PAGES:
        assert p in visits, f"{p} is not in the built site"
        assert not visits[p]["errors"], f"{p}: {visits[p]['errors']}"


def test_math_is_rendered(visits):
    with_math = {page: r for page, r in visits.items() if r["mathCount"]}
    assert "book/02_queries_keys_values.html" in with_math, "chapter 2 should have formulas"
    # Every page, with formulas or not: a page where dollar-math was never parsed has no .math at all.
    bad = {page: {"unrendered": r["unrendered"], "raw delimiters left": r["raw"]}
           for page, r in visits.items() if r["unrendered"] or r["raw"] or (r["mathCount"] and not r["mjx"])}
    assert not bad, f"formulas MathJax did not render: {bad}"


def test_code_and_formulas_fit_their_column(visits):
    """At a 1280-pixel window no code block, output or displayed formula is wider than the text column:
    nothing a reader should see hides behind a scroll bar (STYLE rule 14)."""
    hidden = {name: r["hidden"] for name, r in visits.items() if r["hidden"]}
    assert not hidden, f"code lines wider than the column (longest line of each block): {hidden}"
    wide = {name: r["wideMath"] for name, r in visits.items() if r["wideMath"]}
    assert not wide, f"displayed formulas wider than the column: {wide}"


def test_internal_links_resolve(visits, site_url):
    targets: dict[str, set[str]] = {}
    for page, r in visits.items():
        for href in r["links"]:
            if not href.startswith(site_url):
                continue
            path, _, fragment = href.partition("#")
            targets.setdefault(path, set()).add(fragment)
    assert targets, "no internal links found"
    problems = []
    for path, fragments in sorted(targets.items()):
        try:
            with urllib.request.urlopen(path, timeout=10) as response:
                body = response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            problems.append(f"{path}: HTTP {exc.code}")
            continue
        if not path.endswith((".html", "/")):
            continue
        ids = set(re.findall(r'\sid="([^"]+)"', body))
        for fragment in fragments - {""}:
            if html.unescape(urllib.parse.unquote(fragment)) not in ids:
                problems.append(f"{path}#{fragment}: no such anchor")
    assert not problems, "broken internal links:\n" + "\n".join(problems)


def test_screenshot_saved(visits):
    shot = ARTIFACTS / "chapter-2.png"
    assert shot.is_file() and shot.stat().st_size > 10_000, f"no screenshot at {shot}"
