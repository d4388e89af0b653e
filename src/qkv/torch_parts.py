"""What the torch models share (chapters 7–8): where a step's tokens go, attention over the cache's
slots, and loading weights onto a device.

A step of either model (GPT-2: ``qkv.torch_gpt2``; Llama-shaped: ``qkv.torch_llama``) takes its token
ids and a ``Step``: the cache slots it writes, each token's position, and which slots each query may
read. All three are tensors, so that the same step runs eagerly on a CPU and replays as a CUDA graph
on a GPU (``qkv.torch_decoder``), where no Python value may change between tokens.

Layouts: queries (batch, τ, n, head_dim); keys and values (batch, heads, slots, head_dim) with heads
τ (multi-head) or g = n_kv_heads (grouped-query, g dividing τ).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Step:
    """Where n new tokens of a step go. ``slots`` (n,): the cache slots written, from 0;
    ``positions`` (batch or 1, n): each token's position from 0 (a row's own in a left-padded
    batch); ``allowed`` (batch or 1, 1, n, L) bool: query t may read slot j of the first L slots
    (L = i keys eagerly, every slot of the cache in a CUDA graph)."""

    slots: torch.Tensor
    positions: torch.Tensor
    allowed: torch.Tensor


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           allowed: torch.Tensor) -> torch.Tensor:
    """Softmax(Q Kᵀ/√head_dim + Mask) V for q (batch, τ, n, head_dim) against the first L slots
    of k, v (batch, g, slots, head_dim), g dividing τ, where ``allowed`` (·, 1, n, L) is True.

    The r = τ/g query heads of a group read the same key/value head, so they are stacked as r·n
    query rows of it (the keys are not copied); r = 1 is multi-head attention. Returns like q.
    """
    # To measure on a GPU (none was at hand when the hand-written steps went): the step time of
    # `qkv bench decode --model llama --device cuda` at position 2,048, batch 8, GQA against MHA.
    # The removed graph step wrote this product out for one query, summing weights @ V in 16
    # pieces when r > 1 (it measured 10x the r = 1 time as one product on an H200); bring that
    # back here, for every step, only if it still pays beside this fused kernel.
    b, tau, n, head_dim = q.shape
    g, L = k.shape[1], allowed.shape[-1]
    r = tau // g
    q = q.reshape(b, g, r * n, head_dim)  # query head h (from 0) lands in group h // r
    mask = allowed if r == 1 else allowed.repeat(1, 1, r, 1)  # (·, 1, r·n, L)
    heads = F.scaled_dot_product_attention(q, k[:, :, :L], v[:, :, :L], attn_mask=mask)
    return heads.view(b, tau, n, head_dim)


def pick_device(device=None) -> torch.device:
    """A torch device; ``None`` means CUDA when present, else the CPU. Asking for CUDA where there is
    none is a ValueError that says so, rather than PyTorch's AssertionError at the first tensor."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda', "
                         f"got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "this PyTorch is a CPU-only build" if torch.version.cuda is None else "no GPU is visible"
        raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available ({why}); "
                         "use device='cpu', or device=None to use CUDA only where it is present")
    if device.type == "cuda" and device.index is not None and \
            device.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} asked for, but only {torch.cuda.device_count()} "
                         f"GPU(s) are visible")
    return device


def float_dtype(dtype) -> torch.dtype:
    """torch.float32, bfloat16 or float16, given as a dtype or by name."""
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if isinstance(dtype, str) and dtype in dtypes:
        return dtypes[dtype]
    if dtype in dtypes.values():
        return dtype
    raise ValueError(f"dtype must be one of {sorted(dtypes)}, got {dtype!r}")


def load_module(build: Callable[[], nn.Module], weights: Mapping[str, np.ndarray], device=None,
                dtype=torch.float32, tie: tuple[str, str] | None = None) -> nn.Module:
    """``build()``'s module, made on no device at all, then given storage on ``device`` in
    ``dtype`` and filled from ``weights`` (its parameter names -> arrays); eval mode, no gradients.
    ``tie`` (output, embedding): two parameter paths that share one tensor."""
    device, dtype = pick_device(device), float_dtype(dtype)
    with torch.device("meta"):
        model = build()
    model = model.to_empty(device=device).to(dtype)
    if tie is not None:  # to_empty unties: tie again
        out, embedding = (model.get_submodule(path) for path in tie)
        out.weight = embedding.weight
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(np.ascontiguousarray(weights[name])))
    return model.eval().requires_grad_(False)
