"""`qkv release`: exercises/ is generated from solutions/ deterministically, and --check notices drift."""

import re
import shutil

import pytest

from qkv_grading import release
from qkv_grading.course import ASSIGNMENTS, dumps, read_notebook, release_notebook, release_path, source_path
from grading_helpers import ROOT


class Args:
    def __init__(self, root, check, sync_only=True):
        self.root, self.check, self.sync_only = str(root), check, sync_only


def _copy_course(tmp_path):
    for folder in ("solutions", "exercises"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    shutil.copy(ROOT / "nbgrader_config.py", tmp_path / "nbgrader_config.py")
    return tmp_path


def test_check_passes_on_the_committed_tree(capsys):
    assert release.main(Args(ROOT, check=True)) == 0
    assert "in sync" in capsys.readouterr().out


def test_check_fails_after_a_solution_is_edited(tmp_path, capsys):
    course = _copy_course(tmp_path)
    src = source_path(course, "03_zeroed_values")
    src.write_text(src.read_text().replace("What changes, and what cannot change?", "What changes?"))
    assert release.main(Args(course, check=True)) == 1
    out = capsys.readouterr().out
    assert "changed   exercises/03_zeroed_values/03_zeroed_values.ipynb" in out
    assert release.main(Args(course, check=False)) == 0  # regenerating repairs it
    assert release.main(Args(course, check=True)) == 0


def test_check_notices_missing_and_extra_files(tmp_path, capsys):
    course = _copy_course(tmp_path)
    release_path(course, "01_weighted_average").unlink()
    (course / "exercises" / "stray.txt").write_text("x")
    assert release.main(Args(course, check=True)) == 1
    out = capsys.readouterr().out
    assert "missing   exercises/01_weighted_average" in out and "extra     exercises/stray.txt" in out


def test_release_is_deterministic(tmp_path):
    course = _copy_course(tmp_path)
    shutil.rmtree(course / "exercises")
    release.release(course)
    first = {p: p.read_bytes() for p in sorted((course / "exercises").rglob("*.ipynb"))}
    shutil.rmtree(course / "exercises")
    release.release(course)
    second = {p: p.read_bytes() for p in sorted((course / "exercises").rglob("*.ipynb"))}
    assert first == second and len(first) == len(ASSIGNMENTS)


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_released_notebook_hides_solutions_and_hidden_tests(name):
    released = read_notebook(release_path(ROOT, name))
    text = dumps(released)
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text
    source = read_notebook(source_path(ROOT, name))
    assert [c.get("id") for c in released.cells] == [c.get("id") for c in source.cells]
    for cell in released.cells:
        info = cell.metadata["nbgrader"]
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
        if info.get("solution") and cell.cell_type == "markdown":  # a written answer
            assert info.get("grade") and cell.source.strip() == "YOUR ANSWER HERE", info["grade_id"]
        elif info.get("solution"):
            assert "raise NotImplementedError()" in cell.source
        else:
            assert info["locked"] and cell.metadata.get("editable") is False, f"{info['grade_id']} is not locked"
    assert dumps(release_notebook(source)) == text


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_points_in_headings_match_the_test_cells(name):
    source = read_notebook(source_path(ROOT, name))
    stated, counted = {}, {}
    for cell in source.cells:
        info = cell.metadata["nbgrader"]
        m = re.search(r"## Question (\d+) \((\d+) points?(?:\)|, graded by hand\))", cell.source)
        if m:
            stated[f"q{m.group(1)}"] = int(m.group(2))
        if info.get("grade"):
            q = info["grade_id"].split("_")[0]
            counted[q] = counted.get(q, 0) + info["points"]
            if not info.get("solution"):  # a test cell (a written answer is graded by hand)
                assert cell.source.lstrip().startswith("# Test"), info["grade_id"]
    assert stated == counted
    assert all(n >= 1 for n in counted.values())
    # several tests per question wherever an automatically graded question has more than one point
    written = {c.metadata["nbgrader"]["grade_id"].split("_")[0] for c in source.cells
               if c.metadata["nbgrader"].get("grade") and c.metadata["nbgrader"].get("solution")}
    assert len(written) == 1, (name, written)  # each assignment ends with one written answer
    for q, pts in counted.items():
        n_tests = sum(1 for c in source.cells if c.metadata["nbgrader"].get("grade")
                      and c.metadata["nbgrader"]["grade_id"].startswith(q + "_"))
        assert q in written or pts == 1 or n_tests >= 2, (name, q)


def test_nbgrader_config_maps_source_and_release():
    text = (ROOT / "nbgrader_config.py").read_text()
    assert 'source_directory = "solutions"' in text and 'release_directory = "exercises"' in text


def _messages(source: str) -> str:
    """The text of every string in a cell's code (the messages its checks give), f-strings included."""
    import ast

    parts = [node.value for node in ast.walk(ast.parse(source))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    return " ".join(" ".join(parts).split())


# Hints that gave the answer away (found by an audit): a message says what is wrong, never what is right.
GIVEAWAYS = [
    ("02_qkv_roles", "q1_translation", ["the query asks the question", "compared with, the values"]),
    ("03_zeroed_values", "q3_number", ["scores are equal", "0.25", "1/4", "a quarter"]),
    ("03_zeroed_values", "q3_function", ["equal scores", "plain average", "uniform"]),
    ("04_cache_notation", "q1_hidden", ["from 1 to 3", "to tau", "1..3"]),
    ("04_cache_notation", "q3_step", ["the new one included", "count keys and values, for every head", "2 *"]),
    ("04_cache_notation", "q4_mha", ["2 *", "keys and values", "head_dim *"]),
    ("04_cache_notation", "q4_shared", ["groups key/value heads", "one head", "1 head"]),
    ("04_cache_notation", "q6_hidden", ["i + 1", "the next token", "[1:]"]),
    ("04_cache_notation", "q7_position", ["m + s", "padding does not count", "ignore the padding"]),
    ("04_cache_notation", "q7_slot", ["pad + m", "padding counts", "include the padding"]),
]


@pytest.mark.parametrize("name, gid, phrases", GIVEAWAYS, ids=[g[1] for g in GIVEAWAYS])
def test_hints_do_not_give_the_answer_away(name, gid, phrases):
    cell = next(c for c in read_notebook(source_path(ROOT, name)).cells
                if c.metadata["nbgrader"].get("grade_id") == gid)
    text = _messages(cell.source)
    assert text, gid
    for phrase in phrases:
        assert phrase not in text, (gid, phrase)
    assert "chapter" in text, f"{gid}: point the learner to the chapter that explains it"


def test_the_visible_test_of_the_cache_set_checks_its_form_not_its_size():
    released = read_notebook(release_path(ROOT, "04_cache_notation"))
    form = next(c for c in released.cells if c.metadata["nbgrader"]["grade_id"] == "q1_form")
    assert not re.search(r"len\(\s*pairs\s*\)\s*[=<>!]", form.source), form.source


# ---- issue 15: what a learner and an instructor meet ---------------------------------------------------

@pytest.mark.slow
def test_check_grades_every_solution_against_its_hidden_tests(tmp_path, capsys):
    """A hidden test whose expected value is wrong is found by `qkv release --check`, not in class."""
    course = _copy_course(tmp_path)
    assert release.main(Args(course, check=True, sync_only=False)) == 0
    assert "every solution gets full marks" in capsys.readouterr().out
    src = source_path(course, "01_weighted_average")
    text = src.read_text()
    broken = text.replace('check_close(got, w, f\\"weights_for for', 'check_close(got, w + 1e-3, f\\"weights_for for')
    assert broken != text
    src.write_text(broken)
    assert release.main(Args(course, check=False)) == 0  # in sync: the hidden part is not released
    capsys.readouterr()
    assert release.main(Args(course, check=True, sync_only=False)) == 1
    out = capsys.readouterr().out
    assert "in sync" in out and "01_weighted_average: the solution scores 8 of 10" in out
    assert re.search(r"^      q2_random: weights_for for 3 values of width 2", out, flags=re.M)


def test_nbgrader_knows_every_setting_of_the_config():
    """nbgrader 0.9 warns about settings it does not know (db_assignments was one) on every command."""
    import subprocess
    import sys
    from pathlib import Path

    nbgrader = Path(sys.executable).parent / "nbgrader"
    run = subprocess.run([str(nbgrader), "list"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "not recognized" not in run.stdout + run.stderr, run.stderr


def test_nbgrader_cell_timeout_is_the_one_qkv_uses():
    from traitlets.config.loader import PyFileConfigLoader

    from qkv_grading import check, grade

    config = PyFileConfigLoader("nbgrader_config.py", path=str(ROOT)).load_config()
    parser = __import__("argparse").ArgumentParser()
    check.configure(parser)
    assert config.Execute.timeout == grade.DEFAULT_TIMEOUT == parser.get_default("timeout")


def _checks_part(source: str) -> str:
    from qkv_grading.probe import split

    return split(source)[1]


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_a_visible_test_whose_checks_are_all_hidden_says_so(name):
    """Released, such a cell has nothing to check: it must print "checked when graded", never run green."""
    for cell in read_notebook(release_path(ROOT, name)).cells:
        if not cell.metadata["nbgrader"].get("grade"):
            continue
        lines = [ln.strip() for ln in _checks_part(cell.source).splitlines()]
        checks = [ln for ln in lines if ln and not ln.startswith(("#", "from ", "import ", "print("))]
        if not checks:
            assert 'print("checked when graded' in cell.source, cell.metadata["nbgrader"]["grade_id"]


def test_released_questions_ask_for_the_step_not_the_formula():
    """Exercise 2's grouped-query question prints neither the head mapping nor the cache's product, and no
    visible test of it spells one; exercise 5's running mean prints no update rule; exercise 3's visible
    checks never say what zeroed values do to the output."""
    cells = {c.metadata["nbgrader"]["grade_id"]: c.source
             for c in read_notebook(release_path(ROOT, "02_qkv_roles")).cells}
    gqa = "\n".join(v for k, v in cells.items() if k.startswith("q4"))
    assert "lceil" not in gqa and "// (tau" not in gqa and "2 * n_layer" not in gqa and "2 \\cdot" not in gqa
    mean = "\n".join(c.source for c in read_notebook(release_path(ROOT, "05_cached_decoding")).cells)
    assert "(i-1)" not in mean.replace(" ", "") and "(i - 1) *" not in mean
    zeroed = {c.metadata["nbgrader"]["grade_id"]: c.source
              for c in read_notebook(release_path(ROOT, "03_zeroed_values")).cells}
    assert "np.zeros_like(V)" not in zeroed["q1_output"] and "allclose(out, 0" not in zeroed["q1_output"]


def test_exercise_5_question_4_is_not_answered_in_chapter_5():
    """Chapter 5 says outright that s(ȳ_1 … ȳ_9) depends on ȳ_2; the exercise asks about an outcome that
    reads the last average alone, which the chapter does not discuss."""
    chapter = " ".join((ROOT / "book" / "06_bounded_memory.md").read_text().split())
    assert "it is *not* independent of $\\bar{\\mathbf{y}}_2$" in chapter
    text = next(c for c in read_notebook(release_path(ROOT, "05_cached_decoding")).cells
                if c.metadata["nbgrader"]["grade_id"] == "q4_text").source
    assert "s'(\\bar{y}_{k-1})" in text and "the last average alone" in text
    assert "s'(" not in chapter and "last average alone" not in chapter


def test_exercise_5_lays_the_cache_out_as_the_cache_chapter_does():
    chapter = (ROOT / "book" / "05_kv_cache.md").read_text()
    assert "laid out `(batch, tau, positions, head_dim)`" in chapter
    intro = read_notebook(release_path(ROOT, "05_cached_decoding")).cells[0].source
    assert "laid out `(batch, tau, positions, head_dim)`, as in chapter 5.\n" in intro  # COURSE.md's chapter 5
    assert "(heads, positions, head_dim)" not in intro and "k_i[None, None, None, :]" in intro


def _instructors_guide() -> str:
    """The instructor's guide, its pages in reading order (book/instructor/, issue 19)."""
    pages = ("release_collect", "grading", "sandbox", "large_course")
    return "\n".join((ROOT / "book" / "instructor" / f"{p}.md").read_text() for p in pages)


def test_grade_refuses_an_output_folder_that_git_would_publish(tmp_path, capsys):
    import shutil as _shutil

    from qkv_grading import cli

    subs = tmp_path / "submissions"
    subs.mkdir()
    published = ROOT / "graded-by-a-test"
    assert not published.exists()
    assert cli.main(["grade", str(subs), "--out", str(published), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "git does not ignore it" in err and "grading-out" in err and not published.exists()
    ignored = ROOT / "grading-out" / "by-a-test"
    try:
        assert cli.main(["grade", str(subs), "--out", str(ignored), "--no-progress"]) == 0
        assert cli.main(["grade", str(subs), "--out", str(tmp_path / "outside"), "--no-progress"]) == 0
    finally:
        _shutil.rmtree(ignored, ignore_errors=True)
    guide = _instructors_guide()
    assert "--out graded " not in guide and "qkv grade SUBMISSIONS --out grading-out/" in guide
    assert "nbgrader export --CourseDirectory.db_url=sqlite:///grading-out/week1/gradebook.db --to " in guide


def test_the_instructors_guide_says_what_the_grader_and_nbgrader_do():
    guide = " ".join(_instructors_guide().split())
    # nbgrader's CSV export has a row (0.0) for work never handed in, which qkv's grades.csv marks
    assert "nothing for work that was not handed in" not in guide
    assert "a score of 0.0 for work that was never handed in" in guide
    # its own benchmark: a second worker on 2 cores only adds contention (every example that gives a
    # number of workers is checked against that table by test_book's guide test)
    assert "one per core" not in guide and "one worker per core" not in guide
    for name in ("`notices.txt`", "`results/<student>/<assignment>.json`"):  # every file grade() writes
        assert f"| {name} |" in guide, name
    # nbgrader's own release drops the qkv metadata that `qkv release --check` expects
    assert "(formgrader, `nbgrader generate_assignment`)" not in guide
    assert "Release with `qkv release`, not `nbgrader generate_assignment`" in guide


def test_git_ignores_what_nbgrader_writes_into_the_repository(tmp_path):
    import subprocess

    # nbgrader run at the root (collect, autograde, generate_feedback) puts students' work there
    paths = ["gradebook.db", "submitted/ada/01_weighted_average/01_weighted_average.ipynb",
             "autograded/ada/x.ipynb", "feedback/ada/x.html"]
    check = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "--no-index", "--", *paths],
                           capture_output=True, text=True)
    assert set(check.stdout.split()) == set(paths), check.stdout
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--", "submitted", "autograded",
                              "feedback", "gradebook.db"], capture_output=True, text=True, check=True)
    assert tracked.stdout == ""
    # anchored at the root: a folder of the same name deeper down (a learner's feedback/) is not ignored
    deeper = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "--no-index", "-q", "--",
                             "src/feedback/x.py"])
    assert deeper.returncode == 1
