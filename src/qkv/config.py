"""The old home of GPT-2's config: it now lives beside its model, as ``qkv.gpt2.GPT2Config``.

``DecoderConfig`` is kept as another name for it for one release (chapters and notebooks written
before the Llama-shaped models import it from here); new code imports ``qkv.gpt2.GPT2Config``.
"""

from qkv.gpt2 import GPT2Config

DecoderConfig = GPT2Config

__all__ = ["DecoderConfig", "GPT2Config"]
