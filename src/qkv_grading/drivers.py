"""The instruments a test cell may name: procedures that call the learner's code more than once.

A test that needs more than one call of the learner's code (six decoding steps on one cache, a running
mean fed keys that note who reads them) names one of these with ``probe.run(label, "name", ...)``. In a
learner's own notebook it runs there; when graded, the kernel is sent the instrument's *name* and its
arguments as data, and runs this module's code: no code of a test cell, hidden or not, enters a graded
kernel. The learner's functions and classes arrive as arguments (``probe.learner("decode_step")``,
looked up in the kernel); everything else is plain data, the set-up's arrays included.

Every instrument returns plain data (lists, dicts, arrays, numbers), which is what travels back to the
grader; the checks there decide. ``INSTRUMENTS`` is the fixed set: a name not in it cannot be planned.
"""

from __future__ import annotations

import numpy as np

from qkv_grading.instruments import CountingMatrix, ReadLog, TrackedVector


def refusals(weighted_average, values, candidates) -> list[bool]:
    """For each candidate weight vector: did ``weighted_average(values, w)`` raise ValueError?"""
    out = []
    for w in candidates:
        try:
            weighted_average(values, np.array(w))
        except ValueError:
            out.append(True)
        else:
            out.append(False)
    return out


def decoding_steps(decode_step, KVCache, X, W_q, W_k, W_v) -> dict:
    """``decode_step`` on the rows of ``X`` (row i - 1 is x_i) with one new cache, and W_k, W_v that count
    the vectors they project (``CountingMatrix``): each step's output, the cache's length after it, the
    (keys, values) it projected, and the cache's keys and values at the end."""
    cache = KVCache()
    Wk, Wv = CountingMatrix(W_k), CountingMatrix(W_v)
    outs, lengths, projected = [], [], []
    for i in range(1, len(X) + 1):  # positions 1..n; X[i - 1] is x_i
        before = (Wk.rows(), Wv.rows())
        outs.append(decode_step(X[i - 1], cache, W_q, Wk, Wv))
        lengths.append(cache.length)
        projected.append((Wk.rows() - before[0], Wv.rows() - before[1]))
    return {"outs": outs, "lengths": lengths, "projected": projected,
            "keys": cache.keys, "values": cache.values}


def caches_in_turn(decode_step, KVCache, weights, inputs) -> dict:
    """Several sequences decoded in turn, one cache each: ``inputs`` maps a width d to the rows x_i of its
    sequence, ``weights`` maps d to its (W_q, W_k, W_v). Step i of every sequence still that long runs
    before step i + 1 of any. For each d: (outputs, the cache's length, its keys, its values)."""
    caches = {d: KVCache() for d in inputs}
    outs: dict = {d: [] for d in inputs}
    for i in range(1, max(len(x) for x in inputs.values()) + 1):
        for d, x in inputs.items():
            if i <= len(x):
                W_q, W_k, W_v = weights[d]
                outs[d].append(decode_step(x[i - 1], caches[d], W_q, W_k, W_v))
    return {d: (outs[d], caches[d].length, caches[d].keys, caches[d].values) for d in inputs}


def after_a_filled_cache(decode_step, KVCache, K_pre, V_pre, x_new, W_q, W_k, W_v) -> tuple:
    """``decode_step`` on the rows of ``x_new`` with a cache already holding ``K_pre``, ``V_pre`` (one
    row a position): the outputs, the cache's length, keys and values, and how many vectors W_k and W_v
    projected in all."""
    cache = KVCache()
    cache.update(K_pre[None, None], V_pre[None, None])  # (1, 1, positions, d)
    Wk, Wv = CountingMatrix(W_k), CountingMatrix(W_v)
    outs = [decode_step(x, cache, W_q, Wk, Wv) for x in x_new]
    return outs, cache.length, cache.keys, cache.values, Wk.rows(), Wv.rows()


def running_means(update_mean, K) -> dict:
    """``update_mean`` over the keys of ``K`` (row i - 1 is k_i), from a zero memory, each key a
    ``TrackedVector``: the memory after each step, and every read of a key at a later step."""
    log = ReadLog()
    mean, means = np.zeros(K.shape[1]), []
    for i in range(1, len(K) + 1):
        log.step = i
        mean = update_mean(mean, TrackedVector(K[i - 1], i, log), i)
        means.append(np.asarray(mean))
    return {"means": means, "reread": log.reread()}


def running_means_in_turn(update_mean, sequences) -> dict:
    """Several running means kept in turn: ``sequences`` maps a name to its keys. For each name, its
    memory after each step; under "reread", every read of a key at a later step, over all of them."""
    log = ReadLog()
    means = {name: [np.zeros(K.shape[1])] for name, K in sequences.items()}
    for i in range(1, max(len(K) for K in sequences.values()) + 1):
        for name, K in sequences.items():
            if i <= len(K):
                log.step = i
                means[name].append(np.asarray(update_mean(means[name][-1], TrackedVector(K[i - 1], i, log),
                                                          i)))
    return {**{name: kept[1:] for name, kept in means.items()}, "reread": log.reread()}


def window_steps(window_update, K, n_c) -> list:
    """``window_update`` fed (k_i, -k_i) for each row of ``K`` from an empty window of ``n_c``: the
    window's (keys, values) after each step."""
    memory, kept = (np.zeros((0, K.shape[1])), np.zeros((0, K.shape[1]))), []
    for k in K:
        memory = window_update((k, -k), memory, n_c)
        kept.append((np.asarray(memory[0]), np.asarray(memory[1])))
    return kept


def on_zeros(fn, shapes, *rest):
    """``fn`` called with a matrix of zeros of each shape in ``shapes``, then ``rest``: large inputs made
    here rather than sent (a (4096, 4096) matrix is 128 MB as data)."""
    return fn(*(np.zeros(tuple(shape)) for shape in shapes), *rest)


INSTRUMENTS = {fn.__name__: fn for fn in (refusals, decoding_steps, caches_in_turn, after_a_filled_cache,
                                          running_means, running_means_in_turn, window_steps, on_zeros)}
