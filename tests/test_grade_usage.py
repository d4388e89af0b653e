"""`qkv grade` used the wrong way: an unknown --assignment, a folder one level too deep, --out inside the
submissions, a roster with a row it cannot read; and a run summary whose numbers say what they count."""

import pytest

from grading_helpers import ROOT, filled, read_csv, submit
from qkv_grading import cli
from qkv_grading.course import ASSIGNMENTS


def _grade(subs, out, *more):
    return cli.main(["grade", str(subs), "--out", str(out), "--root", str(ROOT), "--no-progress",
                     "--timeout", "20", *more])


def test_an_unknown_assignment_stops_before_grading(tmp_path, capsys):
    subs, out = tmp_path / "subs", tmp_path / "out"
    submit(subs, "ada", ASSIGNMENTS[0], filled(ASSIGNMENTS[0]))
    assert _grade(subs, out, "--assignment", "01_weighted", "--assignment", ASSIGNMENTS[1]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qkv grade: ") and "01_weighted" in err and "01_weighted_average" in err
    assert all(name in err for name in ASSIGNMENTS) and ASSIGNMENTS[1] + " " not in err.split(";")[0]
    assert not out.exists()


def test_out_inside_the_submissions_is_refused(tmp_path, capsys):
    subs = tmp_path / "subs"
    submit(subs, "ada", ASSIGNMENTS[0], filled(ASSIGNMENTS[0]))
    for out in (subs / "graded", subs):
        assert _grade(subs, out) == 2
        err = capsys.readouterr().err
        assert err.startswith("qkv grade: --out ") and "inside the submissions folder" in err
    assert sorted(p.name for p in subs.iterdir()) == ["ada"]


ROSTER = "Student ID,Name,Email,LMS ID\nada,Ada King Lovelace,ada@example.org,u-1\n"


@pytest.mark.parametrize("row, said", [
    ("bob,Bob,bob@example.org", "row 4: 3 field(s), but row 1 names 4 columns"),
    (",Bob,bob@example.org,u-2", "row 4: no student id"),
    ("ada,Ada Again,ada2@example.org,u-3", "row 4: student id 'ada' is already in row 2"),
    ("bob,Bob,bob at example.org,u-2", "row 4: email 'bob at example.org' is not an email address"),
    ("../bob,Bob,bob@example.org,u-2", "row 4: student id '../bob' cannot be a folder's name"),
])
def test_a_roster_row_that_cannot_be_read_stops_before_grading_and_is_named(tmp_path, capsys, row, said):
    subs, out, roster = tmp_path / "subs", tmp_path / "out", tmp_path / "roster.csv"
    submit(subs, "ada", ASSIGNMENTS[0], filled(ASSIGNMENTS[0]))
    roster.write_text(ROSTER + "\n" + row + "\n")  # row 3 is blank: skipped, and counted as a spreadsheet does
    assert _grade(subs, out, "--roster", str(roster)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"qkv grade: --roster: {roster} ") and said in err, err
    assert not out.exists()


def test_a_roster_with_an_unknown_column_names_the_columns_it_reads(tmp_path, capsys):
    subs, roster = tmp_path / "subs", tmp_path / "roster.csv"
    subs.mkdir()
    roster.write_text("id,phone\nada,555\n")
    assert _grade(subs, tmp_path / "out", "--roster", str(roster)) == 2
    err = capsys.readouterr().err
    assert f"{roster} row 1: unknown column(s) 'phone'" in err and "id, first_name, last_name, email" in err


@pytest.mark.parametrize("folder", ["one student's folder", "solutions"])
def test_a_folder_one_level_too_deep_says_so(tmp_path, capsys, folder):
    subs, out = tmp_path / "subs", tmp_path / "out"
    if folder == "solutions":
        subs = ROOT / "solutions"
    else:
        for name in ASSIGNMENTS[:2]:
            submit(subs, "ada", name, filled(name))
        subs = subs / "ada"
    assert _grade(subs, out) == 2
    err = capsys.readouterr().err
    assert "nothing to grade" in err and "<student>/<assignment>/<assignment>.ipynb" in err
    assert "one student's folder" in err and str(subs.parent) in err
    ignored = {r["path"]: r["reason"] for r in read_csv(out / "ignored.csv")}
    reason = ignored[f"{ASSIGNMENTS[0]}/{ASSIGNMENTS[0]}.ipynb"]
    assert "not an assignment of this course" not in reason
    assert "SUBMISSIONS/<student>/<assignment>/<assignment>.ipynb" in reason and "one student's" in reason


@pytest.mark.slow
def test_the_summary_counts_notebooks_and_work_not_submitted_apart(tmp_path, capsys):
    subs, out = tmp_path / "subs", tmp_path / "out"
    submit(subs, "ada", ASSIGNMENTS[0], filled(ASSIGNMENTS[0]))
    submit(subs, "bob", ASSIGNMENTS[1], filled(ASSIGNMENTS[1]))
    submit(subs, "cy", ASSIGNMENTS[1], filled(ASSIGNMENTS[1]))
    assert _grade(subs, out, "--workers", "1") == 0
    summary = capsys.readouterr().out
    assert "3 notebook(s) graded now, 3 not submitted, 0 unchanged since the last run" in summary, summary
    submit(subs, "cy", ASSIGNMENTS[0], filled(ASSIGNMENTS[0], blank=True))
    assert _grade(subs, out, "--workers", "1") == 0
    summary = capsys.readouterr().out
    assert "1 notebook(s) graded now, 0 not submitted, 5 unchanged since the last run" in summary, summary


@pytest.mark.slow
def test_a_stopped_run_counts_the_notebooks_left(tmp_path, capsys, monkeypatch):
    from qkv_grading import grade

    subs, out = tmp_path / "subs", tmp_path / "out"
    submit(subs, "ada", ASSIGNMENTS[0], filled(ASSIGNMENTS[0]))
    submit(subs, "bob", ASSIGNMENTS[1], filled(ASSIGNMENTS[1]))
    submit(subs, "cy", ASSIGNMENTS[1], filled(ASSIGNMENTS[1]))
    written = []

    def stop_at_the_second(*args):  # Ctrl-C while the second notebook's feedback is written
        written.append(args)
        if len(written) == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(grade, "write_feedback", stop_at_the_second)
    assert _grade(subs, out, "--workers", "1") == 130
    err = capsys.readouterr().err
    assert "1 notebook(s) graded this run are recorded" in err and "2 notebook(s) were not graded" in err, err
