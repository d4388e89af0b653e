"""Finding the work: every student's notebook of every assignment anyone submitted, and what was ignored.

The folder is ``<student>/<assignment>/<assignment>.ipynb``, as ``nbgrader collect`` leaves its
``submitted/`` folder: the ``timestamp.txt`` and ``submission_secret.txt`` it writes beside a notebook
are part of the submission, not ignored files. Operating-system and LMS debris (``__MACOSX``,
``.DS_Store``, ``Thumbs.db``) is ignored at any level and reported once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from qkv_grading.course import ASSIGNMENTS

DEBRIS = ("__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini")
COLLECTED = ("timestamp.txt", "submission_secret.txt")  # written by `nbgrader collect`
TOO_SHALLOW = ("one level too shallow: submissions go in "
               "SUBMISSIONS/<student>/<assignment>/<assignment>.ipynb, and this SUBMISSIONS looks like "
               "one student's folder (or a course's solutions/ or exercises/)")


@dataclass(frozen=True)
class Ignored:
    """A file or folder under the submissions folder that was not graded, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


def _debris(entry: Path, base: Path, ignored: list[Ignored]) -> bool:
    if entry.name in DEBRIS:
        ignored.append(Ignored(entry.relative_to(base).as_posix(),
                               "operating-system or LMS debris"))
        return True
    return False


def discover(submissions: Path, only: list[str] | None = None) -> tuple[list[tuple[str, str, Path]],
                                                                        list[Ignored]]:
    """(student, assignment, notebook path) for every student and every assignment submitted by anyone
    (a path whose folder does not exist: not submitted), plus what was ignored."""
    jobs: list[tuple[str, str, Path]] = []
    ignored: list[Ignored] = []
    students = []
    for entry in sorted(submissions.iterdir()):
        if _debris(entry, submissions, ignored) or entry.name.startswith("."):
            continue
        if entry.is_dir():
            students.append(entry)
        else:
            ignored.append(Ignored(entry.relative_to(submissions).as_posix(), "not a student folder"))
    wanted = list(only) if only else []
    for student in students:
        for entry in sorted(student.iterdir()):
            rel = entry.relative_to(submissions).as_posix()
            if _debris(entry, submissions, ignored) or entry.name.startswith("."):
                continue
            if not (entry.is_dir() and entry.name in ASSIGNMENTS):
                shallow = student.name in ASSIGNMENTS and entry.name == f"{student.name}.ipynb"
                ignored.append(Ignored(rel, TOO_SHALLOW if shallow else "not an assignment of this course"))
                continue
            if not only and entry.name not in wanted:
                wanted.append(entry.name)
            _extras(entry, submissions, ignored)
    wanted = [a for a in ASSIGNMENTS if a in wanted]
    for student in students:
        for name in wanted:
            jobs.append((student.name, name, student / name / f"{name}.ipynb"))
    return jobs, ignored


def _extras(folder: Path, base: Path, ignored: list[Ignored]) -> None:
    """Files in an assignment folder besides its notebook and what `nbgrader collect` wrote."""
    for entry in sorted(folder.iterdir()):
        if _debris(entry, base, ignored) or entry.name == ".ipynb_checkpoints":
            continue
        if entry.is_dir():
            _extras(entry, base, ignored)
        elif entry.parent == folder and entry.name in (f"{folder.name}.ipynb", *COLLECTED):
            continue
        elif entry.is_file():
            ignored.append(Ignored(entry.relative_to(base).as_posix(), "extra file, not graded"))


def submitted(path: Path) -> bool:
    """Whether the student handed in anything for this assignment (its folder exists)."""
    return path.parent.is_dir()


def collected_timestamp(path: Path) -> str:
    """The time ``nbgrader collect`` recorded for the submission of notebook ``path``, or ""."""
    stamp = path.parent / "timestamp.txt"
    try:
        return stamp.read_text(encoding="utf-8").strip()[:64] if stamp.is_file() else ""
    except (OSError, UnicodeDecodeError):
        return ""


def submission_key(path: Path, fingerprint: str, timeout: float) -> str:
    data = path.read_bytes() if path.is_file() else (b"<missing>" if submitted(path) else b"<absent>")
    stamp = collected_timestamp(path).encode()
    return hashlib.sha256(data + fingerprint.encode() + repr(timeout).encode() + stamp).hexdigest()
