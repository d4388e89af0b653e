"""Decoding in PyTorch with a static KV cache, on CPU or GPU (chapter 8): one core for every model shape.

The same decoder as the NumPy ``qkv.reference.Decoder``, cut the same way: a model supplies its blocks
and its logits (GPT-2: ``qkv.torch_gpt2``; a Llama-shaped model: ``qkv.torch_llama``), and the
``CachedDecoder`` here owns the public steps, ``forward``, ``prefill``, ``decode_step`` and
``generate``, each checking its arguments once, then running the one unchecked step.

That step takes where its tokens go as tensors (``qkv.torch_parts.Step``: the cache slots it writes,
each token's position, the slots each query may read), as gpt-fast's ``KVCache.update(input_pos, k,
v)`` does. So the lesson's own one-token step is also the speed path: on a CPU it runs eagerly, reading
the i cached keys; with ``fast=True`` on a GPU it is captured once as a CUDA graph and replayed (one
launch per token instead of a few hundred), reading every slot of the cache, the unwritten ones masked.

Layouts: ids (batch, n); each layer's cache (batch, heads, max_positions, head_dim); logits (batch, n,
vocab). Positions count from 1 in the course; the position table and cache slots from 0 here.

Prompts of different lengths share a batch by left padding, with an ``attention_mask`` (batch, length):
1 for a real token, 0 for padding, as in Hugging Face; the same rules as the NumPy decoder's.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from qkv import checks
from qkv.reference.cache import start_position
from qkv.torch_cache import StaticDecoderCache
from qkv.torch_gpt2 import GPT2Model
from qkv.torch_llama import LlamaModel
from qkv.torch_parts import Step


def padded_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position-table rows for a left-padded batch, mask (batch, i) -> (batch, i): a
    row's real tokens sit at 0, 1, 2, … from its first real token, as if it had no
    padding. Padding gets 0, as in Hugging Face's generate (no real token reads it)."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def padded_causal_mask(mask: torch.Tensor, n: int) -> torch.Tensor:
    """Where the last n of i positions may attend in a left-padded batch:
    (batch, 1, n, i), True for a key j ≤ query that is a real token. A padded
    query also sees itself (else its row would be empty and its softmax NaN); no
    real token reads it."""
    i = mask.shape[-1]
    query = torch.arange(i - n, i, device=mask.device)[:, None]  # (n, 1): slots from 0
    key = torch.arange(i, device=mask.device)[None, :]  # (1, i)
    real = mask[:, None, :] == 1  # (batch, 1, i)
    allowed = (key <= query) & (real | (key == query))  # (batch, n, i)
    return allowed[:, None]  # (batch, 1, n, i): the same for every head


def step_at(start: int, n: int, mask: torch.Tensor | None, n_slots: int, device) -> Step:
    """Where n new tokens after ``start`` cached ones go (``Step``), reading the first
    ``n_slots`` ≥ start + n slots; ``mask`` (batch, start + n) for a left-padded batch."""
    slots = torch.arange(start, start + n, device=device)  # (n,)
    if mask is None:
        keys = torch.arange(n_slots, device=device)
        return Step(slots, slots[None], (keys <= slots[:, None])[None, None])  # (1, 1, n, slots)
    allowed = padded_causal_mask(mask, n)  # (batch, 1, n, start + n)
    if n_slots > start + n:  # the slots not written yet: hidden
        allowed = torch.cat([allowed, allowed.new_zeros(*allowed.shape[:-1], n_slots - start - n)],
                            dim=-1)
    return Step(slots, padded_positions(mask)[:, start:], allowed)


class CachedDecoder(nn.Module):
    """A decoder in PyTorch over a ``model`` (``GPT2Model`` or ``LlamaModel``): ``forward``
    recomputes everything; ``prefill`` + ``decode_step`` use a static cache."""

    def __init__(self, model: GPT2Model | LlamaModel, fast: bool = False) -> None:
        super().__init__()
        self.model = model
        self.fast = fast  # on a GPU: replay the decode step as a CUDA graph
        self._graph: GraphedStep | None = None

    @classmethod
    def from_gpt2_state_dict(cls, state_dict: Mapping, n_head: int, device=None,
                             dtype=torch.float32, fast: bool = False, *,
                             n_layer: int | None = None) -> "CachedDecoder":
        """GPT-2 from its parameter names (as in ``GPT2LMHeadModel.state_dict()``) mapped to NumPy
        arrays or torch tensors, in GPT-2's Conv1D layout (in, out).

        τ = ``n_head`` cannot be read from the weights; ``n_layer`` may be given to catch a missing
        last block. Every problem with the tensors is named in one ValueError (see
        ``qkv.state_dict``). ``device=None`` picks CUDA when present; ``dtype`` is float32, or
        bfloat16/float16 (meant for a GPU). ``fast=True``: see ``graph_decode``.
        """
        model = GPT2Model.from_gpt2_state_dict(state_dict, n_head, device, dtype, n_layer=n_layer)
        return cls(model, fast)

    @classmethod
    def from_llama_state_dict(cls, state_dict: Mapping, n_head: int, device=None,
                              dtype=torch.float32, fast: bool = False,
                              **options) -> "CachedDecoder":
        """A Llama-shaped model (rotary positions, RMSNorm, SwiGLU, grouped-query attention)
        from ``LlamaForCausalLM`` parameter names; ``options`` are
        ``LlamaModel.from_llama_state_dict``'s (``n_layer``, ``n_positions``, ``rms_norm_eps``,
        ``rope_base``). The rest as ``from_gpt2_state_dict``."""
        return cls(LlamaModel.from_llama_state_dict(state_dict, n_head, device, dtype, **options),
                   fast)

    def graph_decode(self) -> "CachedDecoder":
        """On a GPU, capture the decode step once as a CUDA graph and replay it for every token
        (``uses_cuda_graph``); on a CPU the step stays eager. Same numbers. Returns the model."""
        self.fast = True
        return self

    compile_decode = graph_decode  # the old name (kept for one release): it compiles nothing

    @property
    def config(self):
        return self.model.config

    def __getattr__(self, name: str):
        """The model's modules by their names (``decoder.wte``, ``decoder.blocks``), as when
        decoder and model were one module."""
        try:
            return super().__getattr__(name)  # nn.Module's: parameters, buffers, submodules
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def uses_cuda_graph(self) -> bool:
        """Whether ``decode_step`` replays a CUDA graph (``fast``, and the weights are on a GPU)."""
        return self.fast and self.device.type == "cuda"

    @property
    def nbytes(self) -> int:
        """Bytes of all weights (a tied output layer counted once)."""
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def logits(self, ids: torch.Tensor, cache: StaticDecoderCache | None = None,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        """The step, unchecked and eager: ids (batch, n) at positions i+1 … i+n after the
        i positions in ``cache`` (none without one) -> logits (batch, n, vocab).
        ``mask`` (batch, i + n), for a left-padded batch: 1 for a real token, 0 for
        padding."""
        start, n = (0 if cache is None else cache.length), ids.shape[1]
        logits = self.model(ids, cache, step_at(start, n, mask, start + n, ids.device))
        if cache is not None:
            cache.advance(n, ids.shape[0])
        return logits

    def _decode(self, ids: torch.Tensor, cache: StaticDecoderCache,
                mask: torch.Tensor | None) -> torch.Tensor:
        """One token per sequence, unchecked: ids (batch, 1) -> logits (batch, vocab), by the
        eager step or its CUDA graph."""
        if not self.uses_cuda_graph:
            return self.logits(ids, cache, mask)[:, -1]
        if self._graph is None or not self._graph.fits(cache, ids.shape[0]):
            self._graph = GraphedStep(self.model, cache, ids.shape[0])
        return self._graph(ids, mask).clone()  # the replay's output is overwritten by the next

    # --- the public steps: one check, then the computation -----------------------------------------
    @torch.inference_mode()
    def forward(self, ids, attention_mask=None) -> torch.Tensor:
        """Logits (batch, n, vocab) for every position of ``ids`` (batch, n) or (n,), from scratch;
        ``attention_mask`` (batch, n) marks left padding with 0."""
        ids, mask = self._checked(ids, None, attention_mask)
        return self.logits(ids, None, mask)

    def new_cache(self, batch: int = 1, max_positions: int | None = None) -> StaticDecoderCache:
        """An empty static cache for up to ``batch`` sequences of up to ``max_positions`` (default:
        the model's n_positions) positions, each layer's holding the model's key/value heads (τ for
        GPT-2, n_kv_heads for a Llama-shaped model), in this decoder's dtype and on its device."""
        c = self.config
        max_positions = checks.cache_positions(max_positions, c.n_positions)
        return StaticDecoderCache(c.n_layer, batch, c.n_kv_heads, max_positions, c.head_dim,
                                  self.dtype, self.device)

    @torch.inference_mode()
    def prefill(self, ids, cache: StaticDecoderCache,
                attention_mask=None) -> torch.Tensor:
        """Run the prompt (batch, n) in one pass, writing its keys and values into
        ``cache``; returns logits (batch, n, vocab). ``attention_mask`` (batch, i + n)
        covers the i cached tokens and the new ones."""
        ids, mask = self._checked(ids, cache, attention_mask)
        return self.logits(ids, cache, mask)

    @torch.inference_mode()
    def decode_step(self, token_ids, cache: StaticDecoderCache,
                    attention_mask=None) -> torch.Tensor:
        """Feed one new token per sequence, (batch,) or (batch, 1); returns next-token
        logits (batch, vocab). Only this position's key and value are computed; the
        earlier ones are read from ``cache``. A padded batch passes its
        ``attention_mask`` (batch, i + 1) at every step, as in Hugging Face."""
        ids = checks.one_token_each(token_ids, self.config.vocab_size)
        ids, mask = self._checked(ids, cache, attention_mask)
        return self._decode(ids, cache, mask)

    @torch.inference_mode()
    def generate(self, ids, max_new_tokens: int, use_cache: bool = True, temperature: float = 0.0,
                 top_k: int | None = None, seed: int | None = None,
                 cache: StaticDecoderCache | None = None, attention_mask=None) -> torch.Tensor:
        """The prompt (batch, n) or (n,) followed by ``max_new_tokens`` new tokens: an int64 tensor
        (batch, n + max_new_tokens) on this decoder's device.

        With the cache: one prefill, then one decode step per new token. Greedy with
        ``temperature=0``; otherwise samples from softmax(logits / temperature), from the ``top_k``
        likeliest tokens when given, seeded by ``seed``. A ``cache`` may be passed to reuse its
        storage (it is reset first); by default one is built for exactly n + max_new_tokens positions.
        ``attention_mask`` (batch, n): 1 for a real token, 0 for left padding; each row
        then gets the tokens it would get alone, after its padding. The arguments are checked
        here, once; the loop runs the unchecked step.
        """
        ids, mask = self._checked(ids, None, attention_mask)
        max_new_tokens = checks.non_negative_int("max_new_tokens", max_new_tokens)
        temperature, top_k, seed = checks.sampling(temperature, top_k, seed)
        (batch, n), total = ids.shape, ids.shape[1] + max_new_tokens
        self._start(None, batch, total)
        if use_cache and cache is not None:
            checks.layer_caches(cache, StaticDecoderCache, self.config.n_layer)
            cache.check_fits(batch, n, total)
            cache.check_place(self.dtype, self.device)
        out = torch.cat([ids, ids.new_zeros(batch, max_new_tokens)], dim=1)
        if max_new_tokens == 0:
            return out
        pick = _Sampler(temperature, top_k, seed, self.device)
        if mask is not None:  # every new token is real
            mask = torch.cat([mask, mask.new_ones(batch, max_new_tokens)], dim=1)

        def upto(t: int):  # the mask of tokens 1…t
            return None if mask is None else mask[:, :t]

        if not use_cache:
            for t in range(n, total):
                out[:, t] = pick(self.logits(out[:, :t], None, upto(t))[:, -1])
            return out
        if cache is None:
            cache = self.new_cache(batch, total)
        cache.reset()
        out[:, n] = pick(self.logits(ids, cache, upto(n))[:, -1])
        for t in range(n + 1, total):
            out[:, t] = pick(self._decode(out[:, t - 1 : t], cache, upto(t)))
        return out

    # --- checks at the edge ----------------------------------------------------------------------
    def _start(self, cache: StaticDecoderCache | None, batch: int, n: int) -> int:
        c = self.config
        return start_position(cache, StaticDecoderCache, c.n_layer, c.n_positions, batch, n)

    def _checked(self, ids, cache: StaticDecoderCache | None, attention_mask=None):
        """ids as a (batch, n) int64 tensor on this decoder's device, checked against the vocabulary,
        the cache and the model's length; and the mask over the cache and ids, as a tensor there too,
        or None when there is no padding (all 1s change nothing)."""
        ids = checks.token_ids(ids, self.config.vocab_size)
        batch, n = ids.shape
        start = self._start(cache, batch, n)
        if cache is not None:
            cache.check_place(self.dtype, self.device)
        mask = checks.attention_mask(attention_mask, (batch, start + n))
        if mask is not None:
            mask = torch.as_tensor(mask, device=self.device)
            if bool(mask.all()):
                mask = None
        return torch.as_tensor(ids, device=self.device), mask


class GraphedStep:
    """The model's one-token step captured once as a CUDA graph, then replayed. Bound to one cache
    and one batch size (a graph replays fixed addresses): its inputs are copied into static tensors,
    it attends over every slot of the cache (the unwritten ones masked), and the returned logits are
    overwritten by the next replay."""

    def __init__(self, model: nn.Module, cache: StaticDecoderCache, batch: int) -> None:
        self.model, self.cache, self.batch = model, cache, batch
        device, slots = cache.device, cache.max_positions
        self.ids = torch.zeros(batch, 1, dtype=torch.int64, device=device)
        self.step = Step(torch.zeros(1, dtype=torch.int64, device=device),
                         torch.zeros(batch, 1, dtype=torch.int64, device=device),
                         torch.zeros(batch, 1, 1, slots, dtype=torch.bool, device=device))
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def fits(self, cache: StaticDecoderCache, batch: int) -> bool:
        return cache is self.cache and batch == self.batch

    def _capture(self) -> None:
        # Warm up on a side stream (as CUDA graphs require); these runs write the k, v the replay will.
        side = torch.cuda.Stream(device=self.cache.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.model(self.ids, self.cache, self.step)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self.model(self.ids, self.cache, self.step)[:, -1]

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """ids (batch, 1) after the cache's i positions -> logits (batch, vocab)."""
        start = self.cache.length
        at = step_at(start, 1, mask, self.cache.max_positions, ids.device)
        self.ids.copy_(ids)
        self.step.slots.copy_(at.slots)
        self.step.positions.copy_(at.positions.expand_as(self.step.positions))
        self.step.allowed.copy_(at.allowed.expand_as(self.step.allowed))
        if self.graph is None:
            self._capture()
        self.graph.replay()
        self.cache.advance(1, self.batch)
        return self.logits


class _Sampler:
    """logits (batch, vocab) -> token ids (batch,): argmax at temperature 0, else a seeded sample."""

    def __init__(self, temperature: float, top_k: int | None, seed: int | None, device) -> None:
        self.temperature, self.top_k, self.generator = temperature, top_k, None
        if temperature > 0:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed) if seed is not None else self.generator.seed()

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.temperature == 0:
            return logits.argmax(dim=-1)
        logits = logits.float() / self.temperature
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]  # (batch, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator)[:, 0]
