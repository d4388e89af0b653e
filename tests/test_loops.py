"""The learner's loop with nothing to guess (issue 23): a saved `!qkv check` cell is skipped and never
recurses, nothing a checked notebook started outlives the check, `qkv check NAME --all` runs the hidden
tests in a clone that has them, a working copy in `work/` for `make lab`, and `qkv` on the PATH of
JupyterLab's terminal. Each test runs the command a learner types."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from grading_helpers import ROOT, filled, write_nb
from qkv_grading import check, cli, guard
from qkv_grading.course import read_notebook, source_path, split_hidden

QKV = Path(sys.executable).parent / "qkv"


def _env(**extra) -> dict:
    env = dict(os.environ, PATH=f"{QKV.parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra)
    env.pop(guard.ENV, None)
    return env


def _qkv(*args, cwd=ROOT, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(QKV), *args], cwd=cwd, env=env or _env(), capture_output=True, text=True,
                          timeout=timeout)


def _running(marker: str) -> list[psutil.Process]:
    """Processes (not zombies) whose command line holds ``marker``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def _code_cell(source: str):
    import nbformat

    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["nbgrader"] = {}
    return cell


# ---- which cells start a check ------------------------------------------------------------------------------

@pytest.mark.parametrize("source", [
    "!qkv check 01_weighted_average",
    "  !qkv check work/01_weighted_average/01_weighted_average.ipynb --all",
    "out = !qkv check 01_weighted_average",
    "%system qkv check 01_weighted_average",
    "%%bash\ncd ..\nqkv check 01_weighted_average",
    "import subprocess\nsubprocess.run(['qkv', 'check', '01_weighted_average'])",
    "import os\nos.system('qkv check 01_weighted_average')",
    "!{sys.executable} -m qkv_grading.cli check 01_weighted_average",
])
def test_a_cell_that_runs_qkv_check_is_recognised(source):
    assert guard.starts_check(source)


@pytest.mark.parametrize("source", [
    "# !qkv check 01_weighted_average",
    "print('run qkv check 01_weighted_average in a terminal')",
    f"print({guard.SKIPPED!r})",
    "!ls",
    "output = weights @ values",
])
def test_a_cell_that_only_mentions_it_is_left_alone(source):
    assert not guard.starts_check(source)


# ---- a saved `!qkv check` cell, and what a check leaves behind ---------------------------------------------

@pytest.mark.slow
def test_a_saved_check_cell_is_skipped_and_the_check_leaves_no_process_behind(tmp_path):
    """The learner saved `!qkv check 01_weighted_average` in the notebook (as JupyterLab autosaves), and a
    cell that left a process running in the background; `qkv check` skips the first with a note (before,
    it ran the check inside the check, and so on, until a cell timed out: 41 s and a chain of processes)
    and ends the second when it is done."""
    name = "01_weighted_average"
    path = tmp_path / "mine" / f"{name}.ipynb"
    nb = filled(name)
    nb.cells += [_code_cell(f"!qkv check {path}"),  # this very notebook, as its name finds it in work/
                 _code_cell("import subprocess\nsubprocess.run('sleep 314.15 >/dev/null 2>&1 &', shell=True)")]
    write_nb(nb, path)
    try:
        run = _qkv("check", str(path), "--timeout", "20", cwd=tmp_path)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "note: 1 cell(s) that run qkv check were skipped: a check never runs inside itself" in run.stdout
        assert run.stdout.count(f"{name}: checking") == 1 and "all visible tests passed" in run.stdout
        assert "ran longer than" not in run.stdout, run.stdout
        time.sleep(0.5)
        assert not _running("sleep 314.15"), "a process the notebook started outlived the check"
        assert not _running(str(path)), "a qkv check started from the notebook outlived the check"
    finally:
        for proc in _running("sleep 314.15"):
            proc.kill()


def test_contained_ends_what_started_inside_and_nothing_else():
    """What was running before a check (another test's server, say) is left alone; what started inside,
    in a session of its own or orphaned into the background, is killed on the way out."""
    older = subprocess.Popen(["sleep", "99.11"])
    try:
        with guard.contained():
            subprocess.Popen(["sleep", "99.12"], start_new_session=True)
            subprocess.run("sleep 99.13 >/dev/null 2>&1 &", shell=True, check=True)
            assert _running("sleep 99.12") and _running("sleep 99.13")
        assert not _running("sleep 99.12") and not _running("sleep 99.13")
        assert older.poll() is None
    finally:
        older.kill()
        older.wait()
        for proc in _running("sleep 99.1"):
            proc.kill()


@pytest.mark.slow
def test_a_check_started_inside_a_check_stops_at_once(tmp_path):
    """However a kernel that `qkv check` runs starts the check again (a subprocess, a script), it stops at
    once with a plain note: the kernel has QKV_CHECK_RUNNING set."""
    run = _qkv("check", "01_weighted_average", env=dict(_env(), **{guard.ENV: "1"}), timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("qkv check: skipped:"), run.stdout + run.stderr
    assert "checking" not in run.stdout


@pytest.mark.slow
def test_the_grader_skips_a_check_cell_and_a_timed_out_cell_loses_its_whole_process_tree():
    """`qkv grade` and `qkv check` prepare a notebook the same way (``run_in_kernel``): the learner's
    `!qkv check` cell prints a plain note on the feedback page instead of running. A cell that starts a
    process in a session of its own (as `!` commands run, in a terminal of their own) and then runs past
    its timeout loses the kernel and everything it started (before, only the kernel's process group was
    killed, and the process lived on)."""
    from qkv_grading.execute import KernelPool
    from qkv_grading.feedback import render_page, shown_notebook
    from qkv_grading.judge import judge_run
    from qkv_grading.run import run_in_kernel
    from qkv_grading.spec import load_spec

    name = "01_weighted_average"
    nb = filled(name)
    nb.cells += [_code_cell(f"!qkv check {name}"),
                 _code_cell("import subprocess, time\nsubprocess.Popen(['sleep', '271.82'], "
                            "start_new_session=True)\ntime.sleep(120)")]
    spec = load_spec(ROOT, name, hidden=True)
    pool = KernelPool()  # as `qkv check` runs it: unsandboxed, on the learner's machine
    try:
        run = run_in_kernel(nb, spec, pool, timeout=6, max_restarts=0)
        time.sleep(0.5)
        assert not _running("sleep 271.82"), "a process the timed-out cell started outlived its kernel"
    finally:
        pool.shutdown_warm()
        for proc in _running("sleep 271.82"):
            proc.kill()
    printed = [o.get("text", "") for c in run.nb.cells if c.cell_type == "code" for o in c.outputs]
    assert guard.SKIPPED + "\n" in printed, printed
    result = judge_run(run, spec)
    assert result.score == result.max_score, [t.message for t in result.tests]
    assert any("ran longer than 6 s" in n for n in result.notes), result.notes
    assert not any("qkv check" in n or "skipped" in n for n in result.notes), result.notes  # no look needed
    shown, _ = shown_notebook(spec, result.executed, result.tests)
    page = render_page(spec, shown, result.tests, result.notes)
    assert "never runs inside a check or a grading run" in page


# ---- messages that say what is wrong ------------------------------------------------------------------------

def test_an_exercise_name_without_a_repository_says_so(monkeypatch, tmp_path, capsys):
    """Where there is no course repository (a grader's scratch folder), an exercise's name is not "no
    exercise of that name" (which contradicted itself, naming it among the exercises)."""
    def nowhere(start=None):
        raise FileNotFoundError("no course repository")

    monkeypatch.setattr(check, "find_root", nowhere)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["check", "01_weighted_average"]) == 2
    message = capsys.readouterr().err
    assert "01_weighted_average is an exercise, but there is no course repository" in message
    assert "no exercise of that name" not in message and "inside your clone" in message


def test_an_unknown_name_is_not_an_exercise(capsys):
    assert cli.main(["check", "06_no_such_exercise"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "06_no_such_exercise is not an exercise's name" in err and "01_weighted_average" in err


# ---- JupyterLab's terminal ----------------------------------------------------------------------------------

def test_the_terminal_of_make_lab_has_qkv_on_its_path_whatever_the_profile_does(tmp_path):
    """The shell `make lab`'s JupyterLab starts for a terminal (learner/jupyter's server config), run in a
    terminal as terminado runs it, where the start-up files set PATH afresh (as Debian's /etc/profile
    does for the login shell JupyterLab used to start): `qkv` is the venv's."""
    import pexpect
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("jupyter_server_config.py", path=str(ROOT / "learner" / "jupyter")).load_config()
    shell = config.ServerApp.terminado_settings["shell_command"]
    (tmp_path / ".bashrc").write_text("PATH=/usr/bin:/bin\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TERM": "dumb", "PS1": "$ "}
    term = pexpect.spawn(shell[0], shell[1:], env=env, cwd=str(tmp_path), encoding="utf-8", timeout=30)
    try:
        term.sendline("echo QKV=$(command -v qkv)")
        term.expect(r"QKV=(\S*)\r?\n")
        assert term.match.group(1) == str(QKV)
        term.sendline("exit")
        term.expect(pexpect.EOF)
    finally:
        term.close(force=True)


# ---- self-study: every test, hidden ones included -----------------------------------------------------------

_WRONG_Q1 = ("values = np.array([[2.0, 10.0], [4.0, 0.0], [8.0, 5.0]])\nweights = np.array([0.2, 0.7, 0.1])\n"
             "output = weights[::-1] @ values")  # the weights reversed: within the visible range checks


@pytest.mark.slow
def test_check_all_runs_the_hidden_tests_and_never_shows_their_code(tmp_path):
    """A wrong answer that passes every visible check passes `qkv check NAME`; `qkv check NAME --all`
    (a clone that has solutions/) fails it, says which test and why, and shows no hidden test code."""
    name = "01_weighted_average"
    path = write_nb(filled(name, {"q1_answer": _WRONG_Q1}), tmp_path / f"{name}.ipynb")
    visible = _qkv("check", str(path), "--timeout", "20", cwd=tmp_path)
    assert visible.returncode == 0, visible.stdout
    assert visible.stdout.splitlines()[-2:] == [
        "all visible tests passed",
        f"visible checks can pass a wrong answer; the hidden tests run when it is graded: qkv check {name} --all "
        f"runs them"], visible.stdout
    every = _qkv("check", str(path), "--all", "--timeout", "20", cwd=tmp_path)
    assert every.returncode == 1, every.stdout + every.stderr
    lines = every.stdout.splitlines()
    assert lines[0] == f"{name}: checking {path} with every test, hidden ones included"
    assert "  q1: FAILED (1 of 3 points)" in lines and "  q2: passed (4 of 4 points)" in lines, lines
    q1 = [ln for ln in lines if ln.startswith("      q1_")]
    assert q1 and all(ln.split(": ", 1)[1].strip() for ln in q1), lines
    assert any(line.startswith("score: 8 of 10 points, hidden tests included") for line in lines), lines
    hidden = {ln.strip() for c in read_notebook(source_path(ROOT, name)).cells
              for ln in split_hidden(c.source)[1] if len(ln.strip()) > 12 and "HIDDEN TESTS" not in ln}
    assert hidden and not [ln for ln in hidden if ln in every.stdout]


def test_check_all_without_solutions_says_why(tmp_path, capsys):
    """A course folder holding the released exercises only (what students are given): --all is a clear
    error, not a check without the hidden tests."""
    name = "01_weighted_average"
    (tmp_path / "nbgrader_config.py").write_text("c = get_config()\n")
    (tmp_path / "solutions").mkdir()
    path = write_nb(read_notebook(ROOT / "exercises" / name / f"{name}.ipynb"),
                    tmp_path / "exercises" / name / f"{name}.ipynb")
    assert cli.main(["check", str(path), "--all"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--all runs the hidden tests, which live in" in err
    assert str(tmp_path / "solutions" / name / f"{name}.ipynb") in err


# ---- Run All ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_run_all_on_a_blank_exercise_runs_every_test():
    """JupyterLab's Run All sends every cell at once, each with `stop_on_error` unless the cell is tagged
    `raises-exception`; the kernel drops what is queued after an error that stops. In the released
    notebook every answer and test cell carries the tag, so on a blank exercise the last question's
    test still runs and says what is missing (before, everything after the first answer was dropped)."""
    from jupyter_client.manager import start_new_kernel

    nb = read_notebook(ROOT / "exercises" / "01_weighted_average" / "01_weighted_average.ipynb")
    code = [c for c in nb.cells if c.cell_type == "code"]
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        ids = [kc.execute(c.source, stop_on_error="raises-exception" not in c.metadata.get("tags", []))
               for c in code]
        replies = {}
        while len(replies) < len(ids):
            msg = kc.get_shell_msg(timeout=60)
            if msg["parent_header"].get("msg_id") in ids:
                replies[msg["parent_header"]["msg_id"]] = msg["content"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    statuses = [replies[i]["status"] for i in ids]
    assert "aborted" not in statuses, statuses
    last = replies[ids[-1]]
    assert last["status"] == "error" and "softmax is not written yet" in last["evalue"], last


# ---- the learner's working copy -----------------------------------------------------------------------------

VENV = Path(sys.executable).parent.parent


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A fresh clone of what is committed, using this checkout's .venv (`make VENV=...`)."""
    dest = tmp_path_factory.mktemp("fresh") / "qkv-course"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True, timeout=120)
    return dest


@pytest.mark.slow
def test_make_lab_works_in_a_copy_that_git_ignores_and_check_finds_it(clone):
    """`make lab` first makes work/ (its `work` step): a copy of every exercise, made once and never
    overwritten, which git ignores; `qkv check NAME` checks that copy."""
    name = "01_weighted_average"
    make = ["make", "-s", "-o", str(VENV / ".installed-stamp"), "work", f"VENV={VENV}"]
    first = subprocess.run(make, cwd=clone, env=_env(), capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert f"made work/{name}/" in first.stdout and "work/05_cached_decoding/" in first.stdout, first.stdout
    mine = clone / "work" / name / f"{name}.ipynb"
    assert mine.read_bytes() == (clone / "exercises" / name / f"{name}.ipynb").read_bytes()
    write_nb(filled(name), mine)  # the learner's answers
    solved = mine.read_bytes()
    again = subprocess.run(make, cwd=clone, env=_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "made" not in again.stdout and mine.read_bytes() == solved, again.stdout
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True)
    assert status.stdout == "", status.stdout
    run = _qkv("check", name, "--timeout", "20", cwd=clone / "book")
    assert run.stdout.startswith(f"{name}: checking {mine}\n"), run.stdout
    assert run.returncode == 0 and "all visible tests passed" in run.stdout, run.stdout


# ---- a change of points -------------------------------------------------------------------------------------

def _course_copy(dest: Path) -> Path:
    import shutil

    for part in ("solutions", "exercises"):
        shutil.copytree(ROOT / part, dest / part)
    shutil.copy(ROOT / "nbgrader_config.py", dest)
    return dest


def _bump_points(root: Path, name: str, gid: str, by: float) -> None:
    """What an instructor does to change a test's points: its nbgrader metadata in solutions/, nothing else."""
    import json

    path = source_path(root, name)
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == gid)
    cell["metadata"]["nbgrader"]["points"] += by
    path.write_text(json.dumps(nb, indent=1) + "\n")


def _heading(path: Path, gid: str) -> str:
    return next(c for c in read_notebook(path).cells if c.metadata["nbgrader"].get("grade_id") == gid).source


@pytest.mark.slow
def test_a_change_of_points_is_written_into_the_headings_and_is_not_the_learners_edit(tmp_path, capsys):
    """The instructor changes q1_value's points in the metadata and runs `qkv release`: the heading says
    "(4 points)" in solutions/ and exercises/. A notebook handed in from the release before (its heading
    says "(3 points)") is not "edited" for that; an edit of the words still is."""
    from qkv_grading.assemble import assemble
    from qkv_grading.spec import load_spec

    name = "01_weighted_average"
    root = _course_copy(tmp_path)
    _bump_points(root, name, "q1_value", 1)
    assert cli.main(["release", "--root", str(root)]) == 0
    assert f"wrote     solutions/{name}/{name}.ipynb (the points in the heading of q1" in capsys.readouterr().out
    for path in (source_path(root, name), root / "exercises" / name / f"{name}.ipynb"):
        assert _heading(path, "q1_text").startswith("## Question 1 (4 points): the worked example"), path
    assert cli.main(["release", "--check", "--sync-only", "--root", str(root)]) == 0
    spec = load_spec(root, name, hidden=True)
    before = filled(name)  # answered on the release with "(3 points)"
    assert _heading(ROOT / "exercises" / name / f"{name}.ipynb", "q1_text").startswith("## Question 1 (3 points)")
    assert assemble(before, spec.released, spec.runnable).notes == []
    edited = filled(name)
    cell = next(c for c in edited.cells if c.metadata["nbgrader"].get("grade_id") == "q1_text")
    cell.source = cell.source.replace("worked example", "easy example")
    assert assemble(edited, spec.released, spec.runnable).notes == ["locked cell q1_text was edited; restored"]


@pytest.mark.slow
def test_release_check_names_a_heading_whose_points_are_stale(tmp_path, capsys):
    name = "01_weighted_average"
    root = _course_copy(tmp_path)
    _bump_points(root, name, "q2_random", 2)
    assert cli.main(["release", "--check", "--sync-only", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"heading   solutions/{name}/{name}.ipynb: the heading of q2 states other points" in out
