"""Grading at scale, stopped and started: runs stopped with SIGINT and SIGTERM and run again, a stop between
gradebook and record repaired, a notebook that kills its worker, a lost scheduler. (Split from test_scale so
that the two halves run side by side under `make test`.)"""

from __future__ import annotations

import os
import signal
import subprocess

import psutil
import pytest

from grading_helpers import ROOT, filled, read_csv, submit
from qkv_grading.course import ASSIGNMENTS
from scale_helpers import BIN, FULL, _env, _free_port, _gradebook_rows, _grades, _qkv, _stop, _wait

pytestmark = pytest.mark.slow


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
