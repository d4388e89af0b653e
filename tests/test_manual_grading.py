"""Written answers round trip: `qkv grade` leaves them for the instructor, the formgrader's marks (set
through nbgrader's gradebook API, as its grade handler sets them) survive a second `qkv grade`, and
`nbgrader export` reads the totals, with the time `nbgrader collect` recorded. The third run, `qkv grade
--roster` as typed, also puts the students' names, email and LMS id in the gradebook and in
grades_wide.csv. Slow: two kernels."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from grading_helpers import ROOT, filled, question_scores, read_csv, submit
from qkv_grading import cli
from qkv_grading.grade import grade
from qkv_grading.spec import load_spec

pytestmark = pytest.mark.slow

NAME = "04_cache_notation"
ANSWER = "Later steps read k_j and v_j again; q_j is used once, at step j."
STAMPS = {"ada": "2026-11-20 09:15:02.123456 UTC", "bob": "2026-11-21 23:59:59.000001 UTC"}  # as collect writes
ROSTER = ("Student ID,Name,Email,LMS ID\n"  # a spreadsheet's headers; carol handed nothing in
          "ada,Ada King Lovelace,ada@example.org,lms-1\nbob,Bob,bob@example.org,lms-2\n"
          "carol,Carol Shaw,carol@example.org,lms-3\n")


def _gradebook(out):
    from nbgrader.api import Gradebook

    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    return Gradebook(f"sqlite:///{out / 'gradebook.db'}", course_id="qkv-course")


def _rows(out):
    return {r["student"]: r for r in read_csv(out / "grades.csv")}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    subs, out = tmp_path_factory.mktemp("subs"), tmp_path_factory.mktemp("out")
    spec = load_spec(ROOT, NAME)
    (written,) = spec.written
    submit(subs, "ada", NAME, filled(NAME, {written.id: ANSWER}))
    submit(subs, "bob", NAME, filled(NAME, {written.id: "I do not know."}))
    for student, stamp in STAMPS.items():
        (subs / student / NAME / "timestamp.txt").write_text(stamp)
    first = grade(subs, out, ROOT, workers=1, timeout=20, progress=False)
    before = {"grades": _rows(out), "questions": question_scores(out),
              "wide": list(csv.reader((out / "grades_wide.csv").read_text().splitlines())),
              "feedback": (out / "feedback" / "ada" / NAME / f"{NAME}.html").read_text(),
              "report": (out / "report.html").read_text()}
    with _gradebook(out) as gb:
        before["waiting"] = gb.find_submission_notebook(NAME, NAME, "ada").needs_manual_grade
        row = gb.find_grade(written.id, NAME, NAME, "ada")
        before["auto_score"] = row.auto_score
        # what the formgrader's grade handler does with a mark: apihandlers.GradeHandler.put
        row.manual_score = 1.5
        row.needs_manual_grade = row.manual_score is None and row.auto_score is None
        gb.db.commit()
    second = grade(subs, out, ROOT, workers=1, timeout=20, progress=False)
    after = {"grades": _rows(out), "questions": question_scores(out),
             "feedback": (out / "feedback" / "ada" / NAME / f"{NAME}.html").read_text(),
             "report": (out / "report.html").read_text()}
    # ada hands in again (an answer changed): regraded, and her mark is still hers; the instructor, as
    # they type it, gives the class roster this time
    submit(subs, "ada", NAME, filled(NAME, {written.id: ANSWER + " Edited.", "q2_answer": 'notation_answer = "A"'}))
    roster = subs.parent / "roster.csv"
    roster.write_text(ROSTER)
    with_roster = cli.main(["grade", str(subs), "--out", str(out), "--root", str(ROOT), "--no-progress",
                            "--timeout", "20", "--roster", str(roster)])
    regraded = _rows(out)
    wide = list(csv.DictReader((out / "grades_wide.csv").read_text().splitlines()))
    with _gradebook(out) as gb:
        students = {s.id: (s.first_name, s.last_name, s.email, s.lms_user_id) for s in gb.students}
    export = out / "export.csv"
    # from the output folder, where qkv grade wrote the nbgrader_config.py that names its gradebook
    proc = subprocess.run([sys.executable, "-m", "nbgrader", "export", f"--to={export}"],
                          cwd=out, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {"spec": spec, "written": written, "out": out, "before": before, "after": after,
            "first": first, "second": second, "regraded": regraded, "with_roster": with_roster,
            "wide_with_roster": wide, "students": students,
            "export": {r["student_id"]: r for r in read_csv(export) if r["assignment"] == NAME}}


def test_written_answers_wait_for_the_instructor_and_never_count_as_0(graded):
    spec, before = graded["spec"], graded["before"]
    ada = before["grades"]["ada"]
    assert ada["status"] == "graded" and float(ada["score"]) == spec.max_score
    assert float(ada["max_score"]) == spec.max_score and ada["waiting_manual"] == "2"
    q = graded["written"].question
    assert q not in before["questions"][("ada", NAME)]  # no row of 0 for a waiting answer
    assert before["wide"][0][-1] == "waiting for manual grading"
    assert f"{NAME} (2 points)" in before["wide"][1][-1]
    assert "waiting for your instructor" in before["feedback"] and "marked by your instructor" not in before["feedback"]
    assert "waiting for manual grading (2): <span class='waiting-manual'>ada, bob</span>" in before["report"]
    assert before["waiting"] and before["auto_score"] is None  # the formgrader lists it as to be graded
    autograded = graded["out"] / "autograded" / "ada" / NAME / f"{NAME}.ipynb"
    assert ANSWER in autograded.read_text()  # where the formgrader reads the answer it shows


def test_a_second_run_keeps_the_instructors_mark_and_counts_it(graded):
    spec, after = graded["spec"], graded["after"]
    assert graded["second"].executed == []  # nothing had changed: no kernel ran
    ada, bob = after["grades"]["ada"], after["grades"]["bob"]
    assert float(ada["score"]) == spec.max_score + 1.5 and float(ada["max_score"]) == spec.max_score + 2
    assert ada["waiting_manual"] == "0" and bob["waiting_manual"] == "2"
    assert after["questions"][("ada", NAME)][graded["written"].question] == (1.5, 2.0)
    assert "1.5 / 2, marked by your instructor" in after["feedback"]
    assert "waiting for manual grading (1): <span class='waiting-manual'>bob</span>" in after["report"]
    regraded = graded["regraded"]["ada"]  # handed in again with one wrong answer: the mark stays
    assert float(regraded["score"]) == spec.max_score - 1 + 1.5 and regraded["waiting_manual"] == "0"
    with _gradebook(graded["out"]) as gb:
        row = gb.find_grade(graded["written"].id, NAME, NAME, "ada")
        assert row.manual_score == 1.5 and not row.needs_manual_grade


def test_nbgrader_export_reads_the_totals(graded):
    spec, export = graded["spec"], graded["export"]
    assert float(export["ada"]["score"]) == spec.max_score - 1 + 1.5
    assert float(export["ada"]["max_score"]) == spec.max_score + 2
    assert float(export["bob"]["score"]) == spec.max_score


def test_the_collected_time_reaches_the_gradebook_and_nbgrader_export(graded):
    """`nbgrader export` shows the time in the timestamp.txt that `nbgrader collect` wrote (it was empty
    for every row), as nbgrader reads it: in UTC, without the zone's name."""
    for student, stamp in STAMPS.items():
        assert graded["export"][student]["timestamp"] == stamp.removesuffix(" UTC"), graded["export"][student]
        assert graded["regraded"][student]["timestamp"] == stamp  # grades.csv, as it was


def test_a_roster_fills_the_gradebooks_students_and_grades_wide(graded):
    assert graded["with_roster"] == 0
    assert graded["students"] == {"ada": ("Ada King", "Lovelace", "ada@example.org", "lms-1"),
                                  "bob": (None, "Bob", "bob@example.org", "lms-2"),
                                  "carol": ("Carol", "Shaw", "carol@example.org", "lms-3")}
    wide = {r["student"]: r for r in graded["wide_with_roster"]}
    assert list(graded["wide_with_roster"][0])[:5] == ["student", "first_name", "last_name", "email",
                                                       "lms_user_id"]
    assert wide["ada"]["email"] == "ada@example.org" and wide["ada"]["lms_user_id"] == "lms-1"
    column = next(c for c in wide["ada"] if c.startswith(NAME))
    assert float(wide["ada"][column]) == float(graded["regraded"]["ada"]["score"])
    assert wide["carol"][column] == "" and wide["carol"]["last_name"] == "Shaw"  # on the roster, not submitted


def test_the_formgrader_config_never_replaces_an_instructors_own(tmp_path):
    """A class folder's nbgrader_config.py (its exchange, its course id) survives `qkv grade --out .`;
    the one qkv grade wrote itself is rewritten for the gradebook it names."""
    from qkv_grading import manual

    own = tmp_path / "nbgrader_config.py"
    own.write_text('c = get_config()\nc.Exchange.root = "/srv/nbgrader/exchange"\n')
    assert manual.write_formgrader_config(tmp_path, "sqlite:///x.db") is None
    assert "Exchange.root" in own.read_text()
    own.unlink()
    assert manual.write_formgrader_config(tmp_path, "sqlite:///x.db") == own
    assert manual.write_formgrader_config(tmp_path, "sqlite:///y.db") == own  # ours: rewritten
    assert "sqlite:///y.db" in own.read_text() and "x.db" not in own.read_text()
