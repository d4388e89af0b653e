"""Multi-head attention in the NumPy reference: splitting and merging heads, τ = 1, a loop over heads
written out, and the errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qkv.reference import attention, causal_mask, merge_heads, multi_head_attention, split_heads

FINITE = st.floats(-5, 5, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def rows_and_tau(draw):
    """x of shape (..., n, d) with d = τ · head_dim, and τ."""
    lead = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple))
    tau, head_dim, n = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    return draw(arrays(np.float64, lead + (n, tau * head_dim), elements=FINITE)), tau


@settings(max_examples=60, deadline=None)
@given(rows_and_tau())
def test_merge_undoes_split(args):
    x, tau = args
    heads = split_heads(x, tau)
    *lead, n, d = x.shape
    assert heads.shape == (*lead, tau, n, d // tau)
    np.testing.assert_array_equal(merge_heads(heads), x)


def test_head_h_gets_its_own_slice_of_columns():
    x = np.arange(12.0).reshape(2, 6)  # n = 2 rows of width d = 6
    heads = split_heads(x, 3)  # head h (from 1) gets columns 2(h−1) … 2h−1
    for h in range(1, 4):
        np.testing.assert_array_equal(heads[h - 1], x[:, 2 * (h - 1) : 2 * h])


@pytest.fixture
def weights():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 8))  # (batch, n, d)
    return x, *(rng.normal(size=(8, 8)) / np.sqrt(8) for _ in range(4))


@pytest.mark.parametrize("mask", [None, causal_mask(5)])
def test_one_head_is_single_head_attention_on_the_projections(weights, mask):
    x, W_q, W_k, W_v, W_o = weights
    expected = attention(x @ W_q, x @ W_k, x @ W_v, mask) @ W_o
    np.testing.assert_allclose(multi_head_attention(x, W_q, W_k, W_v, W_o, tau=1, mask=mask), expected,
                               rtol=0, atol=1e-12)


def test_tau_heads_match_a_loop_over_heads(weights):
    """Eq. 2.9–2.11: head h attends with its own d/τ columns of W_q, W_k, W_v; the outputs are concatenated."""
    x, W_q, W_k, W_v, W_o = weights
    tau, dh = 4, 2
    cols = [slice(h * dh, (h + 1) * dh) for h in range(tau)]
    heads = [attention(x @ W_q[:, c], x @ W_k[:, c], x @ W_v[:, c], causal_mask(5)) for c in cols]
    expected = np.concatenate(heads, axis=-1) @ W_o
    got = multi_head_attention(x, W_q, W_k, W_v, W_o, tau=tau, mask=causal_mask(5))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert not np.allclose(got, multi_head_attention(x, W_q, W_k, W_v, W_o, tau=1, mask=causal_mask(5)))


def test_numpy_int_tau_is_accepted(weights):
    x, *W = weights
    np.testing.assert_array_equal(multi_head_attention(x, *W, tau=np.int64(2)), multi_head_attention(x, *W, tau=2))
    np.testing.assert_array_equal(split_heads(x, np.int32(4)), split_heads(x, 4))


# --- bad input: an error that names the argument and what it saw --------------------------------------
@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda x, W: split_heads(x, 3), ValueError, ["d=8", "not divisible by tau=3"]),
        (lambda x, W: split_heads(x[0, 0], 2), ValueError, ["x", "at least 2 axes", "(8,)"]),
        (lambda x, W: split_heads(x, 0), ValueError, ["tau", "positive int"]),
        (lambda x, W: split_heads(x, True), TypeError, ["tau", "positive int", "bool"]),
        (lambda x, W: split_heads(x, 2.0), TypeError, ["tau", "positive int", "float"]),
        (lambda x, W: merge_heads(x[0]), ValueError, ["x", "at least 3 axes", "(..., τ, n, d/τ)", "(5, 8)"]),
        (lambda x, W: multi_head_attention(x, *W, tau=3), ValueError, ["tau=3", "do not divide", "d=8"]),
        (lambda x, W: multi_head_attention(x[0, 0], *W, tau=2), ValueError, ["x", "at least 2 axes"]),
        (lambda x, W: multi_head_attention(x, W[0][:4], *W[1:], tau=2), ValueError, ["W_q", "(8, 8)", "(4, 8)"]),
        (lambda x, W: multi_head_attention(x, *W[:3], W[3][:, :4], tau=2), ValueError, ["W_o", "(8, 4)"]),
        (lambda x, W: multi_head_attention(x, *W, tau=True), TypeError, ["tau", "bool"]),
    ],
)
def test_bad_input_raises_a_clear_error(weights, call, error, words):
    x, *W = weights
    with pytest.raises(error) as info:
        call(x, W)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value!s}"
