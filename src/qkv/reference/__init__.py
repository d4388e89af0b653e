"""The NumPy reference of the course (chapters 1–5, no torch): attention, heads, caches, a decoder.

Every formula in the book is computed here; the torch decoder and the exercises are checked against it.
"""

from qkv.reference.cache import CumulativeAverageMemory, KVCache, WindowKVCache
from qkv.reference.decoder import Decoder, gelu, layer_norm
from qkv.reference.heads import merge_heads, multi_head_attention, split_heads
from qkv.reference.llama_decoder import LlamaDecoder, rms_norm
from qkv.reference.qkv_attention import (attention, attention_weights, causal_mask, softmax,
                                         weighted_average)
from qkv.reference.rope import rope, rope_angles, rotate_half

__all__ = [
    "softmax", "weighted_average", "attention_weights", "attention", "causal_mask",
    "split_heads", "merge_heads", "multi_head_attention",
    "KVCache", "WindowKVCache", "CumulativeAverageMemory",
    "Decoder", "layer_norm", "gelu",
    "rope", "rope_angles", "rotate_half", "LlamaDecoder", "rms_norm",
]
