"""The cache-size and work-count formulas of chapters 4–5, checked against real caches and by hand."""

import numpy as np
import pytest

from qkv.gpt2 import GPT2Config, random_state_dict
from qkv.memory import (cache_bytes, crossover_positions, gpt2_parameter_count, grouped_query_attention,
                        kv_heads, kv_projections, llama_parameter_count, positions_held, segment_averages,
                        total_kv_projections, window_plus_average, windowed_next_logits)
from qkv.reference import Decoder, KVCache, WindowKVCache, attention, causal_mask


def _fill(cache, steps, tau=4, head_dim=8, batch=2):
    rng = np.random.default_rng(0)
    for _ in range(steps):
        k = rng.standard_normal((batch, tau, 1, head_dim)).astype(np.float32)
        cache.update(k, k + 1)
    return cache


@pytest.mark.parametrize("steps", [1, 5, 17])
def test_full_cache_bytes_match_a_real_cache(steps):
    cache = _fill(KVCache(max_positions=steps), steps)  # allocated for exactly the positions held
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


def test_projection_counts_keys_plus_values():
    # one projection per key and one per value, as exercise 4 counts them
    assert [kv_projections(i, cached=False) for i in (1, 2, 3)] == [2, 4, 6]
    assert [kv_projections(i, cached=True, tau=4, n_layer=2) for i in (1, 50)] == [16, 16]
    assert total_kv_projections(10, cached=False) == 2 * sum(range(1, 11)) == 110
    assert total_kv_projections(10, cached=True, tau=3) == 60
    for n in (1, 7):
        for cached in (True, False):
            steps = sum(kv_projections(i, cached=cached, tau=2, n_layer=3) for i in range(1, n + 1))
            assert total_kv_projections(n, cached=cached, tau=2, n_layer=3) == steps


def test_projection_counts_match_what_a_decoder_caches():
    # a cached step adds exactly kv_projections(i, cached=True) / 2 key vectors (and as many values)
    config = GPT2Config.toy()
    decoder = Decoder.from_gpt2_state_dict(random_state_dict(config), n_head=config.n_head)
    caches = decoder.new_cache()
    decoder.prefill(np.array([[1, 2, 3]]), caches)
    before = sum(c.keys.size + c.values.size for c in caches) // config.head_dim
    decoder.decode_step(np.array([4]), caches)
    after = sum(c.keys.size + c.values.size for c in caches) // config.head_dim
    assert after - before == kv_projections(4, cached=True, n_layer=config.n_layer, tau=config.n_head)


def test_parameter_counts():
    config = GPT2Config.toy()
    state = random_state_dict(config)
    tied = sum(a.size for name, a in state.items() if "lm_head" not in name)
    assert gpt2_parameter_count(config) == tied
    assert gpt2_parameter_count(GPT2Config.gpt2_small()) == 124_439_808
    # Llama-3-8B: 32 layers, width 4096, 32 query heads, 8 key/value heads, MLP 14336, vocab 128256
    assert llama_parameter_count(vocab_size=128_256, d=4096, n_layer=32, tau=32, n_kv_heads=8,
                                 d_ff=14_336) == 8_030_261_248


def test_crossover_is_where_the_cache_first_holds_the_weights():
    shape = dict(n_layer=12, head_dim=64, bytes_per_number=4)
    weights = 4 * gpt2_parameter_count(GPT2Config.gpt2_small())
    n = crossover_positions(weights, n_kv_heads=12, **shape)
    assert cache_bytes("full", n, tau=12, **shape) >= weights > cache_bytes("full", n - 1, tau=12, **shape)
    assert n == 6752
    assert crossover_positions(100, n_layer=1, n_kv_heads=1, head_dim=1, bytes_per_number=2) == 25


def test_an_average_alone_returns_its_value_whatever_the_query():
    rng = np.random.default_rng(3)
    k, v = rng.standard_normal((20, 4)), rng.standard_normal((20, 4))
    k_bar, v_bar = k.mean(axis=0, keepdims=True), v.mean(axis=0, keepdims=True)
    out = attention(rng.standard_normal((5, 4)), k_bar, v_bar)
    np.testing.assert_allclose(out, np.repeat(v_bar, 5, axis=0), atol=1e-12)


def test_window_plus_average():
    rng = np.random.default_rng(4)
    k, v = rng.standard_normal((10, 3)), rng.standard_normal((10, 3))
    K, V = window_plus_average(k, v, n_c=4)
    assert K.shape == V.shape == (5, 3)
    np.testing.assert_allclose(K[0], k[:6].mean(axis=0))
    np.testing.assert_allclose(V[0], v[:6].mean(axis=0))
    np.testing.assert_array_equal(K[1:], k[6:])
    np.testing.assert_array_equal(V[1:], v[6:])
    K, V = window_plus_average(k[:3], v[:3], n_c=4)
    np.testing.assert_array_equal(K, k[:3])


def test_segment_averages():
    x = np.arange(14.0).reshape(7, 2)
    np.testing.assert_allclose(segment_averages(x, 3), [[2, 3], [8, 9], [12, 13]])
    np.testing.assert_allclose(segment_averages(x, 1), x)
    with pytest.raises(ValueError):
        segment_averages(x, 0)


def test_windowed_decoding_reaches_n_layer_times_window_minus_one_back():
    config = GPT2Config.toy()                       # 2 layers
    decoder = Decoder.from_gpt2_state_dict(random_state_dict(config, std=0.3), n_head=config.n_head)
    rng = np.random.default_rng(5)
    ids = rng.integers(0, config.vocab_size, size=(1, 20))
    # a window wider than the text is the full cache
    np.testing.assert_allclose(windowed_next_logits(decoder, ids, n_c=20), decoder.forward(ids)[:, -1],
                               atol=1e-10)
    n_c, i = 3, 20
    reach = config.n_layer * (n_c - 1)                  # positions i−reach … i can matter
    base = windowed_next_logits(decoder, ids, n_c)
    for position in range(1, i + 1):
        changed = ids.copy()
        changed[0, position - 1] = (ids[0, position - 1] + 1) % config.vocab_size
        differs = not np.allclose(windowed_next_logits(decoder, changed, n_c), base, atol=1e-12)
        assert differs == (position >= i - reach), position


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
