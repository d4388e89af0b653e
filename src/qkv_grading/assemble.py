"""Rebuild a submitted notebook around the instructor's cells before it runs.

A submission is trusted only for its answers. Every locked cell (instructions, set-up code, tests) is taken
from the instructor's version, whatever the learner did to it: edited, deleted, moved, or stripped of its
nbgrader metadata. Answer cells are found by their nbgrader ``grade_id``, else by their Jupyter cell id,
else by where they sit between the locked cells around them. Cells the learner added are kept in place.
Every repair is written down as a note, so the report can say what happened. Of a learner's cell only
its type and source are taken, with its tags when they are valid: whatever other metadata a tool wrote
there (``{"collapsed": "yes"}`` once stopped the whole run) is dropped, and the notebook built is
validated against nbformat's schema before it goes anywhere.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

import nbformat

from qkv_grading import cells as cell_kinds
from qkv_grading.cells import grade_id as _grade_id
from qkv_grading.cells import source as _text
from qkv_grading.course import same_but_points

STUB_MARK = "raise NotImplementedError()"
_CELL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # nbformat's own rule for a cell id
_TAG = re.compile(r"^[\w.:-]{1,100}$")  # no comma (nbformat) and nothing a page would read as markup


@dataclass
class Assembled:
    nb: nbformat.NotebookNode
    notes: list[str] = field(default_factory=list)


def _same(a: str, b: str) -> bool:
    return a.strip() == b.strip() or same_but_points(a, b)  # a heading released with other points


def _match(student_cells, released_cells) -> dict[int, int]:
    """student index -> released index, for cells we can identify with confidence."""
    by_id = {c.get("id"): k for k, c in enumerate(released_cells)}
    by_gid = {_grade_id(c): k for k, c in enumerate(released_cells)}
    matched: dict[int, int] = {}
    taken: set[int] = set()
    for s, cell in enumerate(student_cells):  # 1. nbgrader grade_id, 2. the Jupyter cell id
        for key, table in ((_grade_id(cell), by_gid), (cell.get("id"), by_id)):
            k = table.get(key) if key else None
            if k is not None and k not in taken and released_cells[k].cell_type == cell.get("cell_type"):
                matched[s], _ = k, taken.add(k)
                break
    for s, cell in enumerate(student_cells):  # 3. a locked cell still holding the released text
        if s in matched:
            continue
        for k, rc in enumerate(released_cells):
            if k not in taken and cell_kinds.is_locked(rc) and rc.cell_type == cell.get("cell_type") \
                    and _same(_text(cell), _text(rc)):
                matched[s], _ = k, taken.add(k)
                break
    return matched


def assemble(submission: nbformat.NotebookNode, released: nbformat.NotebookNode,
             runnable: nbformat.NotebookNode) -> Assembled:
    """The notebook to execute: ``runnable``'s locked cells (for grading: tests with hidden tests), the
    learner's answers in the answer cells, the learner's extra cells where they were put.

    ``released`` is the student version: its locked cells are what a learner should still have unchanged,
    and its stubs fill answer cells that cannot be found.
    """
    rel_cells = released.cells
    run_by_gid = {_grade_id(c): c for c in runnable.cells}
    student = list(submission.get("cells", []))
    matched = _match(student, rel_cells)
    notes: list[str] = []
    if student and not any(cell_kinds.info(c) for c in student):
        notes.append("the notebook has no nbgrader metadata (stripped); its cells were matched by id and position")

    # Unmatched learner cells, grouped after the released cell they follow (-1: before the first one).
    gaps: dict[int, list[int]] = {}
    anchor = -1
    for s in range(len(student)):
        if s in matched:
            anchor = matched[s]
        else:
            gaps.setdefault(anchor, []).append(s)
    owner = {k: s for s, k in matched.items()}

    # Answer cells that lost their metadata and id: take the learner cells in the gap before them.
    used: set[int] = set()
    recovered: dict[int, str] = {}
    for k, rc in enumerate(rel_cells):
        if k in owner or not cell_kinds.is_answer(rc):
            continue
        prev_anchor = max((a for a in owner if a < k), default=-1)
        candidates = [s for s in gaps.get(prev_anchor, []) if s not in used
                      and student[s].get("cell_type") == rc.cell_type]
        # several answer cells may share one gap: give each the next learner cell
        if candidates:
            s = candidates[0]
            used.add(s)
            recovered[k] = _text(student[s])
            notes.append(f"answer cell {_grade_id(rc)} had lost its nbgrader metadata; matched by position")
        else:
            notes.append(f"answer cell {_grade_id(rc)} is missing; it was graded as left blank")

    cells = []

    def add_extras(after: int) -> None:
        for s in gaps.get(after, []):
            if s in used:
                continue
            cell = student[s]
            if cell.get("cell_type") not in ("code", "markdown", "raw"):
                continue
            clean = {"cell_type": cell["cell_type"], "metadata": _learner_metadata(cell, notes),
                     "source": _text(cell)}
            if cell["cell_type"] == "code":
                clean.update(outputs=[], execution_count=None)
            cells.append(nbformat.from_dict(clean))

    add_extras(-1)
    for k, rc in enumerate(rel_cells):
        gid = _grade_id(rc)
        target = copy.deepcopy(run_by_gid.get(gid, rc))
        if cell_kinds.is_answer(rc):
            if k in owner:
                target.source = _text(student[owner[k]])
            elif k in recovered:
                target.source = recovered[k]
            else:
                target.source = rc.source  # the released stub, never the instructor's solution
        elif cell_kinds.is_locked(rc) or cell_kinds.is_test(rc):
            if k not in owner:
                notes.append(f"locked cell {gid} was deleted; restored")
            elif not (_same(_text(student[owner[k]]), _text(rc)) or _same(_text(student[owner[k]]), _text(target))):
                notes.append(f"locked cell {gid} was edited; restored")
        if target.cell_type == "code":
            target.outputs = []
            target.execution_count = None
        target.pop("attachments", None) if target.cell_type == "code" else None
        target.id = rc.get("id", gid)
        cells.append(target)
        add_extras(k)

    nb = nbformat.v4.new_notebook()
    nb.metadata = copy.deepcopy(runnable.metadata)
    # ids of learner cells may clash with ours or be missing: number them deterministically
    seen: set[str] = set()
    for n, cell in enumerate(cells):
        cid = cell.get("id")
        if not isinstance(cid, str) or not _CELL_ID.match(cid) or cid in seen:
            cid = f"extra-{n}"
        cell["id"] = cid
        seen.add(cid)
    nb.cells = cells
    if not student:  # one note, not one per cell
        notes = ["empty notebook (no cells): graded as left blank"]
    nbformat.validate(nb)  # built of known-valid parts: a failure here is the grader's, said as one
    return Assembled(nb, list(dict.fromkeys(notes)))


def _learner_metadata(cell, notes: list[str]) -> dict:
    """What is kept of a learner's cell metadata: its tags, when they are valid; nothing else."""
    meta = cell.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    tags = meta.get("tags")
    kept = [t for t in dict.fromkeys(tags) if isinstance(t, str) and _TAG.match(t)] \
        if isinstance(tags, list) and all(isinstance(t, str) for t in tags) else []
    invalid = (("tags" in meta and kept != tags)
               or ("collapsed" in meta and not isinstance(meta["collapsed"], bool))
               or ("scrolled" in meta and not (isinstance(meta["scrolled"], bool)
                                               or meta["scrolled"] == "auto"))
               or "name" in meta and not isinstance(meta["name"], str))
    if invalid:
        notes.append("cell metadata that is not valid was dropped from a cell you added")
    # the rest (a tool's own keys, valid or not) is dropped without a note: the run never needs it
    return {"tags": kept} if kept else {}
