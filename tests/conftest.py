import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from qkv.config import DecoderConfig  # noqa: E402
from qkv.gpt2 import random_state_dict  # noqa: E402


@pytest.fixture(scope="session")
def small_config() -> DecoderConfig:
    return DecoderConfig.small()


@pytest.fixture(scope="session")
def small_state_dict(small_config):
    # std 0.5: large enough that greedy decoding visits many different tokens (see random_state_dict).
    return random_state_dict(small_config, seed=0, std=0.5)
