"""Helpers the exercises' test cells use: checks whose messages say what is wrong without the answer.

Every check raises ``AssertionError`` with a message meant for the learner. None of them prints the
expected value: a learner reads *what* is off (shape, a row, the axis, a range), never the right number.

``own_work`` implements the course's policy on the library: an exercise that asks you to write
``weighted_average`` may not hand the work to ``qkv.reference.weighted_average`` (under any alias), nor
a window of keys to ``qkv.reference.WindowKVCache``. It watches which functions run while your function
runs and fails the check if a forbidden one does.
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np

LETTERS = ("A", "B", "C", "D")


def rng(seed: int) -> np.random.Generator:
    """The random generator of the hidden tests (fixed seed: the same inputs for every learner)."""
    return np.random.default_rng(seed)


def check_letter(answer, name: str, letters=LETTERS) -> None:
    """A multiple-choice answer must be one capital letter among ``letters``."""
    options = ", ".join(letters)
    assert isinstance(answer, str), f"{name} must be a string holding one letter ({options}); got a {type(answer).__name__}"
    assert answer.strip().upper() in letters, f"{name} must be one of the letters {options}; got {answer!r}"


def normalise_letter(answer) -> str:
    return answer.strip().upper()


def as_array(actual, what: str) -> np.ndarray:
    """``actual`` as a float array, or an assertion that says it is not numbers."""
    assert actual is not None, f"{what} returned None: did you forget a `return`?"
    try:
        arr = np.asarray(actual, dtype=float)
    except (TypeError, ValueError):
        raise AssertionError(f"{what} should be an array of numbers; got a {type(actual).__name__}") from None
    return arr


def check_shape(actual, shape: tuple[int, ...], what: str, hint: str = "") -> np.ndarray:
    arr = as_array(actual, what)
    msg = f"{what} has shape {arr.shape}, expected {tuple(shape)}"
    assert arr.shape == tuple(shape), msg + (f". {hint}" if hint else "")
    return arr


def check_close(actual, expected, what: str, hint: str = "", atol: float = 1e-8, rtol: float = 1e-6) -> None:
    """Shape first (with the expected shape, which gives nothing away), then values (never shown)."""
    expected = np.asarray(expected, dtype=float)
    arr = check_shape(actual, expected.shape, what, hint)
    assert np.all(np.isfinite(arr)), f"{what} contains inf or NaN" + (f". {hint}" if hint else "")
    if not np.allclose(arr, expected, atol=atol, rtol=rtol):
        bad = np.argwhere(~np.isclose(arr, expected, atol=atol, rtol=rtol))
        where = f" (first wrong entry at index {tuple(int(i) for i in bad[0])})" if arr.ndim else ""
        raise AssertionError(f"{what} has the right shape but wrong values{where}" + (f". {hint}" if hint else ""))


def check_pairs(actual, expected: set, what: str, hint: str = "") -> None:
    """A set of (position, head) pairs: type and form first, then pairs that should not be there, then missing ones."""
    assert isinstance(actual, (set, frozenset)), f"{what} should be a Python set; got a {type(actual).__name__}"
    for item in actual:
        ok = isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, (int, np.integer)) for x in item)
        assert ok, f"{what} should hold (position, head) tuples of two ints; found {item!r}"
    extra = {p for p in actual if p not in expected}
    if extra:
        positions = sorted({p for p, _ in extra})
        heads = sorted({h for _, h in extra})
        raise AssertionError(
            f"{what} holds {len(extra)} pair(s) that should not be there (positions {positions}, heads {heads}). "
            + (hint or "Positions and heads count from 1.")
        )
    # how many are missing is not said: with the learner's own count, that would give the answer's size
    assert len(actual) == len(expected), (
        f"{what} misses some pairs: every stored position and every head must appear. " + hint)


def library_name(fn) -> str:
    """The name a learner would import ``fn`` by: ``qkv.reference.WindowKVCache.keys`` rather than the
    module it is defined in (``qkv.reference.cache``). Properties are named by their getter."""
    fn = getattr(fn, "fget", fn)
    qualname = getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))
    module = getattr(fn, "__module__", None) or ""
    top = qualname.split(".")[0]
    parts = module.split(".")
    while len(parts) > 1 and getattr(sys.modules.get(".".join(parts[:-1])), top, None) is not None:
        parts.pop()  # the package above exports it too: use the shorter name
    return f"{'.'.join(parts)}.{qualname}" if module else qualname


@contextlib.contextmanager
def own_work(name: str, *forbidden):
    """Fail if any of the ``forbidden`` functions runs inside the block.

    The course's policy: when an exercise asks for a function, calling the library's implementation of
    that same function (``qkv.reference.softmax`` for ``softmax``, ``WindowKVCache`` for a window) earns no
    credit for that question. Using *other* library functions is fine. Detection follows the code objects
    that run, so aliases, wrappers and ``functools.partial`` are all caught; a property is forbidden by
    passing it (its getter is watched); copying the library's source is not caught (and is visible to an
    instructor who reads the submission).
    """
    codes = {getattr(getattr(f, "fget", f), "__code__", None): library_name(f) for f in forbidden}
    codes.pop(None, None)
    seen: list[str] = []

    def profiler(frame, event, arg):
        if event == "call" and frame.f_code in codes:
            seen.append(codes[frame.f_code])

    previous = sys.getprofile()
    sys.setprofile(profiler)
    try:
        yield
    finally:
        sys.setprofile(previous)
    if seen:
        raise AssertionError(
            f"{name} calls the course library's own {seen[0]}, which does what this question asks you to "
            f"write. Write it yourself; other helpers are fine."
        )


def call_own(name: str, fn, *args, forbidden=(), **kwargs):
    """Call the learner's ``fn`` under ``own_work``; turn any exception into a readable assertion."""
    assert callable(fn), f"{name} should be a function; got a {type(fn).__name__}"
    for f in forbidden:
        assert fn is not f, (
            f"{name} is the course library's own {library_name(f)}, which is what this question asks you to "
            f"write. Write it yourself."
        )
    with own_work(name, *forbidden):
        try:
            return fn(*args, **kwargs)
        except AssertionError:
            raise
        except NotImplementedError:
            raise AssertionError(f"{name} is not written yet (it raises NotImplementedError)") from None
        except Exception as exc:
            raise AssertionError(f"{name} raised {type(exc).__name__}: {exc}") from None
