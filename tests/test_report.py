"""The class report and the tables, on a small class graded once.

``full`` hands in all five assignments. Four learners hand in 04 only, each carrying misconceptions from
the catalogue (``grading_helpers.MISCONCEPTIONS``): on every question one misconception is more common than
another. The report must rank, per question, the message of the most common one first; and the four
must show as not submitted (never as 0) for the other four assignments, in every output.
"""

from __future__ import annotations

import csv
import functools
import http.server
import json
import threading
from pathlib import Path

import pytest

from grading_helpers import MISCONCEPTIONS, ROOT, filled, read_csv, submit
from qkv_grading.course import ASSIGNMENTS
from qkv_grading.grade import grade
from qkv_grading.report import load_results, write_figure
from test_site import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.slow

NAME = "04_cache_notation"
OTHERS = [a for a in ASSIGNMENTS if a != NAME]


def _mistakes(question: str) -> list[dict]:
    return [m[3] for m in MISCONCEPTIONS if m[0] == NAME and m[1] == question]


# per question: (the common misconception, the rare one); each learner's answers merged
Q1, Q2, Q3 = _mistakes("q1"), _mistakes("q2"), _mistakes("q3")
CLASS = {"s1": [Q1[1], Q2[0], Q3[0]], "s2": [Q1[1], Q2[0], Q3[0]], "s3": [Q1[1], Q2[1], Q3[1]],
         "s4": [Q1[0]]}
COMMON = {"q1": ["s1", "s2", "s3"], "q2": ["s1", "s2"], "q3": ["s1", "s2"]}


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    subs = tmp_path_factory.mktemp("submissions")
    for name in ASSIGNMENTS:
        submit(subs, "full", name, filled(name))
    for student, answers in CLASS.items():
        merged = {k: v for a in answers for k, v in a.items()}
        submit(subs, student, NAME, filled(NAME, merged))
    out = tmp_path_factory.mktemp("graded")
    grade(subs, out, ROOT, workers=1, timeout=20, progress=False)
    return out


@pytest.fixture(scope="module")
def report(out):
    """report.html, opened in chromium from a server of the output folder, with no network."""
    from playwright import sync_api  # in requirements.txt: missing, it must fail, not skip

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing; run `make system-deps` (Debian's chromium package)")
    handler = functools.partial(_Quiet, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    requests: list[str] = []

    def guard(route, request):
        requests.append(request.url)
        route.continue_() if request.url.startswith(base) else route.abort()

    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.route("**/*", guard)
            page.goto(base + "report.html", wait_until="load")
            shown = page.evaluate(REPORT_JS)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return dict(shown, requests=requests)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


REPORT_JS = r"""
() => {
  const questions = {};
  for (const s of document.querySelectorAll("section.question")) {
    questions[s.dataset.assignment + "/" + s.dataset.question] = [...s.querySelectorAll(
      "table.messages tr")].slice(1).map(tr => ({count: +tr.cells[0].textContent,
                                                 message: tr.cells[1].textContent}));
  }
  const absent = {};
  for (const h of document.querySelectorAll("h2[id]")) {
    const span = h.nextElementSibling && h.nextElementSibling.querySelector(".not-submitted");
    if (span) absent[h.id] = span.textContent;
  }
  const img = document.querySelector("img");
  return {questions, absent, figure: img.complete && img.naturalWidth > 0};
}
"""


def _messages(out: Path, student: str, question: str) -> set[str]:
    record = json.loads((out / "results" / student / f"{NAME}.json").read_text())
    return {t["message"] for t in record["tests"] if t["question"] == question and not t["passed"]}


@pytest.mark.parametrize("question", ["q1", "q2", "q3"])
def test_the_most_common_misconception_is_ranked_first(out, report, question):
    ranked = report["questions"][f"{NAME}/{question}"]
    assert ranked, question
    common = set.intersection(*(_messages(out, s, question) for s in COMMON[question]))
    assert ranked[0]["message"] in common, ranked
    for row in ranked:  # each count is the number of submissions that got the message
        assert row["count"] == sum(row["message"] in _messages(out, s, question)
                                   for s in [*CLASS, "full"]), row
    counts = [r["count"] for r in ranked]
    assert counts == sorted(counts, reverse=True)


def test_the_report_opens_offline_with_its_figure(out, report):
    assert report["figure"]
    assert "None: every submission ran cleanly." in (out / "report.html").read_text()  # nothing to look at
    assert all(u.startswith("http://127.0.0.1:") for u in report["requests"]), report["requests"]


def test_one_of_five_shows_as_not_submitted_for_the_other_four_everywhere(out, report):
    grades = {(r["student"], r["assignment"]): r for r in read_csv(out / "grades.csv")}
    status = {(r["student"], r["assignment"]): r for r in read_csv(out / "report.csv")}
    for other in OTHERS:
        for table in (grades, status):
            row = table[("s4", other)]
            assert row["status"] == "not submitted" and row["score"] == "", row
        assert "s4" in report["absent"][other].split(", ")
    assert grades[("s4", NAME)]["status"] == "graded" and grades[("s4", NAME)]["score"] != ""
    assert "s4" not in report["absent"][NAME]
    assert not any(r["student"] == "s4" and r["assignment"] != NAME
                   for r in read_csv(out / "questions.csv"))
    with open(out / "grades_wide.csv", newline="") as f:
        rows = list(csv.reader(f))
    header = [h.split(" ")[0] for h in rows[0][:-1]]  # the last column: written answers not marked yet
    assert header == ["student", *ASSIGNMENTS] and rows[0][-1] == "waiting for manual grading"
    wide = {r[0]: dict(zip(header[1:], r[1:])) for r in rows[1:]}
    assert wide["s4"][NAME] != "" and all(wide["s4"][a] == "" for a in OTHERS)
    assert all(wide["full"][a] != "" for a in ASSIGNMENTS)
    # the figure: the four count as not submitted, and do not pull the means down
    panels = {p.assignment: p for p in write_figure(out, load_results(out))}
    for other in OTHERS:
        assert (panels[other].submitted, panels[other].not_submitted) == (1, 4)
        assert all(mean == 1.0 for mean in panels[other].means.values())
    assert panels[NAME].submitted == 5


def test_the_gradebook_has_no_submission_for_what_was_not_handed_in(out):
    import os
    import sys

    from nbgrader.api import Gradebook, MissingEntry

    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        assert gb.find_submission(NAME, "s4").score < gb.find_submission(NAME, "full").score
        with pytest.raises(MissingEntry):
            gb.find_submission(OTHERS[0], "s4")


def test_a_notebook_that_could_not_run_is_no_misconception():
    """Its reason (missing, unreadable) is in every test's message, but the ranking counts runs only."""
    from qkv_grading.judge import empty_result
    from qkv_grading.report import failure_ranking
    from qkv_grading.results import Result, tests_of
    from qkv_grading.spec import load_spec

    spec = load_spec(ROOT, NAME)
    ran = Result(NAME, "graded", tests_of(spec, message="holds 3 pair(s) that should not be there"),
                 spec.max_score, student="s1")
    broken = empty_result(spec, "unreadable", "04_cache_notation.ipynb is not a readable notebook")
    broken.student = "s2"
    missing = empty_result(spec, "missing", "no notebook 04_cache_notation.ipynb in the submission")
    missing.student = "s3"
    question = spec.tests[0]["question"]
    assert failure_ranking([ran, broken, missing], NAME, question) == [
        ("holds 3 pair(s) that should not be there", ["s1"])]
    assert broken.needs_a_look() and missing.needs_a_look()
