"""A GPT-2-shaped decoder in NumPy, with and without a KV cache (chapter 4).

Read top to bottom in the order of the computation: LayerNorm, GELU, one attention block, the model.
GPT-2's shape: learned position embeddings, LayerNorm before each sub-layer (pre-LN), GELU with the tanh
approximation, and an output layer tied to the token embedding. Weights load from a Hugging Face GPT-2
state dict (``Decoder.from_gpt2_state_dict``), so this decoder can be checked against GPT-2 itself.

Layouts: ids (batch, n); hidden states (batch, n, d); per-head tensors (batch, τ, n, d/τ); logits
(batch, n, vocab). Positions count from 1 in the course; the position table is indexed from 0 here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from qkv.config import DecoderConfig, non_negative_int, positive_int
from qkv.gpt2 import PREFIX, layer_names, read_state_dict
from qkv.reference.attention import attention, causal_mask
from qkv.reference.cache import KVCache
from qkv.reference.heads import merge_heads, split_heads


def layer_norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gain + bias


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (as GPT-2 uses)."""
    # Python-float constants keep float32 input in float32 (a NumPy float64 scalar would promote it).
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


@dataclass
class Block:
    """One transformer block's weights, in GPT-2's Conv1D layout: a layer computes x @ W + b."""

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
        """Build from GPT-2 parameter names (as in ``GPT2LMHeadModel.state_dict()``) mapped to arrays.

        τ = ``n_head`` cannot be read from the weights, so it is given; so may ``n_layer`` be, to catch a
        missing last block. Every problem with the tensors is named in one ValueError (see
        ``qkv.gpt2.read_state_dict``). ``dtype`` float64 makes cached and uncached logits agree to ~1e-12.
        """
        config, sd = read_state_dict(state_dict, n_head, n_layer)

        def get(name: str) -> np.ndarray:
            value = sd[name]
            if hasattr(value, "detach"):  # a torch tensor: read it without importing torch
                value = value.detach().cpu().numpy()
            return np.ascontiguousarray(np.asarray(value, dtype=dtype))

        blocks = [Block(*(get(n) for n in layer_names(layer))) for layer in range(config.n_layer)]
        return cls(config, get(PREFIX + "wte.weight"), get(PREFIX + "wpe.weight"), blocks,
                   get(PREFIX + "ln_f.weight"), get(PREFIX + "ln_f.bias"))

    @property
    def dtype(self) -> np.dtype:
        return self.wte.dtype

    # --- input checks ---------------------------------------------------------------------------
    def _check_ids(self, ids, name: str = "ids") -> np.ndarray:
        arr = np.asarray(ids)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
            if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
                arr = arr.astype(np.int64)
            else:
                raise TypeError(f"{name} must be integer token ids, got dtype {arr.dtype}")
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise ValueError(f"{name} must have shape (batch, n) or (n,); got shape {np.shape(ids)}")
        if arr.shape[1] == 0:
            raise ValueError(f"{name} is empty (shape {arr.shape}); give at least one token")
        bad = (arr < 0) | (arr >= self.config.vocab_size)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name} holds token id {int(arr[where])} at index {where}, outside the vocabulary "
                f"[0, {self.config.vocab_size})"
            )
        return arr.astype(np.int64, copy=False)

    def _check_token_ids(self, token_ids) -> np.ndarray:
        """One new token per sequence: (batch,), or (batch, 1) as sliced off a (batch, n) array; as (batch, 1)."""
        shape = np.shape(token_ids)
        if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
            return self._check_ids(np.reshape(token_ids, (-1, 1)), "token_ids")
        raise ValueError(f"token_ids must hold one token per sequence, shape (batch,) or (batch, 1); "
                         f"got shape {shape}")

    def _check_room(self, start: int, n: int) -> None:
        if start + n > self.config.n_positions:
            raise ValueError(
                f"sequence would reach {start + n} positions, past the maximum length "
                f"n_positions={self.config.n_positions} of this model"
            )

    # --- the computation --------------------------------------------------------------------------
    def _attend(self, block: Block, x: np.ndarray, cache: KVCache | None) -> np.ndarray:
        """Masked multi-head self-attention of x (batch, n, d), reading earlier positions from ``cache``."""
        tau = self.config.n_head
        h = layer_norm(x, block.ln_1_g, block.ln_1_b, self.config.layer_norm_eps)
        q, k, v = np.split(h @ block.W_qkv + block.b_qkv, 3, axis=-1)  # each (batch, n, d)
        q, k, v = split_heads(q, tau), split_heads(k, tau), split_heads(v, tau)  # (batch, τ, n, d/τ)
        if cache is not None:
            k, v = cache.update(k, v)  # K_{≤i}, V_{≤i}: (batch, τ, i, d/τ)
        n, i = q.shape[-2], k.shape[-2]
        mask = None if n == 1 else causal_mask(n, i)  # one new query may see every cached key
        # attention() scales by a float64 √d, which would promote float32 heads; cast back so that the
        # output projection stays in the decoder's dtype instead of converting W_o at every step.
        heads = attention(q, k, v, mask).astype(x.dtype, copy=False)  # (batch, τ, n, d/τ)
        return merge_heads(heads) @ block.W_o + block.b_o  # (batch, n, d)

    def _block(self, block: Block, x: np.ndarray, cache: KVCache | None) -> np.ndarray:
        x = x + self._attend(block, x, cache)
        h = layer_norm(x, block.ln_2_g, block.ln_2_b, self.config.layer_norm_eps)
        return x + gelu(h @ block.W_fc + block.b_fc) @ block.W_out + block.b_out

    def _run(self, ids: np.ndarray, start: int, caches: list[KVCache] | None) -> np.ndarray:
        n = ids.shape[1]
        x = self.wte[ids] + self.wpe[start : start + n]  # (batch, n, d); positions start+1 … start+n
        for layer, block in enumerate(self.blocks):
            x = self._block(block, x, None if caches is None else caches[layer])
        x = layer_norm(x, self.ln_f_g, self.ln_f_b, self.config.layer_norm_eps)
        return x @ self.wte.T  # tied output embedding: (batch, n, vocab)

    def forward(self, ids) -> np.ndarray:
        """Logits (batch, n, vocab) for every position of ``ids`` (batch, n) or (n,), computed from scratch."""
        ids = self._check_ids(ids)
        self._check_room(0, ids.shape[1])
        return self._run(ids, 0, None)

    def new_cache(self, batch: int = 1) -> list[KVCache]:
        """One empty KVCache per layer, sized for the model's maximum length."""
        positive_int("batch", batch)
        return [KVCache(max_positions=self.config.n_positions) for _ in self.blocks]

    def _check_caches(self, caches, batch: int) -> int:
        if not isinstance(caches, (list, tuple)) or len(caches) != self.config.n_layer:
            raise ValueError(f"caches must be a list of {self.config.n_layer} KVCache (one per layer); "
                             f"use decoder.new_cache(batch)")
        lengths = {c.length for c in caches}
        if len(lengths) != 1:
            raise ValueError(f"the per-layer caches disagree on their length: {sorted(lengths)}")
        start = lengths.pop()
        if start and caches[0].keys.shape[0] != batch:
            raise ValueError(f"the caches hold a batch of {caches[0].keys.shape[0]} sequences; got {batch}")
        return start

    def prefill(self, ids, caches: list[KVCache]) -> np.ndarray:
        """Run the prompt in one pass, filling ``caches``; returns logits (batch, n, vocab)."""
        ids = self._check_ids(ids)
        start = self._check_caches(caches, ids.shape[0])
        self._check_room(start, ids.shape[1])
        return self._run(ids, start, caches)

    def decode_step(self, token_ids, caches: list[KVCache]) -> np.ndarray:
        """Feed one new token per sequence, token_ids (batch,) or (batch, 1); returns next-token logits
        (batch, vocab).

        Only this position's key and value are computed; the earlier ones come from ``caches``."""
        ids = self._check_token_ids(token_ids)
        start = self._check_caches(caches, ids.shape[0])
        self._check_room(start, 1)
        return self._run(ids, start, caches)[:, -1, :]

    def generate(self, ids, max_new_tokens: int, use_cache: bool = True) -> np.ndarray:
        """Greedy decoding. Returns the prompt followed by the new tokens, (batch, n + max_new_tokens).

        With ``use_cache=False`` every step recomputes keys and values for the whole prefix (the course's
        "before" picture); with the cache each step computes them for the new token only.
        """
        ids = self._check_ids(ids)
        max_new_tokens = non_negative_int("max_new_tokens", max_new_tokens)
        batch, n = ids.shape
        self._check_room(0, n + max_new_tokens)
        out = np.empty((batch, n + max_new_tokens), dtype=np.int64)
        out[:, :n] = ids
        if max_new_tokens == 0:
            return out
        if use_cache:
            caches = self.new_cache(batch)
            logits = self.prefill(ids, caches)[:, -1, :]
            for t in range(n, n + max_new_tokens):
                out[:, t] = np.argmax(logits, axis=-1)
                if t + 1 < n + max_new_tokens:
                    logits = self.decode_step(out[:, t], caches)
        else:
            for t in range(n, n + max_new_tokens):
                out[:, t] = np.argmax(self._run(out[:, :t], 0, None)[:, -1, :], axis=-1)
        return out
