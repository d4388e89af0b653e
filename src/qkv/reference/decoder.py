"""A GPT-2-shaped decoder in NumPy, with and without a KV cache (chapter 4).

Read top to bottom in the order of the computation: LayerNorm, GELU, one transformer block (attention,
then the MLP), the model. GPT-2's shape: learned position embeddings, LayerNorm before each sub-layer
(pre-LN), GELU with the tanh approximation, and an output layer tied to the token embedding. Weights
load from a Hugging Face GPT-2 state dict (``Decoder.from_gpt2_state_dict``), so this decoder can be
checked against GPT-2 itself. The torch decoder of chapter 6 (``qkv.torch_decoder``) is cut the same way.

Layouts: ids (batch, n); hidden states (batch, n, d); per-head tensors (batch, τ, n, head_dim); logits
(batch, n, vocab). Positions count from 1 in the course; the position table is indexed from 0 here.

Prompts of different lengths share a batch by left padding: an ``attention_mask`` (batch, length) holds
1 for a real token and 0 for padding, as in Hugging Face. No key is read at a padded position, and the
positions of a row's real tokens count from its first real token (``padded_positions``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from qkv import checks
from qkv.config import DecoderConfig
from qkv.gpt2 import PREFIX, layer_names, read_state_dict
from qkv.reference.cache import DecoderCache, KVCache
from qkv.reference.heads import _merge_heads, _split_heads
from qkv.reference.qkv_attention import attend, causal_mask


def layer_norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gain + bias


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (as GPT-2 uses)."""
    # Python-float constants keep float32 input in float32 (a NumPy float64 scalar would promote it).
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def padded_positions(mask: np.ndarray) -> np.ndarray:
    """Position-table rows for a left-padded batch, mask (batch, i) -> (batch, i): a
    row's real tokens sit at 0, 1, 2, … from its first real token, as if it had no
    padding. Padding gets 0, as in Hugging Face's generate (any row would do: no real
    token reads a padded position)."""
    return np.where(mask == 1, np.cumsum(mask, axis=-1) - 1, 0)


def padded_causal_mask(mask: np.ndarray, n: int) -> np.ndarray:
    """Where the last n of i positions may attend in a left-padded batch:
    (batch, 1, n, i), True for a key j ≤ query that is a real token. A padded
    query also sees itself (else its row would be empty and its softmax NaN); no
    real token reads it."""
    i = mask.shape[-1]
    query = np.arange(i - n, i)[:, None]  # (n, 1): the queries' slots, from 0
    key = np.arange(i)[None, :]  # (1, i)
    real = mask[:, None, :] == 1  # (batch, 1, i)
    allowed = (key <= query) & (real | (key == query))  # (batch, n, i)
    return allowed[:, None]  # (batch, 1, n, i): the same for every head


@dataclass
class Block:
    """One transformer block, in GPT-2's Conv1D layout: a linear layer computes x @ W + b."""

    tau: int  # heads
    eps: float  # LayerNorm's ε
    ln_1_g: np.ndarray
    ln_1_b: np.ndarray
    W_qkv: np.ndarray  # (d, 3d): [W_q | W_k | W_v], each the τ heads' projections side by side
    b_qkv: np.ndarray
    W_o: np.ndarray  # (d, d)
    b_o: np.ndarray
    ln_2_g: np.ndarray
    ln_2_b: np.ndarray
    W_fc: np.ndarray  # (d, d_ff)
    b_fc: np.ndarray
    W_out: np.ndarray  # (d_ff, d)
    b_out: np.ndarray

    def attention(self, x: np.ndarray, cache: KVCache | None,
                  allowed: np.ndarray | None = None) -> np.ndarray:
        """Masked multi-head self-attention of x (batch, n, d), reading positions
        1…i from ``cache``; ``allowed`` (batch, 1, n, i) replaces the causal mask in a
        padded batch."""
        q, k, v = np.split(x @ self.W_qkv + self.b_qkv, 3, axis=-1)  # (batch, n, d)
        q, k, v = (_split_heads(t, self.tau) for t in (q, k, v))  # (batch, τ, n, ·)
        if cache is not None:
            k, v = cache.update(k, v)  # K_{≤i}, V_{≤i}: (batch, τ, i, head_dim)
        n, i = q.shape[-2], k.shape[-2]
        # One new query sees every key; a float64 mask would promote float32 scores.
        mask = None if n == 1 else causal_mask(n, i).astype(q.dtype)
        if allowed is not None:  # a padded batch: no real token reads a padded key
            mask = np.where(allowed, 0.0, -np.inf).astype(q.dtype)
        heads = attend(q, k, v, mask)  # (batch, τ, n, head_dim)
        return _merge_heads(heads) @ self.W_o + self.b_o  # (batch, n, d)

    def mlp(self, x: np.ndarray) -> np.ndarray:
        return gelu(x @ self.W_fc + self.b_fc) @ self.W_out + self.b_out

    def __call__(self, x: np.ndarray, cache: KVCache | None,
                 allowed: np.ndarray | None = None) -> np.ndarray:
        normed = layer_norm(x, self.ln_1_g, self.ln_1_b, self.eps)
        x = x + self.attention(normed, cache, allowed)
        return x + self.mlp(layer_norm(x, self.ln_2_g, self.ln_2_b, self.eps))


class Decoder:
    """GPT-2 in NumPy. ``forward`` recomputes everything; ``prefill`` + ``decode_step`` use a KV cache."""

    def __init__(self, config: DecoderConfig, wte: np.ndarray, wpe: np.ndarray, blocks: list[Block],
                 ln_f_g: np.ndarray, ln_f_b: np.ndarray) -> None:
        self.config = config
        self.wte, self.wpe = wte, wpe  # (vocab, d), (n_positions, d)
        self.blocks = blocks
        self.ln_f_g, self.ln_f_b = ln_f_g, ln_f_b

    @classmethod
    def from_gpt2_state_dict(cls, state_dict: Mapping, n_head: int, dtype=np.float64, *,
                             n_layer: int | None = None) -> "Decoder":
        """Build from GPT-2 parameter names (as in ``GPT2LMHeadModel.state_dict()``) mapped to arrays
        or tensors.

        τ = ``n_head`` cannot be read from the weights, so it is given; so may ``n_layer`` be, to catch
        a missing last block. Every problem with the tensors is named in one ValueError (see
        ``qkv.gpt2.read_state_dict``). float64 makes cached and uncached logits agree to ~1e-12.
        """
        config, sd = read_state_dict(state_dict, n_head, n_layer)

        def get(name: str) -> np.ndarray:
            return np.ascontiguousarray(sd[name], dtype=dtype)

        eps = config.layer_norm_eps
        blocks = [Block(config.n_head, eps, *(get(name) for name in layer_names(layer)))
                  for layer in range(config.n_layer)]
        return cls(config, get(PREFIX + "wte.weight"), get(PREFIX + "wpe.weight"), blocks,
                   get(PREFIX + "ln_f.weight"), get(PREFIX + "ln_f.bias"))

    @classmethod
    def from_llama_state_dict(cls, state_dict: Mapping, n_head: int, dtype=np.float64,
                              **options) -> "Decoder":
        """A Llama-shaped decoder (rotary positions, RMSNorm, SwiGLU, grouped-query attention)
        from ``LlamaForCausalLM`` parameter names: see ``qkv.reference.llama_decoder``."""
        from qkv.reference.llama_decoder import LlamaDecoder

        return LlamaDecoder.from_llama_state_dict(state_dict, n_head, dtype, **options)

    @property
    def dtype(self) -> np.dtype:
        return self.wte.dtype

    def logits(self, ids: np.ndarray, cache: DecoderCache | None = None,
               mask: np.ndarray | None = None) -> np.ndarray:
        """The model, unchecked: ids (batch, n) at positions i+1 … i+n after the i
        positions in ``cache`` (none without one) -> logits (batch, n, vocab).
        ``mask`` (batch, i + n), for a left-padded batch: 1 for a real token, 0 for
        padding, over the cached and the new tokens."""
        start, n = (0 if cache is None else cache.length), ids.shape[1]
        if mask is None:
            positions, allowed = np.arange(start, start + n), None  # (n,)
        else:  # each row's real tokens count their positions from its first one
            positions = padded_positions(mask)[:, start:]  # (batch, n)
            allowed = padded_causal_mask(mask, n)  # (batch, 1, n, i + n)
        x = self.wte[ids] + self.wpe[positions]  # (batch, n, d)
        for layer, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[layer], allowed)
        x = layer_norm(x, self.ln_f_g, self.ln_f_b, self.config.layer_norm_eps)
        return x @ self.wte.T  # tied output embedding: (batch, n, vocab)

    # --- the public steps: one check, then the computation -----------------------------------------
    def forward(self, ids, attention_mask=None) -> np.ndarray:
        """Logits (batch, n, vocab) for every position of ``ids`` (batch, n) or (n,), from scratch;
        ``attention_mask`` (batch, n) marks left padding with 0."""
        ids, mask = self._checked(ids, None, attention_mask)
        return self.logits(ids, None, mask)

    def new_cache(self, batch: int = 1, max_positions: int | None = None) -> DecoderCache:
        """An empty cache for ``batch`` sequences of up to ``max_positions`` (default n_positions):
        one ``KVCache`` per layer, each holding (batch, τ, i, head_dim) keys and values."""
        max_positions = checks.cache_positions(max_positions, self.config.n_positions)
        layers = [KVCache(max_positions=max_positions) for _ in self.blocks]
        return DecoderCache(layers, batch)

    def prefill(self, ids, cache: DecoderCache, attention_mask=None) -> np.ndarray:
        """Run the prompt (batch, n) in one pass, filling ``cache``; returns logits
        (batch, n, vocab). ``attention_mask`` (batch, i + n) covers the i cached
        tokens and the new ones."""
        ids, mask = self._checked(ids, cache, attention_mask)
        return self.logits(ids, cache, mask)

    def decode_step(self, token_ids, cache: DecoderCache,
                    attention_mask=None) -> np.ndarray:
        """Feed one new token per sequence, (batch,) or (batch, 1); returns next-token
        logits (batch, vocab). Only this position's key and value are computed; the
        rest come from ``cache``. A padded batch passes its ``attention_mask``
        (batch, i + 1) at every step, as in Hugging Face."""
        ids = checks.one_token_each(token_ids, self.config.vocab_size)
        ids, mask = self._checked(ids, cache, attention_mask)
        return self.logits(ids, cache, mask)[:, -1]

    def generate(self, ids, max_new_tokens: int, use_cache: bool = True,
                 attention_mask=None) -> np.ndarray:
        """Greedy decoding: the prompt (batch, n) or (n,), then the new tokens, as
        (batch, n + max_new_tokens).

        With the cache: one ``prefill``, then one ``decode_step`` per new token. With
        ``use_cache=False`` each step recomputes the whole prefix ("before" the cache).
        ``attention_mask`` (batch, n): 1 for a real token, 0 for left padding; each row
        then gets the tokens it would get alone, after its padding.
        """
        ids, mask = self._checked(ids, None, attention_mask)
        max_new_tokens = checks.non_negative_int("max_new_tokens", max_new_tokens)
        batch, n = ids.shape
        checks.model_room(0, n + max_new_tokens, self.config)
        out = np.zeros((batch, n + max_new_tokens), dtype=np.int64)
        out[:, :n] = ids
        if max_new_tokens == 0:
            return out
        if mask is not None:  # every new token is real
            new = np.ones((batch, max_new_tokens), np.int64)
            mask = np.concatenate([mask, new], axis=1)  # (batch, n + max_new_tokens)

        def upto(t: int):  # the mask of tokens 1…t
            return None if mask is None else mask[:, :t]

        if not use_cache:
            for t in range(n, n + max_new_tokens):
                logits = self.forward(out[:, :t], attention_mask=upto(t))
                out[:, t] = np.argmax(logits[:, -1], axis=-1)
            return out
        cache = self.new_cache(batch, n + max_new_tokens)
        logits = self.prefill(ids, cache, attention_mask=upto(n))
        out[:, n] = np.argmax(logits[:, -1], axis=-1)
        for t in range(n + 1, n + max_new_tokens):
            logits = self.decode_step(out[:, t - 1], cache, attention_mask=upto(t))
            out[:, t] = np.argmax(logits, axis=-1)
        return out

    # --- checks at the edge ----------------------------------------------------------------------
    def _checked(self, ids, cache: DecoderCache | None,
                 attention_mask=None) -> tuple[np.ndarray, np.ndarray | None]:
        """ids as (batch, n) int64, checked against the vocabulary, the cache and the model's length;
        and the mask over the cache and ids, None when there is no padding (all 1s change nothing)."""
        ids = checks.token_ids(ids, self.config.vocab_size)
        start = checks.start_position(cache, DecoderCache, self.config, *ids.shape)
        shape = (ids.shape[0], start + ids.shape[1])
        mask = checks.attention_mask(attention_mask, shape)
        if mask is not None:
            mask = np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask)
            if mask.all():
                mask = None
        return ids, mask
