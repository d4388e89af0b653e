"""What the grading-at-scale tests share (tests/test_scale.py, tests/test_scale_stops.py): how they run
`qkv grade` as an instructor would, wait for it, stop it, and read back what it wrote."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from grading_helpers import ROOT, filled, read_csv, submit
from qkv_grading.course import ASSIGNMENTS, read_notebook, source_path
from qkv_grading.spec import load_spec

TIMEOUT = "5"
FULL = {name: load_spec(ROOT, name).max_score for name in ASSIGNMENTS}
BIN = Path(sys.executable).parent


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = str(BIN) + os.pathsep + env.get("PATH", "")
    env.setdefault("MPLBACKEND", "Agg")
    # the settings the guide gives a cluster's scheduler (see qkv_grading.workers.SCHEDULER_CONFIG)
    env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = "2"
    env["DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION"] = "1.0"
    return env


def _qkv(*args: str) -> list[str]:
    return [sys.executable, "-m", "qkv_grading.cli", "grade", *args, "--timeout", TIMEOUT,
            "--no-progress", "--root", str(ROOT)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"waited {seconds:g} s for {what}")


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _standard(subs: Path, names=ASSIGNMENTS) -> dict:
    """Each assignment's solution (as is) and blank notebook; returns (student, name) -> expected score."""
    expected = {}
    for name in names:
        submit(subs, "sol", name, read_notebook(source_path(ROOT, name)))
        submit(subs, "blank", name, filled(name, blank=True))
        expected[("sol", name)], expected[("blank", name)] = FULL[name], 0.0
    return expected


def _grades(out: Path) -> dict:
    """(student, assignment) -> score, for what was handed in (not-submitted rows have no score)."""
    return {(r["student"], r["assignment"]): float(r["score"]) for r in read_csv(out / "grades.csv")
            if r["status"] != "not submitted"}


def _gradebook_rows(url: str) -> dict:
    """(student, assignment, test cell) -> auto score, read back with nbgrader's own API."""
    os.environ["PATH"] = str(BIN) + os.pathsep + os.environ.get("PATH", "")
    from nbgrader.api import Gradebook

    rows = {}
    with Gradebook(url, course_id="qkv-course") as gb:
        for a in gb.assignments:
            for sub in gb.assignment_submissions(a.name):
                for nb in sub.notebooks:
                    for g in nb.grades:
                        key = (sub.student.id, a.name, g.name)
                        assert key not in rows, f"{key} recorded twice"
                        rows[key] = g.auto_score
    return rows
