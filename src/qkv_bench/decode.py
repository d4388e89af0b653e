"""qkv bench decode: how fast the course's decoders generate, beside Hugging Face GPT-2, in one run.

Measured side by side, on the same random weights: tokens/s of our decoder with its KV cache and without it
(recomputing the whole prefix every step), tokens/s of Hugging Face ``GPT2LMHeadModel.generate`` with its
cache, the ratio ours/HF, the time of one decode step at positions 128, 512 and 1024, and how close the
cached decoder comes to the memory-bandwidth bound. That bound: decoding one token must read every weight
once plus the cached keys and values so far, so no step can be faster than those bytes over the memory
bandwidth, which is measured in the same run by copying a large tensor.

``--backend torch`` (the default) times ``qkv.torch_decoder.CachedDecoder``; ``--backend numpy`` times the
NumPy reference ``qkv.reference.Decoder`` in float32. ``--preset`` picks the model shape and may be given more
than once, e.g. ``--preset toy --preset gpt2-small`` for one table per shape in the same run. The function
``measure`` returns the same numbers as a dict (the book's chapter 8 calls it with the small preset).

The torch decoder runs its one decode step (the lesson's) eagerly on a CPU; on a GPU ``fast=True`` replays
it as a CUDA graph, and ``--plain`` times it eagerly there too. With CUDA graphs a decode step has fixed
shapes, so it attends over every slot of the static cache, masking the ones not yet written: each step
reads the whole cache, whatever its position. The bound then counts those bytes, and the table's title
says so.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from qkv import checks
from qkv.gpt2 import GPT2Config, random_state_dict
from qkv_bench._timing import best_time, copy_bandwidth, synchronizer

DEFAULT_PRESET = "gpt2-small"
DEFAULT_POSITIONS = (128, 512, 1024)
DEFAULT_NEW_TOKENS = 256


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["torch", "numpy"], default="torch",
                        help="which of our decoders to time (default: torch)")
    parser.add_argument("--preset", choices=["toy", "small", "gpt2-small"], action="append",
                        help="model shape; repeat it for one table per shape (default: gpt2-small, 124M "
                             "parameters, random weights)")
    parser.add_argument("--batch", type=int, default=1, help="prompts decoded together (default: 1)")
    parser.add_argument("--prompt", type=int, default=16, help="prompt length in tokens (default: 16)")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help=f"tokens to generate (default: {DEFAULT_NEW_TOKENS}, or as many as a smaller preset's "
                             "positions leave after the prompt)")
    parser.add_argument("--uncached-tokens", type=int, default=32,
                        help="tokens the uncached decoder generates (it is slow; default: 32)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: CUDA if present)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="weights and cache dtype for the torch backend (default: float32)")
    parser.add_argument("--plain", action="store_true",
                        help="on a GPU, run the decode step eagerly instead of as a CUDA graph (fast=False)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement; the fastest counts")
    parser.add_argument("--no-hf", action="store_true", help="skip Hugging Face (then no ratio ours/HF)")
    parser.add_argument("--model", choices=["gpt2", "llama"], default="gpt2",
                        help="gpt2 (default): the tables above; llama: the Llama-shaped decoders "
                             "beside HF LlamaForCausalLM, and GQA against MHA (qkv_bench.decode_llama)")
    parser.add_argument("--llama-batch", type=int, action="append",
                        help="with --model llama: a batch to time; repeat it (default: 1 and 8)")
    parser.add_argument("--step-position", type=int, default=2048,
                        help="with --model llama: the position of the timed step (default: 2048)")
    parser.add_argument("--no-numpy", action="store_true",
                        help="with --model llama: time the torch decoder and HF only")


def main(args: argparse.Namespace) -> int:
    if args.model == "llama":
        from qkv_bench import decode_llama

        try:
            return decode_llama.main(args)
        except (ValueError, TypeError, ImportError) as exc:
            print(f"qkv bench decode: {exc}", file=sys.stderr)
            return 2
    presets = args.preset or [DEFAULT_PRESET]
    settings = dict(backend=args.backend, batch=args.batch, prompt=args.prompt,
                    uncached_tokens=args.uncached_tokens, dtype=args.dtype, repeats=args.repeats)

    def new_tokens(preset: str) -> int:
        """--new-tokens as given; by default 256, fewer where a small preset has fewer positions."""
        if args.new_tokens is not None:
            return args.new_tokens
        room = GPT2Config.preset(preset).n_positions - args.prompt
        return min(DEFAULT_NEW_TOKENS, room) if room >= 1 else DEFAULT_NEW_TOKENS  # none: check_settings says so

    try:
        for preset in presets:  # every preset's settings are checked before the first (slow) measurement
            check_settings(preset, new_tokens=new_tokens(preset), **settings)
        for i, preset in enumerate(presets):
            result = measure(preset=preset, device=args.device, fast=not args.plain,
                             hf=not args.no_hf, new_tokens=new_tokens(preset), **settings)
            print(("\n" if i else "") + format_table(result), flush=True)
    except (ValueError, TypeError, ImportError) as exc:
        print(f"qkv bench decode: {exc}", file=sys.stderr)
        return 2
    return 0


# --- the model under test, behind one small interface per backend --------------------------------------
class _TorchBackend:
    name = "torch"

    def __init__(self, state_dict, config: GPT2Config, device, dtype: str, fast: bool) -> None:
        import torch

        from qkv.torch_decoder import CachedDecoder

        self.torch = torch
        self.decoder = CachedDecoder.from_gpt2_state_dict(state_dict, n_head=config.n_head, device=device,
                                                          dtype=dtype, fast=fast)
        self.device = str(self.decoder.device)
        self.element_size = self.decoder.dtype.itemsize
        self.uses_cuda_graph = self.decoder.uses_cuda_graph
        self._cache = None

    def generate(self, ids: np.ndarray, new_tokens: int, use_cache: bool) -> None:
        if use_cache:
            total = ids.shape[1] + new_tokens
            if self._cache is None or self._cache.max_positions != total or self._cache.max_batch != ids.shape[0]:
                self._cache = self.decoder.new_cache(ids.shape[0], total)  # reused across repeats (and graphs)
            self.decoder.generate(ids, new_tokens, cache=self._cache)
        else:
            self.decoder.generate(ids, new_tokens, use_cache=False)

    def step_seconds(self, ids: np.ndarray, positions: list[int], repeats: int) -> dict[int, float]:
        """Seconds of one decode step at each position p (the step that computes k_p, v_p). With a CUDA
        graph every step attends over all max(positions) slots of this cache (masked past p), so an early
        position's time includes reading the whole cache."""
        cache = self.decoder.new_cache(ids.shape[0], max(positions))
        self.decoder.prefill(ids[:, : max(positions) - 1], cache)
        token = self.torch.as_tensor(ids[:, -1], device=self.decoder.device)
        sync, out = synchronizer(self.device), {}
        with self.torch.inference_mode():
            for p in sorted(positions, reverse=True):  # truncate can only shorten the filled cache
                def step() -> None:
                    cache.truncate(p - 1)
                    self.decoder.decode_step(token, cache)
                step()  # warm-up (and, with CUDA graphs, the capture)
                out[p] = best_time(step, max(repeats, 3), sync)
        return dict(sorted(out.items()))


class _NumpyBackend:
    name = "numpy"

    def __init__(self, state_dict, config: GPT2Config) -> None:
        from qkv.reference import Decoder

        self.decoder = Decoder.from_gpt2_state_dict(state_dict, n_head=config.n_head, dtype=np.float32)
        self.device = "cpu"
        self.element_size = 4
        self.uses_cuda_graph = False

    def generate(self, ids: np.ndarray, new_tokens: int, use_cache: bool) -> None:
        self.decoder.generate(ids, new_tokens, use_cache=use_cache)

    def step_seconds(self, ids: np.ndarray, positions: list[int], repeats: int) -> dict[int, float]:
        cache = self.decoder.new_cache(ids.shape[0], max(positions))
        self.decoder.prefill(ids[:, : max(positions) - 1], cache)
        out = {}
        for p in sorted(positions, reverse=True):  # truncate can only shorten the filled cache
            def step() -> None:
                cache.truncate(p - 1)  # forget the positions after p−1: the step writes k_p, v_p again
                self.decoder.decode_step(ids[:, -1], cache)
            step()
            out[p] = best_time(step, max(repeats, 3))
        return dict(sorted(out.items()))


class _HuggingFace:
    """GPT2LMHeadModel of the same shape; its weights (torch's init) are the ones every decoder loads."""

    def __init__(self, config: GPT2Config, device, dtype: str, seed: int) -> None:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel
        from transformers.utils import logging

        logging.set_verbosity_error()  # generate() warns about unset generation flags; not our concern
        self.torch = torch
        torch.manual_seed(seed)
        cfg = GPT2Config(vocab_size=config.vocab_size, n_positions=config.n_positions, n_embd=config.n_embd,
                         n_layer=config.n_layer, n_head=config.n_head, n_inner=config.n_inner,
                         layer_norm_epsilon=config.layer_norm_eps, resid_pdrop=0.0, embd_pdrop=0.0,
                         attn_pdrop=0.0, bos_token_id=config.vocab_size - 1, eos_token_id=config.vocab_size - 1)
        self.model = GPT2LMHeadModel(cfg).eval().to(device=device, dtype=getattr(torch, dtype))
        self.device = device

    def state_dict(self) -> dict:
        return {k: v.detach().float().cpu() for k, v in self.model.state_dict().items()}

    def generate(self, ids: np.ndarray, new_tokens: int) -> None:
        t = self.torch.as_tensor(ids, device=self.device)
        with self.torch.inference_mode():
            self.model.generate(t, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                use_cache=True, pad_token_id=0, attention_mask=self.torch.ones_like(t))


# --- the bound ------------------------------------------------------------------------------------------
def weight_bytes_per_step(config: GPT2Config, batch: int, element_size: int) -> int:
    """Bytes of weights one decode step reads: every block's matrices and vectors, the final LayerNorm, the
    (d, vocab) output layer, and one row of the token and position tables per sequence."""
    d, f = config.n_embd, config.d_ff
    block = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
    return element_size * (config.n_layer * block + 2 * d + d * config.vocab_size + 2 * batch * d)


def cache_bytes_read(config: GPT2Config, batch: int, position: int, element_size: int) -> int:
    """Bytes of keys and values the step at ``position`` reads: k_1…k_p and v_1…v_p in every layer. (A step
    replayed as a CUDA graph reads every slot of its cache: pass the cache's length as ``position``.)"""
    return 2 * config.n_layer * batch * config.n_embd * position * element_size


# --- the measurement ------------------------------------------------------------------------------------
def check_settings(preset: str = DEFAULT_PRESET, backend: str = "torch", batch: int = 1, prompt: int = 16,
                   new_tokens: int = 256, uncached_tokens: int = 32, dtype: str = "float32", repeats: int = 2,
                   positions=None) -> tuple[GPT2Config, list[int]]:
    """The preset's shape and the decode-step positions to time, or a ValueError for settings that cannot run
    (checked before anything is built, so a run over several presets fails fast)."""
    if backend not in ("torch", "numpy"):
        raise ValueError(f"backend must be 'torch' or 'numpy', got {backend!r}")
    config = GPT2Config.preset(preset)
    for name, value in (("batch", batch), ("prompt", prompt), ("new_tokens", new_tokens),
                        ("uncached_tokens", uncached_tokens), ("repeats", repeats)):
        checks.positive_int(name, value)
    if prompt + new_tokens > config.n_positions:
        raise ValueError(f"prompt {prompt} + new tokens {new_tokens} exceed the {preset} model's "
                         f"n_positions={config.n_positions}")
    if backend == "numpy" and dtype != "float32":
        raise ValueError("the numpy backend runs in float32 only")
    if positions is None:
        positions = [p for p in DEFAULT_POSITIONS if p <= config.n_positions] or \
            sorted({max(2, config.n_positions // 4), max(2, config.n_positions // 2), config.n_positions})
    positions = sorted(int(p) for p in positions)
    if positions[0] < 2 or positions[-1] > config.n_positions:
        raise ValueError(f"positions must lie in [2, n_positions={config.n_positions}], got {positions}")
    return config, positions


def measure(preset: str = DEFAULT_PRESET, backend: str = "torch", batch: int = 1, prompt: int = 16,
            new_tokens: int = 256, uncached_tokens: int = 32, device: str | None = None, dtype: str = "float32",
            fast: bool = True, repeats: int = 2, hf: bool = True, positions=None, seed: int = 0) -> dict:
    """Time generation and return the numbers ``qkv bench decode`` prints.

    Keys of the returned dict:
      ``preset``, ``backend``, ``device``, ``dtype``, ``batch``, ``prompt``, ``new_tokens``, ``uncached_tokens``,
      ``n_params``: the run's settings and the model's parameter count;
      ``cached_tokens_per_s``, ``uncached_tokens_per_s``: our decoder with and without its KV cache
      (tokens = batch × new tokens, over the wall time of the whole ``generate`` call, prompt included);
      ``hf_tokens_per_s``: Hugging Face ``generate`` with its cache (None when ``hf`` is False or transformers
      is missing); ``ratio_vs_hf``: cached_tokens_per_s / hf_tokens_per_s (None without HF);
      ``ratio_cached_vs_uncached``: cached over uncached tokens/s (their lengths differ; see uncached_tokens);
      ``step_ms``: {position: milliseconds of one decode step at that position} for ``positions`` (default
      128, 512, 1024, keeping those within the model's n_positions; a quarter, a half and all of n_positions
      when none fit);
      ``bandwidth_GBps``: measured memory bandwidth (large-tensor copy, read + write bytes over time);
      ``bytes_per_token``: average bytes read per generated token (weights + cache so far);
      ``weight_bytes``: bytes of weights read per step;
      ``bound_tokens_per_s``: the bandwidth bound on cached tokens/s; ``bound_fraction``: cached / bound;
      ``cuda_graph``: whether decode steps replayed a CUDA graph (then each step reads every cache slot, and
      ``bytes_per_token`` counts them all).
    """
    config, positions = check_settings(preset, backend, batch, prompt, new_tokens, uncached_tokens, dtype,
                                       repeats, positions)

    if backend == "torch":
        from qkv.torch_parts import pick_device

        device = str(pick_device(device))
    else:
        device = "cpu"
    ref = None
    if hf:
        try:
            ref = _HuggingFace(config, device, dtype, seed)
        except ImportError:
            ref = None
    if ref is not None:
        state_dict = ref.state_dict()
    else:
        state_dict = random_state_dict(config, seed=seed, dtype=np.float32, std=0.02)
    if backend == "numpy":
        state_dict = {k: np.asarray(v, dtype=np.float32) for k, v in state_dict.items()}
        ours = _NumpyBackend(state_dict, config)
    else:
        ours = _TorchBackend(state_dict, config, device, dtype, fast)
    n_params = sum(int(np.prod(v.shape)) for k, v in state_dict.items() if k != "lm_head.weight" and
                   not k.endswith(".attn.bias"))

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config.vocab_size, size=(batch, max(prompt, positions[-1])))
    prompt_ids = ids[:, :prompt]
    uncached_tokens = min(uncached_tokens, new_tokens)
    sync = synchronizer(device)

    # Warm up every contender on a short run (allocations, thread pools, CUDA kernels and graphs).
    ours.generate(prompt_ids, 2, True)
    if ref is not None:
        ref.generate(prompt_ids, 2)
    cached = hf_s = float("inf")
    for _ in range(repeats):  # interleaved, so a burst of load elsewhere hurts both alike
        cached = min(cached, best_time(lambda: ours.generate(prompt_ids, new_tokens, True), 1, sync))
        if ref is not None:
            hf_s = min(hf_s, best_time(lambda: ref.generate(prompt_ids, new_tokens), 1, sync))
    uncached = best_time(lambda: ours.generate(prompt_ids, uncached_tokens, False), 1, sync)
    steps = ours.step_seconds(ids, positions, repeats)
    bandwidth = copy_bandwidth(device)

    # The bound: the prefill reads the weights once; the step at position p reads them plus p cached positions,
    # or, replayed as a CUDA graph, plus every slot of the prompt + new_tokens cache that generate used.
    weights = weight_bytes_per_step(config, batch, ours.element_size)
    slots_read = (lambda p: prompt + new_tokens) if ours.uses_cuda_graph else (lambda p: p)
    bytes_total = weights + sum(weights + cache_bytes_read(config, batch, slots_read(p), ours.element_size)
                                for p in range(prompt + 1, prompt + new_tokens))
    bound_s = bytes_total / bandwidth
    tokens = batch * new_tokens
    cached_tps = tokens / cached
    hf_tps = tokens / hf_s if ref is not None else None
    return {
        "preset": preset, "backend": backend, "device": device, "dtype": dtype, "batch": batch, "prompt": prompt,
        "new_tokens": new_tokens, "uncached_tokens": uncached_tokens, "n_params": n_params,
        "cached_tokens_per_s": cached_tps,
        "uncached_tokens_per_s": batch * uncached_tokens / uncached,
        "hf_tokens_per_s": hf_tps,
        "ratio_vs_hf": cached_tps / hf_tps if hf_tps else None,
        "ratio_cached_vs_uncached": cached_tps / (batch * uncached_tokens / uncached),
        "step_ms": {p: 1e3 * s for p, s in steps.items()},
        "bandwidth_GBps": bandwidth / 1e9,
        "bytes_per_token": bytes_total / tokens,
        "weight_bytes": weights,
        "bound_tokens_per_s": tokens / bound_s,
        "bound_fraction": cached_tps / (tokens / bound_s),
        "cuda_graph": ours.uses_cuda_graph,
    }


def _number(x: float, decimals: int) -> str:
    """``x`` right-aligned in 10 characters with ``decimals`` places, or 3 significant digits below 1, so that
    a small number (the toy preset reaches a tiny fraction of the bound) never prints as 0.0."""
    return f"{x:10.3g}" if 0 < abs(x) < 1 else f"{x:10.{decimals}f}"


def format_table(r: dict) -> str:
    """The result of ``measure`` as the table the command prints."""
    who = "torch CachedDecoder" if r["backend"] == "torch" else "NumPy Decoder"
    rows = [
        (f"{who}, cached", f"{_number(r['cached_tokens_per_s'], 1)} tokens/s"),
        (f"{who}, uncached ({r['uncached_tokens']} new tokens)", f"{_number(r['uncached_tokens_per_s'], 1)} tokens/s"),
    ]
    if r["hf_tokens_per_s"] is not None:
        rows.append(("Hugging Face GPT-2 generate, cached", f"{_number(r['hf_tokens_per_s'], 1)} tokens/s"))
        rows.append(("ratio ours cached / HF cached", f"{_number(r['ratio_vs_hf'], 2)} x"))
    rows.append(("ratio ours cached / ours uncached", f"{_number(r['ratio_cached_vs_uncached'], 2)} x"))
    for p, ms in r["step_ms"].items():
        rows.append((f"decode step at position {p}", f"{_number(ms, 2)} ms"))
    rows += [
        ("memory bandwidth (tensor copy)", f"{_number(r['bandwidth_GBps'], 1)} GB/s"),
        ("bytes read per token (weights + cache)", f"{_number(r['bytes_per_token'] / 1e6, 1)} MB"),
        ("bandwidth bound", f"{_number(r['bound_tokens_per_s'], 1)} tokens/s"),
        ("fraction of the bound reached", f"{_number(100 * r['bound_fraction'], 1)} %"),
    ]
    title = (f"qkv bench decode: backend {r['backend']}, preset {r['preset']} ({r['n_params'] / 1e6:.3g}M "
             f"parameters), {r['device']}, {r['dtype']}, batch {r['batch']}, prompt {r['prompt']}, "
             f"{r['new_tokens']} new tokens, {os.cpu_count()} CPU cores")
    if r.get("cuda_graph"):
        title += ("; CUDA graph: each decode step attends over every cache slot (masked), so step times and "
                  "the bound include reading the whole cache")
    width = max(len(k) for k, _ in rows)
    return "\n".join([title] + [f"  {k:<{width}}  {v}" for k, v in rows])
