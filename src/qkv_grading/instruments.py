"""Kernel-side instruments for test cells: inputs that report how the learner's code used them.

A test cell may hand the learner's function a ``CountingMatrix`` instead of a projection matrix. It is an
ordinary float array (every NumPy operation works on it and returns plain arrays), but each product with
it records how many vectors it projected. Exercise 5 uses it to see that a cached decoding step projects
one new key and one new value, not the whole prefix again.

The counts are made in the learner's kernel, so a learner can hide work from them (by copying the matrix
into a plain array first, for instance); the tests therefore only ever fail on counts that are too high,
and never reward a count by itself: correctness is checked by the grader on the returned values.
"""

from __future__ import annotations

import numpy as np

# the NumPy functions that multiply by a matrix; a call to one of them with a CountingMatrix is counted
_PRODUCTS = ("dot", "matmul", "inner", "tensordot", "einsum", "vdot")


class CountingMatrix(np.ndarray):
    """A (d_in, d_out) matrix that counts the vectors multiplied by it: ``calls`` lists, per product,
    how many vectors of width d_in went through it (``x @ W`` with x of shape (n, d_in) counts n).
    Views (``W.T``, ``W[:, :2]``) share the same counter."""

    def __new__(cls, matrix):
        obj = np.array(matrix, dtype=float).view(cls)
        obj.calls = []
        return obj

    def __array_finalize__(self, obj):
        self.calls = getattr(obj, "calls", None)

    def _record(self, operands) -> None:
        if self.calls is None:
            return
        width = self.shape[0] if self.ndim else 1
        for other in operands:
            if isinstance(other, CountingMatrix) or other is None:
                continue
            size = np.size(other)
            if size and width and np.ndim(other) >= 1:
                self.calls.append(int(size // width) if size >= width else 1)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [np.asarray(x) if isinstance(x, CountingMatrix) else x for x in inputs]
        if ufunc is np.matmul and method == "__call__":
            self._record([x for x in inputs if not isinstance(x, CountingMatrix)])
        if "out" in kwargs:
            kwargs["out"] = tuple(np.asarray(x) if isinstance(x, CountingMatrix) else x for x in kwargs["out"])
        return getattr(ufunc, method)(*plain, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        def unwrap(x):
            if isinstance(x, CountingMatrix):
                return np.asarray(x)
            if isinstance(x, (list, tuple)):
                return type(x)(unwrap(v) for v in x)
            return x

        if func.__name__ in _PRODUCTS:
            operands = [a for a in args if not isinstance(a, (str, CountingMatrix))
                        and isinstance(a, (np.ndarray, list, tuple, int, float))]
            self._record([a for a in operands if np.ndim(a) >= 1])
        return func(*unwrap(list(args)), **{k: unwrap(v) for k, v in kwargs.items()})

    def rows(self) -> int:
        """How many vectors have been projected so far, over all products."""
        return sum(self.calls or ())


class ReadLog:
    """Which step read which ``TrackedVector``: a test sets ``step`` before each call of the learner's
    code, and ``reads`` collects (vector's position, step) for every NumPy operation on a vector."""

    def __init__(self) -> None:
        self.step = 0
        self.reads: list[tuple[int, int]] = []

    def reread(self) -> list[tuple[int, int]]:
        """(position, step) of every read of a vector at a later step than the one that brought it."""
        return sorted({(j, s) for j, s in self.reads if s > j})


def _tracked(items):
    for x in items:
        if isinstance(x, TrackedVector):
            yield x
        elif isinstance(x, (list, tuple)):
            yield from _tracked(x)


def _plain(x):
    if isinstance(x, TrackedVector):
        return np.asarray(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v) for v in x)
    return x


class TrackedVector(np.ndarray):
    """The key of position ``position`` (counted from 1) that notes in ``log`` every NumPy operation (a
    ufunc, a NumPy function, an index) that reads it, and at which step. Exercise 5 hands one to a running
    mean at its own step: a memory of one vector never reads an earlier key again; code that keeps the
    history and rescans it (a loop, ``np.mean``, ``np.cumsum`` over the keys) does.

    As with ``CountingMatrix`` the log is kept in the learner's kernel, so it can be evaded (copying a
    key into a plain array); a test only ever fails on reads it saw, and correctness is judged apart."""

    def __new__(cls, vector, position: int, log: ReadLog):
        obj = np.array(vector, dtype=float).view(cls)
        obj.position, obj.log = position, log
        return obj

    def __array_finalize__(self, obj):
        self.position = getattr(obj, "position", None)
        self.log = getattr(obj, "log", None)

    def _note(self) -> None:
        if self.log is not None and self.position is not None:
            self.log.reads.append((self.position, self.log.step))

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        for x in _tracked(inputs):
            x._note()
        if "out" in kwargs:
            kwargs["out"] = tuple(_plain(x) for x in kwargs["out"])
        return getattr(ufunc, method)(*_plain(inputs), **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        for x in _tracked(list(args) + list(kwargs.values())):
            x._note()
        return func(*_plain(list(args)), **{k: _plain(v) for k, v in kwargs.items()})

    def __getitem__(self, index):
        self._note()
        return np.asarray(self)[index]

    def __iter__(self):
        self._note()
        return iter(np.asarray(self))
