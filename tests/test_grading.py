"""`qkv grade` on one shared batch of submissions (real nbgrader gradebook, real kernels).

The batch: every solution notebook as is and as a learner would fill it in, every blank released notebook,
one learner per misconception, and the bad inputs. It is graded once with two workers; the tests assert on
the result, then re-grade parts of it to check one worker agrees and that re-running loses nothing.
"""

import copy
import csv
import html
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import nbformat
import pytest

from grading_helpers import (BAD, MISCONCEPTIONS, ROOT, bad_inputs, filled, hidden_lines, misconception_student,
                             question_scores, read_csv, submit)
from qkv_grading import cli
from qkv_grading import execute
from qkv_grading.course import ASSIGNMENTS, dumps, read_notebook, source_path
from qkv_grading.spec import load_spec
from qkv_grading.grade import grade
from qkv_grading.workers import Runner

pytestmark = pytest.mark.slow

TIMEOUT = 5.0
FULL = {name: load_spec(ROOT, name).max_score for name in ASSIGNMENTS}  # from solutions/, as edited


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    subs = tmp_path_factory.mktemp("submissions")
    for name in ASSIGNMENTS:
        submit(subs, "sol_asis", name, read_notebook(source_path(ROOT, name)))
        submit(subs, "sol_filled", name, filled(name))
        submit(subs, "blank", name, filled(name, blank=True))
    for k, (name, _, _, answers) in enumerate(MISCONCEPTIONS):
        submit(subs, misconception_student(k), name, filled(name, answers))
    expected_bad = bad_inputs(subs)
    (subs / "README.txt").write_text("a stray file at the top")
    out = tmp_path_factory.mktemp("graded")
    temp = tmp_path_factory.mktemp("temp")  # the grader's scratch folders go here, to be checked afterwards
    with mock.patch.object(tempfile, "tempdir", str(temp)):
        results = grade(subs, out, ROOT, workers=2, timeout=TIMEOUT, progress=False)
    grades = {(r["student"], r["assignment"]): r for r in read_csv(out / "grades.csv")}
    report = read_csv(out / "report.csv")
    return {"subs": subs, "out": out, "results": results, "grades": grades, "report": report,
            "questions": question_scores(out), "bad": expected_bad, "temp": temp}


def _score(batch, student, name):
    row = batch["grades"][(student, name)]
    return float(row["score"]), float(row["max_score"])


@pytest.mark.parametrize("name", ASSIGNMENTS)
@pytest.mark.parametrize("student", ["sol_asis", "sol_filled"])
def test_solutions_score_full_marks(batch, student, name):
    assert _score(batch, student, name) == (FULL[name], FULL[name])


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_blank_notebooks_score_zero(batch, name):
    assert _score(batch, "blank", name) == (0, FULL[name])


@pytest.mark.parametrize("k", range(len(MISCONCEPTIONS)), ids=[m[2] for m in MISCONCEPTIONS])
def test_misconception_loses_points_on_its_question_only(batch, k):
    name, question, label, _ = MISCONCEPTIONS[k]
    per_q = batch["questions"][(misconception_student(k), name)]
    score, full = per_q[question]
    assert score < full, f"{label}: full marks on {question}"
    for q, (s, m) in per_q.items():
        if q != question:
            assert s == m, f"{label}: lost points on {q} too"


LIBRARY_CALLS = [k for k, m in enumerate(MISCONCEPTIONS) if "library" in m[2]]


def test_library_call_policy_covers_every_assignment_that_asks_for_a_library_function():
    assert {MISCONCEPTIONS[k][:2] for k in LIBRARY_CALLS} == {
        ("01_weighted_average", "q2"), ("04_cache_notation", "q1"), ("04_cache_notation", "q3"),
        ("04_cache_notation", "q4"), ("04_cache_notation", "q7"),
        ("05_cached_decoding", "q2"), ("05_cached_decoding", "q3")}


@pytest.mark.parametrize("k", LIBRARY_CALLS, ids=[MISCONCEPTIONS[k][2] for k in LIBRARY_CALLS])
def test_library_call_policy_gives_zero_for_that_question(batch, k):
    name, question, _, _ = MISCONCEPTIONS[k]
    per_q = batch["questions"][(misconception_student(k), name)]
    assert per_q[question][0] == 0
    record = json.loads((batch["out"] / "results" / misconception_student(k) / f"{name}.json").read_text())
    for t in record["tests"]:
        if t["question"] == question:
            assert "course library's own qkv." in t["message"], t


def test_bad_inputs_get_their_score_and_a_reason(batch):
    report = {(r["student"], r["assignment"]): r for r in batch["report"] if r["status"] != "ignored"}
    for student, exp in batch["bad"].items():
        row = report[(student, BAD)]
        assert float(row["score"]) == exp["score"], (student, row)
        assert row["status"] == exp["status"], (student, row)
        if exp.get("note"):
            assert exp["note"] in row["notes"], (student, row["notes"])
        for q, s in exp.get("q", {}).items():
            assert batch["questions"][(student, BAD)][q][0] == s, (student, q)


def test_ignored_files_are_listed_in_a_table_of_their_own(batch):
    ignored = " ".join(r["path"] for r in read_csv(batch["out"] / "ignored.csv"))
    assert "README.txt" in ignored and "scratch.txt" in ignored and "99_unknown" in ignored
    assert all(r["student"] for r in batch["report"])


def _shown_text(path: Path) -> str:
    """What a file under the output folder says, decoded: HTML unescaped, JSON and CSV strings unquoted."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".html":
        return html.unescape(text)
    if path.suffix == ".json":
        def strings(x):
            if isinstance(x, dict):
                return [s for k, v in x.items() for s in [str(k), *strings(v)]]
            if isinstance(x, list):
                return [s for v in x for s in strings(v)]
            return [str(x)]
        return "\n".join(strings(json.loads(text)))
    if path.suffix == ".csv":
        return "\n".join(",".join(row) for row in csv.reader(text.splitlines()))
    return text


def test_no_hidden_test_code_in_any_output(batch):
    # peeks_at_tests reads what it can back from In, _ih, %history, linecache and the calling frames,
    # prints it and raises it: a graded kernel is sent each test's probes as data, never the test's code,
    # so what it printed is the one cell that plays them, and no hidden line is anywhere (below)
    peeked = html.unescape((batch["out"] / "feedback" / "peeks_at_tests" / BAD / f"{BAD}.html").read_text())
    assert "(graded: its probes, sent as data)" in peeked and "probe.play(" in peeked
    secret = {line for name in ASSIGNMENTS for line in hidden_lines(name)}
    # (autograded/ holds the executed notebooks for the instructor's formgrader, hidden tests included,
    # as nbgrader's own autograded/ does: no learner sees it)
    files = [p for p in batch["out"].rglob("*") if p.is_file() and p.suffix not in (".db", ".png")
             and "autograded" not in p.relative_to(batch["out"]).parts]
    assert len(files) > len(batch["grades"])
    for path in files:
        shown = "".join(_shown_text(path).split())
        leaked = [line for line in secret if line in shown]
        assert not leaked, (path, leaked[:3])


def test_every_submission_has_feedback_without_hidden_code(batch):
    for (student, name), row in batch["grades"].items():
        page = batch["out"] / "feedback" / student / name / f"{name}.html"
        if row["status"] == "not submitted":
            assert not page.exists()
            continue
        page = page.read_text()
        assert "qkv-total" in page
        assert "HIDDEN TESTS" not in page and "rng(101)" not in page and "test_rng(" not in page
    wrong = (batch["out"] / "feedback" / misconception_student(1) / "01_weighted_average" /
             "01_weighted_average.html").read_text()
    assert "right shape but wrong values" in wrong  # the hidden test's message is shown


def test_gradebook_agrees_with_grades_csv(batch):
    from nbgrader.api import Gradebook

    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    from nbgrader.api import MissingEntry

    with Gradebook(f"sqlite:///{batch['out'] / 'gradebook.db'}") as gb:
        for (student, name), row in batch["grades"].items():
            if row["status"] == "not submitted":
                with pytest.raises(MissingEntry):
                    gb.find_submission(name, student)
                continue
            sub = gb.find_submission(name, student)
            waiting = float(row["waiting_manual"] or 0)  # written answers: in nbgrader's maximum, not ours
            assert sub.score == float(row["score"]) and sub.max_score == float(row["max_score"]) + waiting


def test_report_figure_and_question_table(batch):
    png = batch["out"] / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = (batch["out"] / "questions.csv").read_text().splitlines()[0]
    assert header == "student,assignment,question,score,max_score"
    assert (batch["out"] / "grades.csv").read_text().splitlines()[0] == \
        "student,assignment,score,max_score,status,timestamp,waiting_manual"


def test_one_worker_gives_the_same_grades(batch, tmp_path):
    subs = tmp_path / "subs"
    chosen = ["sol_filled", "blank", misconception_student(3), "os_exit", "stripped_no_ids", "missing_nb"]
    for student in chosen:
        shutil.copytree(batch["subs"] / student, subs / student)
    grade(subs, tmp_path / "out", ROOT, workers=1, timeout=TIMEOUT, progress=False)
    one = {(r["student"], r["assignment"]): r for r in read_csv(tmp_path / "out" / "grades.csv")}
    assert len(one) == len(chosen) * len(ASSIGNMENTS)  # everyone is graded on every assignment anyone handed in
    assert all(one[key] == batch["grades"][key] for key in one)
    per_question = question_scores(tmp_path / "out")
    assert set(per_question) == {key for key, row in one.items() if row["status"] != "not submitted"}
    assert per_question and all(per_question[key] == batch["questions"][key] for key in per_question)


def test_rerun_keeps_everything_and_counts_nothing_twice(batch, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(batch["out"], out)
    subs = tmp_path / "subs"
    shutil.copytree(batch["subs"] / "blank", subs / "blank")
    # blank now hands in a solution for 01; the other graded submissions are not even in this folder
    submit(subs, "blank", "01_weighted_average", filled("01_weighted_average"))
    results = grade(subs, out, ROOT, workers=1, timeout=TIMEOUT, progress=False)
    rows = {(r["student"], r["assignment"]): r for r in read_csv(out / "grades.csv")}
    assert len(rows) == len(batch["grades"]) == len(results)
    assert float(rows[("blank", "01_weighted_average")]["score"]) == 10
    for key, row in batch["grades"].items():
        if key != ("blank", "01_weighted_average"):
            assert rows[key] == row
    # only the changed submission ran; blank's four unchanged ones were not executed again
    assert results.executed == [("blank", "01_weighted_average")]
    assert len(batch["results"].executed) == len(batch["grades"])  # the first run ran every one
    record = json.loads((out / "results" / "blank" / "02_qkv_roles.json").read_text())
    assert record == json.loads((batch["out"] / "results" / "blank" / "02_qkv_roles.json").read_text())
    # a second run of the same folder runs nothing
    assert grade(subs, out, ROOT, workers=1, timeout=TIMEOUT, progress=False).executed == []


def test_cli_grade_writes_the_outputs(tmp_path):
    subs = tmp_path / "subs"
    submit(subs, "ada", "04_cache_notation", filled("04_cache_notation"))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "qkv_grading.cli", "grade", str(subs), "--out", str(out), "--workers", "1",
                           "--timeout", "20", "--no-progress"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "grades.csv") as f:
        full = f"{FULL['04_cache_notation']:g}"
        assert list(csv.reader(f)) == [["student", "assignment", "score", "max_score", "status", "timestamp",
                                        "waiting_manual"],
                                       ["ada", "04_cache_notation", full, full, "graded", "", "2"]]


def test_grading_leaves_no_scratch_folders(batch):
    assert not [p.name for p in batch["temp"].iterdir() if p.name.startswith("qkv-")]


# ---- kernels: warm, cold, failing, stopped ----------------------------------------------------------------

def _notebook(*sources: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def _process_in(folder: Path) -> int:
    """The process whose working folder is ``folder`` (a kernel in its scratch folder)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "cwd") == str(folder.resolve()):
                return int(entry.name)
        except OSError:
            continue
    raise LookupError(f"no process works in {folder}")


@pytest.fixture
def scratch(tmp_path):
    """A kernel pool whose kernels get their scratch folders in ``pool.settings.scratch_root``; no kernel
    of it is warm after the test."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    pool = execute.KernelPool(execute.ExecutionSettings(scratch_root=str(folder)))
    yield pool
    pool.shutdown_warm()


def test_a_given_cwd_is_honoured_even_with_a_warm_kernel(scratch, tmp_path):
    pool = scratch
    assert pool.prewarm() is None and len(pool.warm) == execute.WARM_KERNELS
    here = tmp_path / "here"
    here.mkdir()
    nb = _notebook("import os; print(os.getcwd())")
    run = pool.run_notebook(nb, cwd=str(here), prewarm=True)
    assert run.cells[0].ok and nb.cells[0].outputs[0]["text"].strip() == str(here.resolve())
    assert len(pool.warm) == execute.WARM_KERNELS and here.is_dir()  # the warm kernels wait for a notebook without a cwd


def test_a_failing_prewarm_falls_back_to_a_cold_start(scratch, monkeypatch):
    from jupyter_client.manager import AsyncKernelManager

    real, calls = AsyncKernelManager.start_kernel, []

    async def start_kernel(self, **kwargs):  # only the second start works: the notebook's own, cold one
        calls.append(kwargs.get("cwd"))
        if len(calls) != 2:
            raise RuntimeError("no kernel for you")
        return await real(self, **kwargs)

    monkeypatch.setattr(AsyncKernelManager, "start_kernel", start_kernel)
    pool = scratch
    assert "no kernel for you" in pool.prewarm() and pool.warm == []  # said, not raised
    nb = _notebook("print(1 + 1)")
    run = pool.run_notebook(nb, prewarm=True)  # starts cold, then fails to boot the next warm kernel
    assert run.cells[0].ok and nb.cells[0].outputs[0]["text"] == "2\n"
    assert len(calls) == 3 and len(pool.warm_failures) == 2 and pool.warm == []
    pool.shutdown_warm()  # and waits for the kernel that ran, killed at once, to be reaped
    assert list(Path(pool.settings.scratch_root).iterdir()) == []  # the kernels that did not start left no folder


def test_a_kernel_that_never_answers_is_stopped_and_its_folder_removed(scratch, monkeypatch):
    pids = []

    async def no_answer(self):
        pids.append(self.km.provisioner.pid)
        raise RuntimeError("the kernel did not answer")

    monkeypatch.setattr(execute._CappedClient, "async_start_new_kernel_client", no_answer)
    with pytest.raises(RuntimeError, match="did not answer"):
        scratch.run_notebook(_notebook("1 + 1"))
    assert pids and _gone(pids[0])
    assert list(Path(scratch.settings.scratch_root).iterdir()) == []


def _boot_a_kernel() -> tuple[str, int]:
    """On a Dask worker: boot the kernel a worker keeps warm; return its scratch root and the worker's pid."""
    from qkv_grading import workers

    pool = workers._pool_here()  # made by the worker's plugin from the run's settings
    assert pool.settings.sandboxed and pool.prewarm() is None
    return pool.settings.scratch_root, os.getpid()


def test_a_worker_that_stops_kills_its_kernels_and_removes_their_folders():
    # what the local cluster does to its workers when a run ends or is stopped (SIGTERM, Ctrl-C)
    runner = Runner({}, execute.ExecutionSettings(sandboxed=True), workers=1)
    try:
        scratch, worker = runner.client.submit(_boot_a_kernel, pure=False).result(timeout=120)
        kernels = [_process_in(folder) for folder in Path(scratch).iterdir()]
        assert len(kernels) == execute.WARM_KERNELS
        assert _alive(worker) and all(_alive(kernel) for kernel in kernels)
    finally:
        runner.close()
    assert _gone(worker)
    assert not Path(scratch).exists()  # removed by the worker itself, before it went
    for kernel in kernels:
        assert _gone(kernel, seconds=0.5)  # killed by the worker, not later by its sandbox noticing


# ---- the gradebook -----------------------------------------------------------------------------------------

def test_a_test_cell_added_after_grading_is_a_clear_error(tmp_path, capsys):
    from nbgrader.api import Gradebook

    name = "04_cache_notation"
    course = tmp_path / "course"
    shutil.copytree(ROOT / "solutions" / name, course / "solutions" / name)
    shutil.copy(ROOT / "nbgrader_config.py", course / "nbgrader_config.py")
    subs, out = tmp_path / "subs", tmp_path / "out"
    submit(subs, "ada", name, filled(name))
    args = ["grade", str(subs), "--out", str(out), "--root", str(course), "--timeout", "20", "--no-progress"]
    assert cli.main(args) == 0
    before = (out / "grades.csv").read_text()

    src = source_path(course, name)
    nb = read_notebook(src)
    extra = copy.deepcopy(nb.cells[-1])  # a second copy of the last test cell
    extra.id = extra.metadata["nbgrader"]["grade_id"] = "q3_extra"
    nb.cells.append(extra)
    src.write_text(dumps(nb))
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert name in err and "test cell q3_extra was added" in err and "--out" in err
    assert (out / "grades.csv").read_text() == before
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        assert gb.find_submission(name, "ada").score == FULL[name]
        assert "q3_extra" not in {c.name for c in gb.find_notebook(name, name).grade_cells}

    nb.cells = [c for c in nb.cells if c.metadata["nbgrader"]["grade_id"] not in ("q3_extra", "q3_total")]
    src.write_text(dumps(nb))
    assert cli.main(args) == 2
    assert "test cell q3_total was removed" in capsys.readouterr().err


def test_visible_tests_check_the_form_and_leave_the_answer_to_hidden_tests(batch):
    # the off-by-one cache (positions 1 and 2 only) has the right form: the visible test passes it
    k = next(i for i, m in enumerate(MISCONCEPTIONS) if m[2] == "cache without the current token (off by one)")
    record = json.loads((batch["out"] / "results" / misconception_student(k) / "04_cache_notation.json").read_text())
    passed = {t["id"]: t["passed"] for t in record["tests"]}
    assert passed["q1_form"] and not passed["q1_hidden"]
    message = next(t["message"] for t in record["tests"] if t["id"] == "q1_hidden")
    assert "misses some pairs" in message and "chapter 5" in message
