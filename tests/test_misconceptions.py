"""Every question fails the misconceptions it is about, and gives full marks to valid answers written
differently from the solution.

One submissions folder holds a learner per misconception and per valid alternative (the catalogue in
``grading_helpers``), plus the solution; it is graded in one ``qkv grade`` run, where the learner's code runs
in its kernel and the checks run in the grader. Slow: about a hundred notebooks.
"""

from __future__ import annotations

from collections import Counter

import pytest

from grading_helpers import (ALTERNATIVES, MISCONCEPTIONS, ROOT, alternative_student, filled,
                             misconception_student, question_scores, read_csv, submit)
from qkv_grading.course import ASSIGNMENTS
from qkv_grading.grade import grade

pytestmark = pytest.mark.slow

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    subs = tmp_path_factory.mktemp("submissions")
    for name in ASSIGNMENTS:
        submit(subs, "solution", name, filled(name))
    for k, (name, _, _, answers) in enumerate(MISCONCEPTIONS):
        submit(subs, misconception_student(k), name, filled(name, answers))
    for k, (name, _, _, answers) in enumerate(ALTERNATIVES):
        submit(subs, alternative_student(k), name, filled(name, answers))
    out = tmp_path_factory.mktemp("graded")
    grade(subs, out, ROOT, workers=2, timeout=TIMEOUT, progress=False)
    submitted = {(p.parts[-3], p.parts[-2]) for p in subs.glob("*/*/*.ipynb")}
    return {"questions": question_scores(out), "report": read_csv(out / "report.csv"), "submitted": submitted}


def _questions(name: str) -> set[str]:
    return {q for n, q, _, _ in MISCONCEPTIONS if n == name}


def test_the_catalogue_covers_every_question():
    """At least two misconceptions and one valid alternative for each question of each assignment."""
    wrong = Counter((n, q) for n, q, _, _ in MISCONCEPTIONS)
    valid = Counter((n, q) for n, q, _, _ in ALTERNATIVES)
    for name in ASSIGNMENTS:
        answer_cells = [c for c in filled(name).cells if c.metadata.get("nbgrader", {}).get("solution")]
        questions = {c.metadata["nbgrader"]["grade_id"].split("_")[0] for c in answer_cells}
        for q in sorted(questions):
            assert wrong[name, q] >= 2, f"{name} {q}: fewer than two misconceptions"
            assert valid[name, q] >= 1, f"{name} {q}: no valid alternative"


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_the_solution_scores_full_marks(graded, name):
    for q, (score, full) in graded["questions"][("solution", name)].items():
        assert score == full, f"the solution loses points on {name} {q}"


@pytest.mark.parametrize("k", range(len(MISCONCEPTIONS)), ids=[f"{m[0][:2]}{m[1]}-{m[2]}" for m in MISCONCEPTIONS])
def test_a_misconception_loses_points_on_its_question_only(graded, k):
    name, question, label, _ = MISCONCEPTIONS[k]
    per_q = graded["questions"][(misconception_student(k), name)]
    score, full = per_q[question]
    assert score < full, f"{label}: full marks on {name} {question}"
    for q, (s, m) in per_q.items():
        if q != question:
            assert s == m, f"{label}: lost points on {q} too"


@pytest.mark.parametrize("k", range(len(ALTERNATIVES)), ids=[f"{m[0][:2]}{m[1]}-{m[2]}" for m in ALTERNATIVES])
def test_a_valid_alternative_scores_full_marks(graded, k):
    name, question, label, _ = ALTERNATIVES[k]
    for q, (score, full) in graded["questions"][(alternative_student(k), name)].items():
        assert score == full, f"{label}: {score} of {full} on {name} {q}"


def test_every_submission_was_graded(graded):
    """Each notebook ran to the end (a kernel that died or timed out would make a score mean nothing)."""
    status = {(r["student"], r["assignment"]): r for r in graded["report"]}
    for key in sorted(graded["submitted"]):
        assert status[key]["status"] == "graded" and not status[key]["notes"], status[key]
