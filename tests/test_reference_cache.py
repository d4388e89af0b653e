"""Caches: the full KV cache, the window cache and the cumulative-average memory."""

import numpy as np
import pytest

from qkv.reference import CumulativeAverageMemory, KVCache, WindowKVCache, attention, causal_mask


def steps(n, tau=2, head_dim=3, batch=(), seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=batch + (tau, 1, head_dim)), rng.normal(size=batch + (tau, 1, head_dim)))
            for _ in range(n)]


@pytest.mark.parametrize("max_positions", [None, 8])
def test_kv_cache_returns_everything_so_far(max_positions):
    cache = KVCache(max_positions)
    kv = steps(7, batch=(2,))
    for i, (k, v) in enumerate(kv, start=1):
        K, V = cache.update(k, v)
        assert cache.length == i
        np.testing.assert_array_equal(K, np.concatenate([a for a, _ in kv[:i]], axis=-2))
        np.testing.assert_array_equal(V, np.concatenate([b for _, b in kv[:i]], axis=-2))
    # the bytes allocated: K and V, batch 2, tau 2, 8 slots given or 16 grown, head_dim 3, float64
    assert cache.nbytes == 2 * 2 * 2 * (max_positions or 16) * 3 * 8
    cache.reset()
    assert cache.length == 0 and cache.pairs() == set()


def test_kv_cache_pairs_after_third_token():
    tau = 4
    cache = KVCache()
    for k, v in steps(3, tau=tau):
        cache.update(k, v)
    assert cache.pairs() == {(j, h) for j in (1, 2, 3) for h in range(1, tau + 1)}


def test_cached_attention_equals_recomputing():
    rng = np.random.default_rng(3)
    n, tau, hd = 6, 2, 4
    q, k, v = (rng.normal(size=(tau, n, hd)) for _ in range(3))
    full = attention(q, k, v, causal_mask(n))
    cache = KVCache()
    for i in range(n):
        K, V = cache.update(k[:, i : i + 1], v[:, i : i + 1])
        np.testing.assert_allclose(attention(q[:, i : i + 1], K, V), full[:, i : i + 1], atol=1e-12)


def test_kv_cache_errors():
    cache = KVCache(max_positions=2)
    k, v = steps(1)[0]
    cache.update(k, v)
    with pytest.raises(ValueError, match="k and v must have the same shape"):
        cache.update(k, v[..., :2])
    with pytest.raises(ValueError, match=r"holds keys of shape \(2, 'n_new', 3\)"):
        cache.update(k[..., :2], v[..., :2])
    with pytest.raises(ValueError, match="at least 3 axes"):
        cache.update(k[0, 0], v[0, 0])
    cache.update(k, v)
    with pytest.raises(ValueError, match="full.*max_positions=2"):
        cache.update(k, v)


@pytest.mark.parametrize("n_c", [1, 3, 5])
def test_window_cache_holds_exactly_the_last_n_c(n_c):
    kv = steps(9)
    window = WindowKVCache(n_c)
    for i, (k, v) in enumerate(kv, start=1):
        K, V = window.update(k, v)
        first = max(1, i - n_c + 1)  # K_{[i-n_c+1, i]}, positions from 1
        assert window.positions == list(range(first, i + 1))
        np.testing.assert_array_equal(K, np.concatenate([a for a, _ in kv[first - 1 : i]], axis=-2))
        np.testing.assert_array_equal(V, np.concatenate([b for _, b in kv[first - 1 : i]], axis=-2))
        assert window.length == i
        assert K.shape[-2] == min(i, n_c)
    assert window.pairs() == {(j, h) for j in range(10 - n_c, 10) for h in (1, 2)}


def test_window_cache_takes_several_positions_at_once():
    kv = steps(6)
    k = np.concatenate([a for a, _ in kv], axis=-2)
    v = np.concatenate([b for _, b in kv], axis=-2)
    window = WindowKVCache(4)
    K, _ = window.update(k, v)
    np.testing.assert_array_equal(K, k[..., 2:, :])


def test_window_cache_rejects_bad_size():
    with pytest.raises(ValueError, match="n_c"):
        WindowKVCache(0)


def test_cumulative_average_recursion_equals_direct_mean():
    rng = np.random.default_rng(4)
    ks, vs = rng.normal(size=(20, 2, 5)), rng.normal(size=(20, 2, 3))
    memory = CumulativeAverageMemory()
    for i in range(1, 21):
        k_bar, v_bar = memory.update(ks[i - 1], vs[i - 1])
        np.testing.assert_allclose(k_bar, ks[:i].mean(axis=0), atol=1e-12)
        np.testing.assert_allclose(v_bar, vs[:i].mean(axis=0), atol=1e-12)
        assert memory.length == i
    with pytest.raises(ValueError, match="averages keys of shape"):
        memory.update(ks[0, 0], vs[0])


def test_cumulative_average_depends_on_every_step():
    # The seed's question: s(ȳ1 … ȳ9) at step 10 is not independent of ȳ2. Changing the 2nd input
    # changes every later average, so a function of them all can see it.
    rng = np.random.default_rng(5)
    ys = rng.normal(size=(9, 4))
    changed = ys.copy()
    changed[1] += 1.0
    def averages(seq):
        m = CumulativeAverageMemory()
        return [m.update(y, y)[0].copy() for y in seq]
    a, b = averages(ys), averages(changed)
    np.testing.assert_array_equal(a[0], b[0])
    for step in range(1, 9):
        assert not np.allclose(a[step], b[step])
