"""qkv bench decode --model llama: the Llama-shaped decoders beside Hugging Face, and what GQA saves.

A Llama-shaped model of about GPT-2 small's size (``LlamaConfig.gpt2_small_size``: 12 layers of width
768, τ = 12 query heads, n_kv_heads = τ/4 = 3, 2,048 positions), random weights from Hugging Face's own
initialisation, loaded into our torch and NumPy decoders. For each batch, in one run:

- decode tokens/s of torch ``CachedDecoder``, NumPy ``Decoder`` (float32) and Hugging Face
  ``LlamaForCausalLM.generate`` with its cache, after a long prompt. Only the N − 1 decode
  steps are counted, from the first new token to the last (HF's clocked by a logits processor that reads the time): the prefill is the same
  matrix products for everyone, and would hide the steps;
- one decode step at the last position (2,048 by default) with a full cache, for the GQA model and
  the same model with n_kv_heads = τ (MHA). The cache is filled with random keys and values through
  its own ``update`` (a step's time does not depend on what they hold), so no 2,047-token prefill is
  needed. The two models' steps are interleaved, best of max(repeats, 5) each.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qkv import checks
from qkv.llama import LlamaConfig


@dataclass(frozen=True)
class DecodeRow:
    """Decode tokens/s at one batch size (steps only; see the module docstring)."""

    batch: int
    prompt: int
    new_tokens: int
    torch_tps: float
    numpy_tps: float | None
    hf_tps: float


@dataclass(frozen=True)
class StepRow:
    """Milliseconds of one decode step at ``position`` with a full cache, GQA beside MHA."""

    backend: str
    batch: int
    position: int
    gqa_ms: float
    mha_ms: float
    gqa_cache_mib: float
    mha_cache_mib: float


def hf_config(config: LlamaConfig):
    """The same shape as a Hugging Face ``LlamaConfig`` (the tests and this benchmark compare
    against ``LlamaForCausalLM``), with no end-of-text token, so that its ``generate`` never stops
    early."""
    from transformers import LlamaConfig as HFLlamaConfig

    return HFLlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.n_embd, intermediate_size=config.d_ff,
        num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
        num_key_value_heads=config.n_kv_heads, max_position_embeddings=config.n_positions,
        rms_norm_eps=config.rms_norm_eps, rope_theta=config.rope_base,
        tie_word_embeddings=config.tie_word_embeddings, attention_bias=False, mlp_bias=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None)  # greedy runs to the end


def _hf_model(config: LlamaConfig, seed: int):
    import torch
    from transformers import LlamaForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(seed)
    return LlamaForCausalLM(hf_config(config)).eval()


def _sync(device: str) -> None:
    """Wait for the GPU's queued work, so that a clock reading after it counts it."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _ours(state_dict, config: LlamaConfig, backend: str, device: str = "cpu"):
    if backend == "numpy":
        from qkv.reference import Decoder

        sd = {k: v.float().numpy() for k, v in state_dict.items()}
        return Decoder.from_llama_state_dict(sd, n_head=config.n_head, dtype=np.float32,
                                             n_positions=config.n_positions)
    from qkv.torch_decoder import CachedDecoder

    return CachedDecoder.from_llama_state_dict(state_dict, n_head=config.n_head, device=device,
                                               fast=True, n_positions=config.n_positions)


def _ours_steps(model, ids: np.ndarray, new_tokens: int, device: str = "cpu") -> float:
    """Seconds of our decoder's N − 1 decode steps after the prompt: the loop of ``generate``,
    with the clock started after the prefill."""
    cache = model.new_cache(ids.shape[0], ids.shape[1] + new_tokens)
    token = model.prefill(ids, cache)[:, -1].argmax(-1)
    _sync(device)
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        token = model.decode_step(token, cache).argmax(-1)
    _sync(device)
    return time.perf_counter() - start


class _StepClock:
    """A logits processor that only reads the clock: Hugging Face's ``generate`` calls it once
    per new token, after the prefill and after each decode step."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores):
        self.stamps.append(time.perf_counter())
        return scores


def decode_row(config: LlamaConfig, batch: int, prompt: int, new_tokens: int, repeats: int,
               numpy: bool, seed: int = 0, device: str = "cpu") -> DecodeRow:
    """Tokens/s of N − 1 decode steps after a prompt (the prefill not counted), best of
    ``repeats``, for HF ``generate`` (clocked by a logits processor), torch and NumPy."""
    import torch
    from transformers import LogitsProcessorList

    hf = _hf_model(config, seed)
    sd = {k: v.detach() for k, v in hf.state_dict().items()}
    hf = hf.to(device)
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, (batch, prompt))
    t_ids = torch.from_numpy(ids).to(device)

    def hf_steps() -> float:
        clock = _StepClock()
        with torch.inference_mode():
            hf.generate(t_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                        do_sample=False, use_cache=True,
                        attention_mask=torch.ones_like(t_ids),
                        logits_processor=LogitsProcessorList([clock]))
        _sync(device)
        return clock.stamps[-1] - clock.stamps[0]

    contenders = {"hf": hf_steps}
    ours_torch = _ours(sd, config, "torch", device)
    contenders["torch"] = lambda: _ours_steps(ours_torch, ids, new_tokens, device)
    if numpy:
        ours_np = _ours(sd, config, "numpy")
        contenders["numpy"] = lambda: _ours_steps(ours_np, ids, new_tokens)
    for run in contenders.values():
        run()  # warm-up
    best = {name: float("inf") for name in contenders}
    for _ in range(repeats):  # interleaved, so a burst of other work hurts all alike
        for name, run in contenders.items():
            best[name] = min(best[name], run())
    tps = {name: batch * (new_tokens - 1) / sec for name, sec in best.items()}
    return DecodeRow(batch, prompt, new_tokens, tps["torch"], tps.get("numpy"), tps["hf"])


def full_cache_step(model, batch: int, position: int, backend: str,
                    device: str = "cpu") -> tuple[Callable[[], float], int]:
    """A decode step at ``position`` (counted from 1) after position − 1 cached positions of
    random keys and values, ready to run again and again: (a function that runs it and
    returns its seconds, the cache's bytes)."""
    c = model.config
    cache = model.new_cache(batch, position)
    rng = np.random.default_rng(0)
    shape = (batch, c.n_kv_heads, position - 1, c.head_dim)
    for layer in range(c.n_layer):
        k = rng.standard_normal(shape, dtype=np.float32)
        if backend == "torch":  # the static cache is written at slots given as data, then counted
            import torch

            cache[layer].update(cache.slots(position - 1), *[torch.from_numpy(k).to(device)] * 2)
        else:
            cache[layer].update(k, k)
    if backend == "torch":
        cache.advance(position - 1, batch)
    token = np.zeros(batch, dtype=np.int64)

    def step() -> float:
        cache.truncate(position - 1)
        _sync(device)
        start = time.perf_counter()
        model.decode_step(token, cache)
        _sync(device)
        return time.perf_counter() - start

    step()  # warm-up
    return step, cache.nbytes


def step_ms(model, batch: int, position: int, repeats: int, backend: str,
            device: str = "cpu") -> tuple[float, int]:
    """One decode step at ``position`` (counted from 1) after position − 1 cached positions of
    random keys and values; returns (milliseconds, the cache's bytes)."""
    step, nbytes = full_cache_step(model, batch, position, backend, device)
    return 1e3 * min(step() for _ in range(max(repeats, 3))), nbytes


def step_row(config: LlamaConfig, backend: str, batch: int, position: int,
             repeats: int, device: str = "cpu") -> StepRow:
    """The GQA model's step beside the MHA model's, the two interleaved (best of
    max(repeats, 5) each), so that a burst of other work on the machine hurts both alike."""
    from dataclasses import replace

    device = device if backend == "torch" else "cpu"
    steps, nbytes = {}, {}
    for name, g in (("gqa", config.n_kv_heads), ("mha", config.n_head)):
        shape = replace(config, n_kv_heads=g)
        hf = _hf_model(shape, 0)
        model = _ours({k: v.detach() for k, v in hf.state_dict().items()}, shape, backend,
                      device)
        del hf
        steps[name], nbytes[name] = full_cache_step(model, batch, position, backend, device)
    best = {name: float("inf") for name in steps}
    for _ in range(max(repeats, 5)):
        for name, step in steps.items():
            best[name] = min(best[name], step())
    mib = 2.0**20
    return StepRow(backend, batch, position, 1e3 * best["gqa"], 1e3 * best["mha"],
                   nbytes["gqa"] / mib, nbytes["mha"] / mib)


def format_tables(decode: list[DecodeRow], steps: list[StepRow], config: LlamaConfig,
                  device: str = "cpu") -> str:
    where = "CPU" if device == "cpu" else f"torch and HF on {device}, NumPy on the CPU"
    lines = [f"qkv bench decode --model llama: {config.n_layer} layers, width {config.n_embd}, "
             f"τ={config.n_head} query heads, n_kv_heads={config.n_kv_heads}, "
             f"{config.n_positions} positions, float32, {where}, {os.cpu_count()} CPU cores",
             "decode steps only (the prefill not counted), tokens/s:",
             f"  {'batch':>5} {'prompt':>6} {'new':>4} {'torch':>9} {'numpy':>9} {'HF':>9} "
             f"{'torch/HF':>8} {'numpy/HF':>8}"]
    lines += [format_decode_row(r) for r in decode]
    lines.append("one decode step with a full cache, ms (GQA beside the same model with "
                 "n_kv_heads = τ):")
    lines.append(f"  {'backend':>7} {'batch':>5} {'position':>8} {'GQA':>8} {'MHA':>8} "
                 f"{'GQA/MHA':>8} {'cache GQA':>10} {'cache MHA':>10}")
    lines += [format_step_row(s) for s in steps]
    return "\n".join(lines)


def format_decode_row(r: DecodeRow) -> str:
    np_tps = "-" if r.numpy_tps is None else f"{r.numpy_tps:9.1f}"
    np_ratio = "-" if r.numpy_tps is None else f"{r.numpy_tps / r.hf_tps:8.2f}"
    return (f"  {r.batch:>5} {r.prompt:>6} {r.new_tokens:>4} {r.torch_tps:9.1f} "
            f"{np_tps:>9} {r.hf_tps:9.1f} {r.torch_tps / r.hf_tps:8.2f} {np_ratio:>8}")


def format_step_row(s: StepRow) -> str:
    return (f"  {s.backend:>7} {s.batch:>5} {s.position:>8} {s.gqa_ms:8.2f} "
            f"{s.mha_ms:8.2f} {s.gqa_ms / s.mha_ms:8.2f} {s.gqa_cache_mib:7.0f} MiB "
            f"{s.mha_cache_mib:6.0f} MiB")


def main(args: argparse.Namespace) -> int:
    """Run the Llama tables with the options of ``qkv bench decode`` (see ``configure`` there)."""
    config = LlamaConfig.gpt2_small_size()
    batches = [checks.positive_int("batch", b) for b in (args.llama_batch or [1, 8])]
    prompt = checks.positive_int("prompt", args.prompt if args.prompt != 16 else 512)
    new_tokens = args.new_tokens or 32
    if new_tokens < 2:
        raise ValueError("--new-tokens must be at least 2 (the first comes from the prefill)")
    if prompt + new_tokens > config.n_positions:
        raise ValueError(f"prompt {prompt} + new tokens {new_tokens} exceed n_positions="
                         f"{config.n_positions}")
    position = checks.non_negative_int("step position", args.step_position)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(format_tables([], [], config, device).split("\n")[0], flush=True)
    decode = []
    for b in batches:  # each row printed as soon as it is measured: a slow machine shows progress
        decode.append(decode_row(config, b, prompt, new_tokens, args.repeats,
                                 numpy=not args.no_numpy, device=device))
        print(format_decode_row(decode[-1]), flush=True)
    steps = []
    if position:  # --step-position 0 skips the step table
        for backend in ["torch"] + ([] if args.no_numpy else ["numpy"]):
            steps.append(step_row(config, backend, max(batches), position, args.repeats,
                                  device))
            print(format_step_row(steps[-1]), flush=True)
    print("\n" + format_tables(decode, steps, config, device), flush=True)
    return 0
