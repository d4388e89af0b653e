"""The assertions the exercises' test cells use: checks whose messages say what is wrong without the
answer. (``qkv check``, the command a learner runs, is ``qkv_grading.check``.)

Every check raises ``AssertionError`` with a message meant for the learner. None of them prints the
expected value: a learner reads *what* is off (shape, a row, the axis, a range), never the right number.

When an instructor grades, these checks run in the grader's own process on what the learner's code
returned (see ``qkv_grading.probe``); in a learner's notebook they run in the kernel, on the same data.
"""

from __future__ import annotations

import numpy as np

from qkv_grading.wire import Opaque

__all__ = ["LETTERS", "as_array", "check_close", "check_letter", "check_pairs", "check_shape",
           "normalise_letter", "rng"]

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
    if isinstance(actual, Opaque):
        raise AssertionError(f"{what} should be an array of numbers; got {actual.type_name}")
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
