"""Written answers: answer cells an instructor grades by hand in nbgrader's formgrader.

An assignment's "explain in your own words" question is an nbgrader manually graded answer (a cell with
both ``solution`` and ``grade`` set, and points). ``qkv grade`` runs nothing on it and never scores it:

- ``Spec`` lists it apart from the tests (``written_answers``); a ``Result`` carries one ``WrittenAnswer``
  per such cell, whose ``points`` stay None until the instructor marks it;
- the gradebook gets its row with no automatic score and ``needs_manual_grade`` set, so the formgrader
  lists it; grading again never touches a mark the instructor gave (``record``);
- each run reads the marks back from the gradebook into every result, the unchanged ones included, and
  rewrites their records and feedback pages (``refresh``);
- a waiting answer counts in neither the score nor the maximum, and every table, feedback page and the
  class report say how many points wait (``waiting``, ``summary_rows``, ``report_lines``).

The executed notebook of each submission is written to ``autograded/<student>/<assignment>/`` in the
output folder, where nbgrader's formgrader reads the answers it shows the instructor.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

from qkv_grading import cells
from qkv_grading.results import Result, WrittenAnswer


is_written = cells.is_written  # an nbgrader manually graded answer


def written_answers(nb) -> list[WrittenAnswer]:
    """One waiting ``WrittenAnswer`` per manually graded answer cell of the instructor's notebook."""
    out = []
    for cell in nb.cells:
        if is_written(cell):
            gid = cells.grade_id(cell)
            out.append(WrittenAnswer(gid, gid.split("_", 1)[0], cells.points(cell)))
    return out


def waiting(results: list[Result]) -> list[Result]:
    """The submissions with a written answer that still waits for its mark."""
    return [r for r in results if r.submitted and r.waiting]


# ---- the gradebook ------------------------------------------------------------------------------------

def record(gb, result: Result) -> None:
    """In nbgrader's gradebook: the tests need no manual grade; each written answer has no automatic
    score and needs one until the instructor gives it. A mark already given is kept, and read back into
    ``result``."""
    name, student = result.assignment, result.student
    for t in result.tests:
        grade = gb.find_grade(t.id, name, name, student)
        grade.needs_manual_grade = False  # scored by the tests (nbgrader's default would list it as waiting)
    for w in result.written:
        grade = gb.find_grade(w.id, name, name, student)
        grade.auto_score = None
        grade.needs_manual_grade = grade.manual_score is None
        w.points = grade.manual_score


def _marks(gb, result: Result) -> list[float | None]:
    from nbgrader.api import MissingEntry

    marks = []
    for w in result.written:
        try:
            marks.append(gb.find_grade(w.id, result.assignment, result.assignment, result.student).manual_score)
        except MissingEntry:
            marks.append(None)
    return marks


def _gradebook_exists(url: str) -> bool:
    if not url.startswith("sqlite:///"):
        return True  # a database server: the gradebook is there or nbgrader says why not
    return Path(url[len("sqlite:///"):]).is_file()


def refresh(out: Path, url: str) -> int:
    """Read the instructor's marks from the gradebook into every recorded result that has written
    answers, and rewrite its record and feedback page where a mark changed. Returns how many changed."""
    records = sorted((out / "results").glob("*/*.json"))
    if not records or not _gradebook_exists(url):
        return 0
    from nbgrader.api import Gradebook

    changed = 0
    with Gradebook(url, course_id="qkv-course") as gb:
        for path in records:
            try:
                result = Result.from_json(path.read_text())
            except (OSError, ValueError, TypeError, KeyError):
                continue
            if not result.written or not result.submitted:
                continue
            marks = _marks(gb, result)
            if marks == [w.points for w in result.written]:
                continue
            for w, mark in zip(result.written, marks):
                w.points = mark
            tmp = path.with_suffix(".tmp")
            tmp.write_text(result.to_json())
            os.replace(tmp, path)
            page = out / "feedback" / result.student / result.assignment / f"{result.assignment}.html"
            if page.is_file():
                page.write_text(with_marks(page.read_text(encoding="utf-8"), result), encoding="utf-8")
            changed += 1
    return changed


FORMGRADER_CONFIG = """# Written by `qkv grade`: nbgrader's formgrader, started in this folder (`jupyter lab` here, then
# Nbgrader > Formgrader > Manual Grading), grades the written answers of this gradebook. `qkv grade`
# run again with the same --out reads the marks back; `nbgrader export` here exports the totals.
c = get_config()  # noqa: F821
c.CourseDirectory.root = {root!r}
c.CourseDirectory.course_id = "qkv-course"
c.CourseDirectory.db_url = {url!r}
"""


def write_formgrader_config(out: Path, url: str) -> Path | None:
    """``nbgrader_config.py`` in the output folder, so that the formgrader and ``nbgrader export`` started
    there find this gradebook and the executed notebooks under ``autograded/``. An instructor's own
    config already there (a class folder with its exchange, say) is left as it is: returns None."""
    path = out / "nbgrader_config.py"
    if path.is_file() and not path.read_text().startswith(FORMGRADER_CONFIG.splitlines()[0]):
        return None
    path.write_text(FORMGRADER_CONFIG.format(root=str(out.resolve()), url=url))
    return path


def write_autograded(out: Path, student: str, name: str, notebook: str) -> Path:
    """The executed notebook where nbgrader's formgrader looks for it (``autograded_directory``)."""
    path = out / "autograded" / student / name / f"{name}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(notebook, encoding="utf-8")
    return path


# ---- what the learner and the instructor read ---------------------------------------------------------

WAITS = "waiting for your instructor"
# the page as nbconvert wrote it: its HTML cleaner may have turned our quotes into double quotes
_ROWS = re.compile(r"<tbody class=[\"']qkv-written[\"']>.*?</tbody>", re.S)
_TOTAL = re.compile(r"<th class=[\"']qkv-total[\"']>.*?</th>", re.S)


def summary_rows(written: list[WrittenAnswer]) -> str:
    """The feedback summary's rows of the written answers (replaced when the marks come in)."""
    rows = "".join(
        f"<tr data-written='{html.escape(w.id)}'><td>{html.escape(w.question)} (written answer)</td><td>"
        + (f"{w.points:g} / {w.max_points:g}, marked by your instructor" if w.points is not None
           else f"{WAITS} ({w.max_points:g} points)") + "</td></tr>" for w in written)
    left = sum(w.max_points for w in written if w.points is None)
    if left:  # the total below counts what has been marked: say what it leaves out
        rows += (f"<tr class='qkv-waiting'><td colspan='2'>The total counts what has been graded so far: "
                 f"{left:g} more points are {WAITS}.</td></tr>")
    return f"<tbody class='qkv-written'>{rows}</tbody>"


def total_text(result: Result) -> str:
    """The feedback summary's total: a waiting answer counts in neither the score nor the maximum."""
    return f"{result.score:g} / {result.graded_max:g}"


def with_marks(page: str, result: Result) -> str:
    """A feedback page with its written answers' rows and its total brought up to date."""
    page = _ROWS.sub(lambda _: summary_rows(result.written), page, count=1)
    return _TOTAL.sub(lambda _: f"<th class='qkv-total'>{html.escape(total_text(result))}</th>", page, count=1)


def waiting_text(result: Result) -> str:
    """grades.csv's waiting_manual column: the points of written answers not marked yet."""
    return f"{result.waiting:g}" if result.submitted and result.written else ""


def report_lines(results: list[Result], name: str) -> str:
    """The class report's line on an assignment's written answers."""
    mine = [r for r in results if r.assignment == name and r.submitted and r.written]
    if not mine:
        return ""
    left = sorted(r.student for r in mine if r.waiting)
    return (f"<p class='written'>Written answers, graded by hand in nbgrader's formgrader: "
            f"{len(mine) - len(left)} of {len(mine)} marked; waiting for manual grading ({len(left)}): "
            f"<span class='waiting-manual'>{html.escape(', '.join(left) or 'none')}</span>. A waiting "
            f"answer counts in neither the scores nor the maxima above.</p>")
