"""Grading at scale: a real Dask cluster of separate processes on localhost, workers killed in the middle
of a run, and a throw-away PostgreSQL server as the gradebook. Batches are small: a notebook takes about a
second per core to grade. (Runs stopped and run again, and notebooks that kill their worker: test_scale_stops.)"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest

from grading_helpers import ROOT, bad_inputs, filled, question_scores, read_csv, submit
from qkv_grading.course import ASSIGNMENTS
from qkv_grading.spec import load_spec
from scale_helpers import BIN, FULL, _env, _free_port, _gradebook_rows, _grades, _qkv, _standard, _stop, _wait

pytestmark = pytest.mark.slow


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
