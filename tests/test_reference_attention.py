"""The NumPy reference's attention: the seed's worked example and properties on random shapes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qkv.reference import attention, attention_weights, causal_mask, softmax, weighted_average

FINITE = st.floats(-5, 5, allow_nan=False, allow_infinity=False, width=64)


def test_seed_worked_example():
    # Seed card "Value Vector": values [2,10], [4,0], [8,5] with weights 0.2, 0.7, 0.1.
    out = weighted_average([[2, 10], [4, 0], [8, 5]], [0.2, 0.7, 0.1])
    np.testing.assert_allclose(out, [4.0, 2.5], rtol=0, atol=1e-12)


def test_weighted_average_batched_matches_loop():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(4, 5, 3))
    weights = softmax(rng.normal(size=(4, 5)))
    out = weighted_average(values, weights)
    for b in range(4):
        np.testing.assert_allclose(out[b], sum(weights[b, j] * values[b, j] for j in range(5)), atol=1e-12)


@st.composite
def qkv_arrays(draw, same_n=True):
    lead = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple))
    m, n, d, dv = (draw(st.integers(1, 6)) for _ in range(4))
    if same_n:
        m = n
    q = draw(arrays(np.float64, lead + (m, d), elements=FINITE))
    k = draw(arrays(np.float64, lead + (n, d), elements=FINITE))
    v = draw(arrays(np.float64, lead + (n, dv), elements=FINITE))
    return q, k, v


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 7)), elements=FINITE), FINITE)
def test_softmax_rows_sum_to_one_and_ignore_a_shift(x, c):
    p = softmax(x)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, atol=1e-12)
    assert (p >= 0).all()
    np.testing.assert_allclose(softmax(x + c), p, atol=1e-12)


def test_softmax_is_stable_for_large_scores():
    p = softmax(np.array([1000.0, 1000.0, -1000.0]))
    np.testing.assert_allclose(p, [0.5, 0.5, 0.0], atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(qkv_arrays(same_n=False))
def test_zeroed_values_give_zero_output_and_unchanged_weights(arrs):
    q, k, v = arrs
    zero_v = np.zeros_like(v)
    assert np.array_equal(attention(q, k, zero_v), np.zeros(q.shape[:-1] + v.shape[-1:]))
    # The weights come from q and k alone: one-hot values read them back out, and they are the weights
    # that also average the original values.
    n = k.shape[-2]
    one_hot = np.broadcast_to(np.eye(n), k.shape[:-1] + (n,))
    alpha = attention(q, k, one_hot)
    np.testing.assert_allclose(alpha, attention_weights(q, k), atol=1e-12)
    np.testing.assert_allclose(attention(q, k, v), alpha @ v, atol=1e-10)


@settings(max_examples=60, deadline=None)
@given(qkv_arrays(same_n=False))
def test_zeroed_keys_give_uniform_weights_and_the_mean_value(arrs):
    q, k, v = arrs
    zero_k = np.zeros_like(k)
    n = k.shape[-2]
    np.testing.assert_allclose(attention_weights(q, zero_k), np.full(q.shape[:-1] + (n,), 1.0 / n), atol=1e-12)
    mean = np.broadcast_to(v.mean(axis=-2, keepdims=True), q.shape[:-1] + v.shape[-1:])
    np.testing.assert_allclose(attention(q, zero_k, v), mean, atol=1e-10)


@settings(max_examples=60, deadline=None)
@given(qkv_arrays(same_n=False), st.randoms(use_true_random=False))
def test_permuting_keys_and_values_together_changes_nothing(arrs, rnd):
    q, k, v = arrs
    perm = list(range(k.shape[-2]))
    rnd.shuffle(perm)
    np.testing.assert_allclose(attention(q, k[..., perm, :], v[..., perm, :]), attention(q, k, v), atol=1e-10)


@settings(max_examples=60, deadline=None)
@given(qkv_arrays(same_n=True), st.data())
def test_causal_output_ignores_later_positions(arrs, data):
    q, k, v = arrs
    n = k.shape[-2]
    i = data.draw(st.integers(0, n - 1))  # Python index of a query; position i + 1
    mask = causal_mask(n)
    before = attention(q, k, v, mask)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    k2, v2, q2 = k.copy(), v.copy(), q.copy()
    k2[..., i + 1 :, :] = rng.normal(size=k2[..., i + 1 :, :].shape)
    v2[..., i + 1 :, :] = rng.normal(size=v2[..., i + 1 :, :].shape)
    q2[..., i + 1 :, :] = rng.normal(size=q2[..., i + 1 :, :].shape)
    after = attention(q2, k2, v2, mask)
    np.testing.assert_allclose(after[..., : i + 1, :], before[..., : i + 1, :], atol=1e-12)


def test_causal_mask_matches_the_course_convention():
    m = causal_mask(3)
    # Mask(i, j) = 0 if j <= i, -inf otherwise (positions from 1; rows are queries).
    expected = np.array([[0, -np.inf, -np.inf], [0, 0, -np.inf], [0, 0, 0]])
    np.testing.assert_array_equal(m, expected)
    # One query at the end of 4 keys sees them all; two queries at the end see 3 and 4 keys.
    np.testing.assert_array_equal(causal_mask(1, 4), np.zeros((1, 4)))
    np.testing.assert_array_equal(np.isfinite(causal_mask(2, 4)), [[1, 1, 1, 0], [1, 1, 1, 1]])


def test_boolean_mask_means_may_attend():
    rng = np.random.default_rng(1)
    q, k, v = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 2))
    allowed = np.tril(np.ones((3, 3), dtype=bool))
    np.testing.assert_allclose(attention(q, k, v, allowed), attention(q, k, v, causal_mask(3)), atol=1e-12)


def test_attention_matches_the_formula_written_out():
    rng = np.random.default_rng(2)
    q, k, v = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5, 6))
    scores = np.einsum("bmd,bnd->bmn", q, k) / 2.0  # sqrt(d) = 2
    alpha = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    np.testing.assert_allclose(attention(q, k, v), alpha @ v, atol=1e-12)


# --- bad input: a ValueError or TypeError that names the argument -------------------------------
@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: weighted_average([[1, 2], [3, 4], [5, 6]], [0.5, 0.5]), ["weights", "values", "3 rows"]),
        (lambda: weighted_average([[1, 2], [3, 4]], [-0.5, 1.5]), ["non-negative"]),
        (lambda: weighted_average([[1, 2], [3, 4]], [0.5, 0.6]), ["sum to 1", "1.1"]),
        (lambda: weighted_average([1, 2, 3], [0.2, 0.3, 0.5]), ["values", "at least 2 axes"]),
        (lambda: weighted_average(np.ones((2, 3, 2)), np.full((3, 3), 1 / 3)), ["leading", "(2,)", "(3,)"]),
        (lambda: weighted_average([[1, 2]], [np.nan]), ["weights", "NaN"]),
        (lambda: attention(np.ones((2, 4)), np.ones((3, 5)), np.ones((3, 2))), ["same vector size", "(2, 4)", "(3, 5)"]),
        (lambda: attention(np.ones((2, 4)), np.ones((3, 4)), np.ones((2, 2))), ["k has 3 rows", "v has 2"]),
        (lambda: attention(np.ones((2, 4)), np.ones((3, 4)), np.ones((3, 2)), causal_mask(3)), ["mask", "(3, 3)", "(2, 3)"]),
        (lambda: attention(np.ones((2, 2, 4)), np.ones((3, 2, 4)), np.ones((3, 2, 4))), ["leading", "q", "k"]),
        (lambda: attention_weights(np.ones(4), np.ones((3, 4))), ["q", "at least 2 axes", "(4,)"]),
        (lambda: causal_mask(3, 2), ["n_keys=2", "n=3"]),
        (lambda: causal_mask(0), ["positive"]),
        (lambda: softmax(np.full(3, -np.inf)), ["-inf everywhere"]),
        (lambda: softmax([[0.0, 1.0], [-np.inf, -np.inf]]), ["-inf everywhere"]),
        (lambda: softmax([1.0, np.inf]), ["x", "+inf"]),
        (lambda: softmax([np.nan, 1.0]), ["x", "NaN"]),
        (lambda: attention(np.full((2, 4), np.inf), np.ones((3, 4)), np.ones((3, 2))), ["q", "+inf"]),
        (lambda: attention(np.ones((2, 4)), np.ones((3, 4)), np.full((3, 2), -np.inf)), ["v", "-inf"]),
        (lambda: attention_weights(np.ones((2, 4)), np.ones((2, 4)), [[0, np.inf], [0, 0]]), ["mask", "+inf"]),
        (lambda: weighted_average([["a", "b"]], [1.0]), ["values", "numbers"]),
    ],
)
def test_bad_input_raises_a_clear_error(call, words):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value!s}"


def test_softmax_of_inf_or_nan_raises_without_a_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy's "invalid value" RuntimeWarning would be the old, silent NaN
        for x in ([1.0, np.inf], [np.inf, np.inf], [[0.0, 1.0], [np.nan, 0.0]]):
            with pytest.raises(ValueError, match="x contains"):
                softmax(x)
        # -inf is how masking works: those entries get weight 0
        np.testing.assert_array_equal(softmax([-np.inf, 0.0, -np.inf]), [0.0, 1.0, 0.0])


def test_sizes_must_be_ints_not_bools_numpy_ints_welcome():
    for bad in (True, 2.0, "3"):
        with pytest.raises(TypeError, match="must be a positive int"):
            causal_mask(bad)
        with pytest.raises(TypeError, match="n_keys must be a positive int"):
            causal_mask(2, bad)
    np.testing.assert_array_equal(causal_mask(np.int64(3), np.int32(4)), causal_mask(3, 4))
