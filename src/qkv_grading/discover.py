"""Finding the work: every student's notebook of every assignment anyone submitted, and what was ignored.

The folder is ``<student>/<assignment>/<assignment>.ipynb``, as ``nbgrader collect`` leaves its
``submitted/`` folder: the ``timestamp.txt`` and ``submission_secret.txt`` it writes beside a notebook
are part of the submission, not ignored files. Operating-system and LMS debris (``__MACOSX``,
``.DS_Store``, ``Thumbs.db``) is ignored at any level and reported once.

A submission is read as data, never as paths to follow: a symbolic link anywhere under the folder is
refused (and listed), and a file is opened one folder at a time without following a link
(``read_regular``), so nothing outside SUBMISSIONS is read on a submission's word. A notebook or an
assignment folder that is a link, or a notebook that is no regular file, is refused: that submission
scores 0 with the reason.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from qkv_grading.course import ASSIGNMENTS
from qkv_grading.results import plain

DEBRIS = ("__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini")
COLLECTED = ("timestamp.txt", "submission_secret.txt")  # written by `nbgrader collect`
TOO_SHALLOW = ("one level too shallow: submissions go in "
               "SUBMISSIONS/<student>/<assignment>/<assignment>.ipynb, and this SUBMISSIONS looks like "
               "one student's folder (or a course's solutions/ or exercises/)")


LINK = "a symbolic link: refused (submissions are read as files, never followed)"
NOT_REGULAR = "not a regular file: refused"
ODD_NAME = "a name with control characters: refused"
SMALL = 4096  # bytes: the most a file that `nbgrader collect` writes may hold


@dataclass(frozen=True)
class Ignored:
    """A file or folder under the submissions folder that was not graded, and why. ``student`` and
    ``assignment`` name the submission it belongs to, when it does; ``refused``: that submission cannot
    be graded at all (its notebook or its folder is a link, say)."""

    path: str
    reason: str
    student: str = ""
    assignment: str = ""
    refused: bool = False

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them, opened one folder at a time
    from ``/`` without following a link (``O_NOFOLLOW``): ``path`` is absolute and holds no link (a
    resolved SUBMISSIONS, then names found under it), so a link that appears in it later is refused, not
    followed. Raises ``OSError`` for a link, a file that is not a regular one, or one over ``limit``."""
    parts = Path(os.path.abspath(path)).parts
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in parts[1:-1]:
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        # O_NONBLOCK: a FIFO put where a notebook should be must not hang the grader in open()
        leaf = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)
    with os.fdopen(leaf, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path.name} is not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{path.name} is larger than {limit} bytes")
    return data


def _link(entry: Path, base: Path, ignored: list[Ignored], student: str = "", assignment: str = "",
          refused: bool = False) -> bool:
    """Whether ``entry`` is a symbolic link (listed as refused if so)."""
    if entry.is_symlink():
        ignored.append(Ignored(entry.relative_to(base).as_posix(), LINK, student, assignment, refused))
        return True
    return False


def _debris(entry: Path, base: Path, ignored: list[Ignored]) -> bool:
    if entry.name in DEBRIS:
        ignored.append(Ignored(entry.relative_to(base).as_posix(),
                               "operating-system or LMS debris"))
        return True
    return False


def discover(submissions: Path, only: list[str] | None = None) -> tuple[list[tuple[str, str, Path]],
                                                                        list[Ignored]]:
    """(student, assignment, notebook path) for every student and every assignment submitted by anyone
    (a path whose folder does not exist: not submitted), plus what was ignored. The paths are under
    ``submissions`` resolved (no link in them, as ``read_regular`` needs)."""
    submissions = submissions.resolve()
    jobs: list[tuple[str, str, Path]] = []
    ignored: list[Ignored] = []
    students = []
    for entry in sorted(submissions.iterdir()):
        if _link(entry, submissions, ignored):
            continue
        if _debris(entry, submissions, ignored) or entry.name.startswith("."):
            continue
        if entry.name != plain(entry.name):  # a terminal escape in a name would reach every table
            ignored.append(Ignored(ascii(entry.name), ODD_NAME))
            continue
        if entry.is_dir():
            students.append(entry)
        else:
            ignored.append(Ignored(entry.relative_to(submissions).as_posix(), "not a student folder"))
    wanted = list(only) if only else []
    for student in students:
        for entry in sorted(student.iterdir()):
            rel = entry.relative_to(submissions).as_posix()
            if _link(entry, submissions, ignored, student.name, entry.name, entry.name in ASSIGNMENTS):
                if not only and entry.name in ASSIGNMENTS and entry.name not in wanted:
                    wanted.append(entry.name)
                continue
            if _debris(entry, submissions, ignored) or entry.name.startswith("."):
                continue
            if not (entry.is_dir() and entry.name in ASSIGNMENTS):
                shallow = student.name in ASSIGNMENTS and entry.name == f"{student.name}.ipynb"
                ignored.append(Ignored(rel, TOO_SHALLOW if shallow else "not an assignment of this course"))
                continue
            if not only and entry.name not in wanted:
                wanted.append(entry.name)
            _extras(entry, submissions, ignored, student.name, entry.name)
    wanted = [a for a in ASSIGNMENTS if a in wanted]
    for student in students:
        for name in wanted:
            jobs.append((student.name, name, student / name / f"{name}.ipynb"))
    return jobs, ignored


def _extras(folder: Path, base: Path, ignored: list[Ignored], student: str, assignment: str,
            top: bool = True) -> None:
    """Files in an assignment folder besides its notebook and what `nbgrader collect` wrote; links and
    files that are not regular, refused (the notebook's own refusal makes the submission's)."""
    notebook = f"{assignment}.ipynb"
    for entry in sorted(folder.iterdir()):
        own = top and entry.name == notebook
        if _link(entry, base, ignored, student, assignment, refused=own):
            continue
        if _debris(entry, base, ignored) or entry.name == ".ipynb_checkpoints":
            continue
        if entry.is_dir():
            _extras(entry, base, ignored, student, assignment, top=False)
        elif not entry.is_file():  # a FIFO, a socket, a device
            ignored.append(Ignored(entry.relative_to(base).as_posix(), NOT_REGULAR, student, assignment,
                                   refused=own))
        elif top and entry.name in (notebook, *COLLECTED):
            continue
        else:
            ignored.append(Ignored(entry.relative_to(base).as_posix(), "extra file, not graded"))


def submitted(path: Path) -> bool:
    """Whether the student handed in anything for this assignment (its folder exists)."""
    return path.parent.is_dir()


def collected(path: Path, name: str) -> bytes | None:
    """The file ``name`` (``timestamp.txt``, ``submission_secret.txt``) that ``nbgrader collect`` wrote
    beside notebook ``path``: None unless it is a small regular file there."""
    try:
        return read_regular(path.parent / name, SMALL)
    except OSError:
        return None


def collected_timestamp(path: Path) -> str:
    """The time ``nbgrader collect`` recorded for the submission of notebook ``path``, or ""."""
    try:
        return (collected(path, "timestamp.txt") or b"").decode("utf-8").strip()[:64]
    except UnicodeDecodeError:
        return ""


KEY_LIMIT = 1 << 30  # bytes of a notebook read for its key; one larger is refused when it is run


def submission_key(path: Path, fingerprint: str, timeout: float) -> str:
    try:
        data = read_regular(path, KEY_LIMIT)
    except OSError:
        data = b"<missing>" if submitted(path) else b"<absent>"
    stamp = collected_timestamp(path).encode()
    return hashlib.sha256(data + fingerprint.encode() + repr(timeout).encode() + stamp).hexdigest()
