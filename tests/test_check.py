"""`qkv check NOTEBOOK`, a learner's self-check, through the command line's entry point (real kernels)."""

import re

import nbformat
import pytest

from grading_helpers import ROOT, filled, write_nb
from qkv_grading import cli
from qkv_grading.course import ASSIGNMENTS, read_notebook, release_path, source_path

pytestmark = pytest.mark.slow


def _questions(name: str) -> list[str]:
    cells = read_notebook(release_path(ROOT, name)).cells
    ids = [c.metadata["nbgrader"]["grade_id"] for c in cells if c.metadata["nbgrader"].get("grade")]
    return sorted({gid.split("_")[0] for gid in ids})


def _check(capsys, path, *extra) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["check", str(path), "--timeout", "20", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def _verdicts(out: str) -> dict[str, str]:
    """question -> 'passed' or 'FAILED', from the report's lines such as `  q2: passed (...)`."""
    return dict(re.findall(r"^  (q\d+): (passed|FAILED)", out, flags=re.M))


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_a_solved_notebook_passes_every_question(capsys, tmp_path, name):
    path = write_nb(filled(name), tmp_path / f"{name}.ipynb")
    code, out, _ = _check(capsys, path)
    assert code == 0, out
    assert _verdicts(out) == {q: "passed" for q in _questions(name)}
    assert "note:" not in out and "all visible tests passed" in out


def test_the_instructors_solution_passes_too(capsys):
    code, out, _ = _check(capsys, source_path(ROOT, "05_cached_decoding"))
    assert code == 0, out
    assert _verdicts(out) == {q: "passed" for q in _questions("05_cached_decoding")}


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_the_blank_released_notebook_fails_every_question_with_a_message(capsys, tmp_path, name):
    path = write_nb(read_notebook(release_path(ROOT, name)), tmp_path / f"{name}.ipynb")
    code, out, _ = _check(capsys, path)
    assert code == 1, out
    assert _verdicts(out) == {q: "FAILED" for q in _questions(name)}
    for q in _questions(name):  # under each failed question: `      q1_form: the message`
        messages = re.findall(rf"^      {q}_\w+: (.+)$", out, flags=re.M)
        assert messages and all(m.strip() for m in messages), (q, out)
    assert re.search(r"^\d+ test\(s\) failed$", out, flags=re.M)


def _edited(name: str, gid: str, source: str | None) -> nbformat.NotebookNode:
    """The solved notebook with test cell ``gid`` deleted (``source=None``) or rewritten."""
    nb = filled(name, {"q1_answer": "values = np.array([[2.0, 10.0], [4.0, 0.0], [8.0, 5.0]])\n"
                                     "weights = np.array([0.2, 0.7, 0.1])\n"
                                     "output = 10 * weights @ values"})
    if source is None:
        nb.cells = [c for c in nb.cells if c.metadata["nbgrader"].get("grade_id") != gid]
    else:
        next(c for c in nb.cells if c.metadata["nbgrader"].get("grade_id") == gid).source = source
    return nb


@pytest.mark.parametrize("edit", ["deleted", "edited"])
def test_a_deleted_or_edited_test_cell_is_reported_and_restored(capsys, tmp_path, edit):
    # q1 is wrong (ten times too large), and q1_value, the test that would catch it, is deleted or made to
    # pass: the released test runs all the same and catches it
    name = "01_weighted_average"
    path = write_nb(_edited(name, "q1_value", None if edit == "deleted" else "pass"), tmp_path / f"{name}.ipynb")
    code, out, _ = _check(capsys, path)
    assert f"note: locked cell q1_value was {edit}; restored" in out
    assert code == 1 and _verdicts(out)["q1"] == "FAILED"
    assert re.search(r"^      q1_value: each component of a weighted average", out, flags=re.M)
    assert _verdicts(out)["q2"] == _verdicts(out)["q3"] == "passed"


def test_not_a_notebook_is_a_clear_error(capsys, tmp_path):
    path = tmp_path / "01_weighted_average.ipynb"
    path.write_text("this is not JSON {")
    code, out, err = _check(capsys, path)
    assert code == 2 and out == ""
    assert "is not a readable notebook" in err and str(path) in err


def test_a_missing_file_is_a_clear_error(capsys, tmp_path):
    code, out, err = _check(capsys, tmp_path / "nothing_here.ipynb")
    assert code == 2 and out == ""
    assert "no such file" in err and "nothing_here.ipynb" in err


def test_an_unknown_exercise_is_a_clear_error(capsys, tmp_path):
    path = write_nb(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# my notes")]),
                    tmp_path / "notes.ipynb")
    code, out, err = _check(capsys, path)
    assert code == 2 and "cannot tell which exercise" in err and "--assignment" in err
    code, out, _ = _check(capsys, path, "--assignment", "03_zeroed_values")  # told which: every question fails
    assert code == 1 and set(_verdicts(out).values()) == {"FAILED"}
