"""Autograde SUBMISSIONS/<student>/<assignment>/<assignment>.ipynb into a gradebook, CSVs, feedback and a report.

Writes into --out DIR:
  gradebook.db        nbgrader's gradebook (SQLite unless --db gives another URL): one auto score per test cell
  grades.csv          student,assignment,score,max_score
  questions.csv       student,assignment,question,score,max_score
  report.csv          every submission's status and what the grader noticed or repaired; ignored files
  report.png          the score distribution of every question
  feedback/<student>/<assignment>.html   test results and messages (hidden test code is never shown, not even
                                         what a submission's own code reads of it and prints)
  results/<student>/<assignment>.json    the grader's record; a re-run skips submissions that did not change

Workers (--workers N) are long-lived processes that only execute notebooks; this process alone writes the
gradebook and the files, so parallel grading cannot corrupt them. A bad submission (not JSON, metadata
stripped, cells deleted or edited, an endless loop, a crashing kernel, huge output, a missing notebook)
gets its score and a reason in report.csv, and costs the others no more than its own timeouts.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from qkv_grading import sandbox
from qkv_grading.course import ASSIGNMENTS, find_root
from qkv_grading.judge import InstructorError

DEFAULT_TIMEOUT = 30.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submissions", help="folder of <student>/<assignment>/<assignment>.ipynb")
    parser.add_argument("--out", required=True, help="output folder (gradebook, CSVs, feedback, report)")
    parser.add_argument("--workers", type=int, default=1, help="parallel grading processes (default 1)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds each cell may run (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--db", default=None, help="gradebook URL (default: sqlite:///OUT/gradebook.db)")
    parser.add_argument("--assignment", action="append", default=None,
                        help="grade only this assignment (repeatable; default: every assignment submitted)")
    parser.add_argument("--root", default=None, help="the course repository (default: found from the working directory)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-sandbox", action="store_true",
                        help="run kernels without bubblewrap (unsafe with untrusted submissions; the report says so)")


# ---- finding the work ---------------------------------------------------------------------------------

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


# ---- the workers ----------------------------------------------------------------------------------------

_SPECS: dict = {}


def _init_worker(specs: dict, scratch: str, sandboxed: bool) -> None:
    """Each worker gets the prepared assignments once, at start: no per-submission set-up, no nbgrader import.
    Its kernels work in folders under ``scratch``. A worker that is told to stop kills its kernels."""
    from qkv_grading import execute

    _SPECS.update(specs)
    os.environ.setdefault("MPLBACKEND", "Agg")
    execute.configure(scratch, sandboxed)
    signal.signal(signal.SIGTERM, _stopped)


def _stopped(signum, frame) -> None:
    """SIGTERM in a worker: the pool broke (another worker died) and is stopping every worker. Kill this one's
    kernels, the warm one and a busy one, so that none outlives it, and go."""
    from qkv_grading.execute import kill_all_now

    kill_all_now()
    os._exit(128 + signum)


def _started_marker(scratch: str, job: tuple) -> Path:
    """The file a worker writes as it starts ``job``: after a worker dies, it tells the jobs that were running
    (suspects) from those still queued (innocent: they only fell with the pool)."""
    return Path(scratch) / "started" / hashlib.sha256(repr(job[:2]).encode()).hexdigest()[:24]


def _grade_job(job: tuple[str, str, str, float]):
    """In a worker: run one submission in a kernel. Returns (student, KernelRun): data, never a grade."""
    from qkv_grading import execute
    from qkv_grading.core import KernelRun, run_file

    student, name, path, timeout = job
    spec = _SPECS[name]
    if execute.SCRATCH_ROOT is not None:
        marker = _started_marker(execute.SCRATCH_ROOT, job)
        marker.parent.mkdir(exist_ok=True)
        marker.touch()
    try:
        run = run_file(path, spec, timeout=timeout, prewarm=True)
    except Exception as exc:  # the grader itself failed on this submission: score 0, say why, go on
        run = KernelRun(name, "error", notes=[f"the grader failed on this submission: {type(exc).__name__}: {exc}"])
    return student, run


def _warm_up() -> str | None:
    """Boot a kernel in the worker before the first submission arrives. Returns None, or why that failed:
    the worker then starts a kernel for each notebook (a cold start), and grading goes on."""
    from qkv_grading.execute import prewarm

    try:
        return prewarm()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


class Runner:
    """Grades jobs in a pool of long-lived worker processes (one or more). Even one worker is a process of
    its own: a notebook that kills its kernel's parent then kills a worker, never the process that owns the
    gradebook. Created before the gradebook is opened, so that the workers boot while this process prepares
    everything else."""

    def __init__(self, specs: dict, workers: int, sandboxed: bool = True):
        self.specs, self.workers, self.sandboxed = specs, workers, sandboxed
        # Every kernel's scratch folder goes in here, removed as a whole at the end: also the folders of a
        # worker that was killed before it could clean up.
        self.scratch = tempfile.mkdtemp(prefix="qkv-grade-")
        self.warm_ups: list = []  # the workers' first kernels, booted ahead of time
        self.pool = self._new_pool()

    def _new_pool(self):
        pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.specs, self.scratch, self.sandboxed))
        self.warm_ups += [pool.submit(_warm_up) for _ in range(self.workers)]
        return pool

    def _replace_pool(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self._new_pool()

    def warm_failures(self) -> list[str]:
        """Why kernels could not be booted ahead of time (those notebooks started their own kernels)."""
        out = []
        for fut in self.warm_ups:
            if fut.done() and not fut.cancelled():
                try:
                    why = fut.result()
                except Exception as exc:  # the worker itself died: reported with its submissions
                    why = None if isinstance(exc, BrokenProcessPool) else f"{type(exc).__name__}: {exc}"
                if why:
                    out.append(why)
        return out

    def results(self, jobs: list, progress: bool):
        """Yield results as they come. A worker that dies (a notebook killed its kernel's parent, or memory ran
        out) breaks the whole pool, and every unfinished job fails with it. Those that had not started are
        graded again in a fresh pool; those that had (at most one per worker) are graded again one at a time,
        so that one which kills its worker again is known to be the cause: it gets 0 and a reason."""
        from tqdm import tqdm

        from qkv_grading.core import empty_result, judge_run

        def judged(done) -> dict:  # points are awarded here, in the process that owns the gradebook
            student, run = done
            result = judge_run(run, self.specs[run.assignment])
            result["student"] = student
            return result

        bar = tqdm(total=len(jobs), desc="grading", unit="nb", disable=not progress, file=sys.stderr)
        try:
            pending, suspects = list(jobs), []
            while pending:
                futures = {self.pool.submit(_grade_job, job): job for job in pending}
                pending = []
                for fut in as_completed(futures):
                    try:
                        result = judged(fut.result())
                    except BrokenProcessPool:
                        job = futures[fut]
                        (suspects if _started_marker(self.scratch, job).exists() else pending).append(job)
                        continue
                    yield result
                    bar.update()
                if pending or suspects:
                    self._replace_pool()
                if pending and len(pending) == len(futures):  # the pool broke before any job started
                    suspects += pending
                    pending = []
            for job in suspects:  # alone in the pool: if the pool breaks now, this job broke it
                _started_marker(self.scratch, job).unlink(missing_ok=True)
                try:
                    result = judged(self.pool.submit(_grade_job, job).result())
                except BrokenProcessPool:
                    student, name, _, _ = job
                    result = empty_result(self.specs[name], "error",
                                          "grading this notebook killed the grading process, twice (does it kill "
                                          "its parent process, or use up the memory?)")
                    result["student"] = student
                    self._replace_pool()
                yield result
                bar.update()
        finally:
            bar.close()

    def close(self) -> None:
        try:
            self.pool.shutdown(wait=True)
            failures = self.warm_failures()
            if failures:
                print(f"qkv grade: {len(failures)} kernel(s) could not be started ahead of time, so notebooks "
                      f"started their own (slower, same grades); first reason: {failures[0]}", file=sys.stderr)
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)


# ---- the gradebook (written by this process only) -------------------------------------------------------

def _save_cells_into(gb):
    """nbgrader's own SaveCells, recording into the writer's open gradebook rather than a second connection
    of its own (a subclass: nbgrader itself is left as it is)."""
    from nbgrader.preprocessors import SaveCells
    from nbgrader.preprocessors.base import NbGraderPreprocessor

    class SaveCellsInto(SaveCells):
        def preprocess(self, nb, resources):
            self.notebook_id = resources["nbgrader"]["notebook"]
            self.assignment_id = resources["nbgrader"]["assignment"]
            self.new_grade_cells, self.new_solution_cells = {}, {}
            self.new_task_cells, self.new_source_cells = {}, {}
            self.gradebook = gb
            nb, resources = NbGraderPreprocessor.preprocess(self, nb, resources)
            self._create_notebook(nb)
            return nb, resources

    return SaveCellsInto()


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
        gid = cell.metadata.nbgrader["grade_id"]
        names["locked"].add(gid)
        for kind, test in (("test", utils.is_grade), ("answer", utils.is_solution), ("task", utils.is_task)):
            if test(cell):
                names[kind].add(gid)
    return names


class GradebookWriter:
    def __init__(self, url: str, root: Path):
        from nbgrader.api import Gradebook

        # nbgrader runs the `alembic` command of its own environment to stamp a new gradebook
        bindir = os.path.dirname(sys.executable)
        if bindir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        self.url = url
        self.gb = Gradebook(url, course_id="qkv-course")
        self.root = root
        self.ready: set[str] = set()

    def prepare(self, name: str) -> None:
        from qkv_grading.course import instructor_notebook, read_notebook, source_path

        if name in self.ready:
            return
        self.gb.update_or_create_assignment(name)
        self.gb.db.commit()
        nb = instructor_notebook(read_notebook(source_path(self.root, name)))
        try:
            _save_cells_into(self.gb).preprocess(
                nb, {"nbgrader": {"db_url": self.url, "assignment": name, "notebook": name}})
            self.gb.db.commit()
        except RuntimeError:  # nbgrader refuses to add or remove cells once there are submissions
            self.gb.db.rollback()
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

    def record(self, result: dict) -> None:
        import warnings

        from nbgrader.api import MissingEntry

        warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's add_submission, harmless

        name, student = result["assignment"], result["student"]
        self.prepare(name)
        self.gb.update_or_create_student(student)
        try:
            self.gb.find_submission(name, student)
        except MissingEntry:
            self.gb.add_submission(name, student)
        for t in result["tests"]:
            grade = self.gb.find_grade(t["id"], name, name, student)
            grade.auto_score = t["points"]  # overwritten, never added: a re-run cannot double-count
        self.gb.db.commit()

    def close(self) -> None:
        self.gb.close()


# ---- outputs --------------------------------------------------------------------------------------------

def load_results(out: Path) -> list[dict]:
    results = []
    for path in sorted((out / "results").glob("*/*.json")):
        try:
            results.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(results, key=lambda r: (r["student"], r["assignment"]))


def write_tables(out: Path, results: list[dict], ignored: list[str], notices: list[str] = ()) -> None:
    from qkv_grading.core import questions

    with open(out / "grades.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", "assignment", "score", "max_score"])
        for r in results:
            w.writerow([r["student"], r["assignment"], f"{r['score']:g}", f"{r['max_score']:g}"])
    with open(out / "questions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", "assignment", "question", "score", "max_score"])
        for r in results:
            for q, (s, m) in questions(r).items():
                w.writerow([r["student"], r["assignment"], q, f"{s:g}", f"{m:g}"])
    with open(out / "report.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", "assignment", "score", "max_score", "status", "notes"])
        for r in results:
            w.writerow([r["student"], r["assignment"], f"{r['score']:g}", f"{r['max_score']:g}", r["status"],
                        "; ".join(r["notes"])])
        for path in ignored:
            w.writerow(["", "", "", "", "ignored", path])
        for notice in notices:
            w.writerow(["", "", "", "", "no sandbox", notice])


def write_figure(out: Path, results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from qkv_grading.core import questions

    names = [a for a in ASSIGNMENTS if any(r["assignment"] == a for r in results)]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.2 * max(1, len(names)), 3.4), squeeze=False,
                             sharey=True)
    rng = np.random.default_rng(0)
    for ax, name in zip(axes[0], names):
        per_q: dict[str, list[float]] = {}
        for r in results:
            if r["assignment"] == name:
                for q, (s, m) in questions(r).items():
                    per_q.setdefault(q, []).append(s / m if m else 0.0)
        for x, (q, fractions) in enumerate(per_q.items()):
            ys = np.array(fractions)
            ax.scatter(x + rng.uniform(-0.15, 0.15, len(ys)), ys, s=12, alpha=0.5, color="tab:blue")
            ax.plot([x - 0.3, x + 0.3], [ys.mean()] * 2, color="tab:red", lw=2)
        ax.set_xticks(range(len(per_q)), list(per_q))
        ax.set_title(f"{name}\n({sum(r['assignment'] == name for r in results)} submissions)", fontsize=9)
        ax.set_ylim(-0.05, 1.05)
    axes[0][0].set_ylabel("score / max per question (red: mean)")
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=100)
    plt.close(fig)


# ---- the command ----------------------------------------------------------------------------------------

class Graded(list):
    """Every result recorded in the output folder (this run's and earlier ones'), and in ``executed`` the
    (student, assignment) of the submissions this run actually ran; the others had not changed."""

    executed: list[tuple[str, str]]


def grade(submissions: Path, out: Path, root: Path, workers: int = 1, timeout: float = DEFAULT_TIMEOUT, *,
          sandboxed: bool = True,
          db: str | None = None, only: list[str] | None = None, progress: bool = True) -> Graded:
    """Grade everything under ``submissions`` that changed since the last run into ``out``; return every
    result recorded in ``out``. Raises ``GradebookMismatch`` (before grading anything) when nbgrader's
    gradebook cannot take the assignments as they are now."""
    from qkv_grading.core import load_spec, result_json

    out.mkdir(parents=True, exist_ok=True)
    jobs, ignored = discover(submissions, only)
    names = [a for a in ASSIGNMENTS if a in {j[1] for j in jobs}]
    specs = {name: load_spec(root, name, hidden=True) for name in names}
    for spec in specs.values():
        spec.judge  # built before anything runs: an instructor's set-up cell that fails here stops the run
    todo = []
    for student, name, path in jobs:
        key = submission_key(path, specs[name].fingerprint, timeout)
        record = out / "results" / student / f"{name}.json"
        if record.is_file():
            try:
                if json.loads(record.read_text()).get("key") == key:
                    continue  # graded before, unchanged: keep what was recorded
            except ValueError:
                pass
        todo.append(((student, name, str(path), timeout), key))
    keys = {(j[0], j[1]): key for j, key in todo}
    if sandboxed:
        sandbox.require()
    runner = Runner({n: specs[n] for n in {j[1] for j, _ in todo}}, workers, sandboxed) if todo else None
    writer = None
    executed = []
    try:
        if runner is not None:
            writer = GradebookWriter(db or f"sqlite:///{(out / 'gradebook.db').resolve()}", root)
            for name in runner.specs:
                writer.prepare(name)
            for result in runner.results([j for j, _ in todo], progress):
                student, name = result["student"], result["assignment"]
                executed.append((student, name))
                result["key"] = keys[(student, name)]
                feedback = result.pop("feedback")
                fb = out / "feedback" / student / f"{name}.html"
                fb.parent.mkdir(parents=True, exist_ok=True)
                fb.write_text(feedback, encoding="utf-8")
                writer.record(result)
                record = out / "results" / student / f"{name}.json"
                record.parent.mkdir(parents=True, exist_ok=True)
                tmp = record.with_suffix(".tmp")
                tmp.write_text(result_json(result))
                os.replace(tmp, record)  # last, so an interrupted run grades this submission again next time
        results = Graded(load_results(out))
        results.executed = executed
        notices = [] if sandboxed else ["graded with --no-sandbox: kernels could read and write whatever the "
                                        "grader's user can, solutions/ included"]
        write_tables(out, results, ignored, notices)
        write_figure(out, results)
    finally:
        if writer is not None:
            writer.close()
        if runner is not None:
            runner.close()
    return results


def main(args: argparse.Namespace) -> int:
    submissions = Path(args.submissions)
    if not submissions.is_dir():
        print(f"qkv grade: {submissions} is not a folder", file=sys.stderr)
        return 2
    root = find_root(args.root)
    out = Path(args.out)
    try:
        results = grade(submissions, out, root, workers=max(1, args.workers), timeout=args.timeout,
                        sandboxed=not args.no_sandbox, db=args.db,
                        only=args.assignment, progress=not args.no_progress)
    except (GradebookMismatch, sandbox.SandboxMissing, InstructorError) as exc:
        print(f"qkv grade: {exc}", file=sys.stderr)
        return 2
    problems = [r for r in results if r["status"] != "graded" or r["notes"]]
    kept = len(results) - len(results.executed)
    print(f"graded {len(results)} submission(s) into {out} ({len(results.executed)} run now, {kept} unchanged since "
          f"the last run): grades.csv, questions.csv, report.csv, report.png, feedback/ "
          f"({len(problems)} with notes in report.csv)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    configure(parser)
    sys.exit(main(parser.parse_args()))
