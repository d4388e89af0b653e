"""Seconds per notebook of `qkv grade` against plain `nbgrader autograde`, measured side by side in one run.

Both grade the same submissions: --students copies of every solution notebook. nbgrader gets what it
expects and is given its best case: one `nbgrader autograde ASSIGNMENT` process per assignment (not one per
student), with the assignments generated beforehand (untimed). `qkv grade` runs as its own process too,
with --workers processes. Both timings include process start-up. The scores of both are checked to be full.

Then the scaling table (alone with --no-nbgrader): the same notebooks graded inside this process, the
kernel runs and the judging only (no process or cluster start-up, no files written), directly (one notebook
after another, no Dask) and through Dask with 1 and 2 local workers, and with --scheduler on a running
cluster. The overhead is what Dask with 1 worker adds over running the same notebooks directly.
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
from dataclasses import dataclass
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
    parser.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                        help="also grade on this running Dask cluster (qkv grade --scheduler)")
    parser.add_argument("--no-nbgrader", action="store_true",
                        help="skip the comparison with nbgrader autograde (only the scaling table)")


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


@dataclass
class Scaling:
    """Seconds per notebook inside one process: directly, and through Dask (startup not counted)."""

    notebooks: int
    direct_s: float
    dask_s: dict[str, float]  # "1 local worker", "2 local workers", "cluster tcp://..." -> seconds
    startup_s: dict[str, float]  # the same keys -> seconds to start (or reach) the cluster

    @property
    def overhead(self) -> float:
        """What Dask with one local worker adds over running the same notebooks directly (a fraction)."""
        return self.dask_s["1 local worker"] / self.direct_s - 1


def _jobs(subs: Path, names: list[str]) -> list:
    from qkv_grading.discover import discover
    from qkv_grading.workers import Job

    found, _ = discover(subs, names)
    return [Job(student, name, str(path), 30.0) for student, name, path in found]


def _direct(specs: dict, jobs: list) -> float:
    """Run and judge every notebook here, one after another, as a single Dask worker would."""
    from qkv_grading import workers
    from qkv_grading.execute import ExecutionSettings
    from qkv_grading.judge import judge_run
    from qkv_grading.run import read_submission

    pool = workers.worker_pool(ExecutionSettings(sandboxed=True))
    try:
        pool.prewarm()  # as a Dask worker's first notebook would find after the first run
        start = time.perf_counter()
        for job in jobs:
            spec = specs[job.assignment]
            run = workers.run_one(pool, spec, read_submission(Path(job.path), spec), job.timeout)
            assert judge_run(run, spec).score == spec.max_score
        elapsed = time.perf_counter() - start
        pool.shutdown_warm()
    finally:
        workers.close_pool(pool)
    return elapsed


def _through_dask(specs: dict, jobs: list, workers: int, scheduler: str | None) -> tuple[float, float]:
    """(seconds to start or reach the cluster, seconds to grade ``jobs`` on it)."""
    from qkv_grading.execute import ExecutionSettings
    from qkv_grading.workers import Runner

    start = time.perf_counter()
    runner = Runner(specs, ExecutionSettings(sandboxed=True), workers, scheduler=scheduler)
    try:
        for _ in runner.results(jobs[: max(1, workers)], progress=False):  # warm kernels, as _direct
            pass
        started = time.perf_counter()
        results = list(runner.results(jobs, progress=False))
        elapsed = time.perf_counter() - started
    finally:
        runner.close()
    assert all(r.score == specs[r.assignment].max_score for r in results)
    return started - start, elapsed


def scaling(root: Path, subs: Path, names: list[str], scheduler: str | None) -> Scaling:
    from qkv_grading.spec import load_spec

    specs = {name: load_spec(root, name, hidden=True) for name in names}
    jobs = _jobs(subs, names)
    direct = _direct(specs, jobs)
    dask_s, startup_s = {}, {}
    runs = [("1 local worker", 1, None), ("2 local workers", 2, None)]
    if scheduler:
        runs.append((f"cluster {scheduler}", 1, scheduler))
    for label, workers, address in runs:
        startup_s[label], dask_s[label] = _through_dask(specs, jobs, workers, address)
    return Scaling(len(jobs), direct, dask_s, startup_s)


def _submissions(root: Path, students: int, names: list[str], work: Path) -> Path:
    subs = work / "submissions"
    for k in range(students):
        for name in names:
            folder = subs / f"s{k:03d}" / name
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / "solutions" / name / f"{name}.ipynb", folder / f"{name}.ipynb")
    return subs


def bench(root: Path, students: int, workers: list[int], names: list[str], work: Path,
          scheduler: str | None = None) -> dict:
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
    runs = [(f"--workers {w}", ["--workers", str(w)]) for w in workers]
    if scheduler:
        runs.append((f"--scheduler {scheduler}", ["--scheduler", scheduler]))
    for k, (label, flags) in enumerate(runs):  # each into a fresh output folder: nothing is skipped
        out = work / f"qkv_out_{k}"
        t_qkv = _run([sys.executable, "-m", "qkv_grading.cli", "grade", str(subs), "--out", str(out),
                      *flags, "--no-progress", "--root", str(root)], root)
        with open(out / "grades.csv") as f:
            scores = [float(r["score"]) / float(r["max_score"]) for r in csv.DictReader(f)]
        rows.append({"label": label, "qkv_s": t_qkv, "ratio": t_nbgrader / t_qkv,
                     "qkv_full": sum(s == 1.0 for s in scores)})
    nb_scores = _nbgrader_scores(course)
    return {"notebooks": n, "nbgrader_s": t_nbgrader, "rows": rows,
            "nbgrader_full": sum(s == 1.0 for s in nb_scores)}


def _print_scaling(sc: Scaling) -> None:
    print(f"scaling, {sc.notebooks} notebooks graded inside one process (kernel runs and judging; "
          f"start-up apart):")
    width = max(32, *(len(label) + 6 for label in sc.dask_s))
    print(f"  {'how':<{width}} {'s/notebook':>10} {'start-up s':>10}")
    print(f"  {'directly, no Dask':<{width}} {sc.direct_s / sc.notebooks:>10.2f} {'':>10}")
    for label, seconds in sc.dask_s.items():
        print(f"  {'Dask, ' + label:<{width}} {seconds / sc.notebooks:>10.2f} "
              f"{sc.startup_s[label]:>10.1f}")
    print(f"  overhead of Dask (1 local worker over directly): {100 * sc.overhead:+.1f}% (goal: under 5%)")


def _work(args, fn):
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
        return fn(work)
    with tempfile.TemporaryDirectory(prefix="qkv-bench-grade-") as tmp:
        return fn(Path(tmp))


def main(args: argparse.Namespace) -> int:
    root = find_root(args.root)
    names = args.assignment or list(ASSIGNMENTS)
    workers = args.workers or [1, 2]
    cores = os.cpu_count()
    os.environ.setdefault("MPLBACKEND", "Agg")
    if args.no_nbgrader:
        sc = _work(args, lambda w: scaling(root, _submissions(root, args.students, names, w), names,
                                           args.scheduler))
        print(f"{sc.notebooks} notebooks ({args.students} students x {len(names)} assignments), "
              f"{cores} CPU cores")
        _print_scaling(sc)
        return 0

    def both(work: Path):
        res = bench(root, args.students, workers, names, work, args.scheduler)
        return res, scaling(root, work / "submissions", names, args.scheduler)

    res, sc = _work(args, both)
    n = res["notebooks"]
    print(f"{n} notebooks ({args.students} students x {len(names)} assignments), {cores} CPU cores")
    print(f"nbgrader autograde (one process per assignment): {res['nbgrader_s']:.1f} s, "
          f"{res['nbgrader_s'] / n:.2f} s/notebook, {res['nbgrader_full']}/{n} full marks")
    for row in res["rows"]:
        print(f"qkv grade {row['label']} (sandboxed): {row['qkv_s']:.1f} s, "
              f"{row['qkv_s'] / n:.2f} s/notebook, {row['qkv_full']}/{n} full marks, "
              f"ratio (nbgrader / qkv) {row['ratio']:.2f}x")
    _print_scaling(sc)
    return 0 if all(row["qkv_full"] == n for row in res["rows"]) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    configure(parser)
    sys.exit(main(parser.parse_args()))
