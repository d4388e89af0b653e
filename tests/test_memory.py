"""The cache-size and work-count formulas of chapters 4–5, checked against real caches and by hand."""

import numpy as np
import pytest

from qkv.memory import (cache_bytes, grouped_query_attention, kv_heads, kv_projections, positions_held,
                        total_kv_projections)
from qkv.reference import KVCache, WindowKVCache, attention, causal_mask


def _fill(cache, steps, tau=4, head_dim=8, batch=2):
    rng = np.random.default_rng(0)
    for _ in range(steps):
        k = rng.standard_normal((batch, tau, 1, head_dim)).astype(np.float32)
        cache.update(k, k + 1)
    return cache


@pytest.mark.parametrize("steps", [1, 5, 17])
def test_full_cache_bytes_match_a_real_cache(steps):
    cache = _fill(KVCache(), steps)
    assert cache_bytes("full", steps, n_layer=1, tau=4, head_dim=8, batch=2, bytes_per_number=4) == cache.nbytes


@pytest.mark.parametrize("steps", [1, 3, 6, 20])
def test_window_cache_bytes_match_a_real_window(steps):
    cache = _fill(WindowKVCache(n_c=6), steps)
    expected = cache_bytes("window", steps, n_layer=1, tau=4, head_dim=8, batch=2, n_c=6)
    assert expected == cache.nbytes
    assert positions_held("window", steps, n_c=6) == len(cache.positions) == min(steps, 6)


def test_gpt2_small_full_cache_by_hand():
    # GPT-2 small: 12 layers, 12 heads of 64 numbers, float32; 1024 positions -> 2·12·12·1024·64·4 bytes
    assert cache_bytes("full", 1024, n_layer=12, tau=12, head_dim=64) == 2 * 12 * 12 * 1024 * 64 * 4 == 75_497_472


def test_sharing_divides_memory_by_heads_per_group():
    full = cache_bytes("full", 100, n_layer=2, tau=8, head_dim=16)
    assert cache_bytes("multi-query", 100, n_layer=2, tau=8, head_dim=16) * 8 == full
    assert cache_bytes("grouped-query", 100, n_layer=2, tau=8, head_dim=16, groups=2) * 4 == full
    assert kv_heads("grouped-query", 8, groups=8) == 8


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="divide"):
        kv_heads("grouped-query", 8, groups=3)
    with pytest.raises(ValueError, match="unknown cache kind"):
        cache_bytes("paged", 3, n_layer=1, tau=1, head_dim=1)
    with pytest.raises(ValueError, match="n_c"):
        positions_held("window", 3)


def test_projection_counts():
    assert [kv_projections(i, cached=False) for i in (1, 2, 3)] == [1, 2, 3]
    assert [kv_projections(i, cached=True, tau=4, n_layer=2) for i in (1, 50)] == [8, 8]
    assert total_kv_projections(10, cached=False) == sum(range(1, 11)) == 55
    assert total_kv_projections(10, cached=True, tau=3) == 30


def test_grouped_query_attention_equals_multi_head_with_copied_heads():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 6, 5, 4))
    k = rng.standard_normal((2, 3, 5, 4))
    v = rng.standard_normal((2, 3, 5, 4))
    out = grouped_query_attention(q, k, v, causal_mask(5))
    for h in range(6):  # 0-based query head h reads shared head h // 2
        expected = attention(q[:, h], k[:, h // 2], v[:, h // 2], causal_mask(5))
        np.testing.assert_allclose(out[:, h], expected, atol=1e-12)
    # g = τ: ordinary multi-head attention; g = 1: every head reads the same keys and values
    np.testing.assert_allclose(grouped_query_attention(q, q, q), attention(q, q, q), atol=1e-12)
    mqa = grouped_query_attention(q, k[:, :1], v[:, :1])
    np.testing.assert_allclose(mqa[:, 5], attention(q[:, 5], k[:, 0], v[:, 0]), atol=1e-12)
