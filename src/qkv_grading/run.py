"""Running one submission: read it, rebuild it around the instructor's cells, and run the learner's answers
and the probe parts of the tests in a (sandboxed) kernel. Nothing here decides a point: what the kernel
returns travels on, as data, to ``qkv_grading.judge``."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from qkv_grading import cells, guard, library, probe
from qkv_grading.assemble import assemble
from qkv_grading.discover import read_regular
from qkv_grading.execute import FATAL, KernelPool
from qkv_grading.limits import Limits
from qkv_grading.results import short
from qkv_grading.spec import Spec


MAX_NOTEBOOK_BYTES = 50_000_000


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


def _read_plain_file(path: Path, limit: int) -> bytes | str:
    """The bytes of ``path``, read as data (``discover.read_regular``: never through a symbolic link,
    which would be read with the grader's rights, never from a FIFO or a device, never more than
    ``limit`` bytes). A string says why it was not read."""
    try:
        return read_regular(path, limit)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link"
        if exc.errno is None:  # read_regular's own refusal: "X is not a regular file", "... larger ..."
            return str(exc).removeprefix(f"{path.name} ")
        return f"cannot be opened ({exc.strerror})"


def read_submission(path: Path, spec: Spec) -> KernelRun | nbformat.NotebookNode:
    """The submitted notebook, or a ``KernelRun`` that says why there is none to run."""
    if not os.path.lexists(path):
        others = sorted(p.name for p in path.parent.glob("*.ipynb")) if path.parent.is_dir() else []
        hint = f" (found instead: {', '.join(others)})" if others else ""
        return KernelRun(spec.name, "missing", notes=[f"no notebook {path.name} in the submission{hint}"])
    data = _read_plain_file(path, MAX_NOTEBOOK_BYTES)
    if isinstance(data, str):
        return KernelRun(spec.name, "rejected", notes=[f"{path.name} {data}"])
    try:
        submission = nbformat.reads(data.decode("utf-8"), as_version=4)
        if not isinstance(submission.get("cells"), list):
            raise ValueError("no list of cells")
    except Exception as exc:
        return KernelRun(spec.name, "unreadable",
                         notes=[f"{path.name} is not a readable notebook ({type(exc).__name__})"])
    return submission


def _harness(calls: str) -> str:
    """The code a test cell is replaced by in the learner's kernel: one fixed cell, the same for every
    test, that plays the test's probes sent as data (``probe.play``); no line of the test is in it."""
    return (f"{probe.TEST_HEADING} (graded: its probes, sent as data)\n"
            f"from qkv_grading import probe\nprobe.play({calls!r})\n")


def run_in_kernel(submission, spec: Spec, pool: KernelPool, timeout: float = 30, max_restarts: int = 3,
                  prewarm: bool = False, limits: Limits | None = None) -> KernelRun:
    """Run the learner's answers and the probe parts of the tests in a fresh kernel of ``pool``'s (sandboxed
    if the pool's are), never shared with another submission. Nothing here decides a point: the kernel's
    results come back as data for ``judge_run``."""
    built = assemble(submission, spec.released, spec.runnable)
    nb = built.nb
    guard.skip_self_checks(nb)  # a learner's `!qkv check` cell: a plain note, never a check in a check
    tests = {t["id"] for t in spec.tests}

    def test_id(cell):
        gid = cells.grade_id(cell)
        return gid if cells.is_graded(cell) and gid in tests else None

    plan = library.plan(spec.runnable, spec.name)
    for cell in nb.cells:
        if test_id(cell):
            cell.source = _harness(plan.calls[test_id(cell)])
    run = pool.run_notebook(nb, timeout=timeout, max_restarts=max_restarts, limits=limits, prewarm=prewarm,
                            forbidden=plan.forbidden)  # not in the kernel's library
    out = KernelRun(spec.name, "graded", nb, notes=built.notes + run.notes)
    for k, cell in enumerate(nb.cells):
        gid = test_id(cell)
        res = run.cells.get(k)
        if gid is None:  # the learner's own cells: an error there is worth a line in the report
            if res is not None and not res.ok and res.ename not in ("NotImplementedError", *FATAL):
                name = cells.grade_id(cell) or cell.get("id")
                out.notes.append(f"cell {name}: {res.ename}: {short(res.evalue, 200)}")
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
        if res is not None and not res.ok and res.ename in FATAL:
            out.errors[gid] = f"{res.ename}: {res.evalue}"
        elif res is None:
            out.errors[gid] = "not run"
    return out
