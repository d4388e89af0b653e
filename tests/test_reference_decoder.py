"""The NumPy GPT-2 decoder: cached vs uncached, against Hugging Face GPT-2, and its errors."""

import numpy as np
import pytest

from qkv.config import DecoderConfig
from qkv.gpt2 import random_state_dict
from qkv.reference import Decoder


@pytest.fixture(scope="module")
def decoder(small_state_dict, small_config):
    return Decoder.from_gpt2_state_dict(small_state_dict, n_head=small_config.n_head)


@pytest.fixture(scope="module")
def prompts(small_config):
    return np.random.default_rng(1).integers(0, small_config.vocab_size, size=(3, 7))


def test_cached_logits_equal_recomputation(decoder, prompts):
    full = decoder.forward(prompts)
    caches = decoder.new_cache(batch=3)
    split = 4
    pre = decoder.prefill(prompts[:, :split], caches)
    np.testing.assert_allclose(pre, full[:, :split], rtol=0, atol=1e-10)
    for t in range(split, prompts.shape[1]):
        step = decoder.decode_step(prompts[:, t], caches)
        assert all(c.length == t + 1 for c in caches)
        np.testing.assert_allclose(step, full[:, t], rtol=0, atol=1e-10)


def test_cached_and_uncached_generation_give_the_same_tokens(decoder, prompts):
    cached = decoder.generate(prompts, 40, use_cache=True)
    uncached = decoder.generate(prompts, 40, use_cache=False)
    np.testing.assert_array_equal(cached, uncached)
    np.testing.assert_array_equal(cached[:, :7], prompts)
    assert len(set(cached[:, 7:].ravel())) >= 5, "degenerate generation would make this check weak"


def test_one_dimensional_prompt_is_a_batch_of_one(decoder, prompts):
    np.testing.assert_array_equal(decoder.generate(prompts[0], 5), decoder.generate(prompts[:1], 5))
    assert decoder.generate(prompts[0], 5).shape == (1, 12)


def test_float32_decoder_close_to_float64(small_state_dict, prompts):
    d64 = Decoder.from_gpt2_state_dict(small_state_dict, n_head=4)
    d32 = Decoder.from_gpt2_state_dict(small_state_dict, n_head=4, dtype=np.float32)
    assert d32.dtype == np.float32
    np.testing.assert_allclose(d32.forward(prompts), d64.forward(prompts), atol=2e-3)


# --- against code nobody here wrote: Hugging Face GPT-2 -------------------------------------------
@pytest.fixture(scope="module")
def hf_pair():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=211, n_positions=96, n_embd=48, n_layer=3, n_head=6,
                     initializer_range=0.3, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    sd = {k: v.detach().numpy().astype(np.float64) for k, v in model.state_dict().items()}
    return model, Decoder.from_gpt2_state_dict(sd, n_head=6), torch


def test_logits_match_hugging_face(hf_pair):
    model, ours, torch = hf_pair
    ids = np.random.default_rng(2).integers(0, 211, size=(2, 20))
    with torch.no_grad():
        theirs = model(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(ours.forward(ids), theirs, rtol=0, atol=1e-4)


def test_greedy_tokens_match_hugging_face(hf_pair):
    model, ours, torch = hf_pair
    ids = np.random.default_rng(3).integers(0, 211, size=(1, 8))
    steps = 40
    with torch.no_grad():
        theirs = model.double().generate(
            torch.tensor(ids), max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
            use_cache=True, pad_token_id=0, attention_mask=torch.ones_like(torch.tensor(ids)),
        ).numpy()
        model.float()
    mine = ours.generate(ids, steps)
    np.testing.assert_array_equal(mine, theirs)
    assert len(set(mine[0, 8:])) >= 5


# --- bad input ---------------------------------------------------------------------------------
def test_bad_token_ids(decoder):
    with pytest.raises(ValueError, match=r"token id 300 .* outside the vocabulary \[0, 256\)"):
        decoder.forward([[1, 2, 300]])
    with pytest.raises(ValueError, match="token id -1"):
        decoder.generate([[-1, 2]], 3)
    with pytest.raises(TypeError, match="integer token ids"):
        decoder.forward([[0.5, 1.0]])
    with pytest.raises(ValueError, match=r"shape \(batch, n\) or \(n,\)"):
        decoder.forward(np.zeros((1, 2, 3), dtype=int))
    with pytest.raises(ValueError, match="empty"):
        decoder.forward(np.zeros((1, 0), dtype=int))


def test_generating_past_the_maximum_length(decoder, small_config):
    prompt = np.zeros((1, small_config.n_positions - 2), dtype=int)
    with pytest.raises(ValueError, match=rf"past the maximum length n_positions={small_config.n_positions}"):
        decoder.generate(prompt, 3)
    caches = decoder.new_cache(1)
    decoder.prefill(np.zeros((1, small_config.n_positions), dtype=int), caches)
    with pytest.raises(ValueError, match="past the maximum length"):
        decoder.decode_step([1], caches)


def test_cache_misuse(decoder):
    caches = decoder.new_cache(2)
    decoder.prefill(np.zeros((2, 3), dtype=int), caches)
    with pytest.raises(ValueError, match="batch of 2 sequences; got 1"):
        decoder.decode_step([1], caches)
    with pytest.raises(ValueError, match="one per layer"):
        decoder.decode_step([1, 2], caches[:1])
    with pytest.raises(ValueError, match="max_new_tokens"):
        decoder.generate([[1]], -1)


def test_state_dict_problems_are_all_named(small_state_dict):
    broken = dict(small_state_dict)
    del broken["transformer.h.1.attn.c_attn.weight"]
    del broken["transformer.ln_f.bias"]
    broken["transformer.h.0.mlp.c_fc.bias"] = np.zeros(7)
    with pytest.raises(ValueError) as info:
        Decoder.from_gpt2_state_dict(broken, n_head=4)
    msg = str(info.value)
    assert "missing transformer.h.1.attn.c_attn.weight" in msg
    assert "missing transformer.ln_f.bias" in msg
    assert "transformer.h.0.mlp.c_fc.bias has shape (7,), expected (256,)" in msg
    with pytest.raises(ValueError, match="does not divide"):
        Decoder.from_gpt2_state_dict(small_state_dict, n_head=5)


def test_accepts_gpt2model_names_without_prefix():
    cfg = DecoderConfig.tiny()
    sd = random_state_dict(cfg, seed=1)
    bare = {k.removeprefix("transformer."): v for k, v in sd.items()}
    ids = np.arange(5)[None]
    np.testing.assert_array_equal(Decoder.from_gpt2_state_dict(bare, n_head=4).forward(ids),
                                  Decoder.from_gpt2_state_dict(sd, n_head=4).forward(ids))
