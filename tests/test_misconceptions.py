"""Every question fails the misconceptions it is about, and gives full marks to valid answers written
differently from the solution.

The catalogue (``grading_helpers``) holds wrong answers and valid alternatives, each for one question. To
grade it in one ``qkv grade`` run of a few dozen notebooks rather than one notebook per entry, the entries
are packed: a learner's notebook holds, for each question of an assignment, at most one entry of the
catalogue (round r takes the r-th entry of every question), and the solution everywhere else. A packed
misconception must lose points on its own question; a question of that notebook without a misconception
must keep full marks, and every question of a notebook of alternatives gets full marks. Slow.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from grading_helpers import (ALTERNATIVES, MISCONCEPTIONS, ROOT, filled, question_scores, read_csv,
                             submit)
from qkv_grading.course import ASSIGNMENTS
from qkv_grading.grade import grade

pytestmark = pytest.mark.slow

TIMEOUT = 10.0


def rounds(table) -> dict[int, tuple[str, str]]:
    """Entry index -> the (student, assignment) of the packed notebook that holds it."""
    seen: Counter = Counter()
    where = {}
    for k, (name, question, _, _) in enumerate(table):
        where[k] = (seen[name, question], name)
        seen[name, question] += 1
    return where


def _packed(table, kind: str):
    notebooks: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    questions: dict[tuple[str, str], set[str]] = defaultdict(set)
    for k, (r, name) in rounds(table).items():
        student = f"{kind}{r:02d}"
        notebooks[student, name].update(table[k][3])
        questions[student, name].add(table[k][1])
    return notebooks, questions


def student_of(table, kind: str, k: int) -> tuple[str, str]:
    r, name = rounds(table)[k]
    return f"{kind}{r:02d}", name


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    subs = tmp_path_factory.mktemp("submissions")
    for name in ASSIGNMENTS:
        submit(subs, "solution", name, filled(name))
    packed = {}
    for kind, table in (("wrong", MISCONCEPTIONS), ("valid", ALTERNATIVES)):
        notebooks, questions = _packed(table, kind)
        for (student, name), answers in notebooks.items():
            submit(subs, student, name, filled(name, answers))
        packed.update(questions)
    out = tmp_path_factory.mktemp("graded")
    grade(subs, out, ROOT, workers=2, timeout=TIMEOUT, progress=False)
    submitted = {(p.parts[-3], p.parts[-2]) for p in subs.glob("*/*/*.ipynb")}
    return {"questions": question_scores(out), "report": read_csv(out / "report.csv"), "submitted": submitted,
            "packed": packed}


def _auto_questions(name: str) -> set[str]:
    """The questions of an assignment that are graded automatically (a written answer, graded by hand, is
    no misconception's place)."""
    cells = [c for c in filled(name).cells if c.metadata.get("nbgrader", {}).get("solution")
             and c.cell_type == "code"]
    return {c.metadata["nbgrader"]["grade_id"].split("_")[0] for c in cells}


def test_the_catalogue_covers_every_question():
    """At least two misconceptions and one valid alternative for each question of each assignment."""
    wrong = Counter((n, q) for n, q, _, _ in MISCONCEPTIONS)
    valid = Counter((n, q) for n, q, _, _ in ALTERNATIVES)
    for name in ASSIGNMENTS:
        for q in sorted(_auto_questions(name)):
            assert wrong[name, q] >= 2, f"{name} {q}: fewer than two misconceptions"
            assert valid[name, q] >= 1, f"{name} {q}: no valid alternative"


def test_an_entry_answers_its_own_question_only():
    """Packing needs each entry to replace its own question's answer cells and no other."""
    for name, question, label, answers in MISCONCEPTIONS + ALTERNATIVES:
        assert all(cell.split("_")[0] == question for cell in answers), f"{label}: answers {sorted(answers)}"


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_the_solution_scores_full_marks(graded, name):
    for q, (score, full) in graded["questions"][("solution", name)].items():
        assert score == full, f"the solution loses points on {name} {q}"


@pytest.mark.parametrize("k", range(len(MISCONCEPTIONS)), ids=[f"{m[0][:2]}{m[1]}-{m[2]}" for m in MISCONCEPTIONS])
def test_a_misconception_loses_points_on_its_question(graded, k):
    name, question, label, _ = MISCONCEPTIONS[k]
    key = student_of(MISCONCEPTIONS, "wrong", k)
    per_q = graded["questions"][key]
    score, full = per_q[question]
    assert score < full, f"{label}: full marks on {name} {question}"
    for q, (s, m) in per_q.items():
        if q not in graded["packed"][key]:
            assert s == m, f"{label} (packed in {key[0]}): lost points on {q}, which holds the solution"


@pytest.mark.parametrize("k", range(len(ALTERNATIVES)), ids=[f"{m[0][:2]}{m[1]}-{m[2]}" for m in ALTERNATIVES])
def test_a_valid_alternative_scores_full_marks(graded, k):
    name, question, label, _ = ALTERNATIVES[k]
    for q, (score, full) in graded["questions"][student_of(ALTERNATIVES, "valid", k)].items():
        assert score == full, f"{label}: {score} of {full} on {name} {q}"


def test_every_submission_was_graded(graded):
    """Each notebook ran to the end (a kernel that died or timed out would make a score mean nothing)."""
    status = {(r["student"], r["assignment"]): r for r in graded["report"]}
    for key in sorted(graded["submitted"]):
        assert status[key]["status"] == "graded" and not status[key]["notes"], status[key]
