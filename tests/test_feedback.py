"""Feedback pages, opened in a real browser with no network (Debian's chromium, as the site test drives it),
and handed back through `nbgrader release_feedback` in nbgrader's own course layout.

A small batch, graded once in nbgrader's layout (``COURSE/submitted`` in, ``COURSE/feedback`` out): a
learner with a misconception on 04 whose folder carries what `nbgrader collect` writes, a learner whose
code reads the hidden tests back and prints them (01), and an empty notebook (every test fails, most of
them in the kernel too: each failure is shown once, in the box under its test cell).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import nbformat
import pytest

from grading_helpers import (BAD, MISCONCEPTIONS, ROOT, filled, hidden_lines, peeking_notebook, read_csv,
                             submit)
from qkv_grading.course import read_notebook
from qkv_grading.grade import grade
from qkv_grading.probe import split
from test_hostile import MARKDOWN_ATTACK, OUTPUT_ATTACK
from test_site import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.slow

NAME = "04_cache_notation"
MISTAKE = next(m for m in MISCONCEPTIONS if m[0] == NAME and m[1] == "q1")
STAMP = "2026-11-20 09:15:02.123456 UTC"
SECRET = "0123456789abcdef"
OUTSIDE = "http://192.0.2.1"  # TEST-NET-1: never a real host


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    course = tmp_path_factory.mktemp("course")
    subs = course / "submitted"
    nb = filled(NAME, MISTAKE[3])
    # what a learner may add that would make a page ask a host for something: it must not get through
    nb.cells += [nbformat.v4.new_markdown_cell(f"My notes <img src='{OUTSIDE}/md.png'> $x_i$"),
                 nbformat.v4.new_raw_cell(f"<script src='{OUTSIDE}/raw.js'></script>"),
                 nbformat.v4.new_code_cell("from IPython.display import HTML\n"
                                           f"HTML(\"<img src='{OUTSIDE}/out.png'>\")"),
                 nbformat.v4.new_markdown_cell(MARKDOWN_ATTACK), nbformat.v4.new_code_cell(OUTPUT_ATTACK)]
    folder = submit(subs, "ada", NAME, nb).parent
    (folder / "timestamp.txt").write_text(STAMP)
    (folder / "submission_secret.txt").write_text(SECRET)
    submit(subs, "peek", BAD, peeking_notebook())
    submit(subs, "empty", NAME, nbformat.v4.new_notebook())
    (subs / "__MACOSX" / "ada").mkdir(parents=True)
    (subs / "__MACOSX" / "ada" / "._x").write_text("")
    (subs / "ada" / ".DS_Store").write_text("")
    (folder / "Thumbs.db").write_text("")
    grade(subs, course, ROOT, workers=1, timeout=20, progress=False)
    return course


def _record(course: Path, student: str, name: str) -> dict:
    return json.loads((course / "results" / student / f"{name}.json").read_text())


def test_feedback_is_written_in_nbgraders_layout_with_the_collected_timestamp(course):
    folder = course / "feedback" / "ada" / NAME
    assert (folder / f"{NAME}.html").is_file()
    assert (folder / "timestamp.txt").read_text() == STAMP
    assert (folder / "submission_secret.txt").read_text() == SECRET
    assert sorted(p.name for p in (course / "feedback").iterdir()) == ["ada", "empty", "peek"]  # no MathJax
    # a notebook without a collected timestamp gets one too: release_feedback needs it
    assert (course / "feedback" / "peek" / BAD / "timestamp.txt").read_text().strip()
    rows = {(r["student"], r["assignment"]): r for r in read_csv(course / "grades.csv")}
    assert rows[("ada", NAME)]["timestamp"] == STAMP


def test_collect_files_and_debris_are_not_graded_and_debris_is_reported_once(course):
    ignored = read_csv(course / "ignored.csv")
    paths = [r["path"] for r in ignored]
    assert sorted(paths) == ["__MACOSX", "ada/.DS_Store", f"ada/{NAME}/Thumbs.db"], paths
    assert not any(r["student"] == "" for r in read_csv(course / "report.csv"))
    assert "__MACOSX" not in {r["student"] for r in read_csv(course / "grades.csv")}


def test_an_empty_notebook_gets_one_note(course):
    record = _record(course, "empty", NAME)
    assert record["notes"] == ["empty notebook (no cells): graded as left blank"]
    assert record["score"] == 0
    # and the class report lists it among the submissions that need a human look
    page = (course / "report.html").read_text()
    look = page[page.index("id='needs-a-look'"):page.index(f"<h2 id='{BAD}'>")]
    assert "data-student='empty'" in look and "empty notebook" in look


def test_nbgrader_release_feedback_hands_the_page_back(course, tmp_path):
    from nbgrader.utils import notebook_hash

    exchange = tmp_path / "exchange"
    exchange.mkdir()
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "nbgrader"), "release_feedback", NAME,
         "--course", "qkv-course", f"--Exchange.root={exchange}", f"--CourseDirectory.root={course}"],
        capture_output=True, text=True, cwd=course, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    released = exchange / "qkv-course" / "feedback" / f"{notebook_hash(secret=SECRET, notebook_id=NAME)}.html"
    assert released.read_bytes() == (course / "feedback" / "ada" / NAME / f"{NAME}.html").read_bytes()


# ---- in a browser ------------------------------------------------------------------------------------------

PAGE_JS = r"""
() => {
  const red = '[data-mime-type="application/vnd.jupyter.stderr"]';
  const tests = [...document.querySelectorAll(".qkv-test")].map(el => ({
    id: el.dataset.test, passed: el.classList.contains("qkv-pass"),
    message: (el.querySelector(".qkv-message") || {textContent: ""}).textContent,
    after: (el.previousElementSibling || {className: ""}).className,
    errors: el.previousElementSibling ? el.previousElementSibling.querySelectorAll(red).length : -1}));
  // MathML the page itself holds (MathJax, were it there, would add its own inside mjx-container)
  const math = [...document.querySelectorAll("math")].filter(el => !el.closest("mjx-container"));
  const clone = document.body.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, math").forEach(el => el.remove());
  const text = clone.textContent;
  const handlers = [...document.querySelectorAll("*")].filter(
    el => [...el.attributes].some(a => a.name.toLowerCase().startsWith("on"))).length;
  return {tests, math: math.length, scripts: document.scripts.length, pwned: window.PWNED || 0, errors: document.querySelectorAll(red).length,
          unsized: math.filter(el => !(el.getBoundingClientRect().width > 0 &&
                                       el.getBoundingClientRect().height > 0)).length,
          handlers, violations: window.__violations,
          jslinks: document.querySelectorAll("a[href^='javascript:' i]").length,
          raw: (text.match(/\$|\\\(|\*\*/g) || []).length, shown: document.body.innerText,
          html: document.documentElement.outerHTML, total: document.querySelector(".qkv-total").textContent,
          width: document.documentElement.scrollWidth};
}
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def pages(course):
    """Each feedback page of the batch, opened at phone width from a server of the feedback folder alone;
    every request the page made is recorded."""
    from playwright import sync_api  # in requirements.txt: missing, it must fail, not skip

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing; run `make system-deps` (Debian's chromium package)")
    handler = functools.partial(_Quiet, directory=str(course / "feedback"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    # ada's page with what the sanitizer would have taken out put back in: the Content-Security-Policy
    # alone must stop it
    page_html = (course / "feedback" / "ada" / NAME / f"{NAME}.html").read_text()
    (course / "feedback" / "ada" / NAME / "csp_probe.html").write_text(page_html.replace(
        "</body>", f"<script>window.PWNED=9</script><img src='{OUTSIDE}/csp.png'>"
                   f"<img src=x onerror='window.PWNED=10'></body>"))
    seen: dict = {}
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 390, "height": 844})
            context.add_init_script("window.__violations = []; document.addEventListener("
                                    "'securitypolicyviolation', e => window.__violations.push("
                                    "e.effectiveDirective + ' ' + e.blockedURI))")
            file_url = (course / "feedback" / "ada" / NAME / f"{NAME}.html").as_uri()
            for student, name, url in (("ada", NAME, f"{base}ada/{NAME}/{NAME}.html"),
                                       ("peek", BAD, f"{base}peek/{BAD}/{BAD}.html"),
                                       ("csp_probe", NAME, f"{base}ada/{NAME}/csp_probe.html"),
                                       ("empty", NAME, f"{base}empty/{NAME}/{NAME}.html"),
                                       ("ada_file", NAME, file_url)):
                requests: list[str] = []

                def guard(route, request, requests=requests):
                    requests.append(request.url)
                    local = request.url.startswith(base) or request.url.startswith("file://")
                    route.continue_() if local else route.abort()

                page = context.new_page()
                page.route("**/*", guard)
                page.goto(url, wait_until="load")
                page.wait_for_load_state("networkidle")
                seen[student] = dict(page.evaluate(PAGE_JS), requests=requests)
                page.close()
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return seen


def test_a_feedback_page_renders_its_markdown_and_math(pages):
    """As MathML, which the browser lays out itself: no script, no TeX source left in the text."""
    for student in ("ada", "ada_file", "csp_probe"):  # served, opened as a file, and under attack
        page = pages[student]
        assert page["math"] >= 5 and page["unsized"] == 0 and page["raw"] == 0, \
            (student, page["math"], page["unsized"], page["raw"])
        assert page["scripts"] == (1 if student == "csp_probe" else 0), student  # the probe's, blocked


def test_nothing_of_the_learners_runs_on_a_feedback_page(pages):
    for student in ("ada", "ada_file", "peek"):
        page = pages[student]
        assert (page["pwned"], page["handlers"], page["jslinks"]) == (0, 0, 0), student
        assert page["violations"] == [], (student, page["violations"])  # nothing of ours is blocked


def test_the_content_security_policy_alone_stops_a_script_and_a_remote_image(pages):
    probe = pages["csp_probe"]
    assert probe["pwned"] == 0
    blocked = " ".join(probe["violations"])
    assert "script-src" in blocked and f"img-src {OUTSIDE}/csp.png" in blocked, blocked
    assert not any(OUTSIDE in u for u in probe["requests"]), probe["requests"]


def test_each_test_shows_its_points_and_message_under_its_cell(course, pages):
    record = _record(course, "ada", NAME)
    shown = {t["id"]: t for t in pages["ada"]["tests"]}
    assert list(shown) == [t["id"] for t in record["tests"]]
    for t in record["tests"]:
        assert shown[t["id"]]["passed"] == t["passed"]
        assert shown[t["id"]]["message"] == t["message"]
        assert "jp-CodeCell" in shown[t["id"]]["after"]  # right under the test cell
    assert any(not t["passed"] and t["message"] for t in record["tests"])
    assert pages["ada"]["total"] == f"{record['score']:g} / {record['max_score']:g}"


def test_a_feedback_page_contains_no_hidden_test_line(course, pages):
    # what the peeking notebook printed of its kernel's input: the cells that play each test's probes,
    # sent as data (the test's code never enters a graded kernel)
    assert "(graded: its probes, sent as data)" in pages["peek"]["shown"]
    for student, name in (("ada", NAME), ("peek", BAD)):
        shown = "".join(pages[student]["html"].split()) + "".join(pages[student]["shown"].split())
        leaked = [line for line in hidden_lines(name) if line in shown]
        assert not leaked, (student, leaked[:3])


def test_a_feedback_page_asks_for_nothing_beyond_itself(pages):
    for student, page in pages.items():
        if student.endswith("_file"):  # routes see no file:// request
            continue
        assert len(page["requests"]) == 1 and page["requests"][0].endswith(".html"), (student, page["requests"])


def test_each_failure_is_shown_once_in_the_box_under_its_test(course, pages):
    """The empty notebook's tests fail in the kernel too (their probes raise): no red error under a test
    cell, the hidden ones' (whose visible code only prints) included; the box says why. The learner's
    own answer cells still show what they raised."""
    empty = pages["empty"]
    record = _record(course, "empty", NAME)
    released = read_notebook(ROOT / "exercises" / NAME / f"{NAME}.ipynb")
    prints_only = [c.metadata.nbgrader["grade_id"] for c in released.cells if c.cell_type == "code"
                   and c.metadata.get("nbgrader", {}).get("grade")
                   and all(line.startswith(("#", "print(")) for line in split(c.source)[1].splitlines())]
    assert len(prints_only) >= 5 and not any(t["passed"] for t in record["tests"]), prints_only
    assert set(prints_only) <= {t["id"] for t in empty["tests"]}
    assert [t["id"] for t in empty["tests"]] == [t["id"] for t in record["tests"]]
    for shown, t in zip(empty["tests"], record["tests"]):
        assert shown["errors"] == 0 and shown["message"] == t["message"] and t["message"], (shown, t)
    assert empty["errors"] > 0  # NotImplementedError under the blank answers: errors are on the page


def test_a_feedback_page_fits_a_phone_screen(pages):
    for student, page in pages.items():
        assert page["width"] <= 390, (student, page["width"])
