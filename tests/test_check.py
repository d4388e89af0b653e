"""`qkv check NOTEBOOK`, a learner's self-check, through the command line's entry point (real kernels)."""

import re
from pathlib import Path

import nbformat
import pytest

from grading_helpers import ROOT, filled, write_nb
from qkv_grading import cli
from qkv_grading.course import ASSIGNMENTS, read_notebook, release_path, source_path

pytestmark = pytest.mark.slow


def _questions(name: str) -> list[str]:
    cells = read_notebook(release_path(ROOT, name)).cells
    ids = [c.metadata["nbgrader"]["grade_id"] for c in cells if c.metadata["nbgrader"].get("grade")
           and not c.metadata["nbgrader"].get("solution")]  # a written answer is graded by hand
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
    assert re.search(r"^      q1_value: a component of output lies outside the range", out, flags=re.M)
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


# ---- issue 15: a learner's first hour ---------------------------------------------------------------------

def test_an_exercise_is_checked_by_its_name_from_anywhere_in_the_repository(tmp_path):
    import os
    import subprocess
    import sys

    qkv = Path(sys.executable).parent / "qkv"
    env = dict(os.environ, PATH=f"{qkv.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for cwd, given in [(ROOT / "book", "05_cached_decoding"), (ROOT, "05_cached_decoding.ipynb"),
                       (ROOT / "exercises" / "05_cached_decoding", "05_cached_decoding.ipynb")]:
        run = subprocess.run(["qkv", "check", given, "--timeout", "20"], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 1, (cwd, given, run.stderr)  # the blank released notebook: every question fails
        released = ROOT / "exercises" / "05_cached_decoding" / "05_cached_decoding.ipynb"
        mine = ROOT / "work" / "05_cached_decoding" / "05_cached_decoding.ipynb"  # a working copy, if made
        expected = released if cwd.name == "05_cached_decoding" or not mine.is_file() else mine
        assert run.stdout.startswith("05_cached_decoding: checking "), run.stdout
        assert (cwd / run.stdout.splitlines()[0].split("checking ", 1)[1]).resolve() == expected


def test_an_unknown_name_lists_the_exercises(capsys):
    code, out, err = _check(capsys, "06_no_such_exercise")
    assert code == 2 and "is not an exercise's name" in err and "01_weighted_average" in err


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_an_unsolved_notebook_gives_one_wording(capsys, tmp_path, name):
    """Whether an answer raises NotImplementedError or its name was never defined, the learner reads the same
    sentence."""
    path = write_nb(read_notebook(release_path(ROOT, name)), tmp_path / f"{name}.ipynb")
    code, out, _ = _check(capsys, path)
    messages = re.findall(r"^      q\d+_\w+: (.+)$", out, flags=re.M)
    assert code == 1 and messages
    for m in messages:
        assert re.fullmatch(r"\w+ is not written yet: write your answer where it says YOUR CODE HERE, run that "
                            r"cell, then this test", m), m


def _run_in_a_kernel(nb):
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=60, allow_errors=True, kernel_name="python3").execute()
    return {c.metadata["nbgrader"].get("grade_id"): c for c in nb.cells if c.cell_type == "code"}


def test_a_failing_test_in_the_learners_notebook_shows_its_message_alone():
    """In the learner's own kernel a failing test shows `AssertionError: message`, not the frames of the check
    helpers; the learner's own cells keep their traceback, and the cell still fails (an error output)."""
    nb = filled("01_weighted_average", {
        "q1_answer": "values = np.array([[2.0, 10.0], [4.0, 0.0], [8.0, 5.0]])\n"
                     "weights = np.array([0.2, 0.7, 0.1])\noutput = (weights[:, None] * values).sum(axis=1)",
        "q2_answer": "def weighted_average(values, weights):\n    return values[..., 0, :] / 0 + undefined_name"})
    cells = _run_in_a_kernel(nb)
    shape = [o for o in cells["q1_shape"].outputs if o.output_type == "error"]
    assert len(shape) == 1 and shape[0].ename == "AssertionError"
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(shape[0].traceback))
    assert text.splitlines() == [f"AssertionError: {shape[0].evalue}"], text
    assert shape[0].evalue.startswith("output has shape (3,), expected (2,)")
    # a probe's own failure (the learner's function raised) reads the same way
    example = [o for o in cells["q2_example"].outputs if o.output_type == "error"][0]
    assert len(example.traceback) == 1 and "weighted_average raised NameError" in example.evalue
    # a learner's own error, outside a test cell, keeps IPython's full traceback
    own = nbformat.v4.new_code_cell("def f():\n    assert 1 == 2, 'mine'\nf()")
    own.metadata["nbgrader"] = {}
    nb.cells.append(own)
    cells = _run_in_a_kernel(nb)
    mine = [o for o in nb.cells[-1].outputs if o.output_type == "error"][0]
    assert mine.evalue == "mine" and len(mine.traceback) > 1


def test_q1_value_says_what_it_checks(capsys, tmp_path):
    """Its visible part checks each component's range, says so when that fails, and says the exact value is
    checked when graded."""
    name = "01_weighted_average"
    cells = _run_in_a_kernel(filled(name, {"q1_answer": _Q1_ANSWER + "output = np.array([9.0, 2.5])"}))
    error = [o for o in cells["q1_value"].outputs if o.output_type == "error"][0]
    assert "between 2 and 8" in error.evalue and "between 0 and 10" in error.evalue
    within = _run_in_a_kernel(filled(name, {"q1_answer": _Q1_ANSWER + "output = weights[::-1] @ values"}))
    printed = "".join(o.get("text", "") for o in within["q1_value"].outputs)
    assert "checked when graded: the exact value of output" in printed
    assert not [o for o in within["q1_value"].outputs if o.output_type == "error"]


_Q1_ANSWER = "values = np.array([[2.0, 10.0], [4.0, 0.0], [8.0, 5.0]])\nweights = np.array([0.2, 0.7, 0.1])\n"
