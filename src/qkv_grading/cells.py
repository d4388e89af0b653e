"""What a cell of an exercise notebook is, read from its nbgrader metadata in this one place.

nbgrader marks a cell in ``metadata.nbgrader``: ``solution`` (an answer cell, which the learner writes),
``grade`` with ``points`` (a test cell), ``locked`` (the instructor's: instructions, set-up code and
tests, restored from the instructor's version whatever a submission did to it) and ``grade_id`` (the
cell's name). A submitted notebook may hold anything there, so each reader takes what it finds as data:
metadata that is not a dict reads as none, a name that is not a string as no name.
"""

from __future__ import annotations


def info(cell) -> dict:
    """The cell's nbgrader metadata ({} when there is none, or it is not a dict)."""
    meta = cell.get("metadata") if isinstance(cell, dict) else None
    found = meta.get("nbgrader") if isinstance(meta, dict) else None
    return found if isinstance(found, dict) else {}


def grade_id(cell) -> str | None:
    gid = info(cell).get("grade_id")
    return gid if isinstance(gid, str) else None


def source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def is_answer(cell) -> bool:
    """A cell the learner writes (nbgrader's solution cell)."""
    return bool(info(cell).get("solution"))


def is_graded(cell) -> bool:
    """A cell that carries points: a test cell, or a written answer."""
    return bool(info(cell).get("grade"))


def is_test(cell) -> bool:
    """A test cell: it carries points and is not an answer (nbgrader's autograder tests)."""
    return bool(info(cell).get("grade")) and not info(cell).get("solution")


def is_written(cell) -> bool:
    """A written answer graded by hand: an answer cell that also carries points."""
    return bool(info(cell).get("grade") and info(cell).get("solution"))


def is_locked(cell) -> bool:
    return bool(info(cell).get("locked"))


def is_instructors(cell) -> bool:
    """A cell restored from the instructor's version (locked, not an answer): trusted when shown."""
    return is_locked(cell) and not is_answer(cell)


def is_setup(cell) -> bool:
    """The instructor's set-up code: a locked code cell that is neither an answer nor a test."""
    return cell.get("cell_type") == "code" and is_locked(cell) and not is_test(cell) and not is_answer(cell)


def points(cell) -> float:
    return float(info(cell).get("points", 0))
