"""`qkv release`: exercises/ is generated from solutions/ deterministically, and --check notices drift."""

import re
import shutil

import pytest

from qkv_grading import release
from qkv_grading.course import ASSIGNMENTS, dumps, read_notebook, release_notebook, release_path, source_path
from grading_helpers import ROOT


class Args:
    def __init__(self, root, check):
        self.root, self.check = str(root), check


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
        if info.get("solution"):
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
        m = re.search(r"## Question (\d+) \((\d+) points?\)", cell.source)
        if m:
            stated[f"q{m.group(1)}"] = int(m.group(2))
        if info.get("grade"):
            q = info["grade_id"].split("_")[0]
            counted[q] = counted.get(q, 0) + info["points"]
            assert cell.source.lstrip().startswith("# Test"), info["grade_id"]
    assert stated == counted
    assert all(n >= 1 for n in counted.values())
    # several tests per question wherever a question has more than one point
    for q, pts in counted.items():
        n_tests = sum(1 for c in source.cells if c.metadata["nbgrader"].get("grade")
                      and c.metadata["nbgrader"]["grade_id"].startswith(q + "_"))
        assert pts == 1 or n_tests >= 2, (name, q)


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
