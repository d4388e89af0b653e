"""Seconds per notebook of `qkv grade` against plain `nbgrader autograde`, measured side by side in one run.

Both grade the same submissions: --students copies of every solution notebook. nbgrader gets what it
expects and is given its best case: one `nbgrader autograde ASSIGNMENT` process per assignment (not one per
student), with the assignments generated beforehand (untimed). `qkv grade` runs as its own process too,
with --workers processes. Both timings include process start-up. The scores of both are checked to be full.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qkv_grading.course import ASSIGNMENTS, find_root


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--students", type=int, default=20, help="copies of each solution notebook (default 20)")
    parser.add_argument("--workers", type=int, action="append", default=None,
                        help="qkv grade --workers, repeatable (default: 1 and 2, so the per-core ratio shows "
                             "beside the parallel one)")
    parser.add_argument("--assignment", action="append", default=None, choices=ASSIGNMENTS,
                        help="benchmark only this assignment (repeatable; default all five)")
    parser.add_argument("--root", default=None, help="the course repository (default: found from the working directory)")
    parser.add_argument("--keep", default=None, help="keep the work folder here instead of a temporary one")


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # nbgrader calls `alembic`
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _run(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed


def _nbgrader_course(work: Path, root: Path, names: list[str]) -> Path:
    course = work / "nbgrader_course"
    for name in names:
        shutil.copytree(root / "solutions" / name, course / "source" / name)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        f"c.CourseDirectory.root = {str(course)!r}\n"
        "c.Execute.timeout = 30\n")
    return course


def _nbgrader_scores(course: Path) -> list[float]:
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        return [s.score / s.max_score for a in gb.assignments for s in gb.assignment_submissions(a.name)]


def bench(root: Path, students: int, workers: list[int], names: list[str], work: Path) -> dict:
    nbgrader = [sys.executable, "-m", "nbgrader"]
    course = _nbgrader_course(work, root, names)
    for name in names:  # untimed set-up: the gradebook learns the assignments
        _run(nbgrader + ["generate_assignment", name, "--force"], course)
    subs = work / "submissions"
    for k in range(students):
        for name in names:
            for folder in (course / "submitted" / f"s{k:03d}" / name, subs / f"s{k:03d}" / name):
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copy(root / "solutions" / name / f"{name}.ipynb", folder / f"{name}.ipynb")
    n = students * len(names)

    t_nbgrader = sum(_run(nbgrader + ["autograde", name, "--force"], course) for name in names)
    rows = []
    for w in workers:  # each into a fresh output folder: nothing is skipped as already graded
        out = work / f"qkv_out_{w}"
        t_qkv = _run([sys.executable, "-m", "qkv_grading.cli", "grade", str(subs), "--out", str(out),
                      "--workers", str(w), "--no-progress", "--root", str(root)], root)
        with open(out / "grades.csv") as f:
            scores = [float(r["score"]) / float(r["max_score"]) for r in csv.DictReader(f)]
        rows.append({"workers": w, "qkv_s": t_qkv, "ratio": t_nbgrader / t_qkv,
                     "qkv_full": sum(s == 1.0 for s in scores)})
    nb_scores = _nbgrader_scores(course)
    return {"notebooks": n, "nbgrader_s": t_nbgrader, "rows": rows,
            "nbgrader_full": sum(s == 1.0 for s in nb_scores)}


def main(args: argparse.Namespace) -> int:
    root = find_root(args.root)
    names = args.assignment or list(ASSIGNMENTS)
    workers = args.workers or [1, 2]
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
        res = bench(root, args.students, workers, names, work)
    else:
        with tempfile.TemporaryDirectory(prefix="qkv-bench-grade-") as tmp:
            res = bench(root, args.students, workers, names, Path(tmp))
    n = res["notebooks"]
    cores = os.cpu_count()
    print(f"{n} notebooks ({args.students} students x {len(names)} assignments), {cores} CPU cores")
    print(f"nbgrader autograde (one process per assignment): {res['nbgrader_s']:.1f} s, "
          f"{res['nbgrader_s'] / n:.2f} s/notebook, {res['nbgrader_full']}/{n} full marks")
    for row in res["rows"]:
        print(f"qkv grade --workers {row['workers']} (sandboxed):          {row['qkv_s']:.1f} s, "
              f"{row['qkv_s'] / n:.2f} s/notebook, {row['qkv_full']}/{n} full marks, "
              f"ratio (nbgrader / qkv) {row['ratio']:.2f}x")
    return 0 if all(row["qkv_full"] == n for row in res["rows"]) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    configure(parser)
    sys.exit(main(parser.parse_args()))
