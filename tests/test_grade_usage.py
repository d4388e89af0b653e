"""`qkv grade` used the wrong way: an unknown --assignment, a folder one level too deep, --out inside the
submissions; and a run summary whose numbers say what they count."""

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
