"""nbgrader's gradebook, written by the grading process alone: one automatic score per test cell."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from datetime import datetime
from pathlib import Path

from qkv_grading import cells, manual
from qkv_grading.roster import Student


@contextlib.contextmanager
def _own_bin_on_path():
    """Inside the block, this environment's bin folder is on PATH: nbgrader runs the ``alembic`` command
    of its own environment to stamp a new gradebook. PATH is put back as it was afterwards."""
    bindir = os.path.dirname(sys.executable)
    before = os.environ.get("PATH")
    if bindir in (before or "").split(os.pathsep):
        yield
        return
    os.environ["PATH"] = bindir + os.pathsep + (before or "")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = before


class GradebookMismatch(Exception):
    """The gradebook holds submissions of an assignment whose cells were added or removed since."""


def _cell_names(nb) -> dict[str, set[str]]:
    """What nbgrader's SaveCells records of a notebook: its grade, solution, task and source cells."""
    from nbgrader import utils

    names: dict[str, set[str]] = {"test": set(), "answer": set(), "task": set(), "locked": set()}
    for cell in nb.cells:
        if not utils.is_grade(cell) and not utils.is_solution(cell) and not utils.is_locked(cell) \
                and not utils.is_task(cell):
            continue
        gid = cells.grade_id(cell)
        names["locked"].add(gid)
        for kind, test in (("test", utils.is_grade), ("answer", utils.is_solution), ("task", utils.is_task)):
            if test(cell):
                names[kind].add(gid)
    return names


def _write_ahead(engine) -> None:
    """SQLite in write-ahead-log mode, synced at checkpoints rather than at every commit: a commit no longer
    waits for the disk (a few of them per submission cost more than grading it), and the file cannot be
    corrupted by a crash; a power cut may lose the last commits, whose result records (written after them)
    then make the next run grade those submissions again."""
    from sqlalchemy import event

    def pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()  # connections opened before the listener reconnect with it


def collected_time(stamp: str) -> datetime | None:
    """The time in a ``timestamp.txt`` that ``nbgrader collect`` wrote, in UTC as nbgrader's gradebook
    holds it (``nbgrader.utils.parse_utc``, as its autograde reads it); None when there is none, or it is
    no time."""
    from nbgrader.utils import parse_utc

    try:
        return parse_utc(stamp) if stamp else None
    except (ValueError, OverflowError, TypeError):  # dateutil's ParserError is a ValueError
        return None


class GradebookWriter:
    def __init__(self, url: str, root: Path):
        from nbgrader.api import Gradebook

        self.url = url
        with _own_bin_on_path():
            self.gb = Gradebook(url, course_id="qkv-course")
        if self.gb.engine.dialect.name == "sqlite":
            _write_ahead(self.gb.engine)
        self.gb.db.remove()  # this thread's session: opened in a helper thread, the writer is used in another
        self.root = root
        self.ready: set[str] = set()

    def prepare(self, name: str) -> None:
        from qkv_grading.course import instructor_notebook, read_notebook, source_path

        if name in self.ready:
            return
        self.gb.update_or_create_assignment(name)
        self.gb.db.commit()
        from nbgrader.preprocessors import SaveCells

        nb = instructor_notebook(read_notebook(source_path(self.root, name)))
        try:  # nbgrader's own SaveCells, as `nbgrader generate_assignment` runs it: a connection of its own
            SaveCells().preprocess(nb, {"nbgrader": {"db_url": self.url, "assignment": name, "notebook": name}})
        except RuntimeError:  # nbgrader refuses to add or remove cells once there are submissions
            raise GradebookMismatch(self._mismatch(name, nb)) from None
        self.gb.db.expire_all()
        self.ready.add(name)

    def _mismatch(self, name: str, nb) -> str:
        notebook = self.gb.find_notebook(name, name)
        old = {"test": {c.name for c in notebook.grade_cells}, "answer": {c.name for c in notebook.solution_cells},
               "task": {c.name for c in notebook.task_cells}, "locked": {c.name for c in notebook.source_cells}}
        new = _cell_names(nb)
        changes, named = [], set()
        for kind in ("test", "answer", "task", "locked"):  # a test cell is locked too: name each cell once
            for gid, what in [(g, "added") for g in sorted(new[kind] - old[kind])] + \
                             [(g, "removed") for g in sorted(old[kind] - new[kind])]:
                if gid not in named:
                    named.add(gid)
                    changes.append(f"{kind} cell {gid} was {what}")
        changes = changes or ["its cells changed"]
        return (f"assignment {name}: {'; '.join(changes)} in solutions/{name}/{name}.ipynb after the gradebook "
                f"recorded submissions of it, and nbgrader cannot add or remove cells then. Nothing was graded; "
                f"the gradebook keeps what it had. Undo the change, or grade into a new --out folder (or --db).")

    def record(self, result) -> None:
        from nbgrader.api import MissingEntry

        name, student = result.assignment, result.student
        self.prepare(name)
        self.gb.update_or_create_student(student)
        try:
            submission = self.gb.find_submission(name, student)
        except MissingEntry:
            with warnings.catch_warnings():  # nbgrader's add_submission warns "not in session": harmless
                warnings.filterwarnings("ignore", message=".*not in session.*")
                submission = self.gb.add_submission(name, student)
        submission.timestamp = collected_time(result.timestamp)  # what `nbgrader export` shows
        for t in result.tests:
            grade = self.gb.find_grade(t.id, name, name, student)
            grade.auto_score = t.points  # overwritten, never added: a re-run cannot double-count
        manual.record(self.gb, result)  # written answers wait for the formgrader; given marks are kept
        self.gb.db.commit()

    def rollback(self) -> None:
        """Undo what a submission that failed while it was recorded left half written."""
        self.gb.db.rollback()

    def close(self) -> None:
        self.gb.close()


def record_students(url: str, students: list[Student]) -> None:
    """The roster's students into nbgrader's Student table (``update_or_create_student``): a student the
    gradebook has keeps what the roster leaves empty."""
    from nbgrader.api import Gradebook

    with _own_bin_on_path():
        gb = Gradebook(url, course_id="qkv-course")
    try:
        for student in students:
            gb.update_or_create_student(student.id, **student.details())
        gb.db.commit()
    finally:
        gb.close()


def students(url: str) -> dict[str, Student]:
    """The gradebook's students (its Student table: the roster's, and every student graded), by id; none
    while there is no gradebook."""
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        return {}
    from nbgrader.api import Gradebook

    with _own_bin_on_path():
        gb = Gradebook(url, course_id="qkv-course")
    try:
        return {s.id: Student(s.id, s.first_name, s.last_name, s.email, s.lms_user_id) for s in gb.students}
    finally:
        gb.close()
