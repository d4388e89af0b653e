"""The library's own answer earns nothing: every function in ``qkv`` that computes what a question asks
for is on that question's forbidden list (issue 22, item 6).

Each solution notebook runs here, in this process, and every ``probe.call`` the grader plans for its test
cells (name, arguments, forbidden list) is put to the solution, its result written down. Then
every function defined in the ``qkv`` package, private helpers and unchecked cores included, is called
with the same arguments: one that gives the solution's result on every call of a name computes that
answer, and must be forbidden wherever that name is asked for.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib
import inspect
import pkgutil
import signal
import warnings
from dataclasses import dataclass

import numpy as np
import pytest

import qkv
from grading_helpers import ROOT
from qkv_grading import library, probe, wire
from qkv_grading.course import ASSIGNMENTS, instructor_notebook, read_notebook, source_path

# Modules whose functions draw, train, or read and write files: none computes an exercise's answer, and
# calling them with an exercise's arguments would only do I/O.
NOT_ANSWERS = ("qkv.plots", "qkv.tinylm", "qkv.state_dict")


@dataclass
class Asked:
    assignment: str
    cell: str
    name: str
    args: tuple
    kwargs: dict
    forbidden: tuple
    result: object


def _asked(name: str) -> list[Asked]:
    """Every ``probe.call`` of the solution's test cells, as the grader plans it for a kernel
    (``library.plan``: the arguments as data, the forbidden functions by name), with what the solution
    returns for it."""
    source = read_notebook(source_path(ROOT, name))
    namespace: dict = {"__name__": "__main__"}
    for cell in source.cells:  # the set-up and the solution's answers
        if cell.cell_type == "code" and not cell.source.startswith(probe.TEST_HEADING):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exec(compile(cell.source, f"<{name}>", "exec"), namespace)
    asked: list[Asked] = []
    for cell_id, text in library.plan(instructor_notebook(source), name).calls.items():
        for step in wire.loads(text):
            if step[0] != "call":
                continue
            _, fn_name, args, kwargs, forbidden = step
            args, kwargs = tuple(a[1] for a in args), {k: v[1] for k, v in kwargs.items()}
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                result = namespace[fn_name](*copy.deepcopy(args), **copy.deepcopy(kwargs))
            asked.append(Asked(name, cell_id, fn_name, args, kwargs,
                               tuple(probe.library_function(f) for f in forbidden), result))
    return asked


def _library_functions() -> list:
    found = {}
    for info in pkgutil.walk_packages(qkv.__path__, "qkv."):
        if info.name.startswith(NOT_ANSWERS):
            continue
        module = importlib.import_module(info.name)
        for _, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ == module.__name__:
                found[fn.__code__] = fn
    return list(found.values())


@contextlib.contextmanager
def _at_most(seconds: float):
    def stop(*_):
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _same(a, b) -> bool:
    if isinstance(a, (str, bytes)) or isinstance(b, (str, bytes)) or a is None or b is None:
        return type(a) is type(b) and a == b
    try:
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype == object or b.dtype == object or a.shape != b.shape or a.size == 0:
            return False
        return bool(np.allclose(a.astype(float), b.astype(float), equal_nan=True))
    except (TypeError, ValueError):
        return False


def _gives(fn, asked: Asked) -> bool:
    try:
        with _at_most(1.0), warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            got = fn(*copy.deepcopy(asked.args), **copy.deepcopy(asked.kwargs))
    except Exception:  # noqa: BLE001 - any refusal (wrong types, wrong arity) means: not this answer
        return False
    return _same(got, asked.result)


def _forbids(asked: Asked, fn) -> bool:
    return any(getattr(getattr(f, "fget", f), "__code__", None) is fn.__code__ for f in asked.forbidden)


@pytest.fixture(scope="module")
def answers_in_the_library():
    """(assignment, name) -> the library functions that give the solution's result on every call."""
    functions = _library_functions()
    found = {}
    for name in ASSIGNMENTS:
        by_name: dict[str, list[Asked]] = {}
        for asked in _asked(name):
            by_name.setdefault(asked.name, []).append(asked)
        for fn_name, calls in by_name.items():
            found[(name, fn_name)] = (calls, [fn for fn in functions if all(_gives(fn, a) for a in calls)])
    return found


def test_the_search_finds_the_library_answers_it_should(answers_in_the_library):
    """The search can see an answer: the public versions named in the chapters are found."""
    _, softmax = answers_in_the_library[("01_weighted_average", "softmax")]
    _, attention = answers_in_the_library[("02_qkv_roles", "attention")]
    assert qkv.reference.softmax in softmax
    assert qkv.reference.attention in attention


def test_every_library_function_that_computes_an_answer_is_forbidden_for_it(answers_in_the_library):
    missing = sorted({f"{a.assignment} {a.cell}: {fn_name} is computed by {probe.library_name(fn)}"
                      for (_, fn_name), (calls, functions) in answers_in_the_library.items()
                      for fn in functions for a in calls if not _forbids(a, fn)})
    assert not missing, "\n".join(missing)


def _raises_only(path, qualname: str) -> bool:
    def find(body, parts):
        for node in body:
            if getattr(node, "name", None) == parts[0]:
                return node if len(parts) == 1 else find(node.body, parts[1:])
        raise LookupError(qualname)

    node = find(ast.parse(path.read_text()).body, qualname.split("."))
    statements = [s for s in node.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    return len(statements) == 1 and isinstance(statements[0], ast.Raise)


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_a_graded_kernels_library_has_no_function_the_tests_forbid(name):
    """The copy a graded kernel imports (qkv_grading.library) has a raise for the body of each function
    the notebook's tests forbid; what an answer cell may import stays whole."""
    runnable = read_notebook(source_path(ROOT, name))
    removed = library.forbidden(runnable)
    copy = library.view(removed) / "qkv"
    for module, qualname in removed:
        path = copy.joinpath(*module.split(".")[1:]).with_suffix(".py")
        assert _raises_only(path, qualname), f"{module}.{qualname} is still in {name}'s kernel"
    expected = {"01_weighted_average": {"softmax", "_softmax", "weighted_average"},
                "02_qkv_roles": {"causal_mask", "attention_weights"}}.get(name, set())
    assert expected <= {q for m, q in removed if m == "qkv.reference.qkv_attention"}
    if name == "02_qkv_roles":  # question 4 lets an answer import attention: it stays, with what it uses
        assert not {"attention", "attend", "_softmax"} & {q for m, q in removed}
        assert not _raises_only(copy / "reference" / "qkv_attention.py", "attention")
