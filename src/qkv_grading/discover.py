"""Finding the work: every student's notebook of every assignment anyone submitted, and what was ignored."""

from __future__ import annotations

import hashlib
from pathlib import Path

from qkv_grading.course import ASSIGNMENTS


def discover(submissions: Path, only: list[str] | None = None) -> tuple[list[tuple[str, str, Path]], list[str]]:
    """(student, assignment, notebook path) for every student and every assignment submitted by anyone,
    plus the paths that were ignored (unknown files and folders)."""
    jobs, ignored = [], []
    students = []
    for entry in sorted(submissions.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            students.append(entry)
        else:
            ignored.append(f"{entry.relative_to(submissions)} (not a student folder)")
    wanted = list(only) if only else []
    for student in students:
        for entry in sorted(student.iterdir()):
            rel = entry.relative_to(submissions)
            if entry.name.startswith("."):
                continue
            if not (entry.is_dir() and entry.name in ASSIGNMENTS):
                ignored.append(f"{rel} (not an assignment of this course)")
                continue
            if not only and entry.name not in wanted:
                wanted.append(entry.name)
            for extra in sorted(entry.rglob("*")):
                if extra.is_file() and extra.name != f"{entry.name}.ipynb" and ".ipynb_checkpoints" not in extra.parts:
                    ignored.append(f"{extra.relative_to(submissions)} (extra file, not graded)")
    wanted = [a for a in ASSIGNMENTS if a in wanted]
    for student in students:
        for name in wanted:
            jobs.append((student.name, name, student / name / f"{name}.ipynb"))
    return jobs, ignored


def submission_key(path: Path, fingerprint: str, timeout: float) -> str:
    data = path.read_bytes() if path.is_file() else b"<missing>"
    return hashlib.sha256(data + fingerprint.encode() + repr(timeout).encode()).hexdigest()
