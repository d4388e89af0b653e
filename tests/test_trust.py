"""Grades a submission cannot forge, and kernels that cannot reach what they must not.

Tampering catalogue: every trick a learner out to game the grader might put in an answer cell, on top of
the same wrong answers. Each is graded in one real `qkv grade` run (sandbox on) and must score no more,
on any question, than those wrong answers alone. Sandbox catalogue: a submission that reads solutions/,
writes outside its scratch folder, opens a socket, forks without end or allocates far past the memory
limit is graded with a reason in report.csv, and the honest submissions beside it lose nothing.
"""

from __future__ import annotations

import textwrap

import pytest

from grading_helpers import ROOT, filled, question_scores, read_csv, solution_sources, submit
from qkv_grading.grade import grade

pytestmark = pytest.mark.slow

NAME = "01_weighted_average"
SOLUTIONS = str(ROOT / "solutions")

# Wrong answers to every question of exercise 1: the plain mean instead of the weighted one, and a
# softmax that forgets to normalise.
WRONG = {
    "q1_answer": "values = np.array([[2.0, 10.0], [4.0, 0.0], [8.0, 5.0]])\n"
                 "weights = np.array([0.2, 0.7, 0.1])\noutput = values.mean(axis=0)",
    "q2_answer": "def weighted_average(values, weights):\n    return np.mean(np.asarray(values), axis=-2)",
    "q3_answer": "def softmax(x):\n    return np.exp(np.asarray(x, dtype=float))",
}

TRICKS = {
    "checks_replaced": """
        import qkv_grading.assertions as c
        for n in dir(c):
            if n.startswith("check") or n == "as_array":
                setattr(c, n, lambda *a, **k: a[0] if a else None)
        """,
    "numpy_patched": """
        np.allclose = lambda *a, **k: True
        np.isclose = lambda a, b, *r, **k: np.ones(np.shape(a), dtype=bool)
        np.all = lambda *a, **k: True
        np.isfinite = lambda a: np.ones(np.shape(a), dtype=bool)
        """,
    "reference_replaced": """
        import qkv.reference as ref
        ref.weighted_average = lambda v, w: np.mean(np.asarray(v), axis=-2)
        ref.softmax = lambda x: np.exp(np.asarray(x, dtype=float))
        ref.attention = ref.causal_mask = lambda *a, **k: 0
        """,
    "sys_modules_swapped": """
        import sys, types
        fake = types.ModuleType("qkv_grading.assertions")
        fake.__getattr__ = lambda name: (lambda *a, **k: a[0] if a else None)
        sys.modules["qkv_grading.assertions"] = fake
        sys.modules["qkv.reference"] = fake
        """,
    "input_transformer": """
        def _wrap(lines):
            body = "".join("    " + ln if ln.strip() else ln for ln in lines) or "    pass\\n"
            return ["try:\\n", body if body.endswith("\\n") else body + "\\n", "except BaseException:\\n",
                    "    pass\\n"]
        get_ipython().input_transformers_post.append(_wrap)
        """,
    "custom_exception_handler": """
        get_ipython().set_custom_exc((BaseException,), lambda *a, **k: None)
        """,
    "profile_and_trace": """
        import sys
        sys.setprofile(lambda *a: None)
        sys.settrace(lambda *a: None)
        sys.setprofile = sys.settrace = lambda *a: None
        """,
    "builtins_patched": """
        import builtins
        builtins.AssertionError = type("Quiet", (Exception,), {})
        builtins.isinstance = lambda *a: True
        """,
    "fake_records_and_prints": """
        from IPython.display import display
        from qkv_grading import probe, wire
        print("q1_shape passed\\nq1_value passed\\nall tests passed: 10 / 10")
        display({probe.MIME: wire.dumps([("ok", np.array([3.8, 2.5]))])}, raw=True)
        probe.play = lambda plan: display(
            {probe.MIME: wire.dumps([("ok", np.array([3.8, 2.5]))] * 20)}, raw=True)
        """,
    "exits_early": """
        import os, sys
        get_ipython().events.register("pre_run_cell", lambda *a: os._exit(0))
        """,
    "system_exit": """
        raise SystemExit(0)
        """,
    "post_run_hook_clears_errors": """
        def _clear(result):
            result.error_in_exec = None
            result.error_before_exec = None
        get_ipython().events.register("post_run_cell", _clear)
        """,
    "reads_solutions": f"""
        import json, pathlib, qkv
        here = pathlib.Path(qkv.__file__).resolve()
        found = [p for d in here.parents for p in d.glob("solutions/*/*.ipynb")]
        found += list(pathlib.Path({SOLUTIONS!r}).glob("*/*.ipynb"))
        for path in found:
            if path.name.startswith("01_"):
                for cell in json.loads(path.read_text())["cells"]:
                    if cell["metadata"].get("nbgrader", {{}}).get("solution"):
                        exec("".join(cell["source"]), globals())
        """,
    "writes_results": """
        import pathlib
        for target in ["/tmp/grades.csv", "../results/trick.json", "/work/grades.csv"]:
            try:
                pathlib.Path(target).write_text("student,assignment,score,max_score\\ntrick,x,10,10\\n")
            except OSError:
                pass
        """,
    # The library's own weighted_average and softmax, out of the watch's sight (probe.own_work): graded,
    # the kernel's library does not have them (qkv_grading.library)
    "library_in_a_thread": """
        import threading
        from qkv import reference as _ref
        from qkv.reference import qkv_attention as _qa

        def _in_a_thread(fn, *args):
            out = {}

            def work():
                try:
                    out["value"] = fn(*args)
                except Exception as exc:
                    out["error"] = exc
            worker = threading.Thread(target=work)
            worker.start()
            worker.join()
            if "error" in out:
                raise out["error"]
            return out["value"]

        def weighted_average(values, weights):
            return _in_a_thread(_ref.weighted_average, values, weights)

        def softmax(x):
            return _in_a_thread(_qa._softmax, np.asarray(x, dtype=float))
        """,
    "library_code_copied": """
        import types
        from qkv import reference as _ref
        from qkv.reference import qkv_attention as _qa

        def _copy(fn):
            return types.FunctionType(fn.__code__.replace(co_name="mine"), fn.__globals__)

        weighted_average = _copy(_ref.weighted_average)
        softmax = _copy(_qa._softmax)
        """,
    "library_with_profile_off": """
        import sys
        from qkv import reference as _ref

        def weighted_average(values, weights):
            sys.setprofile(None)
            return _ref.weighted_average(values, weights)

        def softmax(x):
            sys.setprofile(None)
            return _ref.softmax(x)
        """,
}


# after the learner's own (wrong) definitions, which they would replace
LAST = {"reads_solutions", "library_in_a_thread", "library_code_copied", "library_with_profile_off"}


def _trick_notebook(trick: str):
    answers = dict(WRONG)
    code = textwrap.dedent(TRICKS[trick]).strip()
    if trick in LAST:
        answers["q3_answer"] = WRONG["q3_answer"] + "\n" + code
    else:
        answers["q1_answer"] = code + "\n" + WRONG["q1_answer"]
    return filled(NAME, answers)


# A learner's function that searches everything its kernel can reach for the hidden tests' code: the call
# stack's frames, their code and source, linecache, every code object, function, dict and list the
# garbage collector knows, IPython's In, user namespace and history, and the files of its working
# folder. It looks for two lines of the hidden probe part of q2_random (neither is in the checks part nor
# released), and prints what it found encoded, past the scrubber.
HIDDEN_PROBE_LINES = ("four items of width 3", "g.dirichlet(np.ones(4))")
SEARCHER = f"""
import base64, gc, inspect, linecache, os, sys
NEEDLES, FOUND, LOOKED = {tuple(line[::-1] for line in HIDDEN_PROBE_LINES)!r}, [], [0]  # reversed: not
# found in this cell's own code


def _look(text, where):
    LOOKED[0] += 1
    for needle in NEEDLES:
        at = text.find(needle[::-1]) if isinstance(text, str) else -1
        if at >= 0:
            FOUND.append(where + ": " + text[max(0, at - 200):at + 200])


def _code(code, where, deep=False):
    _look(" ".join(map(str, (code.co_filename,) + code.co_names + code.co_consts)), where)
    if deep:
        _look("".join(linecache.getlines(code.co_filename)), where + " lines")
        try:
            _look(inspect.getsource(code), where + " source")
        except (OSError, TypeError):
            pass
    for const in code.co_consts:
        if inspect.iscode(const):
            _code(const, where, deep)


def search():
    frame = sys._getframe(1)
    while frame is not None:
        _code(frame.f_code, "frame", deep=True)
        for scope in (frame.f_locals, frame.f_globals):
            for v in list(scope.values()):
                if v is not FOUND:
                    _look(v if isinstance(v, str) else repr(v)[:10000], "frame variable")
        frame = frame.f_back
    for name, entry in list(linecache.cache.items()):
        _look(str(name) + "".join(entry[2]) if len(entry) > 2 else str(entry), "linecache")
    for obj in gc.get_objects():
        if inspect.iscode(obj):
            _code(obj, "gc code")
        elif inspect.isfunction(obj):
            _code(obj.__code__, "gc function")
        elif isinstance(obj, dict):
            for v in list(obj.values()):
                _look(v, "gc dict")
        elif isinstance(obj, (list, tuple)) and obj is not FOUND:
            for v in obj:
                _look(v, "gc list")
    shell = get_ipython()
    for v in list(shell.user_ns.get("In", [])) + list(shell.user_ns.values()):
        if v is not FOUND:
            _look(v if isinstance(v, str) else repr(v)[:10000], "user_ns")
    try:
        for _, _, line in shell.history_manager.get_range():
            _look(line, "history")
    except Exception:
        pass
    for root, _, files in os.walk("."):
        for f in files:
            try:
                with open(os.path.join(root, f), errors="ignore") as handle:
                    _look(handle.read(1_000_000), "file " + f)
            except OSError:
                pass
"""
ATTACKER_REPORT = """
print("SEARCHED", LOOKED[0], "FOUND", len(FOUND))
print("STOLEN:" + base64.b64encode("\\n".join(FOUND).encode()).decode() + ":END")
"""


def _attacker_notebook():
    import nbformat

    sol = solution_sources(NAME)["q2_answer"]
    spy = sol + ("\n\n_weights_for, _calls = weights_for, []\n\n\ndef weights_for(values, output):\n"
                 "    _calls.append(1)\n    if len(_calls) <= 2:  # the visible call and the first hidden one\n"
                 "        search()\n    return _weights_for(values, output)\n")
    nb = filled(NAME, {"q1_answer": textwrap.dedent(SEARCHER).strip() + "\n" + filled_q1(), "q2_answer": spy})
    nb.cells.append(nbformat.v4.new_code_cell(ATTACKER_REPORT.strip()))
    return nb


SANDBOX = {
    "reads_solutions_dir": f"open({SOLUTIONS + '/' + NAME + '/' + NAME + '.ipynb'!r}).read()",
    "writes_outside_scratch": "open('/usr/evil.txt', 'w').write('x')",
    "opens_socket": "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
    "forks_without_end": textwrap.dedent("""
        import os, time
        for _ in range(5000):
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
        """),
    "allocates_too_much": "hog = np.empty(6 * 2**30, dtype=np.uint8)  # fine unsandboxed: never touched",
}
SANDBOX_REASONS = {
    "reads_solutions_dir": "FileNotFoundError",
    "writes_outside_scratch": "OSError",
    "opens_socket": "ConnectionRefusedError",  # its loopback is its own: the grader's port is not there
    "forks_without_end": "BlockingIOError",
    "allocates_too_much": "MemoryError",
}


@pytest.fixture(scope="module")
def listener():
    """A port open on this machine's loopback: a sandboxed kernel must not reach it."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


@pytest.fixture(scope="module")
def graded(tmp_path_factory, listener):
    subs = tmp_path_factory.mktemp("submissions")
    submit(subs, "honest", NAME, filled(NAME))
    submit(subs, "wrong", NAME, filled(NAME, WRONG))
    for trick in TRICKS:
        submit(subs, f"trick_{trick}", NAME, _trick_notebook(trick))
    submit(subs, "attacker_reads_hidden_tests", NAME, _attacker_notebook())
    for attack, code in SANDBOX.items():
        code = code.replace("{port}", str(listener.getsockname()[1]))
        submit(subs, f"sandbox_{attack}", NAME, filled(NAME, {"q1_answer": code + "\n" + filled_q1()}))
        submit(subs, f"honest_after_{attack}", NAME, filled(NAME))
    out = tmp_path_factory.mktemp("graded")
    grade(subs, out, ROOT, workers=2, timeout=10, progress=False)
    return {"questions": question_scores(out), "report": read_csv(out / "report.csv"), "out": out}


def filled_q1() -> str:
    return [c for c in filled(NAME).cells if c.metadata.get("nbgrader", {}).get("grade_id") == "q1_answer"][
        0].source


def test_wrong_answers_lose_points_on_every_question(graded):
    full = graded["questions"][("honest", NAME)]
    wrong = graded["questions"][("wrong", NAME)]
    assert all(s == m for s, m in full.values()), full
    assert all(wrong[q][0] < full[q][0] for q in full), wrong


@pytest.mark.parametrize("trick", list(TRICKS))
def test_a_trick_earns_nothing_the_wrong_answers_do_not(graded, trick):
    wrong = graded["questions"][("wrong", NAME)]
    tricked = graded["questions"][(f"trick_{trick}", NAME)]
    for q, (score, _) in tricked.items():
        assert score <= wrong[q][0], f"{trick} raised {q} from {wrong[q][0]} to {score}"


@pytest.mark.parametrize("attack", list(SANDBOX))
def test_the_sandbox_stops_it_with_a_reason_and_nobody_else_loses(graded, attack):
    row = next(r for r in graded["report"] if r["student"] == f"sandbox_{attack}")
    assert SANDBOX_REASONS[attack] in row["notes"], row
    honest = graded["questions"][(f"honest_after_{attack}", NAME)]
    assert all(s == m for s, m in honest.values()), honest


def test_no_connection_reached_the_machine(graded, listener):
    with pytest.raises(BlockingIOError):
        listener.accept()


def test_nothing_was_written_where_the_kernel_should_not_write(graded):
    import pathlib

    assert not pathlib.Path("/usr/evil.txt").exists()
    assert not (graded["out"] / "results" / "trick.json").exists()
    rows = read_csv(graded["out"] / "grades.csv")
    assert all(r["student"] != "trick" for r in rows)


def test_a_learners_function_finds_no_hidden_test_code_in_its_kernel(graded):
    """The hidden tests' code never enters the kernel (issue 22, item 6): the kernel is sent each test's
    probes as data. With the probe part's source in the kernel (the grader before), the search found it
    in the calling frames and printed it, encoded, on the feedback page."""
    import base64
    import re

    student = "attacker_reads_hidden_tests"
    page = (graded["out"] / "feedback" / student / NAME / f"{NAME}.html").read_text()
    searched = re.search(r"SEARCHED (\d+) FOUND (\d+)", page)
    assert searched, "the attacker's report is not on its page"
    assert int(searched.group(1)) > 10_000, searched.group(0)  # it did look, widely
    stolen = [base64.b64decode(m).decode() for m in re.findall(r"STOLEN:([A-Za-z0-9+/=]*):END", page)]
    assert stolen, "the attacker's encoded findings are not on its page"
    assert not any(line in text for line in HIDDEN_PROBE_LINES for text in stolen + [page]), stolen
    assert searched.group(2) == "0", searched.group(0)
    full = graded["questions"][(student, NAME)]
    assert all(s == m for s, m in full.values()), full  # its answers are right: it loses nothing either
