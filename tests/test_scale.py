"""Grading at scale: a real Dask cluster of separate processes on localhost, workers killed in the middle
of a run, runs stopped with SIGINT and SIGTERM and run again, and a throw-away PostgreSQL server as the
gradebook. Batches are small: a notebook takes about a second per core to grade."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from grading_helpers import ROOT, bad_inputs, filled, question_scores, read_csv, submit
from qkv_grading.course import ASSIGNMENTS, read_notebook, source_path
from qkv_grading.spec import load_spec

pytestmark = pytest.mark.slow

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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`dask scheduler` and two `dask worker` processes (one worker process, one thread each, under a
    nanny that restarts it if it dies), bound to 127.0.0.1. Yields the scheduler's address and the
    two `dask worker` processes."""
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("dask-logs")
    procs = []
    try:
        procs.append(subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            env=_env(), stdout=subprocess.DEVNULL, stderr=open(logs / "scheduler.log", "w")))
        for k in range(2):
            procs.append(subprocess.Popen(
                [str(BIN / "dask"), "worker", address, "--host", "127.0.0.1", "--nworkers", "1",
                 "--nthreads", "1", "--memory-limit", "0", "--no-dashboard", "--name", f"w{k}"],
                env=_env(), stdout=subprocess.DEVNULL, stderr=open(logs / f"worker{k}.log", "w")))
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield {"address": address, "workers": procs[1:]}
    finally:
        _stop(procs[1:])
        _stop(procs[:1])


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


# ---- a real cluster ------------------------------------------------------------------------------------

def test_a_cluster_gives_the_scores_of_one_local_worker(cluster, tmp_path):
    subs = tmp_path / "subs"
    expected = _standard(subs)
    bad = bad_inputs(subs)
    on_cluster, local = tmp_path / "cluster", tmp_path / "local"
    proc = subprocess.run(_qkv(str(subs), "--out", str(on_cluster), "--scheduler", cluster["address"]),
                          env=_env(), capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run(_qkv(str(subs), "--out", str(local), "--workers", "1"),
                          env=_env(), capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert question_scores(on_cluster) == question_scores(local)
    grades = _grades(on_cluster)
    students = {"sol", "blank", *bad}
    rows = read_csv(on_cluster / "grades.csv")
    assert len(rows) == len(students) * len(ASSIGNMENTS)  # everyone, on every assignment handed in
    absent = {(r["student"], r["assignment"]) for r in rows if r["status"] == "not submitted"}
    assert absent == {(s, a) for s in bad for a in ASSIGNMENTS if a != "01_weighted_average"}
    for key, score in expected.items():
        assert grades[key] == score, key
    for student, exp in bad.items():
        assert grades[(student, "01_weighted_average")] == exp["score"], student


def _worker_processes(dask_worker: subprocess.Popen) -> list[psutil.Process]:
    """The worker process a `dask worker` command's nanny runs (the one that runs the kernels)."""
    return [p for p in psutil.Process(dask_worker.pid).children(recursive=True)
            if "python" in p.name().lower() and "bwrap" not in p.name()
            and p.ppid() == dask_worker.pid]


def test_a_worker_killed_mid_run_loses_nothing_and_grades_nothing_twice(cluster, tmp_path):
    subs = tmp_path / "subs"
    expected = {}
    for k in range(8):  # one assignment: every student is asked for every assignment anyone submitted
        name = ASSIGNMENTS[k % 2 * 3]  # 01 or 04
        submit(subs, f"s{k}", name, filled(name))
        expected[(f"s{k}", name)] = FULL[name]
        expected.setdefault((f"s{k}", ASSIGNMENTS[3 - k % 2 * 3]), None)  # not submitted: no score
    out = tmp_path / "out"
    grader = subprocess.Popen(_qkv(str(subs), "--out", str(out), "--scheduler", cluster["address"]),
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT)
    try:
        _wait(lambda: list(out.glob("results/*/*.json")), 300, "a first result")
        victims = _wait(lambda: _worker_processes(cluster["workers"][0]), 30, "the worker process")
        for v in victims:
            v.send_signal(signal.SIGKILL)
        stdout, stderr = grader.communicate(timeout=600)
    finally:
        if grader.poll() is None:
            grader.kill()
    assert victims and all(not v.is_running() or v.status() == psutil.STATUS_ZOMBIE for v in victims)
    assert grader.returncode == 0, stderr[-3000:]
    handed_in = {key: score for key, score in expected.items() if score is not None}
    assert f"{len(handed_in)} notebook(s) graded now, {len(expected) - len(handed_in)} not submitted" in stdout
    assert _grades(out) == handed_in  # every submission, full marks: nothing lost
    rows = _gradebook_rows(f"sqlite:///{out / 'gradebook.db'}")  # one row per test cell, never two
    for (student, name), score in expected.items():
        mine = {k: v for k, v in rows.items() if k[:2] == (student, name)}
        if score is None:  # not submitted: no submission in the gradebook
            assert not mine
        else:
            assert mine and sum(v or 0 for v in mine.values()) == score
    # the nanny restarted the worker: the cluster is whole again for the next test
    from distributed import Client
    with Client(cluster["address"], timeout="30s") as client:
        client.wait_for_workers(2, timeout=120)


# ---- stopping and resuming -----------------------------------------------------------------------------

def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


# The grader sends itself SIGTERM from a garbage-collector callback in its main thread: Python runs the
# handler there at once and drops the exception it raises (Dask's GC diagnostics hook made this happen
# now and then in CI). The grader must stop all the same.
_STOP_INSIDE_A_CALLBACK = """
import gc, os, runpy, signal, sys, threading
go = sys.argv.pop(1)

def stop_inside(phase, info):
    if threading.current_thread() is threading.main_thread() and os.path.exists(go):
        os.remove(go)
        signal.raise_signal(signal.SIGTERM)

gc.callbacks.append(stop_inside)
runpy.run_module("qkv_grading.cli", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("signum,inside", [(signal.SIGINT, False), (signal.SIGTERM, False),
                                           (signal.SIGTERM, True)],
                         ids=["SIGINT", "SIGTERM", "SIGTERM-inside-a-gc-callback"])
def test_a_stopped_run_leaves_no_process_and_resumes_where_it_stopped(tmp_path, signum, inside):
    subs = tmp_path / "subs"
    expected = {}
    for k in range(6):
        name = ASSIGNMENTS[0]
        submit(subs, f"s{k}", name, filled(name, blank=k % 3 == 2))
        expected[(f"s{k}", name)] = 0.0 if k % 3 == 2 else FULL[name]
    out = tmp_path / "out"
    command = _qkv(str(subs), "--out", str(out), "--workers", "2")
    go = tmp_path / "stop-now"
    if inside:
        command[1:3] = ["-c", _STOP_INSIDE_A_CALLBACK, str(go)]
    grader = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=ROOT, start_new_session=True)
    try:
        _wait(lambda: len(list(out.glob("results/*/*.json"))) >= 2, 300, "two results")
        # the local cluster's workers and the kernels they run (a warm one at least)
        children = _wait(lambda: [p for p in _descendants(grader.pid) if "bwrap" in p.name()]
                         and _descendants(grader.pid), 30, "kernels")
        if inside:
            go.touch()
            _wait(lambda: not go.exists(), 60, "the signal sent from a gc callback")
        elif signum == signal.SIGINT:  # Ctrl-C in a terminal: to every process of the foreground group
            os.killpg(grader.pid, signum)
        else:  # kill PID
            grader.send_signal(signum)
        stdout, stderr = grader.communicate(timeout=120)
    finally:
        if grader.poll() is None:
            grader.kill()
    assert grader.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert "Run the same command again" in stderr
    left = _wait(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                                 for p in children) or None, 10, "no process left") and \
        [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left
    stored = {p: p.stat().st_mtime_ns for p in out.glob("results/*/*.json")}
    assert 2 <= len(stored) < len(expected)
    proc = subprocess.run(_qkv(str(subs), "--out", str(out), "--workers", "2"), env=_env(),
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{len(expected) - len(stored)} notebook(s) graded now, 0 not submitted, {len(stored)} unchanged" \
        in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in stored} == stored  # nothing stored was graded again
    assert _grades(out) == expected
    rows = _gradebook_rows(f"sqlite:///{out / 'gradebook.db'}")
    assert {k[:2] for k in rows} == set(expected)


# ---- PostgreSQL ----------------------------------------------------------------------------------------

def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    assert found, "PostgreSQL's server is not installed: run `make system-deps` (.ci/system-deps.sh)"
    return found[-1].parent


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL server on a Unix socket in a temporary folder. PostgreSQL refuses to run
    as root: as root, it runs as the `postgres` user the Debian package creates (or `nobody`)."""
    bindir = _pg_bin()
    folder = Path(tempfile.mkdtemp(prefix="qkv-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = "postgres"
        try:
            pwd.getpwnam(user)
        except KeyError:
            user = "nobody"
        entry = pwd.getpwnam(user)
        os.chmod(folder, 0o755)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        as_user = ["runuser", "-u", user, "--"]
    data = folder / "data"
    run = lambda *cmd: subprocess.run(as_user + [str(c) for c in cmd], check=True,  # noqa: E731
                                      capture_output=True, text=True, cwd=folder)
    try:
        run(bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        run(bindir / "pg_ctl", "-D", data, "-l", folder / "server.log", "-w", "-t", "60", "start",
            "-o", f"-k {folder} -c listen_addresses=''")
        yield f"postgresql://postgres@/postgres?host={folder}"
    finally:
        subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_postgresql_gradebook_holds_the_rows_of_sqlite_and_nbgrader_exports_it(postgres, tmp_path):
    subs = tmp_path / "subs"
    expected = _standard(subs, ASSIGNMENTS[:2])
    sqlite_out, pg_out = tmp_path / "sqlite", tmp_path / "pg"
    for out, extra in ((sqlite_out, []), (pg_out, ["--db", postgres])):
        proc = subprocess.run(_qkv(str(subs), "--out", str(out), "--workers", "2", *extra), env=_env(),
                              capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (pg_out / "gradebook.db").exists()
    sqlite_rows = _gradebook_rows(f"sqlite:///{sqlite_out / 'gradebook.db'}")
    pg_rows = _gradebook_rows(postgres)
    assert pg_rows == sqlite_rows and len(pg_rows) > len(expected)
    # nbgrader's own export reads the PostgreSQL gradebook
    csv_path = tmp_path / "export.csv"
    proc = subprocess.run([str(BIN / "nbgrader"), "export", f"--CourseDirectory.db_url={postgres}",
                           "--CourseDirectory.course_id=qkv-course", f"--CsvExportPlugin.to={csv_path}"],
                          env=_env(), capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported = {(r["student_id"], r["assignment"]): float(r["raw_score"]) for r in read_csv(csv_path)}
    assert exported == expected


# ---- what a worker is given --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_a_worker_gets_neither_solutions_nor_checks(name):
    import nbformat

    from qkv_grading.probe import split
    from qkv_grading.workers import for_workers

    spec = load_spec(ROOT, name)
    sent = nbformat.writes(for_workers(spec).runnable)
    secret = set()
    for cell in spec.runnable.cells:
        info = cell.metadata.get("nbgrader", {})
        if info.get("solution"):
            secret.update(ln.strip() for ln in cell.source.splitlines() if "SOLUTION" not in ln)
        elif info.get("grade"):
            secret.update(ln.strip() for ln in split(cell.source)[1].splitlines()[1:])
    public = nbformat.writes(spec.released) + "".join(
        split(c.source)[0] for c in spec.runnable.cells if c.metadata.get("nbgrader", {}).get("grade"))
    secret = {ln for ln in secret if len(ln) >= 12 and ln not in public}
    assert secret, "nothing to look for"
    leaked = [ln for ln in secret if ln in sent]
    assert not leaked, leaked[:3]


def test_a_run_stopped_between_gradebook_and_record_is_repaired_next_time(tmp_path):
    # the state a stop leaves between the two writes: the gradebook row is there (its scores not yet
    # set, say), the result record is not
    import sqlite3

    subs = tmp_path / "subs"
    name = ASSIGNMENTS[3]
    submit(subs, "ada", name, filled(name))
    out = tmp_path / "out"
    run = lambda: subprocess.run(_qkv(str(subs), "--out", str(out), "--workers", "1"),  # noqa: E731
                                 env=_env(), capture_output=True, text=True, cwd=ROOT, timeout=300)
    proc = run()
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out / "results" / "ada" / f"{name}.json").unlink()
    with sqlite3.connect(out / "gradebook.db") as db:
        assert db.execute("UPDATE grade SET auto_score = NULL").rowcount > 0
    assert set(_gradebook_rows(f"sqlite:///{out / 'gradebook.db'}").values()) == {None}
    proc = run()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 notebook(s) graded now, 0 not submitted, 0 unchanged" in proc.stdout
    rows = _gradebook_rows(f"sqlite:///{out / 'gradebook.db'}")
    written = {key for key in rows if key[2].endswith("_written")}  # graded by hand: no auto score
    assert len(written) == 1 and {rows[key] for key in written} == {None}
    tests = [score for key, score in rows.items() if key not in written]
    assert None not in tests and sum(tests) == FULL[name]
    assert _grades(out) == {("ada", name): FULL[name]}


# Dask queues a large group of tasks and hands a worker one at a time, but a group no larger than twice
# the cluster's threads is handed out at once, so an innocent notebook can wait on the killer's worker,
# and Dask blames a worker's death on every task the worker held. One worker and one innocent notebook
# make that certain: the innocent is given up on with the killer, and must be graded again.
@pytest.mark.parametrize("workers,innocent", [("1", 1), ("2", 3)])
def test_a_notebook_that_kills_its_worker_gets_zero_and_the_others_lose_nothing(tmp_path, workers,
                                                                                 innocent):
    # Without the sandbox a kernel's parent is the worker process itself (in the sandbox, the
    # sandbox's own init is, and the worker is out of reach): this notebook kills every worker it is on.
    name = ASSIGNMENTS[0]
    subs = tmp_path / "subs"
    submit(subs, "killer", name, filled(name, {
        "q1_answer": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)"}))
    for k in range(innocent):
        submit(subs, f"s{k}", name, filled(name))
    out = tmp_path / "out"
    proc = subprocess.run(_qkv(str(subs), "--out", str(out), "--workers", workers, "--no-sandbox"),
                          env=_env(), capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{innocent + 1} notebook(s) graded now" in proc.stdout
    assert _grades(out) == {("killer", name): 0.0,
                            **{(f"s{k}", name): FULL[name] for k in range(innocent)}}
    report = {r["student"]: r for r in read_csv(out / "report.csv") if r.get("student")}
    assert report["killer"]["status"] == "error"
    assert "killed the grading worker, 3 times on 3 workers" in str(report["killer"])


def test_a_lost_scheduler_stops_the_run_and_the_next_run_grades_the_rest(tmp_path):
    name = ASSIGNMENTS[0]
    subs = tmp_path / "subs"
    for k in range(5):
        submit(subs, f"s{k}", name, filled(name))
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--no-dashboard"], env=_env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([str(BIN / "dask"), "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                               "--memory-limit", "0", "--no-dashboard"], env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "out"
    try:
        grader = subprocess.Popen(_qkv(str(subs), "--out", str(out), "--scheduler", address), env=_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        _wait(lambda: list(out.glob("results/*/*.json")), 300, "a first result")
        scheduler.kill()
        _, stderr = grader.communicate(timeout=180)
    finally:
        _stop([worker, scheduler])
    assert grader.returncode == 130, stderr[-3000:]
    assert "lost the Dask scheduler" in stderr and "Traceback" not in stderr, stderr[-3000:]
    stored = len(list(out.glob("results/*/*.json")))
    proc = subprocess.run(_qkv(str(subs), "--out", str(out), "--workers", "1"), env=_env(),
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{5 - stored} notebook(s) graded now, 0 not submitted, {stored} unchanged" in proc.stdout
    assert _grades(out) == {(f"s{k}", name): FULL[name] for k in range(5)}
