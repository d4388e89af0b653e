"""Decoding with and without a KV cache, in NumPy (chapters 4, 5 and 7): one core for every model shape.

A model supplies its blocks and its logits (GPT-2: ``qkv.reference.gpt2_decoder``; a Llama-shaped
model: ``qkv.reference.llama_decoder``); the ``Decoder`` here owns what decoding is, the same for
both: ``forward`` recomputes everything, ``prefill`` runs a prompt into a cache, ``decode_step``
feeds one new token per sequence, ``generate`` loops them. Each public step checks its arguments
once (STYLE rule 11), then runs ``logits``, the unchecked step that ``generate``'s loop calls too.

Layouts: ids (batch, n); logits (batch, n, vocab); each layer's cache (batch, heads, i, head_dim).
Positions count from 1 in the course; the position rows handed to a model count from 0.

Prompts of different lengths share a batch by left padding: an ``attention_mask`` (batch, length) holds
1 for a real token and 0 for padding, as in Hugging Face. No key is read at a padded position, and the
positions of a row's real tokens count from its first real token (``padded_positions``), for learned
positions (GPT-2) and rotary ones (Llama) alike.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from qkv import checks
from qkv.reference.cache import DecoderCache, KVCache, start_position
from qkv.reference.gpt2_decoder import GPT2Model
from qkv.reference.llama_decoder import LlamaModel
from qkv.reference.qkv_attention import causal_mask


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


class Decoder:
    """A decoder in NumPy over a ``model`` (``GPT2Model`` or ``LlamaModel``): ``forward``
    recomputes everything; ``prefill`` + ``decode_step`` use a KV cache."""

    def __init__(self, model: GPT2Model | LlamaModel) -> None:
        self.model = model

    @classmethod
    def from_gpt2_state_dict(cls, state_dict: Mapping, n_head: int, dtype=np.float64, *,
                             n_layer: int | None = None) -> "Decoder":
        """GPT-2 from its parameter names (as in ``GPT2LMHeadModel.state_dict()``) mapped to arrays
        or tensors.

        τ = ``n_head`` cannot be read from the weights, so it is given; so may ``n_layer`` be, to catch
        a missing last block. Every problem with the tensors is named in one ValueError (see
        ``qkv.state_dict``). float64 makes cached and uncached logits agree to ~1e-12.
        """
        return cls(GPT2Model.from_gpt2_state_dict(state_dict, n_head, dtype, n_layer=n_layer))

    @classmethod
    def from_llama_state_dict(cls, state_dict: Mapping, n_head: int, dtype=np.float64,
                              **options) -> "Decoder":
        """A Llama-shaped model (rotary positions, RMSNorm, SwiGLU, grouped-query attention) from
        ``LlamaForCausalLM`` parameter names; ``options`` are ``LlamaModel.from_llama_state_dict``'s
        (``n_layer``, ``n_positions``, ``rms_norm_eps``, ``rope_base``)."""
        return cls(LlamaModel.from_llama_state_dict(state_dict, n_head, dtype, **options))

    @property
    def config(self):
        return self.model.config

    def __getattr__(self, name: str):
        """The model's weights and blocks by their names (``decoder.wte``, ``decoder.blocks``,
        ``decoder.embed``), as when decoder and model were one object."""
        if name == "model":  # not set yet: no model to ask
            raise AttributeError(name)
        return getattr(self.model, name)

    @property
    def dtype(self) -> np.dtype:
        return self.model.dtype

    def logits(self, ids: np.ndarray, cache: DecoderCache | None = None,
               mask: np.ndarray | None = None) -> np.ndarray:
        """The step, unchecked: ids (batch, n) at positions i+1 … i+n after the i
        positions in ``cache`` (none without one) -> logits (batch, n, vocab).
        ``mask`` (batch, i + n), for a left-padded batch: 1 for a real token, 0 for
        padding, over the cached and the new tokens."""
        start, n = (0 if cache is None else cache.length), ids.shape[1]
        if mask is None:
            positions = np.arange(start, start + n)[None]  # (1, n)
            # One new query sees every key; a float64 mask would promote float32 scores.
            scores_mask = None if n == 1 else causal_mask(n, start + n).astype(self.dtype)
        else:  # each row's real tokens count their positions from its first one
            positions = padded_positions(mask)[:, start:]  # (batch, n)
            allowed = padded_causal_mask(mask, n)  # (batch, 1, n, i + n)
            scores_mask = np.where(allowed, 0.0, -np.inf).astype(self.dtype)
        return self.model.logits(ids, cache, positions, scores_mask)

    # --- the public steps: one check, then the computation -----------------------------------------
    def forward(self, ids, attention_mask=None) -> np.ndarray:
        """Logits (batch, n, vocab) for every position of ``ids`` (batch, n) or (n,), from scratch;
        ``attention_mask`` (batch, n) marks left padding with 0."""
        ids, mask = self._checked(ids, None, attention_mask)
        return self.logits(ids, None, mask)

    def new_cache(self, batch: int = 1, max_positions: int | None = None) -> DecoderCache:
        """An empty cache for ``batch`` sequences of up to ``max_positions`` (default n_positions):
        one ``KVCache`` per layer, each holding (batch, heads, i, head_dim) keys and values, where
        heads is τ for GPT-2 and n_kv_heads for a Llama-shaped model."""
        max_positions = checks.cache_positions(max_positions, self.config.n_positions)
        layers = [KVCache(max_positions=max_positions) for _ in range(self.config.n_layer)]
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

        With the cache: one prefill, then one decode step per new token. With
        ``use_cache=False`` each step recomputes the whole prefix ("before" the cache).
        ``attention_mask`` (batch, n): 1 for a real token, 0 for left padding; each row
        then gets the tokens it would get alone, after its padding. The arguments are
        checked here, once; the loop runs the unchecked step, ``logits``.
        """
        ids, mask = self._checked(ids, None, attention_mask)
        max_new_tokens = checks.non_negative_int("max_new_tokens", max_new_tokens)
        batch, n = ids.shape
        self._start(None, batch, n + max_new_tokens)
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
                logits = self.logits(out[:, :t], None, upto(t))
                out[:, t] = np.argmax(logits[:, -1], axis=-1)
            return out
        cache = self.new_cache(batch, n + max_new_tokens)
        logits = self.logits(ids, cache, upto(n))
        out[:, n] = np.argmax(logits[:, -1], axis=-1)
        for t in range(n + 1, n + max_new_tokens):
            logits = self.logits(out[:, t - 1 : t], cache, upto(t))
            out[:, t] = np.argmax(logits[:, -1], axis=-1)
        return out

    # --- checks at the edge ----------------------------------------------------------------------
    def _start(self, cache: DecoderCache | None, batch: int, n: int) -> int:
        c = self.config
        return start_position(cache, DecoderCache, c.n_layer, c.n_positions, batch, n)

    def _checked(self, ids, cache: DecoderCache | None,
                 attention_mask=None) -> tuple[np.ndarray, np.ndarray | None]:
        """ids as (batch, n) int64, checked against the vocabulary, the cache and the model's length;
        and the mask over the cache and ids, None when there is no padding (all 1s change nothing)."""
        ids = checks.token_ids(ids, self.config.vocab_size)
        batch, n = ids.shape
        start = self._start(cache, batch, n)
        mask = checks.attention_mask(attention_mask, (batch, start + n))
        if mask is not None:
            mask = np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask)
            if mask.all():
                mask = None
        return ids, mask
