"""The NumPy reference of the course (chapters 1–7, no torch): attention, heads, caches, a decoder.

Every formula in the book is computed here; the torch decoder and the exercises are checked against it.
``Decoder`` decodes either model shape: GPT-2 (``gpt2_decoder.GPT2Model``) or a Llama-shaped one
(``llama_decoder.LlamaModel``), siblings over its one decoding core.
"""

from qkv.reference.cache import CumulativeAverageMemory, DecoderCache, KVCache, WindowKVCache
from qkv.reference.decoder import Decoder, padded_positions
from qkv.reference.gpt2_decoder import GPT2Model, gelu, layer_norm
from qkv.reference.heads import merge_heads, multi_head_attention, split_heads
from qkv.reference.llama_decoder import LlamaModel, rms_norm
from qkv.reference.qkv_attention import (attention, attention_weights, causal_mask, softmax,
                                         weighted_average)
from qkv.reference.rotary import rope, rope_angles, rotate_half

# The old name of the Llama-shaped decoder (kept for one release): ``LlamaDecoder.from_llama_state_dict``
# now builds the one ``Decoder`` over a ``LlamaModel``.
LlamaDecoder = Decoder

__all__ = [
    "softmax", "weighted_average", "attention_weights", "attention", "causal_mask",
    "split_heads", "merge_heads", "multi_head_attention",
    "KVCache", "WindowKVCache", "CumulativeAverageMemory", "DecoderCache",
    "Decoder", "padded_positions", "GPT2Model", "layer_norm", "gelu",
    "rope", "rope_angles", "rotate_half", "LlamaModel", "LlamaDecoder", "rms_norm",
]
