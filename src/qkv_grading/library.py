"""The course library as a graded kernel sees it: ``qkv`` without the implementations its tests forbid.

A question that asks for softmax forbids the library's own (``probe.call(..., forbidden=[...])``), and
``probe.own_work`` fails a call of it. That watch runs in the learner's kernel, where a call from another
thread, through a copied code object, or after ``sys.setprofile(None)`` slips past it. So a graded kernel
is not given those implementations at all: the sandbox hides the installed package, and the kernel
imports a copy, put in its scratch folder before its first cell runs, in which the body of every
function the assignment's tests forbid is a ``raise``. The rest of the library (helpers an answer may
use, the models) is there as installed.

Which functions are forbidden is read from the tests themselves: their probe parts run here first, in
the grader's process, with probes that call nothing and write themselves down (``probe.planned``). That
one pass per notebook (``plan``) gives both what a graded kernel is sent for each test cell, its probes as
data, and the functions they forbid. A copy of the library is made once per set of forbidden functions,
with its bytecode compiled, so a kernel imports it as fast as the installed one.
"""

from __future__ import annotations

import ast
import atexit
import compileall
import inspect
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qkv_grading import cells, probe, wire
from qkv_grading.judge import InstructorError

MAX_PLAN_CHARS = 2_000_000  # one test cell's probes as data: they travel in the source of a kernel's cell
FOLDER = "library"  # in a kernel's scratch folder: the copy it imports (first on its PYTHONPATH)
NOT_HERE = ("{name} is not in a graded kernel: this assignment asks you to write what it computes "
            "(your own code, and the library's other helpers, are fine)")


# This process's findings, made once: each notebook's plan (by the code of its cells), and a copy of the
# library for each set of forbidden functions.
_PLANS: dict[str, NotebookPlan] = {}
_VIEWS: dict[frozenset, Path] = {}


class PlanError(InstructorError):
    """A test cell's probe part cannot be planned before the kernel runs (the instructor's to fix)."""


@dataclass(frozen=True)
class NotebookPlan:
    """What the grader sends a graded kernel, made once per notebook: for each test cell its probes as
    data (``calls``: grade id -> the text ``probe.play`` takes), and the library functions the probes
    forbid (``forbidden``: (module, qualname) of each), which the kernel's library leaves out."""

    calls: dict[str, str]
    forbidden: frozenset[tuple[str, str]]


def _imports(text: str) -> str:
    """The import statements of an answer cell: what the notebook lets an answer use."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return ""
    return "\n".join(ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))


def plan(runnable, name: str = "") -> NotebookPlan:
    """The plan of a notebook's tests (``NotebookPlan``): each test cell's probe part runs here, in a copy
    of the namespace its set-up cells make (as the judge's does), with probes that call nothing and
    write themselves down (``probe.planned``). A probe part that cannot be planned raises ``PlanError``,
    naming ``name`` (the assignment) and the cell."""
    code = [(c.get("cell_type"), cells.grade_id(c), cells.is_answer(c), cells.is_test(c), cells.is_setup(c),
             cells.source(c)) for c in runnable.cells]
    key = repr((name, code))
    if key not in _PLANS:
        _PLANS[key] = _plan(runnable, name)
    return _PLANS[key]


def forbidden(runnable) -> frozenset[tuple[str, str]]:
    """(module, qualname) of every library function the notebook's tests forbid (``plan``)."""
    return plan(runnable).forbidden


def _run(text: str, namespace: dict, where: str, what: str) -> None:
    try:
        exec(compile(text, f"<plan of {where}>", "exec"), namespace)
    except (Exception, probe.Unplannable) as exc:
        raise PlanError(f"{what}: {type(exc).__name__}: {exc}") from None


def _plan(runnable, name: str) -> NotebookPlan:
    """What the tests ask and forbid. Forbidden, less what an answer cell imports (question 4 of exercise 2
    lets a learner use the ``attention`` question 3 forbids) and whatever that uses in turn: taking it
    away would break the answers the notebook allows."""
    prefix = f"{name}: " if name else ""
    base: dict = {"__name__": "__main__"}
    for c in runnable.cells:
        if c.get("cell_type") == "code" and cells.is_setup(c):
            gid = cells.grade_id(c)
            _run(cells.source(c), base, gid, f"{prefix}set-up cell {gid} fails in the grader")
    calls, found, allowed = {}, [], []
    for c in runnable.cells:
        if c.get("cell_type") != "code":
            continue
        gid = cells.grade_id(c)
        if cells.is_answer(c):
            imported: dict = {"__name__": "__main__"}
            _run(_imports(cells.source(c)), imported, gid, f"{prefix}the imports of answer cell {gid} fail")
            allowed += [v for k, v in imported.items() if k != "__name__"]
        elif cells.is_test(c):
            namespace = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in base.items()}
            with probe.planned() as made:
                _run(probe.split(cells.source(c))[0], namespace, gid,
                     f"{prefix}test cell {gid}: its probe part cannot be planned before the kernel runs")
            calls[gid] = wire.dumps(made.steps)
            if len(calls[gid]) > MAX_PLAN_CHARS:
                raise PlanError(f"{prefix}test cell {gid}: its probes' arguments take {len(calls[gid])} "
                                f"characters to send (at most {MAX_PLAN_CHARS}): make large inputs in the "
                                f"kernel with an instrument of qkv_grading.drivers")
            found += made.forbidden
    kept = _used_by(allowed)
    named = (getattr(f, "fget", f) for f in found)
    removed = frozenset(_key(fn) for fn in named if _in_library(fn) and fn.__code__ not in kept)
    return NotebookPlan(calls, removed)


def _in_library(fn) -> bool:
    return inspect.isfunction(fn) and fn.__module__.split(".")[0] == "qkv"


def _key(fn) -> tuple[str, str]:
    return fn.__module__, fn.__qualname__


def _used_by(functions) -> set:
    """The code of ``functions`` and of every library function they name, at any depth."""
    seen: set = set()
    todo = [f for f in functions if _in_library(f)]
    while todo:
        fn = todo.pop()
        if fn.__code__ in seen:
            continue
        seen.add(fn.__code__)
        codes = [fn.__code__]
        names = set()
        while codes:  # nested functions and comprehensions hold names too
            code = codes.pop()
            names |= set(code.co_names)
            codes += [c for c in code.co_consts if inspect.iscode(c)]
        scopes = [fn.__globals__] + [vars(m) for m in fn.__globals__.values() if inspect.ismodule(m)]
        todo += [scope[n] for scope in scopes for n in names if _in_library(scope.get(n))]
    return seen


def _stubbed(text: str, qualnames: set[str], module: str) -> str:
    """``text`` (a module's source) with the body of each function in ``qualnames`` replaced by a raise;
    its signature and docstring stay."""
    lines = text.splitlines(keepends=True)
    edits = []

    def visit(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qualname = prefix + child.name
                if not isinstance(child, ast.ClassDef) and qualname in qualnames:
                    body = child.body
                    keep = 1 if ast.get_docstring(child) is not None and len(body) > 1 else 0
                    first = body[keep]
                    edits.append((first.lineno - 1, child.end_lineno, first.col_offset, qualname))
                visit(child, qualname + ".")

    visit(ast.parse(text), "")
    missing = qualnames - {e[3] for e in edits}
    if missing:
        raise PlanError(f"{module} has no function {sorted(missing)[0]} to leave out")
    for start, end, indent, qualname in sorted(edits, reverse=True):
        message = NOT_HERE.format(name=f"{module}.{qualname}")
        lines[start:end] = [" " * indent + f"raise RuntimeError({message!r})\n"]
    return "".join(lines)


def build(removed: frozenset[tuple[str, str]], into: Path) -> Path:
    """A copy of the installed ``qkv`` under ``into``, less ``removed``; returns ``into``."""
    import qkv

    dest = into / "qkv"
    shutil.copytree(Path(qkv.__file__).resolve().parent, dest, ignore=shutil.ignore_patterns("__pycache__"))
    by_module: dict[str, set[str]] = {}
    for module, qualname in removed:
        by_module.setdefault(module, set()).add(qualname)
    for module, qualnames in by_module.items():
        path = dest.joinpath(*module.split(".")[1:])
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        path.write_text(_stubbed(path.read_text(), qualnames, module))
    compileall.compile_dir(dest, quiet=1)  # copy2 keeps the sources' times: the bytecode stays valid
    return into




def view(removed: frozenset[tuple[str, str]] = frozenset(), root: str | None = None) -> Path:
    """This process's copy of the library less ``removed``, made on first use in a folder under ``root``
    (default: the system's temporary folder), removed at exit if its root has not gone first."""
    if removed not in _VIEWS or not _VIEWS[removed].is_dir():
        folder = Path(tempfile.mkdtemp(prefix="qkv-library-", dir=root))
        atexit.register(shutil.rmtree, folder, True)
        _VIEWS[removed] = build(removed, folder)
    return _VIEWS[removed]


def install(copy: Path, scratch: str) -> None:
    """Put the library ``copy`` where a kernel working in ``scratch`` imports it from."""
    shutil.copytree(copy / "qkv", Path(scratch) / FOLDER / "qkv")  # as readable as the installed one
