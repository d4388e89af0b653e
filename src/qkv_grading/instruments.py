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
