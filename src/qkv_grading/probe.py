"""What a test cell asks of the learner's code, and how the answer reaches the grader as data.

A test cell of an exercise has two parts, split by the line ``CHECKS_MARK``::

    # Test: the seed's worked example                       <- the probe part: what to ask of the learner
    got = probe.call("weighted_average", values, weights)   <- calls the learner's code, keeps what it returns
    # ---- checks (when graded, these run in the grader, outside your kernel) ----
    check_close(got, [3.8, 2.5], "weighted_average(values, weights)")   <- the checks part

In a learner's own notebook (and in ``qkv check``) the whole cell runs in their kernel, top to bottom.
When an instructor grades, no line of a test cell enters the learner's kernel. The grader first runs each
probe part in its own process with probes that call nothing (``planned``): each probe is written down as
plain data, ("call", the learner's function's name, arguments, keyword arguments, forbidden functions),
("value", a variable's name) or ("run", label, an instrument's name, arguments, forbidden functions).
The kernel is sent that plan (``play``), performs it against the learner's namespace, and sends back what
the learner's code returned, as data (``qkv_grading.wire``). The grader then runs the *whole* cell in its
own process, where each probe replays the next record instead of calling anything, and the checks
compare it with expected values computed there. Nothing the kernel runs can change the checks, the
expected values or the comparison, or read the hidden tests' code.

Learner names appear only as strings (``probe.call("name", ...)``, ``probe.value("name")``,
``probe.learner("name")``): the grader's process never has the learner's functions. A test that needs
more than one call (a loop of decoding steps, a counting matrix) names an instrument of
``qkv_grading.drivers``: the code the kernel runs is the package's, never the test cell's.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import sys
import warnings
from dataclasses import dataclass

import numpy as np

from qkv_grading import drivers, wire

CHECKS_MARK = "# ---- checks"
MIME = "application/vnd.qkv.records+json"
NOT_BACK = ("this result never came back from your notebook (the cell stopped before it, or its output "
            "was changed)")

_MODE: contextvars.ContextVar = contextvars.ContextVar("qkv_probe_mode", default=None)
_NAMESPACE: contextvars.ContextVar = contextvars.ContextVar("qkv_probe_namespace", default=None)


class Unplannable(BaseException):
    """A probe part that cannot be planned (the instructor's to fix): it uses what a probe returned, or
    passes arguments that are not plain data. A BaseException, so that no ``except Exception`` in a
    probe part hides it."""


@dataclass(frozen=True)
class Learner:
    """A name in the learner's namespace, given to an instrument: looked up where the probe runs."""

    name: str


def learner(name: str) -> Learner:
    """The learner's ``name`` (a function, a class) as an argument of ``run``: resolved in the kernel."""
    return Learner(name)


class _Pending:
    """What a probe gives while planning: what the learner's code returns is not known yet, so any use
    of it (an operation, an attribute, passing it to another probe) refuses to plan."""

    __slots__ = ("what",)

    def __init__(self, what: str):
        object.__setattr__(self, "what", what)

    def __repr__(self) -> str:
        return f"<what {self.what} returns, known only after the kernel runs>"

    def _refuse(self, *args, **kwargs):
        raise Unplannable(f"the probe part uses what {self.what} returns: only the checks part may")


for _dunder in ("bool len iter next reversed contains getitem setitem delitem call eq ne lt le gt ge hash "
                "add radd iadd sub rsub isub mul rmul imul matmul rmatmul imatmul truediv rtruediv itruediv "
                "floordiv rfloordiv mod rmod pow rpow neg pos abs invert int float complex index round "
                "and rand or ror xor rxor lshift rlshift rshift rrshift str format bytes enter exit "
                "array array_ufunc array_function getattr setattr delattr fspath copy deepcopy").split():
    setattr(_Pending, f"__{_dunder}__", _Pending._refuse)
del _dunder


class _Plan:
    """Grader side, before a kernel runs (``planned``): every probe as plain data (``steps``), and every
    library function the probes forbid (``forbidden``); nothing is called."""

    def __init__(self) -> None:
        self.steps: list[tuple] = []
        self.forbidden: list = []

    def add(self, kind: str, name: str, args, kwargs, forbidden, instrument: str = "") -> _Pending:
        if not isinstance(name, str):
            raise Unplannable(f"a probe names the learner's code with a {type(name).__name__}, not a str")
        what = f"{name}" if kind != "run" else f"the instrument {instrument!r}"
        encoded = [_argument(a, what) for a in args]
        named = {str(k): _argument(v, what) for k, v in kwargs.items()}
        names = [_forbidden_name(f) for f in forbidden]
        self.forbidden += list(forbidden)
        if kind == "value":
            self.steps.append(("value", name))
        elif kind == "call":
            self.steps.append(("call", name, encoded, named, names))
        else:
            if instrument not in drivers.INSTRUMENTS:
                raise Unplannable(f"{instrument!r} is not an instrument of qkv_grading.drivers "
                                  f"({', '.join(sorted(drivers.INSTRUMENTS))})")
            self.steps.append(("run", name, instrument, encoded, names))
        return _Pending(what)


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


def _argument(value, what: str) -> tuple:
    """An argument of a probe as the plan carries it: ("learner", name) or ("data", plain data)."""
    if isinstance(value, Learner):
        if not isinstance(value.name, str):
            raise Unplannable(f"probe.learner takes a name (a str), not a {type(value.name).__name__}")
        return ("learner", value.name)
    _check_plain(value, what)
    return ("data", value)


def _check_plain(value, what: str, depth: int = 0) -> None:
    if isinstance(value, _Pending):
        raise Unplannable(f"an argument of {what} is what {value.what} returns: the kernel cannot know it")
    if isinstance(value, Learner):
        raise Unplannable(f"probe.learner({value.name!r}) inside an argument of {what}: give it as an "
                          f"argument of its own")
    if depth > wire.MAX_DEPTH:
        raise Unplannable(f"an argument of {what} is nested too deeply")
    if isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _check_plain(item, what, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, what, depth + 1)
            _check_plain(item, what, depth + 1)
    elif isinstance(value, np.ndarray) and value.dtype.kind not in "biufc":
        raise Unplannable(f"an argument of {what} is an array of {value.dtype}, not of numbers")
    elif not isinstance(value, np.ndarray) and isinstance(wire.loads(wire.dumps(value)), wire.Opaque):
        raise Unplannable(f"an argument of {what} is a {type(value).__name__}, not plain data")


def _forbidden_name(fn) -> str:
    """A forbidden function's library name, checked to find the same function again in a kernel."""
    name = library_name(fn)
    try:
        found = library_function(name)
    except LookupError:
        found = None
    if found is not getattr(fn, "fget", fn):
        raise Unplannable(f"the forbidden {name} cannot be found by its name in the course library")
    return name


def library_function(name: str):
    """The course library's function ``name`` (as ``library_name`` writes it), in this process's ``qkv``:
    in a graded kernel, the copy without the forbidden bodies. A property gives its getter."""
    parts = name.split(".")
    for k in range(len(parts) - 1, 0, -1) if parts[0] == "qkv" else ():
        try:
            found = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        try:
            for attr in parts[k:]:
                found = getattr(found, attr)
        except AttributeError:
            break
        return getattr(found, "fget", found)
    raise LookupError(f"no function {name} in the course library")


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


class _NotDefined(NameError):
    """The name a test asks for is not in the learner's namespace (not a NameError inside their code)."""


def _learner(name: str, namespace: dict):
    if name not in namespace:
        raise _NotDefined(f"{name} is not defined", name=name)
    return namespace[name]


def _thunk(kind: str, name: str, args, kwargs, instrument: str, namespace: dict):
    """What performing one probe calls; learner names are looked up in ``namespace`` when it runs."""
    def given(arg):
        return _learner(arg.name, namespace) if isinstance(arg, Learner) else arg

    def call():
        fn = _learner(name, namespace)
        if not callable(fn):
            raise AssertionError(f"{name} should be a function; got a {type(fn).__name__}")
        return fn(*map(given, args), **{k: given(v) for k, v in kwargs.items()})

    if kind == "value":
        return lambda: _learner(name, namespace)
    if kind == "call":
        return call
    return lambda: drivers.INSTRUMENTS[instrument](*map(given, args))


def _probe(kind: str, name: str, args=(), kwargs=None, forbidden=(), instrument: str = ""):
    mode, kwargs = _MODE.get(), kwargs or {}
    if isinstance(mode, _Replay):
        return mode.take()
    if isinstance(mode, _Plan):
        return mode.add(kind, name, args, kwargs, forbidden, instrument)
    if kind == "run" and instrument not in drivers.INSTRUMENTS:
        raise ValueError(f"{instrument!r} is not an instrument of qkv_grading.drivers")
    return _live(name, _thunk(kind, name, args, kwargs, instrument, learner_namespace()), forbidden)


def call(name: str, *args, forbidden=(), **kwargs):
    """What the learner's function ``name`` returns for these arguments."""
    return _probe("call", name, args, kwargs, forbidden)


def value(name: str):
    """The learner's variable ``name``."""
    return _probe("value", name)


def run(label: str, instrument: str, *args, forbidden=()):
    """What the instrument ``instrument`` of ``qkv_grading.drivers`` returns for these arguments, which
    may name the learner's code (``learner("decode_step")``); ``label`` names the learner's code in a
    message ("decode_step raised ...")."""
    return _probe("run", label, args, None, forbidden, instrument)


def learner_namespace() -> dict:
    """Where probes find the learner's names: the namespace ``using`` gives, else the IPython kernel's
    user namespace (a notebook, ``qkv check``, a graded kernel)."""
    namespace = _NAMESPACE.get()
    if namespace is not None:
        return namespace
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise RuntimeError("a probe outside IPython needs the learner's namespace: `with probe.using(ns):`")
    return shell.user_ns


@contextlib.contextmanager
def using(namespace: dict):
    """Inside the block, probes find the learner's names in ``namespace`` (a test run outside IPython)."""
    token = _NAMESPACE.set(namespace)
    try:
        yield
    finally:
        _NAMESPACE.reset(token)


# ---- the kernel's side of grading, and the grader's ------------------------------------------------------

def _performed(step: tuple, namespace: dict):
    """One planned step, performed here: the record's value, or an AssertionError with its message."""
    kind, name = step[0], step[1]
    if kind == "value":
        args, kwargs, forbidden, instrument = [], {}, [], ""
    elif kind == "call":
        args, kwargs, forbidden, instrument = step[2], step[3], step[4], ""
    else:
        instrument, args, kwargs, forbidden = step[2], step[3], {}, step[4]

    def given(arg):
        return Learner(arg[1]) if arg[0] == "learner" else arg[1]
    try:
        watched = [library_function(f) for f in forbidden]
    except (LookupError, ImportError) as exc:
        raise AssertionError(f"the course library in this kernel is not whole ({exc})") from None
    thunk = _thunk(kind, name, [given(a) for a in args], {k: given(v) for k, v in kwargs.items()},
                   instrument, namespace)
    return _live(name, thunk, watched)


def play(text: str) -> None:
    """Kernel side, when graded: perform a test cell's plan (wire text of its steps, see ``planned``)
    against the kernel's user namespace, and send what came back out as data: ("ok", value) or
    ("fail", message) per probe, up to the first that fails. No line of the test cell is here."""
    from IPython.display import display

    namespace, records = learner_namespace(), []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the checks, in the grader, say what went wrong
            for step in wire.loads(text):
                try:
                    records.append(("ok", _performed(step, namespace)))
                except AssertionError as exc:
                    records.append(("fail", str(exc)))
                    raise
    finally:
        display({MIME: wire.dumps(records)}, raw=True)


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
    """Grader side: inside the block, probes call nothing and give a value that refuses any use; the
    ``_Plan`` yielded collects each probe as data (``steps``, wire-encodable) and every function they
    forbid (``forbidden``: ``qkv_grading.library`` leaves those out of the kernel's library)."""
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
    """Whether a traceback passes through a test cell: its code starts with ``TEST_HEADING`` (the graded
    kernel's one cell that plays a test's plan does too)."""
    import linecache

    while tb is not None:
        if linecache.getline(tb.tb_frame.f_code.co_filename, 1).startswith(TEST_HEADING):
            return True
        tb = tb.tb_next
    return False


def _message_only(shell, etype, value, tb, tb_offset=None):
    """IPython's handler for AssertionError: a failing test cell shows ``AssertionError: message``, not
    the frames of the check helpers it went through; the learner's own cells keep the full traceback.
    The cell still ends in an error output, so the notebook, nbgrader and ``qkv check`` see it fail.

    IPython ignores what a handler returns when the code of a cell raises, so the handler shows the
    error itself, with the public ``showtraceback``; that honours ``_render_traceback_``, IPython's
    documented way for an exception to give its own traceback ("Integrating your objects with
    IPython": custom exception tracebacks)."""
    if _in_a_test_cell(tb):
        message = [f"\x1b[0;31m{etype.__name__}\x1b[0m: {value}"]
        value._render_traceback_ = lambda: message
    shell.showtraceback((etype, value, tb), tb_offset=tb_offset)


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
