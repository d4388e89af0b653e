"""A GPT-2-shaped decoder in PyTorch with a static KV cache, on CPU or GPU (chapter 6).

The same model as the NumPy ``qkv.reference.Decoder`` (learned positions, pre-LayerNorm, GELU with the tanh
approximation, an output layer tied to the token embedding), loading the same GPT-2 weights, but written
for speed: the keys and values live in a ``StaticKVCache`` written in place, the prompt goes through in one
pass (``prefill``) and each new token in another (``decode_step``), and attention is PyTorch's
``scaled_dot_product_attention``. On a GPU the decode step can be replayed as a CUDA graph
(``cuda_graph=True``) so that launching a few hundred small kernels per token stops dominating.

Layouts: ids (batch, n); hidden states (batch, n, d); per-head tensors (batch, τ, n, d/τ); each layer's cache
(batch, τ, max_positions, d/τ); logits (batch, n, vocab). Positions count from 1 in the course; the position
table and cache slots from 0 here.

Decoding one token is bound by reading every weight once, so how the weights are laid out in memory decides
the speed. Each linear layer is an ``Affine``: x @ W + b on row vectors, W given as (in, out) like GPT-2's
Conv1D. On a GPU (and as the plain fallback) it is one ``addmm`` over contiguous (in, out) weights, which
measured faster than ``F.linear``'s (out, in) for a single row. On a CPU in float32 it prepacks W once into
oneDNN's blocked layout (the kernels ``torch.compile`` uses on CPUs), which streams a one-row product about
1.5–2x faster than the BLAS behind ``addmm``; ``prepack=False`` turns that off.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from qkv.config import DecoderConfig, non_negative_int, positive_int
from qkv.gpt2 import PREFIX, layer_names, read_state_dict
from qkv.torch_cache import LayerKVCache, StaticKVCache

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device=None) -> torch.device:
    """``None`` means CUDA when present, else the CPU. Asking for CUDA where there is none is an error that
    says so here, rather than PyTorch's AssertionError at the first tensor moved there."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda', got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "this PyTorch is a CPU-only build" if torch.version.cuda is None else "no GPU is visible"
        raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available ({why}); "
                         "use device='cpu', or device=None to use CUDA only where it is present")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def as_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        return _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}")
    return dtype


def can_prepack(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether oneDNN prepacking applies: float32 weights on a CPU whose PyTorch build has oneDNN."""
    return device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()


class Affine:
    """One linear layer of row vectors, x ↦ x @ W + b, with W (in, out) as GPT-2 stores it.

    x: (..., in) -> (..., out). With ``prepack`` the weight is kept only in oneDNN's packed layout (built
    from W transposed to (out, in), the layout oneDNN packs from); otherwise W stays (in, out), contiguous.
    """

    def __init__(self, W: torch.Tensor, b: torch.Tensor | None, prepack: bool = False) -> None:
        self.in_features, self.out_features = W.shape
        self.b = b
        self.W: torch.Tensor | None = None
        self._packed: torch.Tensor | None = None
        if prepack:
            # The 1 is the row count oneDNN tunes the packing for: decoding feeds one row per sequence.
            self._packed = torch.ops.mkldnn._reorder_linear_weight(W.t().contiguous(), 1)
        else:
            self.W = W.contiguous()
        self.nbytes = W.numel() * W.element_size() + (0 if b is None else b.numel() * b.element_size())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.b, "none", [], "")
        rows = x.reshape(-1, self.in_features)  # (all leading axes, in)
        y = rows @ self.W if self.b is None else torch.addmm(self.b, rows, self.W)
        return y.view(*x.shape[:-1], self.out_features)


@dataclass
class Block:
    """One transformer block's weights."""

    ln_1_g: torch.Tensor
    ln_1_b: torch.Tensor
    qkv: Affine  # W (d, 3d): [W_q | W_k | W_v], each the τ heads' projections side by side
    o: Affine  # W_o (d, d)
    ln_2_g: torch.Tensor
    ln_2_b: torch.Tensor
    fc: Affine  # (d, d_ff)
    out: Affine  # (d_ff, d)


class CachedDecoder:
    """GPT-2 in PyTorch: ``forward`` recomputes everything; ``prefill`` + ``decode_step`` use a static cache."""

    def __init__(self, config: DecoderConfig, wte: torch.Tensor, wpe: torch.Tensor, blocks: list[Block],
                 ln_f_g: torch.Tensor, ln_f_b: torch.Tensor, cuda_graph: bool = False, prepack: bool = False) -> None:
        self.config = config
        self.wte, self.wpe = wte, wpe  # (vocab, d), (n_positions, d)
        # The tied output layer reads wte as a (d, vocab) matrix; it gets its own copy in the fast layout.
        self.lm_head = Affine(wte.t(), None, prepack)
        self.blocks = blocks
        self.ln_f_g, self.ln_f_b = ln_f_g, ln_f_b
        self.cuda_graph = cuda_graph  # ask for the GPU fast path; ignored (eager) on the CPU
        self._graph: _GraphedDecodeStep | None = None

    @classmethod
    def from_gpt2_state_dict(cls, state_dict: Mapping, n_head: int, device=None, dtype=torch.float32,
                             cuda_graph: bool = False, prepack: bool | None = None, *,
                             n_layer: int | None = None) -> "CachedDecoder":
        """Build from GPT-2 parameter names (as in ``GPT2LMHeadModel.state_dict()``) mapped to NumPy arrays
        or torch tensors, in GPT-2's Conv1D layout (in, out).

        τ = ``n_head`` cannot be read from the weights; ``n_layer`` may be given to catch a missing last
        block. Every problem with the tensors is named in one ValueError (see ``qkv.gpt2.read_state_dict``).
        ``device=None`` picks CUDA when present; ``dtype`` is float32, or bfloat16/float16 (meant for a GPU).
        ``prepack=None`` prepacks the linear weights for oneDNN where that applies (float32 on a CPU);
        ``cuda_graph=True`` replays the decode step as a CUDA graph on a GPU.
        """
        config, sd = read_state_dict(state_dict, n_head, n_layer)
        device, dtype = pick_device(device), as_dtype(dtype)
        if prepack is None:
            prepack = can_prepack(device, dtype)
        elif prepack and not can_prepack(device, dtype):
            raise ValueError(f"prepack=True needs float32 weights on a CPU with oneDNN; got {dtype} on {device}")

        def get(name: str) -> torch.Tensor:
            value = sd[name]
            t = value.detach() if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
            return t.to(device=device, dtype=dtype).contiguous()

        blocks = []
        for layer in range(config.n_layer):
            w = [get(n) for n in layer_names(layer)]  # ln_1 g, b; c_attn W, b; c_proj W, b; ln_2 g, b; c_fc…
            blocks.append(Block(w[0], w[1], Affine(w[2], w[3], prepack), Affine(w[4], w[5], prepack),
                                w[6], w[7], Affine(w[8], w[9], prepack), Affine(w[10], w[11], prepack)))
        return cls(config, get(PREFIX + "wte.weight"), get(PREFIX + "wpe.weight"), blocks,
                   get(PREFIX + "ln_f.weight"), get(PREFIX + "ln_f.bias"), cuda_graph=cuda_graph, prepack=prepack)

    @property
    def device(self) -> torch.device:
        return self.wte.device

    @property
    def dtype(self) -> torch.dtype:
        return self.wte.dtype

    @property
    def uses_cuda_graph(self) -> bool:
        """Whether ``decode_step`` really replays a CUDA graph (asked for, and the weights are on a GPU)."""
        return bool(self.cuda_graph) and self.device.type == "cuda"

    @property
    def nbytes(self) -> int:
        """Bytes of all weights (the tied output layer counted once, though it is stored twice)."""
        tensors = [self.wte, self.wpe, self.ln_f_g, self.ln_f_b]
        tensors += [t for b in self.blocks for t in (b.ln_1_g, b.ln_1_b, b.ln_2_g, b.ln_2_b)]
        layers = [a for b in self.blocks for a in (b.qkv, b.o, b.fc, b.out)]
        return sum(t.numel() * t.element_size() for t in tensors) + sum(a.nbytes for a in layers)

    # --- input checks ---------------------------------------------------------------------------
    def _check_ids(self, ids, name: str = "ids") -> torch.Tensor:
        """ids as a (batch, n) int64 tensor on this decoder's device; (n,) becomes a batch of one."""
        if isinstance(ids, torch.Tensor):
            t = ids.detach()
        else:
            arr = np.asarray(ids)
            if arr.dtype == object:
                raise TypeError(f"{name} must be integer token ids, got dtype {arr.dtype}")
            t = torch.from_numpy(np.ascontiguousarray(arr)) if arr.size else torch.zeros(arr.shape, dtype=torch.int64)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            if t.is_floating_point() and bool(torch.all(t == torch.round(t))):
                t = t.long()
            else:
                raise TypeError(f"{name} must be integer token ids, got dtype {t.dtype}")
        if t.ndim == 1:
            t = t[None, :]
        if t.ndim != 2:
            raise ValueError(f"{name} must have shape (batch, n) or (n,); got shape {tuple(t.shape)}")
        if t.shape[1] == 0:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); give at least one token")
        bad = (t < 0) | (t >= self.config.vocab_size)
        if bool(bad.any()):
            where = tuple(int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(
                f"{name} holds token id {int(t[where])} at index {where}, outside the vocabulary "
                f"[0, {self.config.vocab_size})"
            )
        return t.to(device=self.device, dtype=torch.int64)

    def _check_token_ids(self, token_ids) -> torch.Tensor:
        """One new token per sequence: (batch,), or (batch, 1) as sliced off a (batch, n) tensor; as (batch, 1)."""
        t = token_ids if isinstance(token_ids, torch.Tensor) else np.asarray(token_ids)
        if t.ndim == 1 or (t.ndim == 2 and t.shape[1] == 1):
            return self._check_ids(t.reshape(-1, 1), "token_ids")
        raise ValueError(f"token_ids must hold one token per sequence, shape (batch,) or (batch, 1); "
                         f"got shape {tuple(t.shape)}")

    def _check_room(self, start: int, n: int, limit: int | None = None, what: str = "") -> None:
        limit = self.config.n_positions if limit is None else limit
        if start + n > limit:
            where = what or f"the maximum length n_positions={self.config.n_positions} of this model"
            raise ValueError(f"sequence would reach {start + n} positions, past {where}")

    def _check_cache_kind(self, cache) -> None:
        if not isinstance(cache, StaticKVCache) or len(cache) != self.config.n_layer:
            raise ValueError(f"cache must be a StaticKVCache of {self.config.n_layer} layers; "
                             f"use decoder.new_cache(batch)")
        if cache.dtype != self.dtype or cache.device != self.device:
            raise ValueError(f"the cache holds {cache.dtype} on {cache.device} but this decoder computes in "
                             f"{self.dtype} on {self.device}; use decoder.new_cache(batch)")

    def _check_cache(self, cache, batch: int, n: int) -> int:
        self._check_cache_kind(cache)
        if batch > cache.max_batch:
            raise ValueError(f"a batch of {batch} sequences is larger than the batch of {cache.max_batch} "
                             f"this cache was built for")
        start = cache.length
        if start and cache.batch != batch:
            raise ValueError(f"the cache holds a batch of {cache.batch} sequences; got {batch}")
        self._check_room(start, n)
        self._check_room(start, n, cache.max_positions, f"the cache's max_positions={cache.max_positions}")
        return start

    def _check_cache_fits(self, cache, batch: int, n: int, total: int) -> None:
        """Before generating into a given cache: will the whole run fit? (Otherwise it fails part-way.)"""
        self._check_cache_kind(cache)
        short = []
        if cache.max_positions < total:
            short.append(f"{total} positions (prompt {n} + {total - n} new tokens) but it has room for "
                         f"{cache.max_positions}")
        if cache.max_batch < batch:
            short.append(f"a batch of {batch} sequences but it was built for {cache.max_batch}")
        if short:
            raise ValueError(f"the cache is too small for this generation: it needs {' and '.join(short)}; "
                             f"use decoder.new_cache({batch}, {total})")

    # --- the computation --------------------------------------------------------------------------
    def _split_qkv(self, block: Block, x: torch.Tensor):
        """LayerNorm, then the fused projection: q, k, v each (batch, τ, n, d/τ)."""
        b, n, d = x.shape
        tau = self.config.n_head
        h = F.layer_norm(x, (d,), block.ln_1_g, block.ln_1_b, self.config.layer_norm_eps)
        qkv = block.qkv(h)  # (batch, n, 3d)
        qkv = qkv.view(b, n, 3, tau, d // tau).permute(2, 0, 3, 1, 4)  # (3, batch, τ, n, d/τ)
        return qkv[0], qkv[1], qkv[2]

    def _finish_block(self, block: Block, x: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """Merge the heads (batch, τ, n, d/τ), project, add; then the MLP sub-layer."""
        b, n, d = x.shape
        x = x + block.o(heads.transpose(1, 2).reshape(b, n, d))  # (batch, n, d)
        h = F.layer_norm(x, (d,), block.ln_2_g, block.ln_2_b, self.config.layer_norm_eps)
        h = F.gelu(block.fc(h), approximate="tanh")  # (batch, n, d_ff)
        return x + block.out(h)

    def _block(self, block: Block, x: torch.Tensor, cache: LayerKVCache | None, start: int) -> torch.Tensor:
        q, k, v = self._split_qkv(block, x)
        if cache is not None:
            k, v = cache.update(k, v)  # K_{≤i}, V_{≤i}: (batch, τ, i, d/τ)
        n, i = q.shape[-2], k.shape[-2]
        if n == 1:  # one new query sees every cached key: no mask at all
            heads = F.scaled_dot_product_attention(q, k, v)
        elif i == n:  # a fresh prompt: the plain causal mask
            heads = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # a prompt appended to a filled cache: query row r (position start+r+1) sees slots ≤ start+r
            rows = torch.arange(start, start + n, device=x.device)[:, None]
            mask = torch.arange(i, device=x.device)[None, :] <= rows  # (n, i), True where it may attend
            heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self._finish_block(block, x, heads)  # heads: (batch, τ, n, d/τ)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, (x.shape[-1],), self.ln_f_g, self.ln_f_b, self.config.layer_norm_eps)
        return self.lm_head(x)  # tied output embedding: (batch, n, vocab)

    def _run(self, ids: torch.Tensor, start: int, cache: StaticKVCache | None, last_only: bool = False):
        n = ids.shape[1]
        x = F.embedding(ids, self.wte) + self.wpe[start : start + n]  # (batch, n, d); positions start+1 … start+n
        for layer, block in enumerate(self.blocks):
            x = self._block(block, x, None if cache is None else cache[layer], start)
        return self._logits(x[:, -1:] if last_only else x)

    def _decode_static(self, token: torch.Tensor, position: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """One decode step with its position as a tensor (shape (1,), from 0) and no Python-side branching,
        so that a CUDA graph can capture it. token: (batch,); returns logits (batch, vocab).

        It attends over all max_positions slots, masking those after ``position``; the eager path slices
        the cache instead, which does less work but changes shapes every step."""
        x = F.embedding(token[:, None], self.wte) + F.embedding(position, self.wpe)  # (batch, 1, d)
        slots = torch.arange(cache.max_positions, device=x.device)
        mask = (slots <= position)[None, None, None, :]  # (1, 1, 1, max_positions)
        for layer, block in enumerate(self.blocks):
            q, k, v = self._split_qkv(block, x)
            K, V = cache[layer].write_at(position, k, v)  # (batch, τ, max_positions, d/τ)
            heads = F.scaled_dot_product_attention(q, K, V, attn_mask=mask)
            x = self._finish_block(block, x, heads)
        return self._logits(x)[:, 0]

    # --- the public steps ---------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, ids) -> torch.Tensor:
        """Logits (batch, n, vocab) for every position of ``ids`` (batch, n) or (n,), computed from scratch."""
        ids = self._check_ids(ids)
        self._check_room(0, ids.shape[1])
        return self._run(ids, 0, None)

    def new_cache(self, batch: int = 1, max_positions: int | None = None) -> StaticKVCache:
        """An empty static cache for up to ``batch`` sequences of up to ``max_positions`` (default: the
        model's n_positions) positions, in this decoder's dtype and on its device."""
        batch = positive_int("batch", batch)
        max_positions = self.config.n_positions if max_positions is None else max_positions
        if isinstance(max_positions, bool) or not isinstance(max_positions, (int, np.integer)) or \
                not 1 <= max_positions <= self.config.n_positions:
            raise ValueError(f"max_positions must be an int in [1, n_positions={self.config.n_positions}], "
                             f"got {max_positions!r}")
        c = self.config
        return StaticKVCache(c.n_layer, batch, c.n_head, int(max_positions), c.head_dim, self.dtype, self.device)

    @torch.inference_mode()
    def prefill(self, ids, cache: StaticKVCache, last_only: bool = False) -> torch.Tensor:
        """Run the prompt (batch, n) in one pass, writing its keys and values into ``cache``.

        Returns logits (batch, n, vocab), or (batch, 1, vocab) for the last position with ``last_only``."""
        ids = self._check_ids(ids)
        start = self._check_cache(cache, ids.shape[0], ids.shape[1])
        return self._run(ids, start, cache, last_only)

    @torch.inference_mode()
    def decode_step(self, token_ids, cache: StaticKVCache) -> torch.Tensor:
        """Feed one new token per sequence, token_ids (batch,) or (batch, 1); returns next-token logits
        (batch, vocab).

        Only this position's key and value are computed; the earlier ones are read from ``cache``."""
        ids = self._check_token_ids(token_ids)
        return self._decode(ids[:, 0], cache).clone()

    def _decode(self, token: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """decode_step without the input checks on the token values (generate's hot loop)."""
        start = self._check_cache(cache, token.shape[0], 1)
        if not self.uses_cuda_graph:
            return self._run(token[:, None], start, cache)[:, 0]
        if self._graph is None or not self._graph.fits(cache, token.shape[0]):
            self._graph = _GraphedDecodeStep(self, cache, token.shape[0])
        return self._graph(token, start)

    # --- generation ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, ids, max_new_tokens: int, use_cache: bool = True, temperature: float = 0.0,
                 top_k: int | None = None, seed: int | None = None, cache: StaticKVCache | None = None):
        """Prompt (batch, n) or (n,) followed by ``max_new_tokens`` new tokens: an int64 tensor
        (batch, n + max_new_tokens) on this decoder's device.

        Greedy with ``temperature=0``; otherwise samples from softmax(logits / temperature), restricted to the
        ``top_k`` likeliest tokens when given, with a generator seeded by ``seed`` (same seed, same tokens).
        ``use_cache=False`` recomputes the whole prefix at every step. A ``cache`` may be passed to reuse its
        storage (it is reset first); by default one is built for exactly n + max_new_tokens positions.
        """
        ids = self._check_ids(ids)
        max_new_tokens = non_negative_int("max_new_tokens", max_new_tokens)
        if not isinstance(temperature, (int, float)) or temperature < 0:
            raise ValueError(f"temperature must be a number ≥ 0, got {temperature!r}")
        if top_k is not None:
            top_k = positive_int("top_k", top_k)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int or None, got {seed!r} (of type {type(seed).__name__})")
        batch, n = ids.shape
        total = n + max_new_tokens
        self._check_room(0, total)
        if use_cache and cache is not None:
            self._check_cache_fits(cache, batch, n, total)
        out = torch.empty((batch, total), dtype=torch.int64, device=self.device)
        out[:, :n] = ids
        if max_new_tokens == 0:
            return out
        generator = None
        if temperature > 0:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(int(seed)) if seed is not None else generator.seed()
        pick = lambda logits: _next_token(logits, temperature, top_k, generator)  # noqa: E731

        if not use_cache:
            for t in range(n, total):
                out[:, t] = pick(self._run(out[:, :t], 0, None, last_only=True)[:, 0])
            return out
        if cache is None:
            cache = self.new_cache(batch, total)
        else:
            cache.reset()
        out[:, n] = pick(self.prefill(ids, cache, last_only=True)[:, 0])
        for t in range(n + 1, total):
            out[:, t] = pick(self._decode(out[:, t - 1], cache))
        return out


def _next_token(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits (batch, vocab) -> token ids (batch,): argmax, or a sample at ``temperature``."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (batch, 1): the k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


class _GraphedDecodeStep:
    """The decode step captured once as a CUDA graph, then replayed: one launch per token instead of a few
    hundred. Bound to one cache and one batch size (a graph replays fixed addresses); inputs are copied into
    its static tensors, and the returned logits are overwritten by the next replay."""

    def __init__(self, decoder: CachedDecoder, cache: StaticKVCache, batch: int) -> None:
        self.decoder, self.cache, self.batch = decoder, cache, batch
        self.token = torch.zeros(batch, dtype=torch.int64, device=decoder.device)
        self.position = torch.zeros(1, dtype=torch.int64, device=decoder.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def fits(self, cache: StaticKVCache, batch: int) -> bool:
        return cache is self.cache and batch == self.batch

    def _capture(self) -> None:
        # Warm up on a side stream (as CUDA graphs require); these runs write the same k, v the replay will.
        side = torch.cuda.Stream(device=self.decoder.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.decoder._decode_static(self.token, self.position, self.cache)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self.decoder._decode_static(self.token, self.position, self.cache)

    def __call__(self, token: torch.Tensor, start: int) -> torch.Tensor:
        self.token.copy_(token)
        self.position.fill_(start)
        if self.graph is None:
            self._capture()
        self.graph.replay()
        for layer_cache in self.cache.layers:
            layer_cache.advance(1, self.batch)
        return self.logits
