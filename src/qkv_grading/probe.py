"""What a test cell asks of the learner's code, and how the answer reaches the grader as data.

A test cell of an exercise has two parts, split by the line ``CHECKS_MARK``::

    # Test: the seed's worked example                       <- the probe part: runs in the learner's kernel
    got = probe.call("weighted_average", values, weights)   <- calls the learner's code, keeps what it returns
    # ---- checks (when graded, these run in the grader, outside your kernel) ----
    check_close(got, [3.8, 2.5], "weighted_average(values, weights)")   <- the checks part

In a learner's own notebook (and in ``qkv check``) the whole cell runs in their kernel, top to bottom.
When an instructor grades, only the probe part runs in the learner's (sandboxed) kernel: each ``probe``
call there records what the learner's code returned, and the records leave the kernel as plain data
(``qkv_grading.wire``). The grader then runs the *whole* cell in its own process, where each ``probe`` call
replays the next record instead of calling anything, and the checks compare it with expected values
computed there. Nothing the kernel runs can change the checks, the expected values or the comparison.

Learner names appear only as strings (``probe.call("name", ...)``, ``probe.value("name")``) or inside a
function passed to ``probe.run``: the grader's process never has the learner's functions.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import sys

from qkv_grading import wire

CHECKS_MARK = "# ---- checks"
MIME = "application/vnd.qkv.records+json"
NOT_BACK = ("this result never came back from your notebook (the cell stopped before it, or its output "
            "was changed)")

_MODE: contextvars.ContextVar = contextvars.ContextVar("qkv_probe_mode", default=None)


class _Recording(list):
    """Kernel side, when graded: every probe's outcome, in order, as ("ok", value) or ("fail", message)."""


class _Plan(list):
    """Grader side, before a kernel runs (``planned``): every library function a probe forbids, in the
    order asked; nothing is called, and each probe gives None."""


class _Replay:
    """Grader side: the records a kernel sent, handed out in the order the probes ask for them."""

    def __init__(self, records: list):
        self.records, self.next = list(records), 0

    def take(self):
        if self.next >= len(self.records):
            raise AssertionError(NOT_BACK)
        kind, body = self.records[self.next]
        self.next += 1
        if kind == "fail":
            raise AssertionError(str(body))
        return body


def split(source: str) -> tuple[str, str]:
    """A test cell's (probe part, checks part). A cell without the mark is all checks."""
    lines = source.splitlines(keepends=True)
    for k, line in enumerate(lines):
        if line.lstrip().startswith(CHECKS_MARK):
            return "".join(lines[:k]), "".join(lines[k:])
    return "", source


# ---- the policy on the course library ----------------------------------------------------------------

def library_name(fn) -> str:
    """The name a learner would import ``fn`` by: ``qkv.reference.WindowKVCache.keys`` rather than the
    module it is defined in. Properties are named by their getter."""
    fn = getattr(fn, "fget", fn)
    qualname = getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))
    module = getattr(fn, "__module__", None) or ""
    top = qualname.split(".")[0]
    parts = module.split(".")
    while len(parts) > 1 and getattr(sys.modules.get(".".join(parts[:-1])), top, None) is not None:
        parts.pop()  # the package above exports it too: use the shorter name
    return f"{'.'.join(parts)}.{qualname}" if module else qualname


@contextlib.contextmanager
def own_work(name: str, forbidden):
    """Fail if one of the ``forbidden`` library functions runs inside the block.

    The course's policy: an exercise that asks for a function earns nothing for handing the work to the
    library's own version of it. Detection follows the code objects that run, so aliases and wrappers
    are caught. It runs in the learner's kernel, so a determined learner can hide such a call (another
    thread, a copied code object); a graded kernel therefore does not have those functions at all
    (``qkv_grading.library``), and this watch gives the message.
    """
    codes = {getattr(getattr(f, "fget", f), "__code__", None): library_name(f) for f in forbidden}
    codes.pop(None, None)
    seen: list[str] = []

    def profiler(frame, event, arg):
        if event == "call" and frame.f_code in codes:
            seen.append(codes[frame.f_code])

    def breach() -> AssertionError:
        return AssertionError(
            f"{name} calls the course library's own {seen[0]}, which does what this question asks you to "
            f"write. Write it yourself; other helpers are fine.")

    previous = sys.getprofile()
    sys.setprofile(profiler if codes else previous)
    try:
        yield
    except Exception:
        if seen:  # the library's function refused the call (weights of another scale, say): the breach first
            raise breach() from None
        raise
    finally:
        sys.setprofile(previous)
    if seen:
        raise breach()


def not_written(name: str) -> str:
    """The one message for an answer that is not there yet: a stub that raises NotImplementedError, and a
    name that is not defined because its cell has not run (or raised) read the same to a learner."""
    return (f"{name} is not written yet: write your answer where it says YOUR CODE HERE, run that cell, "
            f"then this test")


# ---- the three kinds of probe ------------------------------------------------------------------------

def _live(name: str, thunk, forbidden):
    """Run ``thunk`` (the learner's code) and return its result as the grader will see it."""
    try:
        with own_work(name, forbidden):
            result = thunk()
    except AssertionError:
        raise
    except NotImplementedError:
        raise AssertionError(not_written(name)) from None
    except _NotDefined as exc:
        raise AssertionError(not_written(exc.name)) from None
    except Exception as exc:
        raise AssertionError(f"{name} raised {type(exc).__name__}: {exc}") from None
    return wire.loads(wire.dumps(result))  # exactly what the grader receives


def _probe(name: str, thunk, forbidden=()):
    mode = _MODE.get()
    if isinstance(mode, _Replay):
        return mode.take()
    if isinstance(mode, _Plan):
        mode.extend(forbidden)
        return None
    try:
        value = _live(name, thunk, forbidden)
    except AssertionError as exc:
        if isinstance(mode, _Recording):
            mode.append(("fail", str(exc)))
        raise
    if isinstance(mode, _Recording):
        mode.append(("ok", value))
    return value


class _NotDefined(NameError):
    """The name a test asks for is not in the learner's namespace (not a NameError inside their code)."""


def _learner(name: str, namespace: dict):
    if name not in namespace:
        raise _NotDefined(f"{name} is not defined", name=name)
    return namespace[name]


def call(name: str, *args, forbidden=(), **kwargs):
    """What the learner's function ``name`` returns for these arguments."""
    namespace = inspect.currentframe().f_back.f_globals  # the test cell's: the learner's, in a kernel

    def thunk():
        fn = _learner(name, namespace)
        if not callable(fn):
            raise AssertionError(f"{name} should be a function; got a {type(fn).__name__}")
        return fn(*args, **kwargs)
    return _probe(name, thunk, forbidden)


def value(name: str):
    """The learner's variable ``name``."""
    namespace = inspect.currentframe().f_back.f_globals
    return _probe(name, lambda: _learner(name, namespace))


def run(label: str, fn, *args, forbidden=()):
    """What ``fn`` (a function written in the test cell, which calls the learner's code) returns."""
    return _probe(label, lambda: fn(*args), forbidden)


# ---- the kernel's side of grading, and the grader's ------------------------------------------------------

def run_probe_part(source: str, namespace: dict) -> None:
    """Kernel side, when graded: run a test cell's probe part and send its records out as data."""
    from IPython.display import display

    records = _Recording()
    token = _MODE.set(records)
    try:
        exec(compile(source, "<test>", "exec"), namespace)
    finally:
        _MODE.reset(token)
        display({MIME: wire.dumps(list(records))}, raw=True)


def decode_records(text: str) -> list:
    """Grader side: a kernel's records, checked to be a list of ("ok", value) or ("fail", str)."""
    records = wire.loads(text)
    if not isinstance(records, list):
        raise wire.WireError("records are not a list")
    for rec in records:
        if not (isinstance(rec, tuple) and len(rec) == 2 and rec[0] in ("ok", "fail")):
            raise wire.WireError("a record is not (kind, value)")
        if rec[0] == "fail" and not isinstance(rec[1], str):
            raise wire.WireError("a failure without a message")
    return records


@contextlib.contextmanager
def planned():
    """Grader side: inside the block, probes call nothing and give None; the list yielded collects every
    function they forbid (``qkv_grading.library`` leaves those out of the kernel's library)."""
    plan = _Plan()
    token = _MODE.set(plan)
    try:
        yield plan
    finally:
        _MODE.reset(token)


@contextlib.contextmanager
def replaying(records: list):
    """Grader side: inside the block, probes hand out ``records`` instead of calling anything."""
    token = _MODE.set(_Replay(records))
    try:
        yield
    finally:
        _MODE.reset(token)


# ---- a failing test in a learner's notebook shows its message --------------------------------------------

TEST_HEADING = "# Test"  # how every test cell of an exercise begins


def _in_a_test_cell(tb) -> bool:
    """Whether a traceback passes through a test cell (its code starts with ``TEST_HEADING``) or a probe
    part run by ``run_probe_part``."""
    import linecache

    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename == "<test>" or linecache.getline(filename, 1).startswith(TEST_HEADING):
            return True
        tb = tb.tb_next
    return False


def _message_only(shell, etype, value, tb, tb_offset=None):
    """IPython's handler for AssertionError: a failing test cell shows ``AssertionError: message``, not
    the frames of the check helpers it went through; the learner's own cells keep the full traceback.
    The cell still ends in an error output, so the notebook, nbgrader and ``qkv check`` see it fail."""
    if _in_a_test_cell(tb):
        stb = [f"\x1b[0;31m{etype.__name__}\x1b[0m: {value}"]
    else:
        stb = shell.InteractiveTB.structured_traceback(etype, value, tb, tb_offset=tb_offset)
    # IPython ignores what a custom handler returns, and its public showtraceback(exception_only=True)
    # adds a line ("An exception has occurred, use %tb ..."): the private call stays, for now
    shell._showtraceback(etype, value, stb)


def show_test_failures_as_messages() -> None:
    """In an IPython kernel (a learner's notebook), let a failing test show its message alone.
    Outside IPython (the grader's process, pytest) this does nothing."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and AssertionError not in getattr(shell, "custom_exceptions", ()):
        shell.set_custom_exc((AssertionError,), _message_only)


show_test_failures_as_messages()  # on import: every test cell imports this module first
