"""qkv: the shared code of the qkv course on queries, keys, values and the KV cache.

``qkv.reference`` is the NumPy reference (no torch); ``qkv.torch_decoder`` is the PyTorch cached decoder.
"""

__version__ = "0.1.0"
