"""The NumPy reference of the course (chapters 1–5, no torch): attention, heads, caches, a decoder.

Every formula in the book is computed here; the torch decoder and the exercises are checked against it.
"""

from qkv.reference.cache import CumulativeAverageMemory, KVCache, WindowKVCache
from qkv.reference.decoder import Decoder, gelu, layer_norm
from qkv.reference.heads import merge_heads, multi_head_attention, split_heads
from qkv.reference.qkv_attention import (attention, attention_weights, causal_mask, softmax,
                                         weighted_average)

__all__ = [
    "softmax", "weighted_average", "attention_weights", "attention", "causal_mask",
    "split_heads", "merge_heads", "multi_head_attention",
    "KVCache", "WindowKVCache", "CumulativeAverageMemory",
    "Decoder", "layer_norm", "gelu",
]
