"""Grade one notebook: assemble it around the instructor's cells, run it, score every test cell.

Scoring: a test cell earns its points when it runs without an error, else nothing; a question's score is
the sum over its test cells (grade ids ``q<N>_...`` belong to question ``q<N>``). Unlike nbgrader's
default, text on stderr (a warning) does not cost points: only a failed check does.

Used by ``qkv grade`` (instructor version: hidden tests included) and ``qkv check`` (released version:
visible tests only). Everything returned is plain JSON, so it can cross process boundaries and be stored.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from qkv_grading import probe
from qkv_grading.assemble import assemble
from qkv_grading.course import (instructor_notebook, read_notebook, release_notebook, release_path, source_path,
                               split_hidden)
from qkv_grading.execute import run_notebook
from qkv_grading.judge import Judge

GRADER_VERSION = "2"
MAX_NOTEBOOK_BYTES = 50_000_000


@dataclass
class Spec:
    """What grading one assignment needs, prepared once per process and reused for every submission."""

    name: str
    released: nbformat.NotebookNode
    runnable: nbformat.NotebookNode
    fingerprint: str

    @property
    def tests(self) -> list[dict]:
        out = []
        for cell in self.runnable.cells:
            info = cell.metadata.get("nbgrader", {})
            if info.get("grade"):
                gid = info["grade_id"]
                out.append({"id": gid, "question": question_of(gid), "max_points": float(info.get("points", 0))})
        return out

    @property
    def max_score(self) -> float:
        return sum(t["max_points"] for t in self.tests)

    @functools.cached_property
    def scrub(self) -> Scrubber:
        return Scrubber(self.runnable, self.released)

    @functools.cached_property
    def judge(self) -> Judge:
        """Built where the points are awarded (never in a worker, never in a kernel)."""
        return Judge(self.name, self.runnable)

    def __getstate__(self):  # sent to workers: the data, without the judge's namespace of live objects
        return {k: v for k, v in self.__dict__.items() if k not in ("judge", "scrub")}


HIDDEN_REMOVED = "[hidden test code removed]"


class Scrubber:
    """Takes hidden test code out of text a learner will see: outputs, error messages, notes.

    The hidden tests run in the learner's kernel, so code there can get at their source (a frame's code,
    ``linecache``, ``inspect``) and print it or put it in an exception. Every line between the hidden-test
    markers that the released notebook does not show anyway, and that is long enough to mean something, is
    looked for in the text with whitespace ignored, also as ``repr()`` or JSON would escape it, and replaced
    by ``HIDDEN_REMOVED``. (Code that encodes what it reads can still get it out; that is visible to an
    instructor who reads the submission.)
    """

    MIN_CHARS = 8  # a hidden line shorter than this without whitespace (`))`, `else:`) says nothing

    def __init__(self, runnable: nbformat.NotebookNode, released: nbformat.NotebookNode):
        public = "\n".join(_compact(cell.source)[0] for cell in released.cells)  # shown anyway: left alone
        hidden: set[str] = set()
        for cell in runnable.cells:
            if not cell.metadata.get("nbgrader", {}).get("grade"):
                continue
            hidden.update(line.strip() for line in split_hidden(cell.source)[1])
        variants = set()
        for line in hidden:
            for form in (line, line.replace("\\", "\\\\").replace("'", "\\'"),
                         line.replace("\\", "\\\\").replace('"', '\\"'),
                         json.dumps(line)[1:-1], json.dumps(line, ensure_ascii=False)[1:-1]):
                compact = _compact(form)[0]
                if len(compact) >= self.MIN_CHARS and compact not in public:
                    variants.add(compact)
        self.lines = sorted(variants, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        if not self.lines or not text:
            return text
        compact, where = _compact(text)
        spans = []
        for line in self.lines:
            start = compact.find(line)
            while start >= 0:
                spans.append((where[start], where[start + len(line) - 1] + 1))
                start = compact.find(line, start + 1)
        if not spans:
            return text
        out, pos = [], 0
        for begin, end in sorted(spans):
            if begin >= pos and not (out and not text[pos:begin].strip()):
                out += [text[pos:begin], HIDDEN_REMOVED]
            pos = max(pos, end)  # spans that overlap, or only whitespace apart, get one marker
        out.append(text[pos:])
        return "".join(out)

    def outputs(self, cell) -> None:
        """Scrub every text a code cell's outputs hold, in place."""
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = self(str(out["text"]))
            for key, value in out.get("data", {}).items():
                if isinstance(value, str):
                    out["data"][key] = self(value)
            for key in ("ename", "evalue"):
                if key in out:
                    out[key] = self(str(out[key]))
            if "traceback" in out:
                out["traceback"] = [self(str(line)) for line in out["traceback"]]


def _compact(text: str) -> tuple[str, list[int]]:
    """``text`` without whitespace, and where each character kept was in ``text``."""
    where = [k for k, c in enumerate(text) if not c.isspace()]
    return "".join(text[k] for k in where), where


def question_of(grade_id: str) -> str:
    return grade_id.split("_", 1)[0]


def load_spec(root: Path, name: str, hidden: bool = True) -> Spec:
    """``hidden=True``: tests with hidden tests, from solutions/ (grading). ``hidden=False``: the released
    notebook alone (a learner's self-check, which works without solutions/)."""
    src = source_path(root, name)
    if hidden:
        source = read_notebook(src)
        released, runnable = release_notebook(source), instructor_notebook(source)
        text = src.read_bytes()
    else:
        rel = release_path(root, name)
        if rel.is_file():
            released = read_notebook(rel)
            text = rel.read_bytes()
        else:
            released = release_notebook(read_notebook(src))
            text = nbformat.writes(released).encode()
        runnable = released
    digest = hashlib.sha256(text + GRADER_VERSION.encode() + (b"h" if hidden else b"v")).hexdigest()[:16]
    return Spec(name, released, runnable, digest)


def empty_result(spec: Spec, status: str, reason: str) -> dict:
    reason = spec.scrub(reason)
    tests = [dict(t, points=0.0, passed=False, message=reason) for t in spec.tests]
    return {"assignment": spec.name, "status": status, "notes": [reason], "tests": tests,
            "score": 0.0, "max_score": spec.max_score, "feedback": _feedback_page(spec, None, tests, [reason])}


@dataclass
class KernelRun:
    """What one submission's run in a kernel produced, for the judge: plain data and the executed notebook.

    ``records``: test cell id -> the text its probe part sent back (None: nothing came back);
    ``errors``: test cell id -> how the kernel failed on it (a timeout, a crash), when it did."""

    assignment: str
    status: str
    nb: nbformat.NotebookNode | None = None
    records: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def read_submission(path: Path, spec: Spec) -> KernelRun | nbformat.NotebookNode:
    """The submitted notebook, or a ``KernelRun`` that says why there is none to run."""
    if not path.is_file():
        others = sorted(p.name for p in path.parent.glob("*.ipynb")) if path.parent.is_dir() else []
        hint = f" (found instead: {', '.join(others)})" if others else ""
        return KernelRun(spec.name, "missing", notes=[f"no notebook {path.name} in the submission{hint}"])
    if path.stat().st_size > MAX_NOTEBOOK_BYTES:
        return KernelRun(spec.name, "rejected",
                         notes=[f"{path.name} is larger than {MAX_NOTEBOOK_BYTES // 1_000_000} MB"])
    try:
        submission = nbformat.reads(path.read_bytes().decode("utf-8"), as_version=4)
        if not isinstance(submission.get("cells"), list):
            raise ValueError("no list of cells")
    except Exception as exc:
        return KernelRun(spec.name, "unreadable",
                         notes=[f"{path.name} is not a readable notebook ({type(exc).__name__})"])
    return submission


def _harness(source: str) -> str:
    """The code a test cell is replaced by in the learner's kernel: its probe part, nothing else."""
    probe_part, _ = probe.split(source)
    return (f"__import__('qkv_grading.probe', fromlist=['probe']).run_probe_part({probe_part!r}, "
            f"globals())")


def run_in_kernel(submission, spec: Spec, timeout: float = 30, max_restarts: int = 3,
                  prewarm: bool = False) -> KernelRun:
    """Run the learner's answers and the probe parts of the tests in a (sandboxed) kernel. Nothing here
    decides a point: the kernel's results come back as data for ``judge_run``."""
    built = assemble(submission, spec.released, spec.runnable)
    nb = built.nb
    tests = {t["id"] for t in spec.tests}

    def test_id(cell):
        info = cell.get("metadata", {}).get("nbgrader", {})
        return info.get("grade_id") if info.get("grade") and info.get("grade_id") in tests else None

    for cell in nb.cells:
        if test_id(cell):
            cell.source = _harness(cell.source)
    run = run_notebook(nb, timeout=timeout, max_restarts=max_restarts, prewarm=prewarm)
    out = KernelRun(spec.name, "graded", nb, notes=built.notes + run.notes)
    for k, cell in enumerate(nb.cells):
        gid = test_id(cell)
        res = run.cells.get(k)
        if gid is None:  # the learner's own cells: an error there is worth a line in the report
            if res is not None and not res.ok and res.ename not in ("NotImplementedError", "Timeout",
                                                                    "KernelDied", "NotRun"):
                name = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") or cell.get("id")
                out.notes.append(f"cell {name}: {res.ename}: {_short(res.evalue, 200)}")
            continue
        kept, text = [], None
        for o in cell.get("outputs", []):
            data = o.get("data", {}) if o.get("output_type") == "display_data" else {}
            if probe.MIME in data:
                text = data[probe.MIME] if isinstance(data[probe.MIME], str) else None
            else:
                kept.append(o)
        cell.outputs = kept
        out.records[gid] = text
        if res is not None and not res.ok and res.ename in ("Timeout", "KernelDied", "NotRun"):
            out.errors[gid] = f"{res.ename}: {res.evalue}"
        elif res is None:
            out.errors[gid] = "not run"
    return out


def judge_run(run: KernelRun, spec: Spec) -> dict:
    """Award the points for a kernel's run, here, outside the kernel; hidden test code is scrubbed from
    everything a learner will see."""
    if run.nb is None:
        return empty_result(spec, run.status, "; ".join(run.notes))
    scrub = spec.scrub
    for cell in run.nb.cells:
        scrub.outputs(cell)
    tests = []
    for t in spec.tests:
        kernel_error = run.errors.get(t["id"], "")
        verdict = spec.judge.verdict(t["id"], run.records.get(t["id"]), kernel_error)
        message = verdict.message
        if not verdict.passed and kernel_error and message == probe.NOT_BACK:
            message = kernel_error
        tests.append(dict(t, points=t["max_points"] if verdict.passed else 0.0, passed=verdict.passed,
                          message="" if verdict.passed else _short(scrub(message))))
    notes = [scrub(n) for n in run.notes]
    score = sum(t["points"] for t in tests)
    return {"assignment": spec.name, "status": run.status, "notes": notes, "tests": tests, "score": score,
            "max_score": spec.max_score, "feedback": _feedback_page(spec, run.nb, tests, notes)}


def run_file(path: str | os.PathLike, spec: Spec, timeout: float = 30, max_restarts: int = 3,
             prewarm: bool = False) -> KernelRun:
    """Read the notebook at ``path`` (which may be missing, not JSON, or damaged) and run it."""
    submission = read_submission(Path(path), spec)
    if isinstance(submission, KernelRun):
        return submission
    return run_in_kernel(submission, spec, timeout=timeout, max_restarts=max_restarts, prewarm=prewarm)


def grade_file(path: str | os.PathLike, spec: Spec, timeout: float = 30, max_restarts: int = 3) -> dict:
    """Run and judge one notebook in this process (the workers of ``qkv grade`` split the two)."""
    return judge_run(run_file(path, spec, timeout=timeout, max_restarts=max_restarts), spec)


def grade_notebook(submission, spec: Spec, timeout: float = 30, max_restarts: int = 3) -> dict:
    return judge_run(run_in_kernel(submission, spec, timeout=timeout, max_restarts=max_restarts), spec)


def _short(message: str, limit: int = 600) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


def questions(result: dict) -> dict[str, tuple[float, float]]:
    """question -> (score, max_score), in the order the questions appear."""
    out: dict[str, list[float]] = {}
    for t in result["tests"]:
        acc = out.setdefault(t["question"], [0.0, 0.0])
        acc[0] += t["points"]
        acc[1] += t["max_points"]
    return {q: (s, m) for q, (s, m) in out.items()}


# ---- feedback -------------------------------------------------------------------------------------------

_CSS = """body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap}
.test{border-left:5px solid #999;padding:.2em .8em;margin:1em 0}.pass{border-color:#2a2}.fail{border-color:#c22}
.out{background:#fff;border:1px solid #ddd}.notes{background:#fff6d6;padding:.6em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em}"""


def _esc(text) -> str:
    return html.escape(str(text))


def _outputs_html(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        kind = out.get("output_type")
        if kind == "stream":
            parts.append(out.get("text", ""))
        elif kind in ("execute_result", "display_data"):
            parts.append(out.get("data", {}).get("text/plain", "[non-text output]"))
        elif kind == "error":
            parts.append(f"{out.get('ename', '')}: {out.get('evalue', '')}")
    text = "".join(p if p.endswith("\n") else p + "\n" for p in parts)
    if len(text) > 5000:
        text = text[:5000] + "\n[... cut ...]\n"
    return f"<pre class='out'>{_esc(text)}</pre>" if text.strip() else ""


def _feedback_page(spec: Spec, nb, tests: list[dict], notes: list[str]) -> str:
    """HTML feedback: the learner's code and outputs, and for each test its visible code, result and
    message. Hidden test code is never shown: test cells are shown as released."""
    released_src = {c.metadata.get("nbgrader", {}).get("grade_id"): c.source for c in spec.released.cells}
    by_test = {t["id"]: t for t in tests}
    score = sum(t["points"] for t in tests)
    rows = "".join(f"<tr><td>{_esc(q)}</td><td>{s:g} / {m:g}</td></tr>"
                   for q, (s, m) in questions({"tests": tests}).items())
    body = [f"<h1>Feedback: {_esc(spec.name)}</h1><p><b>Score: {score:g} / {spec.max_score:g}</b></p>",
            f"<table><tr><th>question</th><th>points</th></tr>{rows}</table>"]
    if notes:
        body.append("<div class='notes'><b>Notes from the grader</b><ul>"
                    + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul></div>")
    if nb is not None:
        for cell in nb.cells:
            info = cell.get("metadata", {}).get("nbgrader", {})
            cid = info.get("grade_id") if info.get("grade") else None
            if cid in by_test:
                t = by_test[cid]
                cls, verdict = ("pass", "passed") if t["passed"] else ("fail", "failed")
                msg = "" if t["passed"] else f"<p><b>What is wrong:</b> {_esc(t['message'])}</p>"
                body.append(f"<div class='test {cls}'><p><b>Test {_esc(cid)}</b>: {verdict}, "
                            f"{t['points']:g} / {t['max_points']:g} points</p>"
                            f"<pre>{_esc(released_src.get(cid, ''))}</pre>{msg}</div>")
            elif cell.cell_type == "markdown":
                body.append(f"<div class='md'><pre>{_esc(cell.source)}</pre></div>")
            elif cell.cell_type == "code":
                body.append(f"<pre>{_esc(cell.source)}</pre>{_outputs_html(cell)}")
    else:
        body.append("<ul>" + "".join(f"<li>{_esc(t['id'])}: 0 / {t['max_points']:g}</li>" for t in tests) + "</ul>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_esc(spec.name)} feedback</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


def result_json(result: dict) -> str:
    return json.dumps(result, indent=1, sort_keys=True)
