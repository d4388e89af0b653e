"""The PyTorch cached decoder: against the NumPy reference and Hugging Face GPT-2, its static cache, its
sampling, and its errors. CPU only; the GPU versions of these checks are in test_torch_gpu.py."""

import numpy as np
import pytest
import torch

from qkv.config import DecoderConfig
from qkv.gpt2 import random_state_dict
from qkv.reference import Decoder
from qkv.torch_cache import StaticKVCache
from qkv.torch_decoder import CachedDecoder


@pytest.fixture(scope="module")
def state_dict(small_config):
    # std 0.3: greedy decoding visits many tokens, while float32 logits stay within 1e-4 of float64.
    return random_state_dict(small_config, seed=0, std=0.3)


@pytest.fixture(scope="module")
def ours(state_dict, small_config):
    return CachedDecoder.from_gpt2_state_dict(state_dict, n_head=small_config.n_head, device="cpu")


@pytest.fixture(scope="module")
def reference(state_dict, small_config):
    return Decoder.from_gpt2_state_dict(state_dict, n_head=small_config.n_head)


@pytest.fixture(scope="module")
def prompts(small_config):
    return np.random.default_rng(1).integers(0, small_config.vocab_size, size=(3, 7))


# --- against the NumPy reference ------------------------------------------------------------------
def test_loads_float32_on_the_cpu(ours, small_config):
    assert ours.device.type == "cpu" and ours.dtype == torch.float32
    assert ours.config == small_config
    qkv = ours.blocks[0].qkv
    assert (qkv.in_features, qkv.out_features) == (64, 3 * 64)
    assert (qkv.W is None) == torch.backends.mkldnn.is_available()  # prepacked for oneDNN where it can be


def test_prepacked_and_plain_weights_agree(state_dict, ours, prompts):
    plain = CachedDecoder.from_gpt2_state_dict(state_dict, n_head=4, device="cpu", prepack=False)
    assert plain.blocks[0].qkv.W.shape == (64, 192) and plain.blocks[0].qkv.W.is_contiguous()
    assert plain.lm_head.W.shape == (64, 256) and plain.lm_head.W.is_contiguous()
    torch.testing.assert_close(plain.forward(prompts), ours.forward(prompts), rtol=0, atol=2e-5)
    torch.testing.assert_close(plain.generate(prompts, 20), ours.generate(prompts, 20), rtol=0, atol=0)
    assert plain.nbytes == ours.nbytes == 4 * sum(v.size for k, v in state_dict.items())
    with pytest.raises(ValueError, match="prepack=True needs float32"):
        CachedDecoder.from_gpt2_state_dict(state_dict, n_head=4, device="cpu", dtype="bfloat16", prepack=True)


def test_logits_match_numpy_reference(ours, reference, prompts):
    np.testing.assert_allclose(ours.forward(prompts).numpy(), reference.forward(prompts), rtol=0, atol=1e-4)


def test_prefill_and_decode_steps_match_numpy_reference(ours, reference, prompts):
    full = reference.forward(prompts)
    cache = ours.new_cache(batch=3)
    pre = ours.prefill(prompts[:, :4], cache)
    np.testing.assert_allclose(pre.numpy(), full[:, :4], rtol=0, atol=1e-4)
    for t in range(4, prompts.shape[1]):
        step = ours.decode_step(prompts[:, t], cache)
        assert step.shape == (3, 256)
        np.testing.assert_allclose(step.numpy(), full[:, t], rtol=0, atol=1e-4)


def test_second_prefill_continues_the_cache(ours, reference, prompts):
    """A prompt appended to a filled cache needs the offset causal mask; a wrong mask breaks this."""
    cache = ours.new_cache(batch=3)
    ours.prefill(prompts[:, :3], cache)
    rest = ours.prefill(prompts[:, 3:], cache)
    np.testing.assert_allclose(rest.numpy(), reference.forward(prompts)[:, 3:], rtol=0, atol=1e-4)
    assert cache.length == prompts.shape[1]


def test_greedy_tokens_match_numpy_reference(ours, reference, prompts):
    mine = ours.generate(prompts, 30).numpy()
    np.testing.assert_array_equal(mine, reference.generate(prompts, 30))
    assert len(set(mine[:, 7:].ravel())) >= 5, "degenerate generation would make this check weak"


def test_cached_and_uncached_generation_give_the_same_tokens(ours, prompts):
    cached = ours.generate(prompts, 40, use_cache=True)
    uncached = ours.generate(prompts, 40, use_cache=False)
    assert cached.shape == (3, 47) and cached.dtype == torch.int64
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)
    np.testing.assert_array_equal(cached[:, :7].numpy(), prompts)
    assert len(set(cached[:, 7:].flatten().tolist())) >= 5


def test_one_dimensional_prompt_is_a_batch_of_one(ours, prompts):
    one = ours.generate(prompts[0], 5)
    assert one.shape == (1, 12)
    torch.testing.assert_close(one, ours.generate(prompts[:1], 5), rtol=0, atol=0)


def test_accepts_tensors_and_a_tensor_state_dict(state_dict, ours, prompts):
    tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    again = CachedDecoder.from_gpt2_state_dict(tensors, n_head=4, device="cpu")
    torch.testing.assert_close(again.forward(torch.from_numpy(prompts)), ours.forward(prompts), rtol=0, atol=0)


def test_static_decode_step_matches_eager(ours, prompts):
    """The graph-capturable step (position as a tensor, masked full-length attention) is the one a CUDA graph
    replays on a GPU; here it runs eagerly and must agree with the sliced step."""
    a, b = ours.new_cache(3), ours.new_cache(3)
    ours.prefill(prompts[:, :5], a)
    ours.prefill(prompts[:, :5], b)
    eager = ours.decode_step(prompts[:, 5], a)
    with torch.inference_mode():
        static = ours._decode_static(torch.from_numpy(prompts[:, 5]), torch.tensor([5]), b)
    torch.testing.assert_close(static, eager, rtol=0, atol=1e-5)
    torch.testing.assert_close(b[0].k[:, :, :6], a[0].k[:, :, :6], rtol=0, atol=0)


def test_cuda_graph_flag_falls_back_to_eager_on_cpu(state_dict, ours, prompts):
    flagged = CachedDecoder.from_gpt2_state_dict(state_dict, n_head=4, device="cpu", cuda_graph=True)
    assert flagged.cuda_graph and not flagged.uses_cuda_graph
    torch.testing.assert_close(flagged.generate(prompts, 10), ours.generate(prompts, 10), rtol=0, atol=0)


def test_bfloat16_option_runs(state_dict, ours, prompts):
    half = CachedDecoder.from_gpt2_state_dict(state_dict, n_head=4, device="cpu", dtype="bfloat16")
    assert half.dtype == torch.bfloat16 and half.new_cache(1).dtype == torch.bfloat16
    diff = (half.forward(prompts).float() - ours.forward(prompts)).abs().max().item()
    assert 0 < diff < 1.0  # bfloat16 has ~3 significant digits: close, but not the same numbers
    with pytest.raises(ValueError, match="dtype must be one of"):
        CachedDecoder.from_gpt2_state_dict(state_dict, n_head=4, device="cpu", dtype="int8")


# --- against Hugging Face GPT-2 -------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_pair():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=211, n_positions=96, n_embd=48, n_layer=3, n_head=6,
                     initializer_range=0.3, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    return model, CachedDecoder.from_gpt2_state_dict(model.state_dict(), n_head=6, device="cpu")


def test_logits_match_hugging_face(hf_pair):
    model, mine = hf_pair
    ids = torch.from_numpy(np.random.default_rng(2).integers(0, 211, size=(2, 20)))
    with torch.no_grad():
        theirs = model(ids).logits
    torch.testing.assert_close(mine.forward(ids), theirs, rtol=0, atol=1e-4)


def test_greedy_tokens_match_hugging_face_for_64_steps(hf_pair):
    model, mine = hf_pair
    ids = torch.from_numpy(np.random.default_rng(3).integers(0, 211, size=(3, 8)))
    steps = 64
    with torch.no_grad():
        theirs = model.generate(ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, use_cache=True,
                                pad_token_id=0, attention_mask=torch.ones_like(ids))
    ours_tokens = mine.generate(ids, steps)
    assert ours_tokens.shape == (3, 8 + steps)
    torch.testing.assert_close(ours_tokens, theirs, rtol=0, atol=0)
    assert all(len(set(row[8:].tolist())) >= 5 for row in ours_tokens)


# --- sampling -------------------------------------------------------------------------------------
def test_seeded_sampling_is_reproducible(ours, prompts):
    a = ours.generate(prompts, 20, temperature=1.0, seed=7)
    b = ours.generate(prompts, 20, temperature=1.0, seed=7)
    c = ours.generate(prompts, 20, temperature=1.0, seed=8)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c), "a different seed should give different samples"
    assert not torch.equal(a, ours.generate(prompts, 20)), "sampling at temperature 1 should differ from greedy"
    uncached = ours.generate(prompts, 20, temperature=1.0, seed=7, use_cache=False)
    torch.testing.assert_close(a, uncached, rtol=0, atol=0)


def test_top_k_sampling_stays_within_the_top_k(ours, prompts):
    tokens = ours.generate(prompts, 1, temperature=5.0, top_k=2, seed=0)[:, -1]
    top2 = torch.topk(ours.forward(prompts)[:, -1], 2, dim=-1).indices
    assert all(int(t) in top2[i].tolist() for i, t in enumerate(tokens))
    greedy_like = ours.generate(prompts, 10, temperature=1.0, top_k=1, seed=0)
    torch.testing.assert_close(greedy_like, ours.generate(prompts, 10), rtol=0, atol=0)


# --- the static cache -----------------------------------------------------------------------------
def test_cache_length_after_prefill_and_each_step(ours, prompts):
    cache = ours.new_cache(batch=3, max_positions=20)
    assert cache.length == 0 and cache.batch is None
    ours.prefill(prompts, cache)
    assert cache.length == 7 and all(layer.length == 7 for layer in cache.layers) and cache.batch == 3
    token = prompts[:, -1]
    for step in range(1, 6):
        token = ours.decode_step(token, cache).argmax(-1)
        assert cache.length == 7 + step
    cache.reset()
    assert cache.length == 0 and cache.batch is None


def test_cache_is_written_in_place(ours, prompts):
    cache = ours.new_cache(batch=3, max_positions=16)
    pointers = [(layer.k.data_ptr(), layer.v.data_ptr()) for layer in cache.layers]
    shapes = [layer.k.shape for layer in cache.layers]
    ours.prefill(prompts, cache)
    before = cache[1].k[:, :, :7].clone()
    token = prompts[:, -1]
    for _ in range(4):
        token = ours.decode_step(token, cache).argmax(-1)
        assert [(layer.k.data_ptr(), layer.v.data_ptr()) for layer in cache.layers] == pointers
        assert [layer.k.shape for layer in cache.layers] == shapes
    torch.testing.assert_close(cache[1].k[:, :, :7], before, rtol=0, atol=0)  # earlier slots untouched
    assert cache[1].k[:, :, 7:11].abs().sum() > 0 and cache[1].k[:, :, 11:].abs().sum() == 0


def test_cache_nbytes(ours):
    c = ours.config
    for dtype, size in ((torch.float32, 4), (torch.bfloat16, 2)):
        cache = StaticKVCache(c.n_layer, 2, c.n_head, 50, c.head_dim, dtype=dtype)
        assert cache.nbytes == 2 * c.n_layer * 2 * c.n_head * 50 * c.head_dim * size
    assert ours.new_cache(3).nbytes == 2 * 3 * 3 * 4 * 256 * 16 * 4


def test_layer_cache_update_returns_what_attention_reads():
    cache = StaticKVCache(1, 2, 3, 10, 4)
    k, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    K, V = cache[0].update(k, v)
    assert K.shape == (2, 3, 4, 4) and cache.length == 4
    K, V = cache[0].update(k[:, :, :1], v[:, :, :1])
    assert K.shape == (2, 3, 5, 4)
    torch.testing.assert_close(K[:, :, 4], k[:, :, 0], rtol=0, atol=0)
    torch.testing.assert_close(V[:, :, :4], v, rtol=0, atol=0)


def test_smaller_batch_uses_part_of_the_cache(ours, prompts):
    cache = ours.new_cache(batch=4)
    logits = ours.prefill(prompts[:2], cache)
    torch.testing.assert_close(logits, ours.forward(prompts[:2]), rtol=0, atol=1e-5)
    assert cache.batch == 2


# --- errors ---------------------------------------------------------------------------------------
def test_bad_token_ids(ours):
    with pytest.raises(ValueError, match=r"token id 300 .* outside the vocabulary \[0, 256\)"):
        ours.forward([[1, 2, 300]])
    with pytest.raises(ValueError, match="token id -1"):
        ours.generate(torch.tensor([[-1, 2]]), 3)
    with pytest.raises(TypeError, match="integer token ids"):
        ours.forward([[0.5, 1.0]])
    with pytest.raises(ValueError, match=r"shape \(batch, n\) or \(n,\)"):
        ours.forward(np.zeros((1, 2, 3), dtype=int))
    with pytest.raises(ValueError, match="empty"):
        ours.forward(np.zeros((1, 0), dtype=int))
    with pytest.raises(ValueError, match="token id 999"):
        ours.decode_step([999], ours.new_cache(1))


def test_prompts_longer_than_the_cache_or_the_model(ours, small_config):
    cache = ours.new_cache(1, max_positions=10)
    with pytest.raises(ValueError, match="past the cache's max_positions=10"):
        ours.prefill(np.zeros((1, 11), dtype=int), cache)
    ours.prefill(np.zeros((1, 10), dtype=int), cache)
    with pytest.raises(ValueError, match="past the cache's max_positions=10"):
        ours.decode_step([1], cache)
    with pytest.raises(ValueError, match=rf"past the maximum length n_positions={small_config.n_positions}"):
        ours.generate(np.zeros((1, small_config.n_positions - 2), dtype=int), 3)
    with pytest.raises(ValueError, match="max_positions must be"):
        ours.new_cache(1, max_positions=small_config.n_positions + 1)


def test_batch_larger_than_the_cache(ours):
    cache = ours.new_cache(batch=2)
    with pytest.raises(ValueError, match="batch of 3 sequences is larger than the batch of 2"):
        ours.prefill(np.zeros((3, 4), dtype=int), cache)
    ours.prefill(np.zeros((2, 4), dtype=int), cache)
    with pytest.raises(ValueError, match="holds a batch of 2 sequences; got 1"):
        ours.decode_step([1], cache)
    with pytest.raises(ValueError, match="StaticKVCache"):
        ours.decode_step([1, 2], cache.layers)
    with pytest.raises(ValueError, match="max_new_tokens"):
        ours.generate([[1]], -1)
    with pytest.raises(ValueError, match="temperature"):
        ours.generate([[1]], 2, temperature=-1.0)


def test_state_dict_problems_are_all_named(state_dict):
    broken = dict(state_dict)
    del broken["transformer.h.1.attn.c_attn.weight"]
    del broken["transformer.ln_f.bias"]
    broken["transformer.h.0.mlp.c_fc.bias"] = torch.zeros(7)
    with pytest.raises(ValueError) as info:
        CachedDecoder.from_gpt2_state_dict(broken, n_head=4, device="cpu")
    msg = str(info.value)
    assert "missing transformer.h.1.attn.c_attn.weight" in msg
    assert "missing transformer.ln_f.bias" in msg
    assert "transformer.h.0.mlp.c_fc.bias has shape (7,), expected (256,)" in msg
    with pytest.raises(ValueError, match="does not divide"):
        CachedDecoder.from_gpt2_state_dict(state_dict, n_head=5, device="cpu")


def test_device_none_picks_cuda_only_when_present():
    sd = random_state_dict(DecoderConfig.toy(), seed=1)
    d = CachedDecoder.from_gpt2_state_dict(sd, n_head=4)
    assert d.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_truncate_then_decode_recomputes_the_same_step(ours, prompts):
    cache = ours.new_cache(batch=3)
    ours.prefill(prompts[:, :6], cache)
    first = ours.decode_step(prompts[:, 6], cache)
    cache.truncate(6)
    assert cache.length == 6
    torch.testing.assert_close(ours.decode_step(prompts[:, 6], cache), first, rtol=0, atol=0)
    with pytest.raises(ValueError, match="truncate to a length in"):
        cache.truncate(8)


def test_state_dict_checks_apply_to_tensors(state_dict):
    """The checks of qkv.gpt2 (tested in depth in test_reference_decoder.py) see tensors as well as arrays."""
    tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    wte = tensors["transformer.wte.weight"]
    tied = CachedDecoder.from_gpt2_state_dict({**tensors, "lm_head.weight": wte.to(torch.bfloat16)}, n_head=4,
                                              device="cpu", n_layer=3)
    assert tied.config.n_layer == 3
    broken = {**tensors, "lm_head.weight": wte.flip(0), "transformer.wte.weight": wte[0]}
    del broken["transformer.h.2.ln_1.bias"]
    with pytest.raises(ValueError) as info:
        CachedDecoder.from_gpt2_state_dict(broken, n_head=np.int64(4), device="cpu", n_layer=4)
    msg = str(info.value)
    assert "transformer.wte.weight has shape (64,), expected (256, 64)" in msg
    assert "missing transformer.h.2.ln_1.bias (expected shape (64,))" in msg
    assert "block h.3 has no tensors at all (n_layer=4; found h.0, h.1, h.2)" in msg
    untied = {**tensors, "lm_head.weight": wte.flip(0)}
    with pytest.raises(ValueError, match="lm_head.weight differs from transformer.wte.weight"):
        CachedDecoder.from_gpt2_state_dict(untied, n_head=4, device="cpu")
    with pytest.raises(TypeError, match="n_head must be a positive int"):
        CachedDecoder.from_gpt2_state_dict(tensors, n_head=True, device="cpu")


def test_cuda_without_cuda_is_a_clear_error(state_dict, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(ValueError, match="CUDA is not available"):
            CachedDecoder.from_gpt2_state_dict(state_dict, n_head=4, device=device)
    with pytest.raises(ValueError, match="device must name a torch device"):
        CachedDecoder.from_gpt2_state_dict(state_dict, n_head=4, device="gpu")
    assert CachedDecoder.from_gpt2_state_dict(state_dict, n_head=4).device.type == "cpu"


def test_seed_and_sizes_of_the_wrong_type(ours, prompts):
    for seed in ("a", 1.5, True):
        with pytest.raises(TypeError, match="seed must be an int or None"):
            ours.generate(prompts, 3, temperature=1.0, seed=seed)
    with pytest.raises(TypeError, match="max_new_tokens"):
        ours.generate(prompts, 2.0)
    with pytest.raises(TypeError, match="top_k"):
        ours.generate(prompts, 2, temperature=1.0, top_k=True)
    torch.testing.assert_close(ours.generate(prompts, 4, temperature=1.0, seed=np.int64(3)),
                               ours.generate(prompts, 4, temperature=1.0, seed=3), rtol=0, atol=0)


def test_generate_checks_a_given_cache_before_starting(ours, prompts):
    cache = ours.new_cache(batch=3, max_positions=12)
    ours.prefill(prompts[:, :2], cache)  # a cache in use: a check made up front leaves it as it is
    with pytest.raises(ValueError, match=r"too small for this generation: it needs 17 positions \(prompt 7 \+ "
                                         r"10 new tokens\) but it has room for 12; use decoder.new_cache\(3, 17\)"):
        ours.generate(prompts, 10, cache=cache)
    assert cache.length == 2
    with pytest.raises(ValueError, match="needs a batch of 3 sequences but it was built for 2"):
        ours.generate(prompts, 3, cache=ours.new_cache(batch=2, max_positions=20))
    with pytest.raises(ValueError, match="the cache holds torch.bfloat16 on cpu but this decoder computes in "
                                         "torch.float32"):
        ours.generate(prompts, 3, cache=StaticKVCache(3, 3, 4, 20, 16, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="StaticKVCache of 3 layers"):
        ours.generate(prompts, 3, cache=cache.layers)
    big = ours.new_cache(batch=4, max_positions=17)  # exactly enough positions, and a spare row
    torch.testing.assert_close(ours.generate(prompts, 10, cache=big), ours.generate(prompts, 10), rtol=0, atol=0)


def test_decode_step_takes_batch_or_batch_by_one(ours, prompts):
    a, b = ours.new_cache(3), ours.new_cache(3)
    ours.prefill(prompts[:, :5], a)
    ours.prefill(prompts[:, :5], b)
    column = torch.from_numpy(prompts[:, 5:6])  # (batch, 1)
    torch.testing.assert_close(ours.decode_step(prompts[:, 5], a), ours.decode_step(column, b), rtol=0, atol=0)
    cache = ours.new_cache(6)
    ours.prefill(np.zeros((6, 2), dtype=int), cache)
    for bad in (np.zeros((2, 3), dtype=int), torch.zeros(2, 3, dtype=torch.long), torch.zeros(6, 1, 1).long(), 5):
        with pytest.raises(ValueError, match=r"one token per sequence, shape \(batch,\) or \(batch, 1\)"):
            ours.decode_step(bad, cache)
    assert cache.length == 2
