"""Worker processes that run notebooks in kernels. Even one worker is a process of its own: a notebook
that kills its kernel's parent then kills a worker, never the process that owns the gradebook. Workers
return data (``KernelRun``); the points are awarded in the parent, by ``qkv_grading.judge``."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path


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
    from qkv_grading.run import KernelRun, run_file

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

        from qkv_grading.judge import empty_result, judge_run

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
