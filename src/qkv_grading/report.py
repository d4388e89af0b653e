"""The outputs an instructor reads: grades.csv, grades_wide.csv, questions.csv, report.csv, ignored.csv,
report.png and the class report report.html.

A student who did not hand an assignment in is "not submitted" everywhere, never a score of 0: the
score is left empty in the CSVs, and the figure and the report's statistics count submitted work only.
"""

from __future__ import annotations

import csv
import html
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from qkv_grading import manual
from qkv_grading.course import ASSIGNMENTS
from qkv_grading.discover import LINK, NOT_REGULAR, ODD_NAME, Ignored
from qkv_grading.results import Result, plain
from qkv_grading.roster import COLUMNS, Student


def load_results(out: Path) -> list[Result]:
    results = []
    for path in sorted((out / "results").glob("*/*.json")):
        try:
            results.append(Result.from_json(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError):  # unreadable, or a record of another shape
            continue
    return sorted(results, key=lambda r: (r.student, r.assignment))


def _score(r: Result) -> str:
    return f"{r.score:g}" if r.submitted else ""


class _Writer:
    """A CSV writer whose every cell is ``plain``: no control character or terminal escape, whatever a
    submission put in a note, a timestamp or a file name."""

    def __init__(self, f):
        self.w = csv.writer(f)

    def writerow(self, row) -> None:
        self.w.writerow([plain(cell) for cell in row])


def write_tables(out: Path, results: list[Result], ignored: list[Ignored],
                 notices: list[str] = (), students: dict[str, Student] | None = None) -> None:
    """The CSVs. ``notices`` (about the whole run) go in the class report, not in these tables.
    ``students``: the gradebook's, by id; when any has a name, an email or an LMS id (a roster was
    read), ``grades_wide.csv`` has those columns after ``student``, and a row for each of them."""
    with open(out / "grades.csv", "w", newline="") as f:
        w = _Writer(f)
        w.writerow(["student", "assignment", "score", "max_score", "status", "timestamp", "waiting_manual"])
        for r in results:  # max_score: what has been graded; waiting_manual: points of unmarked answers
            w.writerow([r.student, r.assignment, _score(r), f"{r.graded_max:g}", r.status,
                        r.timestamp, manual.waiting_text(r)])
    names = [a for a in ASSIGNMENTS if any(r.assignment == a for r in results)]
    wide: dict[str, dict[str, str]] = {}
    for r in results:
        wide.setdefault(r.student, {})[r.assignment] = _score(r)
    maxima = {r.assignment: f"{r.max_score + sum(w.max_points for w in r.written):g}" for r in results}
    students = students or {}
    known = any(s.details() for s in students.values())
    details = COLUMNS[1:] if known else ()
    for student in students if known else ():
        wide.setdefault(student, {})  # on the roster: a row, its assignments not submitted
    waits = {s: "; ".join(f"{r.assignment} ({r.waiting:g} points)" for r in manual.waiting(results)
                          if r.student == s) for s in wide}
    with open(out / "grades_wide.csv", "w", newline="") as f:
        w = _Writer(f)
        w.writerow(["student", *details, *[f"{a} ({maxima[a]} points)" for a in names],
                    "waiting for manual grading"])
        for student in sorted(wide):
            who = students.get(student, Student(student))
            w.writerow([student, *[getattr(who, c) or "" for c in details],
                        *[wide[student].get(a, "") for a in names], waits.get(student, "")])
    with open(out / "questions.csv", "w", newline="") as f:
        w = _Writer(f)
        w.writerow(["student", "assignment", "question", "score", "max_score"])
        for r in results:
            if r.submitted:
                for q, (s, m) in r.questions().items():
                    w.writerow([r.student, r.assignment, q, f"{s:g}", f"{m:g}"])
    with open(out / "report.csv", "w", newline="") as f:
        w = _Writer(f)
        w.writerow(["student", "assignment", "score", "max_score", "status", "timestamp", "notes"])
        for r in results:
            w.writerow([r.student, r.assignment, _score(r), f"{r.graded_max:g}", r.status,
                        r.timestamp, "; ".join(r.notes)])
    with open(out / "ignored.csv", "w", newline="") as f:
        w = _Writer(f)
        w.writerow(["path", "reason"])
        for item in ignored:
            w.writerow([item.path, item.reason])
    (out / "notices.txt").write_text("".join(f"{plain(n)}\n" for n in notices))


@dataclass(frozen=True)
class Panel:
    """What the figure shows of one assignment: how many handed it in, and each question's mean
    fraction of the points over those who did."""

    assignment: str
    submitted: int
    not_submitted: int
    means: dict[str, float]


def write_figure(out: Path, results: list[Result]) -> list[Panel]:
    """report.png: every submitted score of every question, and its mean; returns what it plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [a for a in ASSIGNMENTS if any(r.assignment == a for r in results)]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.2 * max(1, len(names)), 3.4),
                             squeeze=False, sharey=True)
    rng = np.random.default_rng(0)
    panels = []
    for ax, name in zip(axes[0], names):
        mine = [r for r in results if r.assignment == name]
        handed_in = [r for r in mine if r.submitted]
        per_q: dict[str, list[float]] = {}
        for r in handed_in:
            for q, (s, m) in r.questions().items():
                per_q.setdefault(q, []).append(s / m if m else 0.0)
        for x, (q, fractions) in enumerate(per_q.items()):
            ys = np.array(fractions)
            ax.scatter(x + rng.uniform(-0.15, 0.15, len(ys)), ys, s=12, alpha=0.5, color="tab:blue")
            ax.plot([x - 0.3, x + 0.3], [ys.mean()] * 2, color="tab:red", lw=2)
        ax.set_xticks(range(len(per_q)), list(per_q))
        ax.set_title(f"{name}\n({len(handed_in)} submitted, {len(mine) - len(handed_in)} not "
                     f"submitted)", fontsize=9)
        ax.set_ylim(-0.05, 1.05)
        panels.append(Panel(name, len(handed_in), len(mine) - len(handed_in),
                            {q: float(np.mean(f)) for q, f in per_q.items()}))
    axes[0][0].set_ylabel("score / max per question (red: mean)\nnot submitted: not plotted")
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=100)
    plt.close(fig)
    return panels


# ---- the class report ----------------------------------------------------------------------------------

_CSS = """body{font-family:sans-serif;max-width:70em;margin:1em auto;padding:0 .8em;line-height:1.4}
table{border-collapse:collapse;margin:.5em 0 1em 0}td,th{border:1px solid #ccc;padding:.2em .6em;
text-align:left;vertical-align:top}.bar{display:inline-block;height:.8em;background:#4a7fd0}
.count{text-align:right}.notice{background:#fdf0f0;border-left:6px solid #c22;padding:.4em 1em}
img{max-width:100%}section.question{margin-left:1em}"""


def _e(text) -> str:
    return html.escape(str(text))


def failure_ranking(results: list[Result], name: str, question: str) -> list[tuple[str, list[str]]]:
    """The failure messages of one question, each with the students who got it, most frequent first
    (a submission counts once per message). Only notebooks that ran count: why one could not run
    (missing, unreadable, ...) is no misconception, and is listed with what needs a look."""
    who: dict[str, list[str]] = {}
    for r in results:
        if r.assignment != name or not r.ran:
            continue
        seen = {t.message for t in r.tests
                if t.question == question and not t.passed and t.message}
        for message in seen:
            who.setdefault(message, []).append(r.student)
    counts = Counter({m: len(s) for m, s in who.items()})
    return [(m, sorted(who[m])) for m, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _distribution(scores: list[float], full: float) -> str:
    counts = Counter(scores)
    rows = "".join(f"<tr><td>{s:g} / {full:g}</td><td class='count'>{counts[s]}</td>"
                   f"<td><span class='bar' style='width:{6 * counts[s]}px'></span></td></tr>"
                   for s in sorted(counts))
    return f"<table class='distribution'><tr><th>points</th><th>submissions</th><th></th></tr>{rows}</table>"


def _feedback_link(r: Result) -> str:
    href = f"feedback/{r.student}/{r.assignment}/{r.assignment}.html"
    return f"<a href='{_e(href)}'>{_e(r.student)}</a>"


def write_class_report(out: Path, results: list[Result]) -> Path:
    """``report.html``: per question the score distribution and the failure messages ranked by how many
    submissions got each; the submissions that need a human look; what was not submitted or ignored.
    Self-contained (the figure is report.png beside it): it opens offline."""
    names = [a for a in ASSIGNMENTS if any(r.assignment == a for r in results)]
    body = ["<h1>Class report</h1>"]
    notices = (out / "notices.txt").read_text().splitlines() if (out / "notices.txt").is_file() else []
    body += [f"<p class='notice'>{_e(n)}</p>" for n in notices]
    students = sorted({r.student for r in results})
    body.append(f"<p>{len(students)} students, {len(names)} assignments. Scores count submitted "
                "work only; a student who did not hand an assignment in is listed as not submitted, "
                "not as 0.</p><img src='report.png' alt='score per question, every assignment'>")
    look = [r for r in results if r.needs_a_look()]
    ignored = out / "ignored.csv"
    rows = list(csv.reader(ignored.read_text().splitlines()))[1:] if ignored.is_file() else []
    refused = [(p, why) for p, why in rows if why in (LINK, NOT_REGULAR, ODD_NAME)]
    body.append("<h2 id='needs-a-look'>Submissions that need a human look</h2>")
    if look:
        body.append("<table class='look'><tr><th>student</th><th>assignment</th><th>status</th>"
                    "<th>score</th><th>what the grader noticed</th></tr>" + "".join(
                        f"<tr data-student='{_e(r.student)}'><td>{_feedback_link(r)}</td>"
                        f"<td>{_e(r.assignment)}</td><td>{_e(r.status)}</td>"
                        f"<td>{_score(r)} / {r.max_score:g}</td>"
                        f"<td>{'<br>'.join(_e(n) for n in r.notes)}</td></tr>" for r in look)
                    + "</table>")
    if refused:  # refused outright: never read, whoever's they are
        body.append("<p>Refused in the submissions folder (never read):</p><table class='refused'>"
                    "<tr><th>path</th><th>why</th></tr>" + "".join(
                        f"<tr data-path='{_e(p)}'><td>{_e(p)}</td><td>{_e(why)}</td></tr>"
                        for p, why in refused) + "</table>")
    if not look and not refused:
        body.append("<p>None: every submission ran cleanly.</p>")
    for name in names:
        mine = [r for r in results if r.assignment == name]
        handed_in = [r for r in mine if r.submitted]
        absent = [r.student for r in mine if not r.submitted]
        body.append(f"<h2 id='{_e(name)}'>{_e(name)}</h2><p>{len(handed_in)} submitted; "
                    f"not submitted ({len(absent)}): "
                    f"<span class='not-submitted'>{_e(', '.join(absent) or 'none')}</span></p>"
                    + manual.report_lines(results, name))
        per_q: dict[str, list[float]] = {}
        full: dict[str, float] = {}
        for r in handed_in:
            for q, (s, m) in r.questions().items():
                per_q.setdefault(q, []).append(s)
                full[q] = m
        for q, scores in per_q.items():
            mean = sum(scores) / len(scores)
            body.append(f"<section class='question' data-assignment='{_e(name)}' "
                        f"data-question='{_e(q)}'><h3>{_e(q)}: mean {mean:.2g} of {full[q]:g}</h3>"
                        + _distribution(scores, full[q]))
            ranking = failure_ranking(results, name, q)
            if ranking:
                body.append("<table class='messages'><tr><th>submissions</th><th>failure message</th>"
                            "<th>students</th></tr>" + "".join(
                                f"<tr><td class='count'>{len(who)}</td><td class='message'>{_e(m)}</td>"
                                f"<td>{_e(', '.join(who))}</td></tr>" for m, who in ranking)
                            + "</table>")
            body.append("</section>")
    body.append("<h2 id='ignored'>Ignored files</h2>")
    body.append("<table class='ignored'><tr><th>path</th><th>why</th></tr>" + "".join(
        f"<tr><td>{_e(p)}</td><td>{_e(why)}</td></tr>" for p, why in rows) + "</table>"
                if rows else "<p>None.</p>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width, initial-scale=1'><title>Class report</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
