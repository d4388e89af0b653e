"""Every kernel has limits that add up, and nothing of the grader's reaches it.

One real `qkv grade` run (sandbox on, limits lowered so that each case stays small on a 2-core machine)
grades a catalogue of submissions that each push one limit: memory held by forked children or a memfd,
CPU time spread over forks, a file-write flood, a flood of files, a notebook that sleeps past its budget,
too many cells, output that tries the three old ways around the output cap, and a cell that prints the
environment. Each gets its reason in report.csv; an honest submission graded beside each keeps full
marks; no kernel's cgroup or scratch folder is left behind. The quick tests check the stream merging
(linear, and the same as nbclient's) and the kernel's environment without a kernel.
"""

from __future__ import annotations

import os
import re
import textwrap
import time
from pathlib import Path

import nbformat
import pytest

from grading_helpers import ROOT, filled, question_scores, read_csv, submit
from qkv_grading import cgroup, execute, sandbox
from qkv_grading.limits import Limits, MiB

NAME = "01_weighted_average"
SECRET = "QKV_SECRET_TOKEN"
SECRET_VALUE = "grader-only-6d1f0c"

LIMITS = Limits(memory_bytes=512 * MiB, processes=64, cpu_seconds=2.5, disk_bytes=32 * MiB, files=2000,
                file_bytes=8 * MiB, notebook_seconds=16, cells=80, output_bytes=3_000_000,
                learner_output_bytes=1_000_000, cell_output_bytes=100_000)

# Each case is extra cells after the honest answers: (cells, what report.csv must say about it).
CASES = {
    "forked_children": (["""
        import os, time
        kids = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                block = bytearray(400 * 2**20)
                for k in range(0, len(block), 4096):
                    block[k] = 1
                time.sleep(5)
                os._exit(0)
            kids.append(pid)
        for pid in kids:
            os.waitpid(pid, 0)
        """], "memory limit of 512 MiB"),
    "memfd": (["""
        import os
        chunk = b"x" * 2**20
        hoard = [os.memfd_create(f"hoard{k}") for k in range(100)]  # 7 MiB each: under the file size limit
        for fd in hoard:
            for _ in range(7):
                os.write(fd, chunk)
        """], "used more than 512 MiB of memory, and it was stopped"),
    "cpu_in_forks": (["""
        import os, time
        kids = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                while True:  # each fork's own CPU time stays under prlimit's; together they pass the budget
                    pass
            kids.append(pid)
        for pid in kids:
            os.waitpid(pid, 0)
        """], "s of CPU time, and it was stopped"),
    "file_flood": (["""
        with open("big.bin", "wb") as f:
            for _ in range(64):
                f.write(b"x" * 2**20)
        """], "File too large"),
    "disk_flood": (["""
        for k in range(8):
            with open(f"part{k}.bin", "wb") as f:
                for _ in range(7):
                    f.write(b"x" * 2**20)
        """], "No space left on device"),
    "many_files": (["""
        for k in range(200_000):
            open(f"f{k}", "w").close()
        """], "No space left on device"),
    "sleeps": (["import time\ntime.sleep(3)"] * 7, "wall-clock"),
    "too_many_cells": (["pass"] * 90, "more than the 80 the grader runs"),
    "long_line": (["print('x' * 250_000)"], "was truncated"),
    "records_key": (["""
        from IPython.display import display
        from qkv_grading import probe
        for _ in range(40):
            display({probe.MIME: "x" * 100_000}, raw=True)
        """], "was truncated"),
    "update_display": (["""
        from IPython.display import display, update_display
        display("start", display_id="d")
        for _ in range(40):
            update_display("y" * 100_000, display_id="d")
        """], "was truncated"),
    "many_cells_of_output": (["print('z' * 90_000)"] * 30, "was truncated"),
    "environment": (["import os\nprint(dict(os.environ))"], None),
}


def _with_cells(nb, sources):
    for source in sources:
        nb.cells.append(nbformat.v4.new_code_cell(textwrap.dedent(source).strip()))
    return nb


def _kernel_groups() -> set[str]:
    found = execute.cgroups()
    if isinstance(found, str):
        return set()
    return {str(p) for parent in found.parents.values() for p in parent.glob("qkv-kernel-*")}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    from qkv_grading.grade import grade

    if isinstance(execute.cgroups(), str):
        pytest.fail(f"these tests need cgroups (run as root): {execute.cgroups()}")
    before = _kernel_groups()
    subs = tmp_path_factory.mktemp("submissions")
    for case, (cells, _) in CASES.items():
        submit(subs, f"case_{case}", NAME, _with_cells(filled(NAME), cells))
        submit(subs, f"honest_after_{case}", NAME, filled(NAME))
    out = tmp_path_factory.mktemp("graded")
    # a temporary folder of this run's own, so that what it leaves behind is told apart from the folders
    # of runs going on beside it (other tests, other test processes)
    tmp = tmp_path_factory.mktemp("tmp")
    saved = os.environ.get("TMPDIR"), execute.tempfile.tempdir
    os.environ[SECRET], os.environ["TMPDIR"], execute.tempfile.tempdir = SECRET_VALUE, str(tmp), str(tmp)
    start = time.monotonic()
    try:
        grade(subs, out, ROOT, workers=2, timeout=8, progress=False, limits=LIMITS)
    finally:
        del os.environ[SECRET]
        if saved[0] is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = saved[0]
        execute.tempfile.tempdir = saved[1]
    return {"questions": question_scores(out), "report": read_csv(out / "report.csv"), "out": out,
            "seconds": time.monotonic() - start, "before": before, "tmp": tmp}


def _row(graded, student):
    return next(r for r in graded["report"] if r["student"] == student)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c, (_, reason) in CASES.items() if reason])
def test_a_limit_gives_a_reason_and_the_neighbour_loses_nothing(graded, case):
    assert CASES[case][1] in _row(graded, f"case_{case}")["notes"], _row(graded, f"case_{case}")
    honest = graded["questions"][(f"honest_after_{case}", NAME)]
    assert all(s == m for s, m in honest.values()), honest


@pytest.mark.slow
def test_the_grader_s_environment_never_reaches_a_kernel_or_a_page(graded):
    page = (graded["out"] / "feedback" / "case_environment" / NAME / f"{NAME}.html").read_text()
    assert "TMPDIR" in page  # the cell did print the kernel's environment
    assert SECRET not in page and SECRET_VALUE not in page
    for path in graded["out"].rglob("*"):
        if path.is_file():
            assert SECRET_VALUE.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_output_stays_within_its_budget_on_the_page(graded):
    for case in ("records_key", "update_display", "many_cells_of_output", "long_line"):
        page = graded["out"] / "feedback" / f"case_{case}" / NAME / f"{NAME}.html"
        assert page.stat().st_size < LIMITS.output_bytes, (case, page.stat().st_size)


@pytest.mark.slow
def test_nothing_is_left_behind(graded):
    # A kernel's cgroup is named after the worker process that made it, qkv-kernel-PID-...: the run's
    # workers have all stopped, so a group of its left behind is one whose process is gone. (Groups of
    # live processes belong to runs going on beside this one.)
    def orphaned(group: str) -> bool:
        pid = int(Path(group).name.split("-")[2])
        return not Path(f"/proc/{pid}").exists()

    assert not {g for g in _kernel_groups() - graded["before"] if orphaned(g)}
    assert not [p.name for p in graded["tmp"].iterdir() if p.name.startswith("qkv-")], "left in its TMPDIR"


def test_stream_merging_is_nbclient_s_in_linear_time():
    from nbclient.client import _RGX_CARRIAGERETURN

    samples = ["a\rb\rc\n", "ab\r\ncd\r", "x\ry\n\rz", "no returns\n", "\r\r\n\r", "tail\r"]
    for text in samples:
        outs = [nbformat.v4.new_output("stream", name="stdout", text=part) for part in (text[:2], text[2:])]
        merged = execute.coalesce_streams(outs)
        assert [o["text"] for o in merged] == [_RGX_CARRIAGERETURN.sub("", text)], text
    line = ("x" * 99 + "\r") * 40_000 + "end"  # 4 MB on one line: nbclient's regex takes minutes
    start = time.monotonic()
    merged = execute.coalesce_streams([nbformat.v4.new_output("stream", name="stdout", text=line)])
    assert merged[0]["text"] == "end" and time.monotonic() - start < 1.0


def test_the_kernel_environment_is_an_allowlist(monkeypatch):
    monkeypatch.setenv(SECRET, SECRET_VALUE)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-secret")
    monkeypatch.setenv("LANG", "C.UTF-8")
    env = sandbox.environment()
    assert SECRET not in env and "JUPYTERHUB_API_TOKEN" not in env
    assert env["LANG"] == "C.UTF-8" and env["HOME"] == sandbox.HOME
    src = str(Path(execute.__file__).resolve().parents[1])
    if not re.search(r"site-packages", src):  # a worktree's src/ (PYTHONPATH or an editable install)
        assert src in env["PYTHONPATH"].split(os.pathsep)
    assert set(env) <= {*sandbox.PASSED_ON, "PATH", "HOME", "TMPDIR", "MPLCONFIGDIR", "IPYTHONDIR",
                        "PYTHONNOUSERSITE", "PYTHONDONTWRITEBYTECODE", "PYTHONPATH"}


def test_a_kernel_group_is_made_limited_and_removed():
    found = cgroup.detect()
    if isinstance(found, str):
        pytest.fail(f"this machine's cgroups: {found}")
    group = cgroup.KernelGroup(found, LIMITS)
    folders = list(group.folders.values())
    try:
        assert all(f.is_dir() for f in folders)
        if found.version == 1:
            assert int((group.folders["memory"] / "memory.limit_in_bytes").read_text()) == 512 * MiB
            assert (group.folders["pids"] / "pids.max").read_text().strip() == "64"
    finally:
        assert group.remove()
    assert not any(f.exists() for f in folders)


# ---- an instructor who is not root -------------------------------------------------------------------

USER = "qkv-grader-test"


def _opened_for(path: Path) -> list[tuple[Path, int]]:
    """Give others search permission on every folder above ``path`` that lacks it (root's home holds
    this machine's Python); returns what to restore."""
    changed = []
    for folder in [*reversed(path.parents), path]:
        mode = folder.stat().st_mode
        if folder.is_dir() and not mode & 0o001:
            os.chmod(folder, mode | 0o001)
            changed.append((folder, mode))
    return changed


@pytest.fixture(scope="module")
def graded_rootless():
    """`qkv grade`, sandbox on, run by a user who is not root (made for the test when the suite runs as
    root, and removed afterwards)."""
    import pwd
    import shutil
    import subprocess
    import sys

    import tempfile

    # a folder of its own, not pytest's: pytest prunes its older folders, those of runs going on beside
    base = Path(tempfile.mkdtemp(prefix="qkv-rootless-"))
    subs, out = base / "submissions", base / "out"
    submit(subs, "honest", NAME, filled(NAME))
    submit(subs, "prints_environment", NAME, _with_cells(filled(NAME), CASES["environment"][0]))
    command = [sys.executable, "-m", "qkv_grading.cli", "grade", str(subs), "--out", str(out),
               "--timeout", "20", "--no-progress", "--root", str(ROOT)]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(base), "LANG": "C.UTF-8", SECRET: SECRET_VALUE,
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p.endswith("src"))}
    made, restore = False, []
    try:
        if os.geteuid() == 0:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                           check=True, capture_output=True)
            made = True
            user = pwd.getpwnam(USER)
            for path in [base, *base.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid)
            restore = _opened_for(Path(sys.executable).resolve()) + _opened_for(base)
            command = ["runuser", "-u", USER, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()],
                       *command]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300,
                              env=None if made else {**os.environ, **env}, cwd=str(base))
    finally:
        for folder, mode in reversed(restore):
            os.chmod(folder, mode)
        if made:
            subprocess.run(["userdel", USER], capture_output=True)
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        yield out
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_an_instructor_who_is_not_root_grades_in_the_sandbox(graded_rootless):
    scores = question_scores(graded_rootless)
    assert all(s == m for s, m in scores[("honest", NAME)].values()), scores
    page = (graded_rootless / "feedback" / "prints_environment" / NAME / f"{NAME}.html").read_text()
    assert "TMPDIR" in page and SECRET_VALUE not in page  # it ran sandboxed, with its own environment
    notices = (graded_rootless / "notices.txt").read_text()
    if os.geteuid() == 0 or isinstance(execute.cgroups(), str):  # no cgroup delegated to the test's user
        assert "without a cgroup of their own" in notices, notices


def test_a_submitted_notebook_is_read_as_data_never_through_a_link(tmp_path):
    from qkv_grading.run import read_submission
    from qkv_grading.spec import load_spec

    spec = load_spec(ROOT, NAME, hidden=False)
    secret = tmp_path / "grader_side.ipynb"
    secret.write_text(nbformat.writes(filled(NAME)))
    link = tmp_path / "student" / f"{NAME}.ipynb"
    link.parent.mkdir()
    link.symlink_to(secret)
    refused = read_submission(link, spec)
    assert refused.status == "rejected" and "symbolic link" in refused.notes[0]
    fifo = tmp_path / "fifo.ipynb"
    os.mkfifo(fifo)
    assert "not a regular file" in read_submission(fifo, spec).notes[0]  # and did not block
    assert read_submission(secret, spec).cells  # the same notebook, not through a link: read
