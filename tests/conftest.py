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


# `make test` runs the files on two processes (pytest-xdist, `--dist loadfile`, one file on one process,
# in the order collected). The longest files go first, so that the last file to start is a short one and
# neither process waits long for the other at the end. Within a file the order is kept as written.
LONGEST_FIRST = ["test_scale_stops.py", "test_scale.py", "test_grading.py", "test_exchange.py", "test_limits.py", "test_site.py",
                 "test_learner_path.py", "test_trust.py", "test_misconceptions.py", "test_feedback.py",
                 "test_hostile.py", "test_loops.py", "test_grade_usage.py", "test_manual_grading.py",
                 "test_check.py", "test_report.py", "test_release.py"]


def pytest_collection_modifyitems(items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # sort is stable
