"""Where the course's assignments live, and the release transformation shared by release, check and grade.

Assignment NAME has its instructor version at ``solutions/NAME/NAME.ipynb`` (nbgrader's *source*) and its
student version at ``exercises/NAME/NAME.ipynb`` (nbgrader's *release*); ``nbgrader_config.py`` at the
repository root maps nbgrader's folders to these two. A learner works in a copy of the exercises,
``work/NAME/NAME.ipynb``, which git ignores and ``make lab`` makes (``qkv_grading.workcopy``).
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import nbformat

from qkv_grading import cells

ASSIGNMENTS = (
    "01_weighted_average",
    "02_qkv_roles",
    "03_zeroed_values",
    "04_cache_notation",
    "05_cached_decoding",
)
SOURCE_DIR = "solutions"
RELEASE_DIR = "exercises"
WORK_DIR = "work"


def find_root(start: str | os.PathLike | None = None) -> Path:
    """The course repository: the nearest folder at or above ``start`` (default: the working directory)
    holding ``nbgrader_config.py`` and ``solutions/``; else the checkout this package was installed from."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "nbgrader_config.py").is_file() and (folder / SOURCE_DIR).is_dir():
            return folder
    package_root = Path(__file__).resolve().parents[2]  # src/qkv_grading/course.py -> repository
    if (package_root / SOURCE_DIR).is_dir():
        return package_root
    raise FileNotFoundError(f"no course repository (nbgrader_config.py and {SOURCE_DIR}/) at or above {here}")


def source_path(root: Path, name: str) -> Path:
    return root / SOURCE_DIR / name / f"{name}.ipynb"


def release_path(root: Path, name: str) -> Path:
    return root / RELEASE_DIR / name / f"{name}.ipynb"


def working_path(root: Path, name: str) -> Path:
    return root / WORK_DIR / name / f"{name}.ipynb"


def read_notebook(path: str | os.PathLike) -> nbformat.NotebookNode:
    return nbformat.read(os.fspath(path), as_version=4)


def dumps(nb: nbformat.NotebookNode) -> str:
    """The one serialisation used for everything committed: sorted keys, indent 1, newline at the end."""
    return nbformat.writes(nb) + "\n"


def _preprocess(nb, steps):
    resources: dict = {"nbgrader": {}}
    for step in steps:
        nb, resources = step.preprocess(nb, resources)
    return nb


def split_hidden(source: str) -> tuple[list[str], list[str]]:
    """A test cell's lines as (visible, hidden): hidden are those between nbgrader's hidden-test markers,
    the marker lines included."""
    visible, hidden, inside = [], [], False
    for line in source.splitlines():
        if "### BEGIN HIDDEN TESTS" in line:
            inside = True
        (hidden if inside else visible).append(line)
        if "### END HIDDEN TESTS" in line:
            inside = False
    return visible, hidden


def _strip_hidden(source: str) -> str:
    return "\n".join(split_hidden(source)[0])


def release_notebook(source: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The student version of a source notebook: nbgrader's own preprocessors in GenerateAssignment's
    order, minus the two that need a gradebook or a header file. Deterministic: no timestamps, no ids made up."""
    from nbgrader.preprocessors import (CheckCellMetadata, ClearHiddenTests, ClearMarkScheme, ClearOutput,
                                        ClearSolutions, ComputeChecksums, LockCells)

    nb = copy.deepcopy(source)
    points_in_headings(nb)
    for cell in nb.cells:  # say which tests have a hidden part, so `qkv check` can tell the learner
        if cell.cell_type == "code" and "### BEGIN HIDDEN TESTS" in cell.source:
            visible = _strip_hidden(cell.source)
            checks = [ln for ln in visible.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "from ", "import "))]
            cell.metadata["qkv"] = {"hidden_tests": True, "visible_checks": bool(checks)}
    nb = _preprocess(nb, [LockCells(), ClearSolutions(), ClearOutput(), CheckCellMetadata(), ComputeChecksums(),
                          ClearHiddenTests(), ClearMarkScheme(), ComputeChecksums(), CheckCellMetadata()])
    for cell in nb.cells:  # nbgrader leaves execution state that differs between runs of a source notebook
        if cell.cell_type == "code":
            cell.execution_count = None
            cell.outputs = []
    run_all_goes_on(nb)
    return nb


RUN_ALL_GOES_ON = "raises-exception"


def run_all_goes_on(nb: nbformat.NotebookNode) -> None:
    """Tag every answer and test cell ``raises-exception``: its error (a failing test, an answer not written
    yet) then does not stop JupyterLab's Run All (the kernel is asked not to drop the cells queued after
    it), so every question's tests run. nbgrader's checksums do not cover tags."""
    for cell in nb.cells:
        if cell.cell_type == "code" and (cells.is_graded(cell) or cells.is_answer(cell)):
            tags = cell.metadata.setdefault("tags", [])
            if RUN_ALL_GOES_ON not in tags:
                tags.append(RUN_ALL_GOES_ON)


def instructor_notebook(source: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """What the grader runs for each cell it owns: test cells with their hidden tests, locked cells as the
    instructor wrote them, checksums recomputed. Solution cells keep the solution (used only by self-tests)."""
    from nbgrader.preprocessors import ComputeChecksums, LockCells

    nb = copy.deepcopy(source)
    points_in_headings(nb)
    return _preprocess(nb, [LockCells(), ComputeChecksums()])


# A question's heading, "## Question 2 (4 points): ...": its points are written from its tests' metadata.
_HEADING = re.compile(r"^(#+ Question (\d+) \(\s*)(\d+(?:\.\d+)?)(\s+points?\b)", re.M)
_POINTS = re.compile(r"\(\s*\d+(?:\.\d+)?\s+points?\b")


def question_points(nb: nbformat.NotebookNode) -> dict[str, float]:
    """Question ("q2") -> the points of its graded cells (those whose grade_id starts "q2_")."""
    totals: dict[str, float] = {}
    for cell in nb.cells:
        gid = cells.grade_id(cell)
        if cells.is_graded(cell) and gid is not None:
            q = gid.split("_", 1)[0]
            totals[q] = totals.get(q, 0.0) + cells.points(cell)
    return totals


def points_in_headings(nb: nbformat.NotebookNode) -> list[str]:
    """Write each question heading's "(N points" from its tests' points, in place; return the questions
    whose heading said otherwise. So a change of points is made in the metadata alone."""
    totals, changed = question_points(nb), []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue

        def fix(m):
            q = f"q{m.group(2)}"
            if q not in totals:
                return m.group(0)
            heading = m.group(1) + f"{totals[q]:g} point" + ("" if totals[q] == 1 else "s")
            if heading != m.group(0):
                changed.append(q)
            return heading

        cell.source = _HEADING.sub(fix, cell.source)
    return changed


def same_but_points(a: str, b: str) -> bool:
    """Whether two cells' texts differ at most in the points their question headings state: a locked
    cell released before a change of points is not the learner's edit."""
    return _POINTS.sub("(# points", a.strip()) == _POINTS.sub("(# points", b.strip())
