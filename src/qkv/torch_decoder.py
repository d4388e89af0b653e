"""A GPT-2-shaped decoder in PyTorch with a static KV cache, on CPU or GPU (chapter 6).

The same model as the NumPy ``qkv.reference.Decoder``, cut the same way (a block is attention, then the
MLP; the public steps are ``prefill``, ``decode_step`` and ``generate``), written as a ``torch.nn.Module``
the way nanoGPT and gpt-fast write theirs: its weights are parameters (``state_dict()``, ``.to(device)``),
each linear layer is ``F.linear``, attention is ``F.scaled_dot_product_attention``, and the keys and
values live in a ``StaticKVCache`` written in place.

GPT-2 stores its linear weights as Conv1D, (in, out); ``nn.Linear`` keeps (out, in), so they are
transposed once, at load. ``fast=True`` turns on the speed paths of ``qkv.torch_fast``: a decode
step written for one token on a CPU, replayed as a CUDA graph on a GPU. The lesson code does not
change; they change how the same numbers reach the processor.

Layouts: ids (batch, n); hidden states (batch, n, d); per-head tensors (batch, τ, n, head_dim); each
layer's cache (batch, τ, max_positions, head_dim); logits (batch, n, vocab). Positions count from 1 in
the course; the position table and cache slots from 0 here.

Prompts of different lengths share a batch by left padding, with an ``attention_mask`` (batch, length):
1 for a real token, 0 for padding, as in Hugging Face; the same rules as the NumPy decoder's.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qkv import checks
from qkv.config import DecoderConfig
from qkv.gpt2 import PREFIX, layer_names, read_state_dict
from qkv.torch_cache import LayerKVCache, StaticKVCache


def causal_mask(n: int, i: int, device) -> torch.Tensor | None:
    """Where the last n of i positions may attend: (n, i), True for key j ≤ query i (no mask for one
    new query, which sees every cached key)."""
    if n == 1:
        return None
    return torch.ones(n, i, dtype=torch.bool, device=device).tril(i - n)


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


class Block(nn.Module):
    """One transformer block: x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x))."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        d, eps = config.n_embd, config.layer_norm_eps
        self.tau = config.n_head
        self.ln_1 = nn.LayerNorm(d, eps=eps)
        self.c_attn = nn.Linear(d, 3 * d)  # [W_q | W_k | W_v]ᵀ, the τ heads side by side in each
        self.c_proj = nn.Linear(d, d)  # W_o
        self.ln_2 = nn.LayerNorm(d, eps=eps)
        self.c_fc = nn.Linear(d, config.d_ff)
        self.mlp_proj = nn.Linear(config.d_ff, d)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (batch, n, d) -> q, k, v, each (batch, τ, n, head_dim)."""
        b, n, d = x.shape
        qkv = self.c_attn(x).view(b, n, 3, self.tau, d // self.tau)  # (batch, n, 3, τ, head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (batch, τ, n, head_dim)
        return q, k, v

    def attention(self, x: torch.Tensor, cache: LayerKVCache | None,
                  allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Masked multi-head self-attention of x (batch, n, d), reading positions
        1…i from ``cache``; ``allowed`` (batch, 1, n, i) replaces the causal mask in a
        padded batch."""
        b, n, d = x.shape
        q, k, v = self.qkv(x)
        if cache is not None:
            k, v = cache.update(k, v)  # K_{≤i}, V_{≤i}: (batch, τ, i, head_dim)
        mask = causal_mask(n, k.shape[2], x.device) if allowed is None else allowed
        heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # like q
        return self.c_proj(heads.transpose(1, 2).reshape(b, n, d))  # (batch, n, d)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp_proj(F.gelu(self.c_fc(x), approximate="tanh"))

    def forward(self, x: torch.Tensor, cache: LayerKVCache | None = None,
                allowed: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x), cache, allowed)
        return x + self.mlp(self.ln_2(x))


class CachedDecoder(nn.Module):
    """GPT-2 in PyTorch: ``forward`` recomputes everything; ``prefill`` + ``decode_step`` use a
    static cache."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied output embedding, as GPT-2's
        self.fast = False  # the speed paths of qkv.torch_fast; see compile_decode
        self._graph = None  # with fast=True on a GPU: the decode step as a CUDA graph

    @classmethod
    def from_gpt2_state_dict(cls, state_dict: Mapping, n_head: int, device=None,
                             dtype=torch.float32, fast: bool = False, *,
                             n_layer: int | None = None) -> "CachedDecoder":
        """Build from GPT-2 parameter names (as in ``GPT2LMHeadModel.state_dict()``) mapped to NumPy
        arrays or torch tensors, in GPT-2's Conv1D layout (in, out).

        τ = ``n_head`` cannot be read from the weights; ``n_layer`` may be given to catch a missing
        last block. Every problem with the tensors is named in one ValueError (see
        ``qkv.gpt2.read_state_dict``). ``device=None`` picks CUDA when present; ``dtype`` is float32,
        or bfloat16/float16 (meant for a GPU). ``fast=True`` calls ``compile_decode``.
        """
        config, sd = read_state_dict(state_dict, n_head, n_layer)
        device, dtype = checks.device(device), checks.float_dtype(dtype)
        names = ["ln_1.weight", "ln_1.bias", "c_attn.weight", "c_attn.bias", "c_proj.weight",
                 "c_proj.bias", "ln_2.weight", "ln_2.bias", "c_fc.weight", "c_fc.bias",
                 "mlp_proj.weight", "mlp_proj.bias"]  # ours, in the order of qkv.gpt2.layer_names
        ours = {"wte.weight": sd[PREFIX + "wte.weight"], "wpe.weight": sd[PREFIX + "wpe.weight"],
                "ln_f.weight": sd[PREFIX + "ln_f.weight"], "ln_f.bias": sd[PREFIX + "ln_f.bias"]}
        for layer in range(config.n_layer):
            for name, theirs in zip(names, layer_names(layer)):
                w = sd[theirs]
                ours[f"blocks.{layer}.{name}"] = w.T if w.ndim == 2 else w  # Conv1D (in, out) -> (out, in)
        with torch.device("meta"):
            model = cls(config)
        model = model.to_empty(device=device).to(dtype)
        model.lm_head.weight = model.wte.weight  # to_empty unties: tie again
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(torch.from_numpy(np.ascontiguousarray(ours[name])))
        model.eval().requires_grad_(False)
        return model.compile_decode() if fast else model

    @classmethod
    def from_llama_state_dict(cls, state_dict: Mapping, n_head: int, device=None,
                              dtype=torch.float32, fast: bool = False,
                              **options) -> "CachedDecoder":
        """A Llama-shaped decoder (rotary positions, RMSNorm, SwiGLU, grouped-query attention)
        from ``LlamaForCausalLM`` parameter names: see ``qkv.torch_llama``."""
        from qkv.torch_llama import LlamaCachedDecoder

        return LlamaCachedDecoder.from_llama_state_dict(state_dict, n_head, device, dtype, fast,
                                                        **options)

    def compile_decode(self) -> "CachedDecoder":
        """Turn on the speed paths (``qkv.torch_fast``) for the decode steps of an unpadded batch: a
        step written for one token on a CPU, a CUDA graph of it on a GPU. Same numbers, fewer
        pauses between reading the weights. Returns the model."""
        self.fast = True
        return self

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.wte.weight.dtype

    @property
    def uses_cuda_graph(self) -> bool:
        """Whether ``decode_step`` replays a CUDA graph (``fast``, and the weights are on a GPU)."""
        return self.fast and self.device.type == "cuda"

    @property
    def nbytes(self) -> int:
        """Bytes of all weights (the tied output layer counted once)."""
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def logits(self, ids: torch.Tensor, cache: StaticKVCache | None = None,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        """The model, unchecked: ids (batch, n) at positions i+1 … i+n after the i
        positions in ``cache`` (none without one) -> logits (batch, n, vocab).
        ``mask`` (batch, i + n), for a left-padded batch: 1 for a real token, 0 for
        padding."""
        start, n = (0 if cache is None else cache.length), ids.shape[1]
        if mask is None:
            positions = torch.arange(start, start + n, device=ids.device)  # (n,)
            allowed = None
        else:  # each row's real tokens count their positions from its first one
            positions = padded_positions(mask)[:, start:]  # (batch, n)
            allowed = padded_causal_mask(mask, n)  # (batch, 1, n, i + n)
        x = self.wte(ids) + self.wpe(positions)  # (batch, n, d)
        for layer, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[layer], allowed)
        return self.lm_head(self.ln_f(x))  # (batch, n, vocab)

    # --- the public steps: one check, then the computation -----------------------------------------
    @torch.inference_mode()
    def forward(self, ids, attention_mask=None) -> torch.Tensor:
        """Logits (batch, n, vocab) for every position of ``ids`` (batch, n) or (n,), from scratch;
        ``attention_mask`` (batch, n) marks left padding with 0."""
        ids, mask = self._checked(ids, None, attention_mask)
        return self.logits(ids, None, mask)

    def new_cache(self, batch: int = 1, max_positions: int | None = None) -> StaticKVCache:
        """An empty static cache for up to ``batch`` sequences of up to ``max_positions`` (default:
        the model's n_positions) positions, in this decoder's dtype and on its device."""
        c = self.config
        max_positions = checks.cache_positions(max_positions, c.n_positions)
        return StaticKVCache(c.n_layer, batch, c.n_head, max_positions, c.head_dim, self.dtype,
                             self.device)

    @torch.inference_mode()
    def prefill(self, ids, cache: StaticKVCache, attention_mask=None) -> torch.Tensor:
        """Run the prompt (batch, n) in one pass, writing its keys and values into
        ``cache``; returns logits (batch, n, vocab). ``attention_mask`` (batch, i + n)
        covers the i cached tokens and the new ones."""
        ids, mask = self._checked(ids, cache, attention_mask)
        return self.logits(ids, cache, mask)

    @torch.inference_mode()
    def decode_step(self, token_ids, cache: StaticKVCache,
                    attention_mask=None) -> torch.Tensor:
        """Feed one new token per sequence, (batch,) or (batch, 1); returns next-token
        logits (batch, vocab). Only this position's key and value are computed; the
        earlier ones are read from ``cache``. A padded batch passes its
        ``attention_mask`` (batch, i + 1) at every step, as in Hugging Face."""
        vocab_size = self.config.vocab_size
        ids = checks.one_token_each(token_ids, vocab_size)
        ids, mask = self._checked(ids, cache, attention_mask)
        # The speed paths (qkv.torch_fast) are written without padding; a padded batch
        # takes the lesson path, the same numbers.
        if self.fast and mask is None:
            return self._fast_step(ids[:, 0], cache)
        return self.logits(ids, cache, mask)[:, -1]

    @torch.inference_mode()
    def generate(self, ids, max_new_tokens: int, use_cache: bool = True, temperature: float = 0.0,
                 top_k: int | None = None, seed: int | None = None,
                 cache: StaticKVCache | None = None, attention_mask=None) -> torch.Tensor:
        """The prompt (batch, n) or (n,) followed by ``max_new_tokens`` new tokens: an int64 tensor
        (batch, n + max_new_tokens) on this decoder's device.

        With the cache: one ``prefill``, then one ``decode_step`` per new token. Greedy with
        ``temperature=0``; otherwise samples from softmax(logits / temperature), from the ``top_k``
        likeliest tokens when given, seeded by ``seed``. A ``cache`` may be passed to reuse its
        storage (it is reset first); by default one is built for exactly n + max_new_tokens positions.
        ``attention_mask`` (batch, n): 1 for a real token, 0 for left padding; each row
        then gets the tokens it would get alone, after its padding.
        """
        ids, mask = self._checked(ids, None, attention_mask)
        max_new_tokens = checks.non_negative_int("max_new_tokens", max_new_tokens)
        temperature, top_k, seed = checks.sampling(temperature, top_k, seed)
        (batch, n), total = ids.shape, ids.shape[1] + max_new_tokens
        checks.model_room(0, total, self.config)
        if use_cache and cache is not None:
            checks.cache_room_for(cache, StaticKVCache, self.config.n_layer, batch, n, total)
            checks.cache_place(cache, self.dtype, self.device)
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
        out[:, n] = pick(self.prefill(ids, cache, attention_mask=upto(n))[:, -1])
        for t in range(n + 1, total):
            logits = self.decode_step(out[:, t - 1], cache, attention_mask=upto(t))
            out[:, t] = pick(logits)
        return out

    # this model's decode steps in qkv.torch_fast: written for one token, and graphable
    _FAST_STEPS = ("decode_eager", "decode_static")

    def _fast_step(self, token: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        from qkv import torch_fast

        eager, static = (getattr(torch_fast, name) for name in self._FAST_STEPS)
        if not self.uses_cuda_graph:
            return eager(self, token, cache)
        if self._graph is None or not self._graph.fits(cache, token.shape[0]):
            self._graph = torch_fast.GraphedDecodeStep(self, cache, token.shape[0], static)
        return self._graph(token).clone()  # the replay's output is overwritten by the next

    def _checked(self, ids, cache: StaticKVCache | None, attention_mask=None):
        """ids as a (batch, n) int64 tensor on this decoder's device, checked against the vocabulary,
        the cache and the model's length; and the mask over the cache and ids, as a tensor there too,
        or None when there is no padding (all 1s change nothing)."""
        ids = checks.token_ids(ids, self.config.vocab_size)
        start = checks.start_position(cache, StaticKVCache, self.config, *ids.shape)
        if cache is not None:
            checks.cache_place(cache, self.dtype, self.device)
        shape = (ids.shape[0], start + ids.shape[1])
        mask = checks.attention_mask(attention_mask, shape)
        if mask is not None:
            mask = torch.as_tensor(mask, device=self.device)
            if bool(mask.all()):
                mask = None
        return torch.as_tensor(ids, device=self.device), mask


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
