"""Submissions read as hostile data: whatever one holds (its records, metadata, outputs, markdown, links
and special files), it ends as that submission's status and reason, the run finishes, and the honest
students beside it keep full marks.

The catalogue is graded in ONE real `qkv grade` run (sandbox on). A second, kernel-free batch checks what
happens when the grader itself fails on a submission, or is stopped, while it records: the failure is that
submission's, and the tables and the class report are written all the same.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import zipfile
from html.parser import HTMLParser

import nbformat
import pytest

from grading_helpers import ROOT, filled, question_scores, read_csv, solution_sources, submit
from qkv_grading import grade as grading
from qkv_grading.grade import Interrupted, grade
from qkv_grading.probe import MIME

pytestmark = pytest.mark.slow

NAME = "01_weighted_average"  # 10 points: q1 3, q2 4, q3 3; eight test cells
SECRET = "GRADER-SIDE-SECRET-7f3a"
OUTSIDE = "http://192.0.2.1"  # TEST-NET-1: never a real host
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def _npy_claiming(shape) -> str:
    header = repr({"descr": "<f8", "fortran_order": False, "shape": shape}).encode()
    header += b" " * (64 - (10 + len(header) + 1) % 64) + b"\n"
    return base64.b64encode(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header).decode()


def _npz() -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("arr_0.npy", b"\x93NUMPY")
    return base64.b64encode(buf.getvalue()).decode()


def _ok(value: dict) -> str:
    return json.dumps({"list": [{"tuple": ["ok", value]}]})


# What a kernel can send back instead of records, one per test cell of the exercise: each once stopped
# the run or made judging quadratic, or must simply be refused.
HOSTILE_RECORDS = [
    '{"ndarray": ""}',  # numpy's EOFError: the whole class went ungraded
    _ok({"ndarray": _npz()}),
    _ok({"ndarray": _npy_claiming((2**45,))}),  # allocated 256 TiB before reading a byte
    _ok({"set": [{"int": str(k * (2**61 - 1))} for k in range(1, 5001)]}),  # every key hashes to 0
    '{"list": [' * 60 + ']}' * 60,
    "this is not JSON {",
    _ok({"int": "9" * 5000}),
    _ok({"dict": [[{"list": []}, {"int": "1"}]]}),
]
FAKE_RECORDS = f"""
from IPython.display import display as _display
from qkv_grading import probe as _probe
_HOSTILE, _sent = {HOSTILE_RECORDS!r}, []
def _fake(plan):
    _display({{{MIME!r}: _HOSTILE[len(_sent) % len(_HOSTILE)]}}, raw=True)
    _sent.append(1)
_probe.play = _fake
"""

ODD_METADATA = [{"collapsed": "yes"}, {"scrolled": "x"}, {"name": 3}, {"tags": ['a" onclick="x', 3]},
                {"jupyter": {"source_hidden": "no"}, "execution": 7}]
ESCAPED_NAME = "esc\x1b[2Jape"
ESCAPES = "\x1b[31mred\x1b[0m \x1b]0;a new terminal title\x07\x07 \u202eevil"

MARKDOWN_ATTACK = (f"[click me](javascript:window.PWNED=1) ![remote]({OUTSIDE}/md.png) "
                   "<img src=x onerror=\"window.PWNED=2\"> <script>window.PWNED=3</script> $x_i$")
OUTPUT_ATTACK = f"""
from IPython.display import display
display({{"image/png": {PNG!r}}}, metadata={{"image/png": {{"width": "1 onerror=window.PWNED=4"}}}}, raw=True)
display({{"image/png": {PNG!r}, "text/html": "<script>window.PWNED=5</script>"}},
        metadata={{"filenames": {{"image/png": "{OUTSIDE}/out.png"}}}}, raw=True)
"""

EXPECTED = {  # student -> (score, status, what report.csv says)
    "honest_a": (10, "graded", ""),
    "honest_b": (10, "graded", ""),
    "bad_records": (0, "graded", "not plain data"),
    "odd_metadata": (10, "graded", "cell metadata that is not valid was dropped"),
    "feedback_attack": (10, "graded", "left out of the feedback page"),
    "all_at_once": (0, "graded", "not plain data"),
    "link_timestamp": (10, "graded", "timestamp.txt: a symbolic link"),
    "link_notebook": (0, "rejected", f"{NAME}.ipynb: a symbolic link"),
    "link_assignment": (0, "rejected", f"link_assignment/{NAME}: a symbolic link"),
    "fifo_notebook": (0, "rejected", "not a regular file"),
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    subs = base / "submissions"
    secret = base / "grader_side.txt"  # a file of the grader's, which no submission may have read
    secret.write_text(SECRET)
    for student in ("honest_a", "honest_b"):
        submit(subs, student, NAME, filled(NAME))

    answers = solution_sources(NAME)
    submit(subs, "bad_records", NAME, filled(NAME, {"q1_answer": answers["q1_answer"] + "\n" + FAKE_RECORDS}))

    nb = filled(NAME)
    for k, meta in enumerate(ODD_METADATA):
        cell = nbformat.v4.new_markdown_cell(f"note {k}") if k % 2 else nbformat.v4.new_code_cell("x = 1")
        cell.metadata.update(meta)
        nb.cells.append(cell)
    nb.cells[-1].id = 'bad" onclick="x'
    nb.cells.append(nbformat.v4.new_code_cell(f"raise ValueError({ESCAPES!r})"))
    submit(subs, "odd_metadata", NAME, json.dumps(nb))  # written as is: nbformat would refuse it

    nb = filled(NAME)
    nb.cells += [nbformat.v4.new_markdown_cell(MARKDOWN_ATTACK), nbformat.v4.new_code_cell(OUTPUT_ATTACK)]
    submit(subs, "feedback_attack", NAME, nb)

    nb = filled(NAME, {"q1_answer": answers["q1_answer"] + "\n" + FAKE_RECORDS})  # everything at once
    for meta in ODD_METADATA:
        nb.cells.append(nbformat.v4.new_code_cell("y = 2"))
        nb.cells[-1].metadata.update(meta)  # after: new_code_cell would validate it
    nb.cells += [nbformat.v4.new_markdown_cell(MARKDOWN_ATTACK), nbformat.v4.new_code_cell(OUTPUT_ATTACK),
                 nbformat.v4.new_code_cell(f"raise ValueError({ESCAPES!r})")]
    folder = submit(subs, "all_at_once", NAME, json.dumps(nb)).parent
    (folder / "timestamp.txt").symlink_to(secret)

    folder = submit(subs, "link_timestamp", NAME, filled(NAME)).parent
    (folder / "timestamp.txt").symlink_to(secret)
    (folder / "submission_secret.txt").symlink_to(secret)

    folder = subs / "link_notebook" / NAME
    folder.mkdir(parents=True)
    (folder / f"{NAME}.ipynb").symlink_to(ROOT / "solutions" / NAME / f"{NAME}.ipynb")  # 10/10 once
    (subs / "link_assignment").mkdir()
    (subs / "link_assignment" / NAME).symlink_to(ROOT / "solutions" / NAME, target_is_directory=True)
    (subs / "link_student").symlink_to(subs / "honest_a", target_is_directory=True)
    (subs / "fifo_notebook" / NAME).mkdir(parents=True)
    os.mkfifo(subs / "fifo_notebook" / NAME / f"{NAME}.ipynb")  # would hang a plain open()
    submit(subs, ESCAPED_NAME, NAME, filled(NAME))  # a name that would clear an instructor's terminal

    out = base / "out"
    grade(subs, out, ROOT, workers=2, timeout=15, progress=False)
    return {"out": out, "report": {r["student"]: r for r in read_csv(out / "report.csv")},
            "questions": question_scores(out), "ignored": read_csv(out / "ignored.csv"),
            "grades": {r["student"]: r for r in read_csv(out / "grades.csv")}}


@pytest.mark.parametrize("student", list(EXPECTED))
def test_each_case_ends_as_its_own_status_and_reason(graded, student):
    score, status, reason = EXPECTED[student]
    row = graded["report"][student]
    assert (float(row["score"]), row["status"]) == (score, status), row
    assert reason in row["notes"], row
    if not reason:
        assert row["notes"] == "", row  # the honest students are not flagged


def test_honest_students_keep_full_marks_and_the_attackers_earn_only_their_answers(graded):
    for student in ("honest_a", "honest_b"):
        assert all(s == m for s, m in graded["questions"][(student, NAME)].values())
    assert all(s == 0 for s, _ in graded["questions"][("bad_records", NAME)].values())


def test_a_notebook_that_does_everything_at_once_gets_every_reason(graded):
    notes = graded["report"]["all_at_once"]["notes"]
    for reason in ("not plain data", "cell metadata that is not valid", "left out of the feedback page",
                   "timestamp.txt: a symbolic link", "ValueError: red"):
        assert reason in notes, (reason, notes)


def test_report_html_lists_every_case_under_needs_a_look(graded):
    page = (graded["out"] / "report.html").read_text()
    look = page[page.index("id='needs-a-look'"):page.index(f"<h2 id='{NAME}'>")]
    for student, (_, _, reason) in EXPECTED.items():
        assert (f"data-student='{student}'" in look) == bool(reason), student
    assert "link_student" in look  # a link where a student's folder should be: refused, listed


def test_links_are_refused_listed_and_never_followed(graded):
    ignored = {r["path"]: r["reason"] for r in graded["ignored"]}
    for path in ("link_student", f"link_assignment/{NAME}", f"link_notebook/{NAME}/{NAME}.ipynb",
                 f"link_timestamp/{NAME}/timestamp.txt", f"link_timestamp/{NAME}/submission_secret.txt"):
        assert "symbolic link" in ignored[path], (path, ignored)
    assert "not a regular file" in ignored[f"fifo_notebook/{NAME}/{NAME}.ipynb"]
    assert "control characters" in ignored[ascii(ESCAPED_NAME)]
    assert not any("esc" in student for student in graded["grades"])
    assert "link_student" not in graded["grades"]
    assert SECRET not in graded["grades"]["link_timestamp"]["timestamp"]
    folder = graded["out"] / "feedback" / "link_timestamp" / NAME
    for name in ("timestamp.txt", "submission_secret.txt"):
        assert not (folder / name).is_symlink() and SECRET not in (folder / name).read_text()
    for path in graded["out"].rglob("*"):
        assert not path.is_symlink(), path
        if path.is_file() and path.suffix in (".csv", ".html", ".txt", ".json"):
            assert SECRET not in path.read_text(errors="replace"), path


def test_no_control_character_reaches_a_note_or_a_csv_cell(graded):
    for table in ("report.csv", "grades.csv", "questions.csv", "ignored.csv"):
        text = (graded["out"] / table).read_text()
        bad = [c for c in text if (ord(c) < 32 and c not in "\n\r") or 0x7f <= ord(c) < 0xa0
               or c == "\u202e"]
        assert not bad, (table, bad[:5])
    assert "red" in graded["report"]["odd_metadata"]["notes"]  # the message is kept, its escapes are not


class _Live(HTMLParser):
    """What of a page could run or fetch: handler attributes, javascript: URLs, scripts, sources."""

    def __init__(self):
        super().__init__()
        self.handlers, self.urls, self.scripts, self.sources = [], [], [], []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append((tag, name, value))
            if name in ("href", "src") and (value or "").strip().lower().startswith("javascript:"):
                self.urls.append(value)
            if name in ("src", "href", "data") and value and tag not in ("a", "script"):
                self.sources.append(value)
        if tag == "script":
            self.scripts.append(dict(attrs).get("src", "inline"))


def test_a_feedback_page_keeps_nothing_live_of_the_learners(graded):
    for student in ("feedback_attack", "odd_metadata"):
        page = (graded["out"] / "feedback" / student / NAME / f"{NAME}.html").read_text()
        live = _Live()
        live.feed(page)
        assert "Content-Security-Policy" in page and "default-src 'none'" in page
        assert (live.handlers, live.urls) == ([], []), student
        assert live.scripts == [], live.scripts  # not even ours: math is MathML
        assert all(s.startswith("data:image/png;base64,") for s in live.sources), live.sources
    attack = (graded["out"] / "feedback" / "feedback_attack" / NAME / f"{NAME}.html").read_text()
    assert attack.count('src="data:image/png;base64,') == 2  # the images themselves are shown


# ---- the grader failing, or stopped, while it records ----------------------------------------------------

@pytest.fixture
def refused_batch(tmp_path):
    """Three submissions that need no kernel (links to a notebook): recorded in order a, b, c."""
    subs = tmp_path / "submissions"
    for student in ("a", "b", "c"):
        (subs / student / NAME).mkdir(parents=True)
        (subs / student / NAME / f"{NAME}.ipynb").symlink_to(ROOT / "solutions" / NAME / f"{NAME}.ipynb")
    return subs, tmp_path / "out"


def test_a_grader_failure_on_one_submission_is_that_submissions_error(refused_batch, monkeypatch):
    subs, out = refused_batch
    render = grading.render_page

    def failing(spec, shown, tests, notes):
        if any("b/" in n for n in notes):
            raise RuntimeError("nbconvert fell over")
        return render(spec, shown, tests, notes)

    monkeypatch.setattr(grading, "render_page", failing)
    grade(subs, out, ROOT, progress=False)
    report = {r["student"]: r for r in read_csv(out / "report.csv")}
    assert report["b"]["status"] == "error"
    assert f"failed on b/{NAME}" in report["b"]["notes"] and "nbconvert fell over" in report["b"]["notes"]
    assert report["a"]["status"] == report["c"]["status"] == "rejected"
    assert json.loads((out / "results" / "b" / f"{NAME}.json").read_text())["key"] == ""  # graded again


def test_a_stopped_run_still_writes_the_tables_and_the_report(refused_batch, monkeypatch):
    subs, out = refused_batch
    write = grading._write_one

    def stopping(out_, subs_, writer, spec, result, key):
        if result.student == "b":
            raise KeyboardInterrupt
        return write(out_, subs_, writer, spec, result, key)

    monkeypatch.setattr(grading, "_write_one", stopping)
    with pytest.raises(Interrupted):
        grade(subs, out, ROOT, progress=False)
    assert [r["student"] for r in read_csv(out / "grades.csv")] == ["a"]
    assert [r["student"] for r in read_csv(out / "report.csv")] == ["a"]
    assert "data-student='a'" in (out / "report.html").read_text()
