"""A graded kernel is sent each test's probes as data, never the test's code (issue 22, item 6).

The grader plans a probe part in its own process (``qkv_grading.library.plan``): each probe is written
down as plain data, and what a probe returns refuses any use. A probe part that cannot be planned is the
instructor's error, found by ``qkv release --check`` and before ``qkv grade`` starts. The kernel's side
(``probe.play``) performs the plan against the learner's namespace and sends records the judge replays.
All of it runs here, in this process: no kernel starts.
"""

from __future__ import annotations

import ast
import contextlib
import io
import shutil

import nbformat
import numpy as np
import pytest

from grading_helpers import ROOT
from qkv_grading import library, probe, release, wire
from qkv_grading.course import source_path
from qkv_grading.judge import InstructorError

SETUP = "import numpy as np\nX = np.arange(6.0).reshape(3, 2)"
PROBES = '''# Test: a demo
from qkv_grading import probe
from qkv import reference
got = probe.call("scale", X, 2.0, forbidden=[reference.softmax], how="rows")
name = probe.value("answer")
### BEGIN HIDDEN TESTS
secret_label = "a line only the hidden part holds"
means = probe.run("update_mean", "running_means", probe.learner("update_mean"), X)
### END HIDDEN TESTS
'''
CHECKS = '''# ---- checks
assert np.allclose(got, 2.0 * X), "scale is wrong"
assert name == "B", "answer is wrong"
assert np.allclose(means["means"][-1], X.mean(axis=0)), "update_mean is wrong"
'''


def _cell(source: str, **nbgrader) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["nbgrader"] = {"locked": True, **nbgrader}
    return cell


def _notebook(probe_part: str, checks: str = CHECKS) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [_cell(SETUP, grade_id="setup"),
                _cell("def scale(x, s, how):\n    return s * x", grade_id="answer", solution=True, locked=False),
                _cell(probe_part + checks, grade_id="t_demo", grade=True, points=1)]
    return nb


def test_a_probe_part_becomes_data_and_the_forbidden_set():
    plan = library.plan(_notebook(PROBES), "demo")
    steps = wire.loads(plan.calls["t_demo"])
    assert steps[0][:2] == ("call", "scale")
    assert steps[0][2][0][0] == "data" and np.array_equal(steps[0][2][0][1], np.arange(6.0).reshape(3, 2))
    assert steps[0][2][1] == ("data", 2.0) and steps[0][3] == {"how": ("data", "rows")}
    assert steps[0][4] == ["qkv.reference.softmax"]  # by its name: the kernel finds its own copy
    assert steps[1] == ("value", "answer")
    assert steps[2][:3] == ("run", "update_mean", "running_means")
    assert steps[2][3][0] == ("learner", "update_mean")
    assert plan.forbidden == frozenset({("qkv.reference.qkv_attention", "softmax")})
    assert "only the hidden part" not in plan.calls["t_demo"]  # the code stays here; only what it asks goes


BAD = {
    "uses_a_result": ("got = probe.call('scale', X, 2.0, how='rows')\nhalf = got / 2\n", "uses what scale returns"),
    "passes_a_result_on": ("got = probe.call('scale', probe.call('scale', X, 2.0, how='rows'), 1.0, how='rows')\n",
                           "is what scale returns"),
    "tests_a_result": ("got = probe.value('answer')\nif got:\n    pass\n", "uses what answer returns"),
    "hides_the_use": ("got = probe.value('answer')\ntry:\n    len(got)\nexcept Exception:\n    pass\n",
                      "uses what answer returns"),
    "a_function_argument": ("got = probe.call('scale', lambda x: x, 2.0, how='rows')\n", "not plain data"),
    "an_object_array": ("got = probe.call('scale', np.array(['a']), 2.0, how='rows')\n", "not of numbers"),
    "no_such_instrument": ("got = probe.run('scale', 'my_own_loop', X)\n", "not an instrument"),
    "a_test_cell_function": ("got = probe.run('scale', lambda: 1)\n", "not an instrument"),
    "a_learner_name_nested": ("got = probe.run('u', 'running_means', [probe.learner('u')])\n", "of its own"),
    "fails_in_the_grader": ("got = 1 / 0\n", "ZeroDivisionError"),
    "forbids_a_local_function": ("def mine():\n    pass\ngot = probe.call('scale', X, forbidden=[mine])\n",
                                 "cannot be found by its name"),
    "too_large_to_send": ("got = probe.call('scale', np.zeros((800, 800)), 2.0, how='rows')\n",
                          "make large inputs in the kernel"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_probe_part_that_cannot_be_planned_is_the_instructors_error(case):
    body, why = BAD[case]
    with pytest.raises(library.PlanError) as err:
        library.plan(_notebook("# Test: bad\nfrom qkv_grading import probe\n" + body, "# ---- checks\n"), "demo")
    assert isinstance(err.value, InstructorError)  # `qkv grade` refuses to start on it, as on a set-up error
    message = str(err.value)
    assert message.startswith("demo: test cell t_demo") and why in message, message


def _course(tmp_path):
    for folder in ("solutions", "exercises"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    shutil.copy(ROOT / "nbgrader_config.py", tmp_path / "nbgrader_config.py")
    return tmp_path


class _Args:
    def __init__(self, root):
        self.root, self.check, self.sync_only = str(root), True, True


def test_release_check_names_the_assignment_and_the_cell_of_an_unplannable_test(tmp_path, capsys):
    course = _course(tmp_path)
    assert release.main(_Args(course)) == 0
    src = source_path(course, "05_cached_decoding")
    text = src.read_text()
    # a hidden line that looks at a probe's result before the checks: the exercise stays in sync
    broken = text.replace('"got = [probe.call(\\"oldest_reachable\\", *c) for c in cases]\\n"',
                          '"got = [probe.call(\\"oldest_reachable\\", *c) for c in cases]\\n", '
                          '"got = [int(p) for p in got]\\n"')
    assert broken != text
    src.write_text(broken)
    capsys.readouterr()
    assert release.main(_Args(course)) == 1
    out = capsys.readouterr().out
    assert "in sync" in out
    assert "05_cached_decoding: test cell q5_reach: its probe part cannot be planned" in out, out
    assert "uses what oldest_reachable returns" in out, out


def _played(plan_text: str, namespace: dict) -> str:
    """What ``probe.play`` sends, here: outside IPython, ``display`` prints the message's data."""
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown), probe.using(namespace):
        with contextlib.suppress(AssertionError):
            probe.play(plan_text)
    return ast.literal_eval(shown.getvalue().strip())[probe.MIME]


def _learner_namespace(update_mean) -> dict:
    return {"scale": lambda x, s, how: s * np.asarray(x), "answer": "B", "update_mean": update_mean}


def _judged(records_text: str) -> str:
    namespace = {"np": np, "X": np.arange(6.0).reshape(3, 2)}
    try:
        with probe.replaying(probe.decode_records(records_text)):
            exec(compile(PROBES + CHECKS, "<test t_demo>", "exec"), namespace)
    except AssertionError as exc:
        return str(exc)
    return "passed"


def test_the_kernel_plays_the_plan_and_the_judge_replays_it():
    plan = library.plan(_notebook(PROBES), "demo")
    right = _learner_namespace(lambda mean, k, i: (np.asarray(k) + (i - 1) * mean) / i)
    assert _judged(_played(plan.calls["t_demo"], right)) == "passed"
    rescans = []

    def rescanning(mean, k, i):  # keeps every key and averages them all again: right values, wrong reads
        rescans.append(k)
        return np.mean(np.stack(rescans), axis=0)
    records = probe.decode_records(_played(plan.calls["t_demo"], _learner_namespace(rescanning)))
    assert records[2][1]["reread"] and _judged(wire.dumps(records)) == "passed"  # the instrument saw it
    missing = _learner_namespace(None)
    del missing["update_mean"]
    records = probe.decode_records(_played(plan.calls["t_demo"], missing))
    assert records[-1] == ("fail", probe.not_written("update_mean")) and len(records) == 3


def test_the_same_cell_runs_top_to_bottom_in_a_learners_notebook():
    namespace = {**_learner_namespace(lambda mean, k, i: (np.asarray(k) + (i - 1) * mean) / i),
                 "np": np, "X": np.arange(6.0).reshape(3, 2)}
    with probe.using(namespace):
        exec(compile(PROBES + CHECKS, "<test t_demo>", "exec"), namespace)
        namespace["answer"] = "C"
        with pytest.raises(AssertionError, match="answer is wrong"):
            exec(compile(PROBES + CHECKS, "<test t_demo>", "exec"), namespace)


def test_the_decoding_instrument_counts_a_step_that_projects_the_whole_prefix_again():
    """``drivers.decoding_steps`` keeps the strength of the cell it replaced: a decode_step that caches
    its inputs and projects all of them again each step is seen doing so; a cached step is not."""
    from qkv.reference import KVCache, attention
    from qkv_grading import drivers

    rng = np.random.default_rng(0)
    W_q, W_k, W_v = (rng.normal(size=(4, 4)) for _ in range(3))
    X = rng.normal(size=(5, 4))

    def cached(x, cache, W_q, W_k, W_v):
        K, V = cache.update((x @ W_k)[None, None, None], (x @ W_v)[None, None, None])
        return attention((x @ W_q)[None], K[0, 0], V[0, 0])[0]

    seen = []

    def recomputing(x, cache, W_q, W_k, W_v):
        seen.append(x)
        prefix = np.stack(seen)
        cache.update((x @ np.asarray(W_k))[None, None, None], (x @ np.asarray(W_v))[None, None, None])
        return attention((x @ W_q)[None], prefix @ W_k, prefix @ W_v)[0]

    good = drivers.decoding_steps(cached, KVCache, X, W_q, W_k, W_v)
    bad = drivers.decoding_steps(recomputing, KVCache, X, W_q, W_k, W_v)
    assert good["projected"] == [(1, 1)] * 5 and good["lengths"] == [1, 2, 3, 4, 5]
    assert [k for k, _ in bad["projected"]] == [1, 2, 3, 4, 5]
    assert np.allclose(np.stack(good["outs"]), np.stack(bad["outs"]))
