"""`qkv grade` on one shared batch of submissions (real nbgrader gradebook, real kernels).

The batch: every solution notebook as is and as a learner would fill it in, every blank released notebook,
one learner per misconception, and the bad inputs. It is graded once with two workers; the tests assert on
the result, then re-grade parts of it to check one worker agrees and that re-running loses nothing.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from grading_helpers import (BAD, MISCONCEPTIONS, ROOT, bad_inputs, filled, misconception_student, question_scores,
                             read_csv, submit)
from qkv.grading.course import ASSIGNMENTS, read_notebook, source_path
from qkv.grading.grade import grade

pytestmark = pytest.mark.slow

TIMEOUT = 5.0
FULL = {"01_weighted_average": 10, "02_qkv_roles": 8, "03_zeroed_values": 7, "04_cache_notation": 7,
        "05_cached_decoding": 11}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    subs = tmp_path_factory.mktemp("submissions")
    for name in ASSIGNMENTS:
        submit(subs, "sol_asis", name, read_notebook(source_path(ROOT, name)))
        submit(subs, "sol_filled", name, filled(name))
        submit(subs, "blank", name, filled(name, blank=True))
    for k, (name, _, _, answers) in enumerate(MISCONCEPTIONS):
        submit(subs, misconception_student(k), name, filled(name, answers))
    expected_bad = bad_inputs(subs)
    (subs / "README.txt").write_text("a stray file at the top")
    out = tmp_path_factory.mktemp("graded")
    results = grade(subs, out, ROOT, workers=2, timeout=TIMEOUT, progress=False)
    grades = {(r["student"], r["assignment"]): r for r in read_csv(out / "grades.csv")}
    report = read_csv(out / "report.csv")
    return {"subs": subs, "out": out, "results": results, "grades": grades, "report": report,
            "questions": question_scores(out), "bad": expected_bad}


def _score(batch, student, name):
    row = batch["grades"][(student, name)]
    return float(row["score"]), float(row["max_score"])


@pytest.mark.parametrize("name", ASSIGNMENTS)
@pytest.mark.parametrize("student", ["sol_asis", "sol_filled"])
def test_solutions_score_full_marks(batch, student, name):
    assert _score(batch, student, name) == (FULL[name], FULL[name])


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_blank_notebooks_score_zero(batch, name):
    assert _score(batch, "blank", name) == (0, FULL[name])


@pytest.mark.parametrize("k", range(len(MISCONCEPTIONS)), ids=[m[2] for m in MISCONCEPTIONS])
def test_misconception_loses_points_on_its_question_only(batch, k):
    name, question, label, _ = MISCONCEPTIONS[k]
    per_q = batch["questions"][(misconception_student(k), name)]
    score, full = per_q[question]
    assert score < full, f"{label}: full marks on {question}"
    for q, (s, m) in per_q.items():
        if q != question:
            assert s == m, f"{label}: lost points on {q} too"


def test_library_call_policy_gives_zero_for_that_question(batch):
    k = next(i for i, m in enumerate(MISCONCEPTIONS) if "library" in m[2])
    per_q = batch["questions"][(misconception_student(k), MISCONCEPTIONS[k][0])]
    assert per_q["q2"][0] == 0
    record = json.loads((batch["out"] / "results" / misconception_student(k) / "01_weighted_average.json").read_text())
    assert any("course library" in t["message"] for t in record["tests"] if t["question"] == "q2")


def test_bad_inputs_get_their_score_and_a_reason(batch):
    report = {(r["student"], r["assignment"]): r for r in batch["report"] if r["status"] != "ignored"}
    for student, exp in batch["bad"].items():
        row = report[(student, BAD)]
        assert float(row["score"]) == exp["score"], (student, row)
        assert row["status"] == exp["status"], (student, row)
        if exp.get("note"):
            assert exp["note"] in row["notes"], (student, row["notes"])
        for q, s in exp.get("q", {}).items():
            assert batch["questions"][(student, BAD)][q][0] == s, (student, q)


def test_ignored_files_are_listed(batch):
    ignored = " ".join(r["notes"] for r in batch["report"] if r["status"] == "ignored")
    assert "README.txt" in ignored and "scratch.txt" in ignored and "99_unknown" in ignored


def test_every_submission_has_feedback_without_hidden_code(batch):
    for (student, name) in batch["grades"]:
        page = (batch["out"] / "feedback" / student / f"{name}.html").read_text()
        assert "Score:" in page
        assert "HIDDEN TESTS" not in page and "rng(101)" not in page and "test_rng(" not in page
    wrong = (batch["out"] / "feedback" / misconception_student(1) / "01_weighted_average.html").read_text()
    assert "right shape but wrong values" in wrong  # the hidden test's message is shown


def test_gradebook_agrees_with_grades_csv(batch):
    from nbgrader.api import Gradebook

    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    with Gradebook(f"sqlite:///{batch['out'] / 'gradebook.db'}") as gb:
        for (student, name), row in batch["grades"].items():
            sub = gb.find_submission(name, student)
            assert sub.score == float(row["score"]) and sub.max_score == float(row["max_score"])


def test_report_figure_and_question_table(batch):
    png = batch["out"] / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = (batch["out"] / "questions.csv").read_text().splitlines()[0]
    assert header == "student,assignment,question,score,max_score"
    assert (batch["out"] / "grades.csv").read_text().splitlines()[0] == "student,assignment,score,max_score"


def test_one_worker_gives_the_same_grades(batch, tmp_path):
    subs = tmp_path / "subs"
    chosen = ["sol_filled", "blank", misconception_student(3), "os_exit", "stripped_no_ids", "missing_nb"]
    for student in chosen:
        shutil.copytree(batch["subs"] / student, subs / student)
    grade(subs, tmp_path / "out", ROOT, workers=1, timeout=TIMEOUT, progress=False)
    one = {(r["student"], r["assignment"]): r for r in read_csv(tmp_path / "out" / "grades.csv")}
    assert one and all(one[key] == batch["grades"][key] for key in one)


def test_rerun_keeps_everything_and_counts_nothing_twice(batch, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(batch["out"], out)
    subs = tmp_path / "subs"
    shutil.copytree(batch["subs"] / "blank", subs / "blank")
    # blank now hands in a solution for 01; the other graded submissions are not even in this folder
    submit(subs, "blank", "01_weighted_average", filled("01_weighted_average"))
    results = grade(subs, out, ROOT, workers=1, timeout=TIMEOUT, progress=False)
    rows = {(r["student"], r["assignment"]): r for r in read_csv(out / "grades.csv")}
    assert len(rows) == len(batch["grades"]) == len(results)
    assert float(rows[("blank", "01_weighted_average")]["score"]) == 10
    for key, row in batch["grades"].items():
        if key != ("blank", "01_weighted_average"):
            assert rows[key] == row
    # unchanged submissions were not executed again
    record = json.loads((out / "results" / "blank" / "02_qkv_roles.json").read_text())
    assert record == json.loads((batch["out"] / "results" / "blank" / "02_qkv_roles.json").read_text())


def test_cli_grade_writes_the_outputs(tmp_path):
    subs = tmp_path / "subs"
    submit(subs, "ada", "04_cache_notation", filled("04_cache_notation"))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "qkv.cli", "grade", str(subs), "--out", str(out), "--workers", "1",
                           "--timeout", "20", "--no-progress"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "grades.csv") as f:
        assert list(csv.reader(f)) == [["student", "assignment", "score", "max_score"],
                                       ["ada", "04_cache_notation", "7", "7"]]
