"""Rotary positions (qkv.reference.rotary) against an independent formula: the complex-number form.

Pair j of a head (dimensions j and j + head_dim/2, Hugging Face Llama's layout) is the complex
number z_j = x_j + i·x_{j+head_dim/2}; RoPE at position p (from 1) multiplies it by e^{i(p−1)θ_j}.
"""

import numpy as np
import pytest

from qkv.llama import LlamaConfig, random_state_dict
from qkv.reference import rope, rope_angles
from qkv.reference.rotary import rope_frequencies
from qkv.reference import Decoder


def complex_rope(x: np.ndarray, positions, base: float = 10000.0) -> np.ndarray:
    """RoPE written with complex numbers, sharing no code with qkv.reference.rotary."""
    half = x.shape[-1] // 2
    theta = base ** (-2.0 * np.arange(half) / x.shape[-1])
    z = x[..., :half] + 1j * x[..., half:]
    turned = z * np.exp(1j * np.outer(np.asarray(positions) - 1, theta))
    return np.concatenate([turned.real, turned.imag], axis=-1)


@pytest.mark.parametrize("head_dim", [2, 8, 64])
def test_rope_equals_the_complex_form(head_dim):
    x = np.random.default_rng(0).standard_normal((3, 5, head_dim))
    positions = [1, 2, 7, 100, 2048]
    np.testing.assert_allclose(rope(x, positions), complex_rope(x, positions), atol=1e-12)


def test_position_one_is_not_rotated_and_norms_are_kept():
    x = np.random.default_rng(1).standard_normal((4, 16))
    np.testing.assert_allclose(rope(x[:1], [1]), x[:1], atol=0)
    turned = rope(x, [3, 9, 27, 81])
    np.testing.assert_allclose(np.linalg.norm(turned, axis=-1), np.linalg.norm(x, axis=-1))


@pytest.mark.parametrize("offset", [0, 1, 5, 40])
def test_score_depends_only_on_the_offset(offset):
    rng = np.random.default_rng(2)
    q, k = rng.standard_normal((1, 32)), rng.standard_normal((1, 32))
    scores = [(rope(q, [j + offset]) @ rope(k, [j]).T).item() for j in (1, 2, 17, 300)]
    np.testing.assert_allclose(scores, scores[0], rtol=1e-10)
    # and it does depend on the offset: another offset gives another score
    other = (rope(q, [offset + 2]) @ rope(k, [1]).T).item()
    assert abs(other - scores[0]) > 1e-6


def test_the_cache_holds_keys_already_rotated():
    """The keys in a Llama decoder's cache are rope(k_j, j): the unrotated key of the same input,
    rotated by its own position, and never rotated again by later steps."""
    config = LlamaConfig.tiny(n_kv_heads=2)
    sd = random_state_dict(config, seed=3, std=0.2)
    model = Decoder.from_llama_state_dict(sd, n_head=config.n_head, n_positions=128)
    ids = np.random.default_rng(4).integers(0, config.vocab_size, (1, 6))
    cache = model.new_cache(1, 16)
    model.prefill(ids[:, :4], cache)
    model.decode_step(ids[:, 4], cache)
    model.decode_step(ids[:, 5], cache)
    # Layer 0's keys by hand: RMSNorm, W_k, split into heads, then the complex-form rotation.
    block, d, hd = model.blocks[0], config.n_embd, config.head_dim  # the model's, by name
    assert block is model.model.blocks[0]
    x = model.embed[ids[0]]
    x = x / np.sqrt((x * x).mean(-1, keepdims=True) + config.rms_norm_eps) * block.norm_1
    k = (x @ sd["model.layers.0.self_attn.k_proj.weight"].T.astype(np.float64))
    k = k.reshape(6, config.n_kv_heads, hd).transpose(1, 0, 2)  # (g, positions, head_dim)
    expected = complex_rope(k, np.arange(1, 7))
    assert cache[0].keys.shape == (1, config.n_kv_heads, 6, hd)
    np.testing.assert_allclose(cache[0].keys[0], expected, atol=1e-10)
    assert not np.allclose(cache[0].keys[0], k, atol=1e-3)  # rotated, not raw


def test_angles_layout_and_errors():
    cos, sin = rope_angles([1, 2, 3], 8)
    assert cos.shape == sin.shape == (3, 8)
    np.testing.assert_array_equal(cos[:, :4], cos[:, 4:])  # each pair's angle repeated
    with pytest.raises(ValueError, match="even"):
        rope_angles([1], 7)
    with pytest.raises(ValueError, match="count from 1"):
        rope(np.ones((1, 4)), [0])
    with pytest.raises(ValueError, match="2 positions"):
        rope(np.ones((3, 4)), [1, 2])
    with pytest.raises(TypeError, match="integers"):
        rope(np.ones((1, 4)), [1.5])
    for wrong in ("x", None, True):  # the wrong kind of thing: TypeError (STYLE rule 11)
        with pytest.raises(TypeError, match="base must be a number > 1"):
            rope_frequencies(8, base=wrong)
    for bad in (1.0, -2, float("nan")):  # a number, but not one RoPE can use
        with pytest.raises(ValueError, match="base must be a number > 1"):
            rope_frequencies(8, base=bad)
    np.testing.assert_array_equal(rope_frequencies(8, base=np.int64(100)), rope_frequencies(8, 100.0))


def test_the_rotary_module_is_reachable_beside_the_rope_function():
    """qkv.reference.rope is the function; the module is qkv.reference.rotary (a module named rope
    could not be reached by its name, and importing it would replace the function)."""
    import qkv.reference
    from qkv.reference import rotary

    assert callable(qkv.reference.rope) and qkv.reference.rope is rotary.rope
    assert qkv.reference.rotary is rotary
