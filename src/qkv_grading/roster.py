"""The class roster of ``qkv grade --roster roster.csv``: who the students are, as nbgrader's Student table
holds them (``id``, ``first_name``, ``last_name``, ``email``, ``lms_user_id``), for ``grades_wide.csv`` and the
gradebook, so that an LMS can match its rows on an id or an email.

The file is a CSV whose first row names its columns. Besides nbgrader's own names (those of
``nbgrader db student import``), a spreadsheet's are read: ``student id`` or ``student`` for ``id``,
``first name``, ``last name``, ``e-mail``, ``lms id`` or ``lms user id``; a single ``name`` column is split at
its last space into first and last name. ``id`` is the name of the student's folder in SUBMISSIONS. A row
that cannot be read (a field too many or too few, no id, an id twice, an email without ``@``) is an error
that names the file and the row, and nothing is graded.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, fields
from pathlib import Path

from qkv_grading.results import plain


@dataclass(frozen=True)
class Student:
    """One row of nbgrader's Student table; None where the roster says nothing."""

    id: str
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    lms_user_id: str | None = None

    def details(self) -> dict[str, str]:
        """What the roster says of the student besides the id: ``update_or_create_student``'s keywords."""
        return {f.name: getattr(self, f.name) for f in fields(self)[1:] if getattr(self, f.name) is not None}


COLUMNS = tuple(f.name for f in fields(Student))
_ALIASES = {"student": "id", "student_id": "id", "first": "first_name", "given_name": "first_name",
            "last": "last_name", "surname": "last_name", "family_name": "last_name", "e_mail": "email",
            "lms_id": "lms_user_id", "lms": "lms_user_id", "name": "name"}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


class RosterError(ValueError):
    """The roster cannot be read; the message names the file and the row."""


def _column(header: str) -> str | None:
    key = re.sub(r"[\s-]+", "_", header.strip().lower())
    return key if key in COLUMNS else _ALIASES.get(key)


def _header(path: Path, row: list[str]) -> list[str]:
    columns = [_column(h) for h in row]
    unknown = [h for h, c in zip(row, columns) if c is None]
    if unknown:
        raise RosterError(f"{path} row 1: unknown column(s) {', '.join(map(repr, unknown))}; the columns are "
                          f"{', '.join(COLUMNS)} (or name for first and last name together)")
    doubled = sorted({c for c in columns if columns.count(c) > 1})
    if "name" in columns and {"first_name", "last_name"} & set(columns):
        doubled.append("name beside first_name/last_name")
    if doubled:
        raise RosterError(f"{path} row 1: column(s) given twice: {', '.join(doubled)}")
    if "id" not in columns:
        raise RosterError(f"{path} row 1: no id column (the student's folder name in SUBMISSIONS); the "
                          f"columns are {', '.join(COLUMNS)}")
    return columns


def _student(path: Path, line: int, columns: list[str], row: list[str]) -> Student:
    where = f"{path} row {line}"
    if len(row) != len(columns):
        raise RosterError(f"{where}: {len(row)} field(s), but row 1 names {len(columns)} columns "
                          f"({', '.join(columns)})")
    values = {c: v.strip() or None for c, v in zip(columns, row)}
    sid = values.get("id")
    if not sid:
        raise RosterError(f"{where}: no student id")
    if sid != plain(sid) or "/" in sid or sid.startswith("."):
        raise RosterError(f"{where}: student id {sid!r} cannot be a folder's name in SUBMISSIONS")
    if values.get("email") and not _EMAIL.match(values["email"]):
        raise RosterError(f"{where}: email {values['email']!r} is not an email address")
    name = values.pop("name", None)
    if name:
        first, _, last = name.rpartition(" ")
        values["first_name"], values["last_name"] = first.strip() or None, last
    return Student(**values)


def read_roster(path: Path) -> list[Student]:
    """The students of the roster at ``path``, in its order. Raises ``RosterError`` naming the row that
    cannot be read, and ``OSError`` when the file cannot be opened."""
    text = Path(path).read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark, if any
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise RosterError(f"{path} is empty: its first row names the columns ({', '.join(COLUMNS)})")
        columns = _header(path, header)
        students: dict[str, tuple[int, Student]] = {}
        start = reader.line_num + 1
        for row in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue  # a blank line
            student = _student(path, line, columns, row)
            if student.id in students:
                raise RosterError(f"{path} row {line}: student id {student.id!r} is already in row "
                                  f"{students[student.id][0]}")
            students[student.id] = (line, student)
    except csv.Error as exc:
        raise RosterError(f"{path} row {reader.line_num}: not CSV ({exc})") from None
    return [student for _, student in students.values()]
