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
from typing import TYPE_CHECKING

import nbformat
import numpy as np

from qkv_grading import probe, wire
from qkv_grading.feedback import feedback_page
from qkv_grading.results import Result, short, tests_of

if TYPE_CHECKING:
    from qkv_grading.run import KernelRun
    from qkv_grading.spec import Spec


class InstructorError(Exception):
    """The instructor's notebook itself cannot be judged (a set-up cell fails here, say)."""


def _code(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def is_setup(cell) -> bool:
    info = cell.get("metadata", {}).get("nbgrader", {})
    return (cell.get("cell_type") == "code" and bool(info.get("locked"))
            and not info.get("grade") and not info.get("solution"))


@dataclass
class Verdict:
    passed: bool
    message: str = ""


class Judge:
    """Checks one assignment's test cells against records that came back from a kernel."""

    def __init__(self, name: str, runnable):
        self.name = name
        self.base: dict = {"__name__": f"judge_{name}"}
        for cell in runnable.cells:
            if is_setup(cell):
                gid = cell.metadata.nbgrader.get("grade_id")
                try:
                    exec(compile(_code(cell), f"<{name}:{gid}>", "exec"), self.base)
                except Exception as exc:
                    raise InstructorError(f"{name}: set-up cell {gid} fails in the grader: "
                                          f"{type(exc).__name__}: {exc}") from None
        self.tests = {cell.metadata.nbgrader["grade_id"]: _code(cell) for cell in runnable.cells
                      if cell.get("metadata", {}).get("nbgrader", {}).get("grade")}

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
            return Verdict(False, f"what your notebook sent back for this test is not plain data ({exc})")
        namespace = self._namespace()
        try:  # what a test prints here ("checked when graded", say) is for a learner's notebook, not the grader's
            with probe.replaying(records), contextlib.redirect_stdout(io.StringIO()):
                exec(compile(self.tests[grade_id], f"<test {grade_id}>", "exec"), namespace)
        except AssertionError as exc:
            return Verdict(False, str(exc) or "a check failed")
        except Exception as exc:  # a check tripped over what came back (a str where an array was due, say)
            return Verdict(False, f"{type(exc).__name__}: {exc}")
        return Verdict(True)


def empty_result(spec: Spec, status: str, reason: str) -> Result:
    reason = spec.scrub(reason)
    tests = tests_of(spec, message=reason)
    return Result(spec.name, status, tests, spec.max_score, notes=[reason],
                  feedback=feedback_page(spec, None, tests, [reason]), written=spec.written)


def judge_run(run: KernelRun, spec: Spec) -> Result:
    """Award the points for a kernel's run, here, outside the kernel; hidden test code is scrubbed from
    everything a learner will see."""
    if run.nb is None:
        return empty_result(spec, run.status, "; ".join(run.notes))
    scrub = spec.scrub
    for cell in run.nb.cells:
        scrub.outputs(cell)
    tests = []
    for t in tests_of(spec):
        kernel_error = run.errors.get(t.id, "")
        verdict = spec.judge.verdict(t.id, run.records.get(t.id), kernel_error)
        message = verdict.message
        if not verdict.passed and kernel_error and message == probe.NOT_BACK:
            message = kernel_error
        t.passed, t.points = verdict.passed, t.max_points if verdict.passed else 0.0
        t.message = "" if verdict.passed else short(scrub(message))
        tests.append(t)
    notes = [scrub(n) for n in run.notes]
    return Result(spec.name, run.status, tests, spec.max_score, notes=notes,
                  feedback=feedback_page(spec, run.nb, tests, notes), written=spec.written,
                  autograded=nbformat.writes(run.nb))
