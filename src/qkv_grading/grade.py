"""Autograde SUBMISSIONS/<student>/<assignment>/<assignment>.ipynb into a gradebook, CSVs, feedback and a report.

Writes into --out DIR:
  gradebook.db        nbgrader's gradebook (SQLite unless --db gives another URL): one auto score per test cell
  grades.csv          student,assignment,score,max_score,status,timestamp (score empty: not submitted)
  grades_wide.csv     one row per student, one column per assignment: for an LMS import (with --roster,
                      the students' names, email and LMS id too)
  questions.csv       student,assignment,question,score,max_score (submitted work only)
  report.csv          every submission's status and what the grader noticed or repaired
  ignored.csv         files and folders in SUBMISSIONS that were not graded, and why
  report.html         the class report: scores per question, failure messages ranked, what needs a look
  report.png          the score distribution of every question
  notices.txt         notices about the whole run, one a line (graded with --no-sandbox), shown in report.html
  autograded/<student>/<assignment>/<assignment>.ipynb   the executed notebooks, where nbgrader's
                      formgrader shows the written answers it grades by hand (qkv_grading.manual)
  nbgrader_config.py  for the formgrader and `nbgrader export` started in DIR: this gradebook
  feedback/<student>/<assignment>/<assignment>.html   the learner's notebook rendered, with each test's
                      points and message (hidden test code is never shown), in nbgrader's layout with
                      timestamp.txt, for `nbgrader release_feedback`
  results/<student>/<assignment>.json    the grader's record; a re-run skips submissions that did not change

Workers are Dask worker processes that only execute notebooks: --workers N starts a local cluster of N,
--scheduler tcp://HOST:PORT uses a running cluster (a worker needs the course package and bubblewrap, never
solutions/). This process awards the points and alone writes the gradebook and the files, so parallel
grading cannot corrupt them. A bad submission (not JSON, metadata
stripped or invalid, cells deleted or edited, an endless loop, a crashing kernel, huge output, records
that are not plain data, a missing notebook, a symbolic link) gets its score and a reason in report.csv,
and costs the others no more than its own timeouts. Submissions are read as data: a link under
SUBMISSIONS is refused (ignored.csv), never followed. Should the grader itself fail on one submission,
that submission is recorded as "error" with the reason, and graded again by the next run.

Stopping (Ctrl-C, kill, a lost scheduler) stops the workers and kernels this run started, and keeps every
submission recorded so far; the same command again grades only the rest. Each submission's gradebook row is
written before its result record, which is written last and atomically: a stop between the two leaves the
record missing, so the next run grades that submission again and overwrites its row (scores are set, never
added).
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from qkv_grading import library, manual, sandbox
from qkv_grading.course import ASSIGNMENTS, find_root
from qkv_grading.discover import (LINK, NOT_REGULAR, TOO_SHALLOW, Ignored, collected_timestamp, discover,
                                  submission_key, submitted)
from qkv_grading.execute import ExecutionSettings
from qkv_grading.feedback import render_page, shown_notebook, write_feedback
from qkv_grading.gradebook import GradebookMismatch, GradebookWriter, record_students, students
from qkv_grading.judge import InstructorError, empty_result
from qkv_grading.limits import Limits
from qkv_grading.report import load_results, write_class_report, write_figure, write_tables
from qkv_grading.results import Result, not_submitted, plain
from qkv_grading.roster import RosterError, Student, read_roster
from qkv_grading.spec import load_spec
from qkv_grading.workers import Job, Runner, SchedulerUnreachable


DEFAULT_TIMEOUT = 30.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submissions", help="folder of <student>/<assignment>/<assignment>.ipynb")
    parser.add_argument("--out", required=True, help="output folder (gradebook, CSVs, feedback, report)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes of the local Dask cluster (default 1)")
    parser.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                        help="send the notebooks to a running Dask cluster instead (its workers need the "
                             "course package and bubblewrap, not solutions/)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds each cell may run (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--db", default=None, help="gradebook URL (default: sqlite:///OUT/gradebook.db)")
    parser.add_argument("--assignment", action="append", default=None,
                        help="grade only this assignment (repeatable; default: every assignment submitted)")
    parser.add_argument("--root", default=None, help="the course repository (default: found from the working directory)")
    parser.add_argument("--roster", type=Path, default=None, metavar="ROSTER.csv",
                        help="the students (columns id, first_name, last_name or name, email, lms_user_id): "
                             "into the gradebook and grades_wide.csv, for an LMS to match on")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-sandbox", action="store_true",
                        help="run kernels without bubblewrap (unsafe with untrusted submissions; the report says so)")


class Graded(list):
    """Every result recorded in the output folder (this run's and earlier ones'), and in ``executed`` the
    (student, assignment) of the submissions this run recorded; the others had not changed. Of those,
    ``absent`` were not handed in (no notebook ran). ``asked`` counts the (student, assignment) pairs
    found in SUBMISSIONS, ``ignored`` what was left out there."""

    executed: list[tuple[str, str]]
    absent: int
    asked: int
    ignored: list[Ignored]


class Stopped(KeyboardInterrupt):
    """The grader was told to stop (SIGTERM); handled like Ctrl-C."""


_TOLD_TO_STOP: list[KeyboardInterrupt] = []  # stop signals received, kept in case Python swallowed them


def _stop_signal(signum, frame):
    """SIGINT and SIGTERM while grading: stop. The exception is also kept, because Python only reports
    (and drops) one raised while it runs a callback such as a garbage-collector hook or ``__del__``."""
    _TOLD_TO_STOP.append(Stopped() if signum == signal.SIGTERM else KeyboardInterrupt())
    raise _TOLD_TO_STOP[-1]


def _unraisable_unless_a_stop(hook):
    """``sys.unraisablehook`` that says nothing of a swallowed stop signal (it is raised again)."""
    def unraisable(info):
        if not any(info.exc_value is told for told in _TOLD_TO_STOP):
            hook(info)
    return unraisable


def _stop_if_told() -> None:
    """Raise a stop signal that arrived but was swallowed where it was first raised."""
    if _TOLD_TO_STOP:
        raise _TOLD_TO_STOP[0]


class Interrupted(Exception):
    """Grading stopped before the end; what was recorded stays, and a re-run grades the rest."""

    def __init__(self, why: str, recorded: int, left: int):
        super().__init__(why)
        self.why = why
        self.recorded, self.left = recorded, left  # notebooks graded and recorded this run; not graded yet


def grade(submissions: Path, out: Path, root: Path, workers: int = 1, timeout: float = DEFAULT_TIMEOUT, *,
          sandboxed: bool = True, scheduler: str | None = None,
          db: str | None = None, only: list[str] | None = None, progress: bool = True,
          limits: Limits = Limits(), roster: list[Student] = ()) -> Graded:
    """Grade everything under ``submissions`` that changed since the last run into ``out``; return every
    result recorded in ``out``. Raises ``GradebookMismatch`` (before grading anything) when nbgrader's
    gradebook cannot take the assignments as they are now, and ``Interrupted`` when the run stops early
    (Ctrl-C, SIGTERM, the scheduler lost). Whatever one submission does ends as its own status and
    reason; and however the run ends, the tables and the class report are written from what was graded."""
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError

    out.mkdir(parents=True, exist_ok=True)
    submissions = submissions.resolve()  # no link above the students' folders: see discover.read_regular
    jobs, ignored = discover(submissions, only)
    executed: list[tuple[str, str]] = []
    absent: list = []
    runner = None
    finished = False
    try:
        names = [a for a in ASSIGNMENTS if a in {j[1] for j in jobs}]
        specs = {name: load_spec(root, name, hidden=True) for name in names}
        for spec in specs.values():
            spec.judge  # built before anything runs: an instructor's set-up cell that fails here stops the run
            library.plan(spec.runnable, spec.name)  # so does a probe part that cannot be planned (PlanError)
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
            todo.append((Job(student, name, str(path), timeout), key))
        keys = {(j.student, j.assignment): key for j, key in todo}
        refused = {(i.student, i.assignment): i for i in ignored if i.refused}
        found = {}  # (student, assignment) -> what was refused in that submission, for its notes
        for i in ignored:
            if i.student and i.reason in (LINK, NOT_REGULAR):
                found.setdefault((i.student, i.assignment), []).append(f"{i.path}: {i.reason}")
        absent = [not_submitted(specs[j.assignment], j.student) for j, _ in todo if not submitted(Path(j.path))]
        stopped = [_refusal(specs[j.assignment], j.student, refused[(j.student, j.assignment)])
                   for j, _ in todo if (j.student, j.assignment) in refused and submitted(Path(j.path))]
        todo = [(j, key) for j, key in todo
                if submitted(Path(j.path)) and (j.student, j.assignment) not in refused]
        if sandboxed:
            sandbox.require()
        runner = writer = None
        absent_keys = {(r.student, r.assignment) for r in absent}
        try:
            if todo:
                # the gradebook opens (nbgrader stamps a new one by running alembic) while the workers start
                pool = ThreadPoolExecutor(1)
                opening = pool.submit(GradebookWriter, db or f"sqlite:///{(out / 'gradebook.db').resolve()}",
                                      root)
                try:
                    runner = Runner({n: specs[n] for n in {j.assignment for j, _ in todo}},
                                    ExecutionSettings(sandboxed=sandboxed, limits=limits), workers,
                                    scheduler=scheduler)
                finally:
                    pool.shutdown()
                    writer = None if opening.exception() else opening.result()
                if writer is None:
                    raise opening.exception()
                for name in {j.assignment for j, _ in todo}:
                    writer.prepare(name)  # a gradebook that cannot take them stops the run before any work
            elif stopped:
                writer = GradebookWriter(db or f"sqlite:///{(out / 'gradebook.db').resolve()}", root)
            ran = runner.results([j for j, _ in todo], progress) if runner is not None else []
            for result in itertools.chain(stopped, ran, absent):
                _stop_if_told()
                student, name = result.student, result.assignment
                result.notes += [n for n in found.get((student, name), []) if n not in result.notes]
                _record(out, submissions, writer, specs[name], result, keys[(student, name)])
                executed.append((student, name))
            _stop_if_told()
        except (KeyboardInterrupt, CommClosedError, FutureCancelledError) as exc:
            why = ("told to stop (SIGTERM)" if isinstance(exc, Stopped) else "interrupted (Ctrl-C)"
                   if isinstance(exc, KeyboardInterrupt) else f"lost the Dask scheduler ({exc})")
            graded_now = len([key for key in executed if key not in absent_keys])
            raise Interrupted(why, graded_now, len(todo) + len(stopped) - graded_now) from None
        finally:
            try:
                if runner is not None:
                    runner.close()
            finally:
                if writer is not None:
                    writer.close()
        finished = True
    finally:
        try:
            results = _write_reports(out, ignored, sandboxed, db,
                                      runner.notices if runner is not None else [], roster)
        except Exception as exc:
            if finished:
                raise
            # the run is stopping for another reason, which is the one to see
            print(f"qkv grade: could not write the tables and report.html ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
    results.executed = executed
    results.absent, results.asked, results.ignored = len(absent), len(jobs), ignored
    return results


def _refusal(spec, student: str, refused: Ignored) -> Result:
    """The result of a submission that cannot be graded at all (its notebook or folder is a link)."""
    result = empty_result(spec, "rejected", f"{refused.path}: {refused.reason}")
    result.student = student
    return result


def _record(out: Path, submissions: Path, writer, spec, result: Result, key: str) -> None:
    """Write one submission's gradebook row, feedback page and result record, in that order (the record
    last and atomically: a run stopped before it grades this submission again next time). Should the
    grader fail on it (a bug, a page nbconvert cannot render), the submission is recorded as "error"
    with the reason, and graded again by the next run."""
    student, name = result.student, result.assignment
    try:
        _write_one(out, submissions, writer, spec, result, key)
    except Exception as exc:
        if writer is not None:
            writer.rollback()
        reason = (f"the grader failed on {student}/{name} while recording it: {type(exc).__name__}: "
                  f"{exc}")
        print(f"qkv grade: {plain(reason)}", file=sys.stderr)
        failed = empty_result(spec, "error", reason)
        failed.student = student
        try:
            _write_one(out, submissions, writer, spec, failed, "")  # no key: graded again next run
        except Exception:
            if writer is not None:
                writer.rollback()
            _write_record(out, failed)


def _write_one(out: Path, submissions: Path, writer, spec, result: Result, key: str) -> None:
    student, name = result.student, result.assignment
    result.key = key
    path = submissions / student / name / f"{name}.ipynb"
    if result.submitted:
        result.timestamp = plain(collected_timestamp(path))
        shown, repairs = shown_notebook(spec, result.executed, result.tests)
        result.notes += repairs
        result.executed = None  # shown: not kept in memory while the rest are graded
        writer.record(result)  # reads back the marks of written answers graded before
        page = manual.with_marks(render_page(spec, shown, result.tests, result.notes), result)
        write_feedback(out, student, name, page, path.parent)
        if result.autograded is not None:  # where the formgrader shows the written answers
            manual.write_autograded(out, student, name, result.autograded)
            result.autograded = None
    _write_record(out, result)


def _write_record(out: Path, result: Result) -> None:
    record = out / "results" / result.student / f"{result.assignment}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(result.to_json())
    os.replace(tmp, record)  # last, so an interrupted run grades this submission again next time


def _write_reports(out: Path, ignored: list[Ignored], sandboxed: bool, db: str | None,
                   run_notices: list[str], roster: list[Student] = ()) -> Graded:
    """The tables, the figure and the class report, from every result recorded in ``out``, with the
    marks given in the formgrader read back into every record first, and the roster's students put in
    the gradebook."""
    url = db or f"sqlite:///{(out / 'gradebook.db').resolve()}"
    if roster:
        record_students(url, roster)
    manual.refresh(out, url)
    manual.write_formgrader_config(out, url)
    results = Graded(load_results(out))
    notices = [] if sandboxed else ["graded with --no-sandbox: kernels could read and write whatever the "
                                    "grader's user can, solutions/ included"]
    notices += run_notices  # what the kernels ran without (no cgroup of their own, say)
    write_tables(out, results, ignored, notices, students(url))
    write_figure(out, results)
    write_class_report(out, results)
    return results


def published_by_git(out: Path, root: Path) -> str | None:
    """Why ``out`` must not hold grades (a folder inside the course repository that git does not ignore:
    a commit would publish every learner's grades and feedback), or None when it may."""
    out, root = out.resolve(), root.resolve()
    if not out.is_relative_to(root) or not (root / ".git").exists() or shutil.which("git") is None:
        return None
    rel = out.relative_to(root).as_posix()
    if rel == ".":
        return f"--out {out} is the course repository itself: write the grades outside it"
    check = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", "--", rel + "/"],
                           capture_output=True, text=True)
    if check.returncode != 1:  # 0: ignored; 128: git could not tell (not a work tree, say)
        return None
    return (f"--out {out} is inside the course repository and git does not ignore it, so a commit "
            f"would publish the grades and feedback: write outside the repository (e.g. --out "
            f"../grades) or into an ignored folder such as {root / 'grading-out'}")


def unknown_assignments(names: list[str] | None) -> str | None:
    """Why ``--assignment`` cannot be graded (names that are no assignment of the course), or None."""
    unknown = [name for name in names or [] if name not in ASSIGNMENTS]
    if not unknown:
        return None
    close = [m for name in unknown for m in difflib.get_close_matches(name, ASSIGNMENTS, n=1, cutoff=0.6)]
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return (f"--assignment {', '.join(unknown)}: no such assignment in this course{hint}; its assignments "
            f"are {', '.join(ASSIGNMENTS)}")


def inside_submissions(out: Path, submissions: Path) -> str | None:
    """Why ``out`` must not hold grades (the submissions folder or a folder in it: the next run would take
    the output folder for a student's), or None when it may."""
    out, submissions = out.resolve(), submissions.resolve()
    if not out.is_relative_to(submissions):
        return None
    return (f"--out {out} is inside the submissions folder {submissions}, where every folder is taken for "
            f"a student's (the grades would be graded as a student's work next time): write them outside it")


def too_shallow(submissions: Path, out: Path, results: Graded) -> str | None:
    """What to say when nothing was there to grade because the notebooks sit a level too shallow."""
    shallow = [i.path for i in results.ignored if i.reason == TOO_SHALLOW]
    if results.asked or not shallow:
        return None
    folder = submissions.resolve()
    return (f"nothing to grade in {folder}: its notebooks ({', '.join(shallow[:3])}"
            f"{', ...' if len(shallow) > 3 else ''}) sit {TOO_SHALLOW}. To grade every student, give the "
            f"folder that holds the students' folders (e.g. {folder.parent}). What was left out is in "
            f"{out / 'ignored.csv'}")


def main(args: argparse.Namespace) -> int:
    submissions = Path(args.submissions)
    if not submissions.is_dir():
        print(f"qkv grade: {submissions} is not a folder", file=sys.stderr)
        return 2
    out = Path(args.out)
    refusal = unknown_assignments(args.assignment) or inside_submissions(out, submissions)
    if refusal:
        print(f"qkv grade: {refusal}", file=sys.stderr)
        return 2
    try:
        roster = read_roster(args.roster) if args.roster is not None else []
    except (RosterError, OSError, UnicodeDecodeError) as exc:
        print(f"qkv grade: --roster: {exc}", file=sys.stderr)
        return 2
    root = find_root(args.root)
    refusal = published_by_git(out, root)
    if refusal:
        print(f"qkv grade: {refusal}", file=sys.stderr)
        return 2

    _TOLD_TO_STOP.clear()
    previous = {signum: signal.signal(signum, _stop_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    hook, sys.unraisablehook = sys.unraisablehook, _unraisable_unless_a_stop(sys.unraisablehook)
    # a lost scheduler is said once, below, in words: not also as the Dask client's reconnect tracebacks
    logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
    try:
        results = grade(submissions, out, root, workers=max(1, args.workers), timeout=args.timeout,
                        sandboxed=not args.no_sandbox, scheduler=args.scheduler, db=args.db,
                        only=args.assignment, progress=not args.no_progress, roster=roster)
    except (GradebookMismatch, sandbox.SandboxMissing, InstructorError, SchedulerUnreachable) as exc:
        print(f"qkv grade: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"qkv grade: {exc.why}: stopped its workers and kernels. {exc.recorded} notebook(s) graded "
              f"this run are recorded in {out} and kept; {exc.left} notebook(s) were not graded yet. Run the "
              f"same command again to grade only those (nothing recorded is graded twice).", file=sys.stderr)
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = hook
        _TOLD_TO_STOP.clear()  # handled: a later grade() in this process starts afresh
    hint = too_shallow(submissions, out, results)
    if hint:  # a usage error, like an unknown --assignment: the (empty) tables are written all the same
        print(f"qkv grade: {hint}", file=sys.stderr)
        return 2
    problems = [r for r in results if r.needs_a_look()]
    ran = len(results.executed) - results.absent
    kept = len(results) - len(results.executed)
    print(f"graded into {out}: {ran} notebook(s) graded now, {results.absent} not submitted, "
          f"{kept} unchanged since the last run ({len(results)} student-assignment rows): grades.csv, "
          f"grades_wide.csv, questions.csv, report.csv, ignored.csv, report.html, report.png, feedback/ "
          f"({len(problems)} with notes in report.csv)")
    return 0
