"""Looking inside the NumPy GPT-2 decoder (chapter 4): what each layer computes.

The decoder's ``forward`` returns only the last layer's scores. The chapter that builds
the decoder needs what happens in between: each layer's keys and values (read from the
cache a ``prefill`` fills, so they are exactly the ones a cached decoder stores) and the
attention weights of every head. Nothing here computes a formula of its own: the blocks
of ``qkv.reference.decoder`` do the work.

Layouts: ids (n,) for one sequence; per layer, keys and values (τ, n, head_dim);
attention weights (n_layer, τ, n, n). Layers and positions count from 1 in the text;
Python lists count from 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qkv import checks
from qkv.reference.decoder import Decoder
from qkv.reference.gpt2_decoder import layer_norm
from qkv.reference.heads import split_heads
from qkv.reference.qkv_attention import attention_weights, causal_mask

# (K_ℓ, V_ℓ) for ℓ = 1 … n_layer, each (τ, n, head_dim)
KeysValues = list[tuple[np.ndarray, np.ndarray]]


def layer_keys_values(decoder: Decoder, ids) -> KeysValues:
    """(K_ℓ, V_ℓ) of every layer for one sequence ids (n,): the keys and values a
    prefill writes into cache_ℓ, each (τ, n, head_dim)."""
    ids = checks.token_ids(ids, decoder.config.vocab_size)  # (1, n)
    cache = decoder.new_cache(batch=1, max_positions=ids.shape[1])
    decoder.prefill(ids, cache)
    return [(c.keys[0].copy(), c.values[0].copy()) for c in cache.layers]


def attention_maps(decoder: Decoder, ids) -> np.ndarray:
    """The masked attention weights α of every layer and head for one sequence ids
    (n,): (n_layer, τ, n, n), row i the weights query i gives keys 1 … n."""
    ids = checks.token_ids(ids, decoder.config.vocab_size)  # (1, n)
    n, d = ids.shape[1], decoder.config.n_embd
    x = decoder.wte[ids] + decoder.wpe[np.arange(n)]  # (1, n, d): layer 1's input
    maps = []
    for block in decoder.blocks:
        normed = layer_norm(x, block.ln_1_g, block.ln_1_b, block.eps)
        qkv = normed @ block.W_qkv + block.b_qkv  # (1, n, 3d): [q | k | v]
        q = split_heads(qkv[..., :d], block.tau)  # (1, τ, n, head_dim)
        k = split_heads(qkv[..., d : 2 * d], block.tau)
        maps.append(attention_weights(q, k, causal_mask(n))[0])  # (τ, n, n)
        x = block(x, None, causal_mask(n))  # this layer's output: the next one's input
    return np.stack(maps)


@dataclass(frozen=True)
class PrefixCheck:
    """What changing tokens does to each layer's keys and values at position j."""

    j: int  # counted from 1
    later_tokens_leave_prefix: list[bool]  # per layer: K_{≤j}, V_{≤j} bit for bit
    token_j_moves_k_j: list[bool]  # per layer: k_j differs when token j alone changes

    @property
    def holds(self) -> bool:
        """Both facts, in every layer."""
        return all(self.later_tokens_leave_prefix + self.token_j_moves_k_j)


def prefix_check(keys_values: Callable[[np.ndarray], KeysValues], ids, j: int,
                 vocab_size: int, seed: int = 0) -> PrefixCheck:
    """Change every token after position j (each to another), and apart from that
    token j alone; compare each layer's keys and values with those of ``ids`` (n,).
    ``keys_values(ids)`` gives (K_ℓ, V_ℓ) per layer, as ``layer_keys_values`` does."""
    ids = checks.token_ids(ids, vocab_size)[0]  # (n,)
    j = checks.positive_int("j", j)
    if j >= len(ids):
        raise ValueError(f"j={j} must leave at least one token after it "
                         f"(the text has {len(ids)})")
    rng = np.random.default_rng(seed)
    later = ids.copy()  # Python index j is position j + 1
    later[j:] = (ids[j:] + rng.integers(1, vocab_size, len(ids) - j)) % vocab_size
    own = ids.copy()
    own[j - 1] = (ids[j - 1] + 1) % vocab_size  # position j
    base, after, at_j = keys_values(ids), keys_values(later), keys_values(own)
    prefix = [np.array_equal(K[:, :j], K2[:, :j])
              and np.array_equal(V[:, :j], V2[:, :j])
              for (K, V), (K2, V2) in zip(base, after)]
    moved = [not np.array_equal(K[:, j - 1], K3[:, j - 1])
             for (K, _), (K3, _) in zip(base, at_j)]
    return PrefixCheck(j, prefix, moved)
