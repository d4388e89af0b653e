"""What both decoders must do, run once per backend: the NumPy reference ``qkv.reference.Decoder`` and the
torch ``qkv.torch_decoder.CachedDecoder`` (on the CPU; test_torch_gpu.py runs the GPU). The same steps
(prefill, decode_step, generate), the same cache behaviour, the same errors."""

import numpy as np
import pytest
import torch

from qkv.reference import Decoder
from qkv.reference.cache import DecoderCache
from qkv.torch_decoder import CachedDecoder


class Backend:
    def __init__(self, name: str) -> None:
        self.name = name

    def load(self, state_dict, **kwargs):
        if self.name == "numpy":
            return Decoder.from_gpt2_state_dict(state_dict, **kwargs)
        return CachedDecoder.from_gpt2_state_dict(state_dict, device="cpu", **kwargs)

    @staticmethod
    def array(x) -> np.ndarray:
        return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@pytest.fixture(scope="module", params=["numpy", "torch"])
def backend(request) -> Backend:
    return Backend(request.param)


@pytest.fixture(scope="module")
def state_dict(small_config):
    from qkv.gpt2 import random_state_dict

    # std 0.3: greedy decoding visits many tokens, while float32 logits stay within 1e-4 of float64.
    return random_state_dict(small_config, seed=0, std=0.3)


@pytest.fixture(scope="module")
def decoder(backend, state_dict, small_config):
    return backend.load(state_dict, n_head=small_config.n_head)


@pytest.fixture(scope="module")
def reference(state_dict, small_config):
    return Decoder.from_gpt2_state_dict(state_dict, n_head=small_config.n_head)


@pytest.fixture(scope="module")
def prompts(small_config):
    return np.random.default_rng(1).integers(0, small_config.vocab_size, size=(3, 7))


# --- cached = uncached, and both = the float64 NumPy reference -----------------------------------------
def test_prefill_and_decode_steps_equal_recomputation(backend, decoder, reference, prompts):
    full = reference.forward(prompts)
    cache = decoder.new_cache(batch=3)
    pre = backend.array(decoder.prefill(prompts[:, :4], cache))
    np.testing.assert_allclose(pre, full[:, :4], rtol=0, atol=1e-4)
    for t in range(4, prompts.shape[1]):
        step = backend.array(decoder.decode_step(prompts[:, t], cache))
        assert step.shape == (3, 256) and cache.length == t + 1
        np.testing.assert_allclose(step, full[:, t], rtol=0, atol=1e-4)


def test_second_prefill_continues_the_cache(backend, decoder, reference, prompts):
    """A prompt appended to a filled cache needs the offset causal mask; a wrong mask breaks this."""
    cache = decoder.new_cache(batch=3)
    decoder.prefill(prompts[:, :3], cache)
    rest = backend.array(decoder.prefill(prompts[:, 3:], cache))
    np.testing.assert_allclose(rest, reference.forward(prompts)[:, 3:], rtol=0, atol=1e-4)
    assert cache.length == prompts.shape[1]


def test_cached_and_uncached_generation_give_the_same_tokens(backend, decoder, reference, prompts):
    cached = backend.array(decoder.generate(prompts, 40, use_cache=True))
    assert cached.shape == (3, 47) and cached.dtype == np.int64
    np.testing.assert_array_equal(cached, backend.array(decoder.generate(prompts, 40, use_cache=False)))
    np.testing.assert_array_equal(cached[:, :7], prompts)
    np.testing.assert_array_equal(cached[:, :37], reference.generate(prompts, 30))
    assert len(set(cached[:, 7:].ravel())) >= 5, "degenerate generation would make this check weak"


def test_one_dimensional_prompt_is_a_batch_of_one(backend, decoder, prompts):
    one = backend.array(decoder.generate(prompts[0], 5))
    assert one.shape == (1, 12)
    np.testing.assert_array_equal(one, backend.array(decoder.generate(prompts[:1], 5)))


def test_generate_is_prefill_then_decode_steps(backend, decoder, prompts):
    """generate builds on the public steps: the same tokens as calling them by hand."""
    cache = decoder.new_cache(3, 12)
    tokens = [backend.array(decoder.prefill(prompts, cache))[:, -1].argmax(-1)]
    for _ in range(4):
        tokens.append(backend.array(decoder.decode_step(tokens[-1], cache)).argmax(-1))
    np.testing.assert_array_equal(backend.array(decoder.generate(prompts, 5))[:, 7:], np.stack(tokens, 1))


# --- the cache ----------------------------------------------------------------------------------------
def test_the_cache_counts_its_own_positions(decoder, prompts):
    cache = decoder.new_cache(batch=3, max_positions=20)
    assert isinstance(cache, DecoderCache) and len(cache) == decoder.config.n_layer
    assert cache.length == 0 and cache.batch is None
    decoder.prefill(prompts, cache)
    assert cache.length == 7 and all(layer.length == 7 for layer in cache.layers) and cache.batch == 3
    with pytest.raises(AttributeError):
        cache.length = 3  # only the cache moves its counter
    with pytest.raises(AttributeError):
        cache[0].length = 3
    cache.reset()
    assert cache.length == 0 and cache.batch is None


def test_truncate_then_decode_recomputes_the_same_step(backend, decoder, prompts):
    cache = decoder.new_cache(batch=3)
    decoder.prefill(prompts[:, :6], cache)
    first = backend.array(decoder.decode_step(prompts[:, 6], cache))
    cache.truncate(6)
    assert cache.length == 6
    np.testing.assert_array_equal(backend.array(decoder.decode_step(prompts[:, 6], cache)), first)
    with pytest.raises(ValueError, match="truncate to a length in"):
        cache.truncate(8)


def test_smaller_batch_uses_part_of_the_cache(backend, decoder, prompts):
    cache = decoder.new_cache(batch=4)
    logits = backend.array(decoder.prefill(prompts[:2], cache))
    np.testing.assert_allclose(logits, backend.array(decoder.forward(prompts[:2])), rtol=0, atol=1e-5)
    assert cache.batch == 2


def test_decode_step_takes_batch_or_batch_by_one(backend, decoder, prompts):
    a, b = decoder.new_cache(3), decoder.new_cache(3)
    decoder.prefill(prompts[:, :5], a)
    decoder.prefill(prompts[:, :5], b)
    np.testing.assert_array_equal(backend.array(decoder.decode_step(prompts[:, 5], a)),
                                  backend.array(decoder.decode_step(prompts[:, 5:6], b)))
    cache = decoder.new_cache(6)
    decoder.prefill(np.zeros((6, 2), dtype=int), cache)
    for bad in (np.zeros((2, 3), dtype=int), np.zeros((6, 1, 1), dtype=int), torch.zeros(2, 3).long(), 5):
        with pytest.raises(ValueError, match=r"one token per sequence, shape \(batch,\) or \(batch, 1\)"):
            decoder.decode_step(bad, cache)
    assert cache.length == 2


# --- bad input: the same errors from both ---------------------------------------------------------------
def test_bad_token_ids(decoder):
    with pytest.raises(ValueError, match=r"token id 300 .* outside the vocabulary \[0, 256\)"):
        decoder.forward([[1, 2, 300]])
    with pytest.raises(ValueError, match="token id -1"):
        decoder.generate(torch.tensor([[-1, 2]]), 3)
    with pytest.raises(ValueError, match="token id -1"):
        decoder.generate([[-1, 2]], 3)
    with pytest.raises(TypeError, match="integer token ids"):
        decoder.forward([[0.5, 1.0]])
    with pytest.raises(ValueError, match=r"shape \(batch, n\) or \(n,\)"):
        decoder.forward(np.zeros((1, 2, 3), dtype=int))
    with pytest.raises(ValueError, match=r"shape \(batch, n\) or \(n,\); got shape \(1, 1, 2\)"):
        decoder.forward([[[1, 2]]])  # a nested list has no .shape: the message must not read it
    with pytest.raises(ValueError, match="empty"):
        decoder.forward(np.zeros((1, 0), dtype=int))
    with pytest.raises(ValueError, match="token id 999"):
        decoder.decode_step([999], decoder.new_cache(1))


def test_sequences_longer_than_the_cache_or_the_model(decoder, small_config):
    n_positions = small_config.n_positions
    with pytest.raises(ValueError, match=rf"past the maximum length n_positions={n_positions}"):
        decoder.generate(np.zeros((1, n_positions - 2), dtype=int), 3)
    cache = decoder.new_cache(1)
    decoder.prefill(np.zeros((1, n_positions), dtype=int), cache)
    with pytest.raises(ValueError, match="past the maximum length"):
        decoder.decode_step([1], cache)
    cache = decoder.new_cache(1, max_positions=10)
    with pytest.raises(ValueError, match="past the cache's max_positions=10"):
        decoder.prefill(np.zeros((1, 11), dtype=int), cache)
    decoder.prefill(np.zeros((1, 10), dtype=int), cache)
    with pytest.raises(ValueError, match="past the cache's max_positions=10"):
        decoder.decode_step([1], cache)
    with pytest.raises(ValueError, match="max_positions must be"):
        decoder.new_cache(1, max_positions=n_positions + 1)


def test_cache_misuse(decoder):
    cache = decoder.new_cache(batch=2)
    with pytest.raises(ValueError, match="batch of 3 sequences is larger than the batch of 2"):
        decoder.prefill(np.zeros((3, 4), dtype=int), cache)
    decoder.prefill(np.zeros((2, 3), dtype=int), cache)
    with pytest.raises(ValueError, match="holds a batch of 2 sequences; got 1"):
        decoder.decode_step([1], cache)
    with pytest.raises(TypeError, match="of 3 layers \\(one per layer\\)"):  # a list is not a cache
        decoder.decode_step([1, 2], cache.layers)
    with pytest.raises(TypeError, match="batch must be a positive int"):
        decoder.new_cache(True)
    with pytest.raises(ValueError, match="max_new_tokens"):
        decoder.generate([[1]], -1)
    with pytest.raises(TypeError, match="max_new_tokens"):
        decoder.generate([[1]], 2.0)


# --- loading: the same state dicts, the same one ValueError naming every problem -------------------------
def test_state_dict_problems_are_all_named(backend, state_dict):
    broken = dict(state_dict)
    del broken["transformer.h.1.attn.c_attn.weight"]
    del broken["transformer.ln_f.bias"]
    broken["transformer.h.0.mlp.c_fc.bias"] = torch.zeros(7)
    with pytest.raises(ValueError) as info:
        backend.load(broken, n_head=4)
    msg = str(info.value)
    assert "missing transformer.h.1.attn.c_attn.weight" in msg
    assert "missing transformer.ln_f.bias" in msg
    assert "transformer.h.0.mlp.c_fc.bias has shape (7,), expected (256,)" in msg
    with pytest.raises(ValueError, match="does not divide"):
        backend.load(state_dict, n_head=5)
    for bad in (True, 4.0, "4"):
        with pytest.raises(TypeError, match="n_head must be a positive int"):
            backend.load(state_dict, n_head=bad)
    assert backend.load(state_dict, n_head=np.int64(4)).config.n_head == 4


def test_tensor_state_dicts_load_in_bfloat16_too(backend, state_dict, prompts):
    """Both decoders read weights through one conversion (qkv.gpt2.to_numpy), bfloat16 included."""
    tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    halves = {k: v.to(torch.bfloat16) for k, v in tensors.items()}
    exact = backend.array(backend.load(tensors, n_head=4).forward(prompts))
    rounded = backend.array(backend.load(halves, n_head=4).forward(prompts))
    np.testing.assert_allclose(exact, backend.array(backend.load(state_dict, n_head=4).forward(prompts)),
                               rtol=0, atol=0)
    assert 0 < np.abs(rounded - exact).max() < 1.0  # bfloat16 weights: close, not the same numbers


# --- against code nobody here wrote: Hugging Face GPT-2 -----------------------------------------------
@pytest.fixture(scope="module")
def hf_pair(backend):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=211, n_positions=96, n_embd=48, n_layer=3, n_head=6,
                     initializer_range=0.3, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    return model, backend.load(model.state_dict(), n_head=6)


def test_logits_match_hugging_face(backend, hf_pair):
    model, ours = hf_pair
    ids = torch.from_numpy(np.random.default_rng(2).integers(0, 211, size=(2, 20)))
    with torch.no_grad():
        theirs = model(ids).logits.numpy()
    np.testing.assert_allclose(backend.array(ours.forward(ids)), theirs, rtol=0, atol=1e-4)


def test_greedy_tokens_match_hugging_face(backend, hf_pair):
    model, ours = hf_pair
    ids = torch.from_numpy(np.random.default_rng(3).integers(0, 211, size=(3, 8)))
    steps = 64
    with torch.no_grad():
        theirs = model.generate(ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                                use_cache=True, pad_token_id=0, attention_mask=torch.ones_like(ids))
    mine = backend.array(ours.generate(ids, steps))
    np.testing.assert_array_equal(mine, theirs.numpy())
    assert all(len(set(row[8:].tolist())) >= 5 for row in mine)


# --- prompts of different lengths in one batch: left padding and an attention mask ----------------------
@pytest.fixture(scope="module")
def padded(small_config):
    """Three prompts of 7, 4 and 2 tokens, left-padded to 7 with random tokens (never read)."""
    rng = np.random.default_rng(4)
    alone = [rng.integers(0, small_config.vocab_size, size=n) for n in (7, 4, 2)]
    ids = rng.integers(0, small_config.vocab_size, size=(3, 7))
    mask = np.zeros((3, 7), dtype=np.int64)
    for row, prompt in enumerate(alone):
        ids[row, 7 - len(prompt):], mask[row, 7 - len(prompt):] = prompt, 1
    return alone, ids, mask


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_padded_batch_gives_each_prompt_its_own_tokens(backend, decoder, padded, use_cache):
    alone, ids, mask = padded
    out = backend.array(decoder.generate(ids, 20, use_cache=use_cache, attention_mask=mask))
    assert out.shape == (3, 27)
    np.testing.assert_array_equal(out[:, :7], ids)  # the padding stays where it was
    for row, prompt in enumerate(alone):
        own = backend.array(decoder.generate(prompt, 20, use_cache=use_cache))[0]
        np.testing.assert_array_equal(out[row, 7:], own[len(prompt):])
    assert len(set(out[:, 7:].ravel())) >= 5, "degenerate generation would make this check weak"


def test_padded_steps_by_hand_match_each_prompt_alone(backend, decoder, padded):
    """prefill and decode_step take the mask over the cache and the new tokens, at every step."""
    alone, ids, mask = padded
    cache = decoder.new_cache(3, 10)
    logits = backend.array(decoder.prefill(ids, cache, attention_mask=mask))
    for row, prompt in enumerate(alone):  # the real positions' logits, as if unpadded
        own = backend.array(decoder.forward(prompt))[0]
        np.testing.assert_allclose(logits[row, 7 - len(prompt):], own, rtol=0, atol=1e-4)
    token = logits[:, -1].argmax(-1)
    longer = np.pad(mask, ((0, 0), (0, 1)), constant_values=1)  # the new token is real
    step = backend.array(decoder.decode_step(token, cache, attention_mask=longer))
    for row, prompt in enumerate(alone):
        own = backend.array(decoder.forward(np.append(prompt, token[row])))[0, -1]
        np.testing.assert_allclose(step[row], own, rtol=0, atol=1e-4)


def test_a_mask_of_ones_changes_nothing(backend, decoder, prompts):
    ones = np.ones(prompts.shape, dtype=np.int64)
    np.testing.assert_array_equal(backend.array(decoder.generate(prompts, 8, attention_mask=ones)),
                                  backend.array(decoder.generate(prompts, 8)))
    np.testing.assert_array_equal(backend.array(decoder.forward(prompts, attention_mask=ones)),
                                  backend.array(decoder.forward(prompts)))


def test_bad_attention_masks(backend, decoder, padded):
    _, ids, mask = padded
    as_ints = backend.array(decoder.generate(ids, 3, attention_mask=mask))
    for same in (mask.astype(bool), torch.from_numpy(mask), mask.astype(float)):  # 1/0 of any kind
        np.testing.assert_array_equal(backend.array(decoder.generate(ids, 3, attention_mask=same)),
                                      as_ints)
    bad = [(mask[:, 1:], ValueError, r"shape \(batch, length\) = \(3, 7\)"),
           (mask[:, ::-1], ValueError, "only left padding is supported"),
           (2 * mask, ValueError, "only 1 .* and 0"),
           (np.where(mask == 1, 1, 0.5), TypeError, "must hold 0 and 1"),
           (torch.from_numpy(mask) * 0.5, TypeError, "must hold 0 and 1"),
           (np.array([["a"] * 7] * 3), TypeError, "must hold 0 and 1"),
           (np.vstack([mask[:2], np.zeros(7, int)]), ValueError, "row 2 has no real token")]
    for wrong, error, message in bad:
        with pytest.raises(error, match=message):
            decoder.generate(ids, 3, attention_mask=wrong)
    cache = decoder.new_cache(3)
    decoder.prefill(ids, cache, attention_mask=mask)
    with pytest.raises(ValueError, match=r"\(3, 8\), one entry per token \(the cache's and the new"):
        decoder.decode_step(ids[:, 0], cache, attention_mask=mask)
    assert cache.length == 7


def test_padded_greedy_tokens_match_hugging_face(backend, hf_pair):
    """The same left-padded batch and mask through Hugging Face's generate: the same tokens."""
    model, ours = hf_pair
    rng = np.random.default_rng(5)
    ids = torch.from_numpy(rng.integers(0, 211, size=(3, 9)))
    mask = torch.ones_like(ids)
    mask[1, :4] = mask[2, :7] = 0  # prompts of 9, 5 and 2 tokens
    steps = 40
    with torch.no_grad():
        theirs = model.generate(ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                                use_cache=True, pad_token_id=0, attention_mask=mask)
    mine = backend.array(ours.generate(ids, steps, attention_mask=mask))
    np.testing.assert_array_equal(mine, theirs.numpy())
    assert all(len(set(row[9:].tolist())) >= 5 for row in mine)
