"""Running notebooks in kernels on Dask workers (``dask.distributed``): a local cluster of worker
processes, or a running cluster (``dask scheduler`` and ``dask worker``, dask-jobqueue on Slurm,
dask-kubernetes). A worker needs the course package and bubblewrap, never ``solutions/``: each task
carries what it needs as data (the assignment's ``Spec``, sent once to every worker without solutions or
checks, and the submitted notebook). Workers return data (``KernelRun``); the points are awarded in
the process that runs ``qkv grade``, by ``qkv_grading.judge``, and that process alone writes the
gradebook and the files.

A notebook that kills its worker (a kill of the worker process, memory blown past the worker's limit)
takes down the task running there. Dask's scheduler counts that against every task the worker held and
runs them again on other workers; after ``allowed-failures`` such deaths it gives up with
``KilledWorker``. A worker can hold more tasks than it runs at once (``worker-saturation`` queues only
large groups of similar tasks), so an innocent notebook queued beside the one that kills can be blamed
too: every notebook given up on is graded again at the end, one at a time, alone on the cluster, and
gets 0 with a reason only if its worker dies again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import sys
import threading
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import dask
from distributed import Client, LocalCluster, WorkerPlugin, as_completed, get_worker
from distributed.scheduler import KilledWorker

from qkv_grading import cells
from qkv_grading.execute import ExecutionSettings, KernelPool

ALLOWED_FAILURES = 2  # the third worker that dies running a notebook is one too many: it is blamed
KILLED_NOTE = ("grading this notebook killed the grading worker, {n} times on {n} workers (does it kill "
               "its parent process, or use up the memory?)")
# The scheduler settings the guide asks a cluster to use too (see book/07, "Grading a large course").
SCHEDULER_CONFIG = {
    "distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
    "distributed.scheduler.worker-saturation": 1.0,
}
# A local cluster closes a worker's nanny for good when no worker of that name is back within this time
# of the worker's death (distributed's SpecCluster). A notebook that kills its worker again and again
# keeps it away longer than the default 15 s, and the check may land between a death and the restart:
# the run then waits forever for a worker. The nanny restarts its worker; nothing else should give up.
LOCAL_CLUSTER_CONFIG = {"distributed.deploy.lost-worker-timeout": "30 days"}


class SchedulerUnreachable(Exception):
    """``--scheduler`` names a Dask scheduler that does not answer."""


@dataclass
class Job:
    """One submission to grade: who, which assignment, the notebook's path (read by this process)."""

    student: str
    assignment: str
    path: str
    timeout: float


def for_workers(spec):
    """What a worker gets of an assignment: the released notebook, and the instructor's notebook without
    what the worker does not need: each answer cell holds the released stub (never the solution), and each
    test cell only its probe part (never the checks or the expected values, which stay in this process)."""
    import copy

    from qkv_grading.probe import CHECKS_MARK, split
    from qkv_grading.spec import Spec

    stubs = {cells.grade_id(c): c.source for c in spec.released.cells}
    runnable = copy.deepcopy(spec.runnable)
    for cell in runnable.cells:
        if cells.is_answer(cell):
            cell.source = stubs.get(cells.grade_id(cell), "")
        elif cells.is_graded(cell):
            cell.source = split(cell.source)[0] + CHECKS_MARK + " (kept by the grader) ----\n"
    return Spec(spec.name, spec.released, runnable, spec.fingerprint)


def worker_pool(settings: ExecutionSettings) -> KernelPool:
    """A worker's kernel pool: kernels work in a scratch folder of the worker's own (removed with the
    worker), sandboxed and limited as ``settings`` say."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    scratch = tempfile.mkdtemp(prefix="qkv-grade-", dir=settings.scratch_root)
    return KernelPool(dataclasses.replace(settings, scratch_root=scratch))


def close_pool(pool: KernelPool) -> None:
    """Kill a worker pool's kernels at once and remove its scratch folder."""
    pool.kill_all_now()
    shutil.rmtree(pool.settings.scratch_root, ignore_errors=True)


def run_one(pool: KernelPool, spec, submission, timeout: float):
    """Run one submission in a fresh kernel of ``pool`` and return its ``KernelRun`` (data, never a
    grade). Leaves kernels booting for the pool's next notebooks."""
    from qkv_grading.run import KernelRun, run_in_kernel

    try:
        return run_in_kernel(submission, spec, pool, timeout=timeout, prewarm=True)
    except Exception as exc:  # the grader itself failed on this submission: score 0, say why, go on
        return KernelRun(spec.name, "error", notes=[
            f"the grader failed on this submission: {type(exc).__name__}: {exc}"])


def _pool_here(dask_worker=None) -> KernelPool:
    """On a worker: the kernel pool its ``_WorkerKernels`` plugin made."""
    return (dask_worker or get_worker()).plugins[_WorkerKernels.name].pool


def _limits_notice(dask_worker=None) -> str | None:
    """On a worker (``Client.run``): what the run should say about its kernels' limits (None: they hold)."""
    return _pool_here(dask_worker).limits_notice()


def _run_on_worker(spec, submission, timeout: float):
    """A Dask task, on a worker: ``run_one`` in the worker's kernel pool."""
    return run_one(_pool_here(), spec, submission, timeout)


def _given(value):
    """A task that returns its argument (an assignment, for the tasks that depend on it)."""
    return value


class _WorkerKernels(WorkerPlugin):
    """A Dask worker plugin that holds a worker's ``KernelPool``, made from the run's
    ``ExecutionSettings`` when the worker starts (a worker restarted after a death gets a new one). A
    worker that closes (the run is over, stopped, or the cluster shuts it down) kills its kernels at once
    and removes their scratch folders, so none outlives it."""

    name = "qkv-kernels"

    def __init__(self, settings: ExecutionSettings):
        self.settings = settings
        self.pool: KernelPool | None = None

    def __getstate__(self):  # sent to the workers: the settings, never a pool
        return {"settings": self.settings, "pool": None}

    def setup(self, worker) -> None:
        self.pool = worker_pool(self.settings)

    def teardown(self, worker) -> None:
        if self.pool is not None:
            close_pool(self.pool)


class Runner:
    """Sends submissions to Dask workers and yields judged results as they come.

    ``scheduler=None``: a local cluster of ``workers`` processes, one thread each, started here and
    stopped by ``close``. ``scheduler="tcp://HOST:PORT"``: a running cluster, left running."""

    def __init__(self, specs: dict, settings: ExecutionSettings, workers: int = 1,
                 scheduler: str | None = None):
        self.specs, self.workers, self.settings = specs, workers, settings
        self.cluster = None
        # process-wide settings this run changes (Dask's config, distributed's log level): put back by close()
        self._restore = contextlib.ExitStack()
        self.notices: list[str] = []  # about the whole run: kernels without a cgroup of their own, say
        with dask.config.set(SCHEDULER_CONFIG):
            if scheduler is None:
                # read by the cluster whenever a worker dies: set for the whole run, restored by close()
                self._restore.enter_context(dask.config.set(LOCAL_CLUSTER_CONFIG))
                # Ctrl-C in a terminal reaches every process of the group: the workers are started
                # ignoring it (the disposition survives their exec), and this process stops them
                main = threading.current_thread() is threading.main_thread()
                before = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
                try:
                    self.cluster = LocalCluster(
                        n_workers=workers, threads_per_worker=1, processes=True,
                        host="127.0.0.1", dashboard_address="127.0.0.1:0", memory_limit=0,
                        silence_logs=50)
                finally:
                    if main:
                        signal.signal(signal.SIGINT, before)
                self.client = Client(self.cluster)
            else:
                # distributed's own log lines (tracebacks at INFO when a connection closes) are not the
                # instructor's business: the run says itself what went wrong. Restored by close().
                logger = logging.getLogger("distributed")
                self._restore.callback(logger.setLevel, logger.level)
                logger.setLevel(logging.ERROR)
                try:
                    self.client = Client(scheduler, timeout="30s")
                except OSError as exc:
                    self._restore.close()
                    raise SchedulerUnreachable(
                        f"no Dask scheduler answers at {scheduler} ({exc}); start one with "
                        f"`dask scheduler`, or leave out --scheduler to grade on this machine") from None
        try:
            self.client.register_plugin(_WorkerKernels(settings), name=_WorkerKernels.name)
            said = self.client.run(_limits_notice)  # worker address -> its notice, or None
            self.notices = sorted({n for n in said.values() if n})
            # Each assignment is a task of its own, whose result the workers fetch once and keep. Not
            # scattered data: a task's result that dies with every worker holding it is computed again.
            self.spec_futures = {name: self.client.submit(_given, for_workers(spec), pure=False,
                                                          key=f"qkv-spec-{name}-{uuid.uuid4().hex}")
                                 for name, spec in specs.items()}
        except BaseException:
            self.close()
            raise

    def results(self, jobs: list[Job], progress: bool):
        """Yield one judged result per job, in the order they finish. A notebook that cannot be
        read (missing, too large, not JSON) is judged here without a worker. A notebook whose workers
        kept dying under it is graded again at the end, alone on the cluster (see the module's
        docstring): 0 only if it kills its worker again."""
        from tqdm import tqdm

        from qkv_grading.judge import empty_result, judge_run
        from qkv_grading.run import read_submission

        bar = tqdm(total=len(jobs), desc="grading", unit="nb", disable=not progress,
                   file=sys.stderr)
        live: dict = {}  # future -> (job, submission), until its result is recorded

        def submit(job: Job, submission: dict):
            fut = self.client.submit(_run_on_worker, self.spec_futures[job.assignment],
                                     submission, job.timeout, pure=False,
                                     key=f"qkv-{job.assignment}-{job.student}-{uuid.uuid4().hex}")
            live[fut] = job, submission
            return fut

        try:
            pending = as_completed()
            for job in jobs:
                spec = self.specs[job.assignment]
                submission = read_submission(Path(job.path), spec)
                if not isinstance(submission, dict):
                    yield _judged(judge_run(submission, spec), job)
                    bar.update()
                    continue
                pending.add(submit(job, submission))
            suspects = []  # jobs whose workers died under them: perhaps beside the notebook that kills
            for fut in pending:
                job, submission = live[fut]
                try:
                    run = fut.result()
                except KilledWorker:
                    suspects.append((job, submission))
                    run = None
                del live[fut]
                fut.release()
                if run is not None:
                    yield _judged(judge_run(run, self.specs[job.assignment]), job)
                    bar.update()
            for job, submission in suspects:  # one at a time: a worker that dies now died of it
                spec = self.specs[job.assignment]
                fut = submit(job, submission)
                try:
                    result = judge_run(fut.result(), spec)
                except KilledWorker as exc:  # the scheduler gave up: it killed every worker it ran on
                    result = empty_result(spec, "error", KILLED_NOTE.format(n=exc.allowed_failures + 1))
                del live[fut]
                fut.release()
                yield _judged(result, job)
                bar.update()
        finally:
            bar.close()
            if live and self.client is not None:  # stopped early: nothing more is wanted of them
                self.client.cancel(list(live), force=True)

    def close(self) -> None:
        """Stop the local cluster (its workers kill their kernels); leave a running cluster running."""
        client, cluster = getattr(self, "client", None), self.cluster
        self.client = self.cluster = None
        try:
            if client is not None and cluster is None and client.status == "running":
                # a running cluster: its workers stop this run's kernels and remove their folders
                try:
                    client.unregister_worker_plugin(_WorkerKernels.name)
                except Exception:  # the scheduler is gone: its workers go with it, or stay idle
                    pass
            if client is not None:
                client.close(timeout=10)
        finally:
            if cluster is not None:
                cluster.close(timeout=20)
            self._restore.close()


def _judged(result, job: Job):
    result.student = job.student
    return result
