"""Awarding the points, in the grader's own process: never in the learner's kernel.

``judge_run`` turns a kernel's ``KernelRun`` into a ``Result`` (``qkv_grading.results``). The judge's
namespace is built from the instructor's set-up cells (locked code cells that are neither answers nor
tests), run here once per assignment. For each test cell, the whole cell runs here with
``qkv_grading.probe`` replaying what the learner's code returned in the kernel; the expected values,
the check helpers, NumPy and ``qkv.reference`` are this process's own, which no submission can reach.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import nbformat
import numpy as np

from qkv_grading import cells, probe, wire
from qkv_grading.results import Result, plain, short, tests_of

# ``spec`` below is a ``qkv_grading.spec.Spec`` and ``run`` a ``qkv_grading.run.KernelRun``: not imported
# here, since a Spec builds its Judge (spec -> judge, never judge -> spec).


class InstructorError(Exception):
    """The instructor's notebook itself cannot be judged (a set-up cell fails here, say)."""


@dataclass
class Verdict:
    passed: bool
    message: str = ""
    refused: bool = False  # what came back was not plain data (a forged or broken record)


class Judge:
    """Checks one assignment's test cells against records that came back from a kernel."""

    def __init__(self, name: str, runnable):
        self.name = name
        self.base: dict = {"__name__": f"judge_{name}"}
        for cell in runnable.cells:
            if cells.is_setup(cell):
                gid = cells.grade_id(cell)
                try:
                    exec(compile(cells.source(cell), f"<{name}:{gid}>", "exec"), self.base)
                except Exception as exc:
                    raise InstructorError(f"{name}: set-up cell {gid} fails in the grader: "
                                          f"{type(exc).__name__}: {exc}") from None
        self.tests = {cells.grade_id(cell): cells.source(cell) for cell in runnable.cells
                      if cells.is_test(cell)}

    def _namespace(self) -> dict:
        # arrays copied: a test that changes its inputs in place cannot change the next submission's
        return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.base.items()}

    def verdict(self, grade_id: str, records_text: str | None, kernel_error: str = "") -> Verdict:
        """Run test ``grade_id`` here on the records its probe part sent (None: none came back)."""
        if records_text is None:
            return Verdict(False, kernel_error or probe.NOT_BACK)
        try:
            records = probe.decode_records(records_text)
        except wire.WireError as exc:
            return Verdict(False, f"what your notebook sent back for this test is not plain data ({exc})",
                           refused=True)
        namespace = self._namespace()
        try:  # what a test prints here ("checked when graded", say) is for a learner's notebook, not the grader's
            with probe.replaying(records), contextlib.redirect_stdout(io.StringIO()):
                exec(compile(self.tests[grade_id], f"<test {grade_id}>", "exec"), namespace)
        except AssertionError as exc:
            return Verdict(False, str(exc) or "a check failed")
        except Exception as exc:  # a check tripped over what came back (a str where an array was due, say)
            return Verdict(False, f"{type(exc).__name__}: {exc}")
        return Verdict(True)


def empty_result(spec, status: str, reason: str) -> Result:
    """A submission with no run to judge (missing, unreadable, refused, lost): 0 with ``reason``."""
    reason = plain(spec.scrub(reason))
    return Result(spec.name, status, tests_of(spec, message=short(reason)), spec.max_score,
                  notes=[reason], written=spec.written)


def judge_run(run, spec) -> Result:
    """Award the points for a kernel's run, here, outside the kernel; hidden test code is scrubbed from
    everything a learner will see. Total: whatever the run holds, a ``Result`` (status "error" and the
    reason when judging itself failed), so one submission cannot stop the others being graded. Its
    ``executed`` notebook is what the feedback page shows, rendered after judging (``feedback``)."""
    try:
        return _judge_run(run, spec)
    except Exception as exc:
        return empty_result(spec, "error", f"the grader failed judging this submission: "
                                           f"{type(exc).__name__}: {exc}")


def _judge_run(run, spec) -> Result:
    if run.nb is None:
        return empty_result(spec, run.status, "; ".join(run.notes))
    scrub = spec.scrub
    for cell in run.nb.cells:
        scrub.outputs(cell)
    tests, refused = [], []
    for t in tests_of(spec):
        kernel_error = run.errors.get(t.id, "")
        verdict = spec.judge.verdict(t.id, run.records.get(t.id), kernel_error)
        message = verdict.message
        if not verdict.passed and kernel_error and message == probe.NOT_BACK:
            message = kernel_error
        if verdict.refused:
            refused.append(t.id)
        t.passed, t.points = verdict.passed, t.max_points if verdict.passed else 0.0
        t.message = "" if verdict.passed else short(plain(scrub(message)))
        tests.append(t)
    notes = [plain(scrub(n)) for n in run.notes]
    if refused:
        notes.append(f"what the notebook sent back for {', '.join(refused)} is not plain data: refused")
    return Result(spec.name, run.status, tests, spec.max_score, notes=notes, executed=run.nb,
                  written=spec.written, autograded=nbformat.writes(run.nb))
