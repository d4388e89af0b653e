"""Chapter 4's fact, that k_j and v_j of every layer depend on tokens 1…j only, and its check.

The check (``qkv.anatomy.prefix_check``) must hold for the trained tiny model and must fail for the same
model with its mask removed: otherwise the chapter's cell would pass whatever the model did.
"""

from __future__ import annotations

import numpy as np
import pytest

from qkv.anatomy import attention_maps, layer_keys_values, prefix_check
from qkv.reference import attention, causal_mask, layer_norm, merge_heads, split_heads
from qkv.tinylm import load_tiny_model


@pytest.fixture(scope="module")
def tiny():
    decoder, tokenizer = load_tiny_model()
    return decoder, tokenizer.encode("a cache keeps the past")


def keys_values_by_hand(decoder, ids, masked: bool):
    """The decoder's forward pass written out with the reference pieces, keeping each layer's
    (K, V), each (τ, n, head_dim); ``masked=False`` lets every query see every key."""
    n, d = len(ids), decoder.config.n_embd
    x = decoder.wte[ids] + decoder.wpe[np.arange(n)]  # (n, d)
    mask = causal_mask(n) if masked else None
    out = []
    for block in decoder.blocks:
        normed = layer_norm(x, block.ln_1_g, block.ln_1_b, block.eps)
        q, k, v = np.split(normed @ block.W_qkv + block.b_qkv, 3, axis=-1)  # (n, d) each
        q, k, v = (split_heads(t, block.tau) for t in (q, k, v))  # (τ, n, head_dim)
        out.append((k, v))
        x = x + merge_heads(attention(q, k, v, mask)) @ block.W_o + block.b_o
        x = x + block.mlp(layer_norm(x, block.ln_2_g, block.ln_2_b, block.eps))
    assert x.shape == (n, d)
    return out


def test_the_hand_written_pass_is_the_decoders(tiny):
    decoder, ids = tiny
    for (K, V), (K2, V2) in zip(layer_keys_values(decoder, ids),
                                keys_values_by_hand(decoder, ids, masked=True)):
        np.testing.assert_allclose(K, K2, atol=1e-10)
        np.testing.assert_allclose(V, V2, atol=1e-10)


def test_keys_and_values_of_every_layer_are_fixed_by_the_prefix(tiny):
    decoder, ids = tiny
    vocab = decoder.config.vocab_size
    for j in range(1, len(ids)):
        result = prefix_check(lambda t: layer_keys_values(decoder, t), ids, j, vocab)
        assert result.later_tokens_leave_prefix == [True] * decoder.config.n_layer, j
        assert result.token_j_moves_k_j == [True] * decoder.config.n_layer, j
        assert result.holds


def test_without_the_mask_the_check_fails_from_layer_2_on(tiny):
    decoder, ids = tiny
    vocab = decoder.config.vocab_size
    for j in (1, 5, len(ids) - 1):
        masked = prefix_check(lambda t: keys_values_by_hand(decoder, t, True), ids, j, vocab)
        unmasked = prefix_check(lambda t: keys_values_by_hand(decoder, t, False), ids, j, vocab)
        assert masked.holds
        assert not unmasked.holds
        # layer 1's keys come before any attention; layer 2's read the future through layer 1
        assert unmasked.later_tokens_leave_prefix == [True, False]


def test_prefix_check_needs_a_token_after_j(tiny):
    decoder, ids = tiny
    with pytest.raises(ValueError, match="at least one token after it"):
        prefix_check(lambda t: layer_keys_values(decoder, t), ids, len(ids),
                     decoder.config.vocab_size)


def test_attention_maps_are_the_masked_weights(tiny):
    decoder, ids = tiny
    maps = attention_maps(decoder, ids)
    c = decoder.config
    assert maps.shape == (c.n_layer, c.n_head, len(ids), len(ids))
    np.testing.assert_allclose(maps.sum(-1), 1.0)
    assert np.all(np.triu(maps, k=1) == 0)
