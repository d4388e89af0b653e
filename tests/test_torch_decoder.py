"""What only the PyTorch cached decoder has: an nn.Module, its one step with the position as data, its
static cache, sampling and devices. What both decoders must do is in test_decoders.py; the GPU checks
in test_torch_gpu.py."""

import numpy as np
import pytest
import torch

from qkv.gpt2 import GPT2Config, random_state_dict
from qkv.torch_cache import StaticDecoderCache
from qkv.torch_decoder import CachedDecoder, step_at
from qkv.torch_gpt2 import GPT2Model


@pytest.fixture(scope="module")
def state_dict(small_config):
    # std 0.3: greedy decoding visits many tokens, while float32 logits stay within 1e-4 of float64.
    return random_state_dict(small_config, seed=0, std=0.3)


@pytest.fixture(scope="module")
def ours(state_dict, small_config):
    return CachedDecoder.from_gpt2_state_dict(state_dict, n_head=small_config.n_head, device="cpu")


@pytest.fixture(scope="module")
def prompts(small_config):
    return np.random.default_rng(1).integers(0, small_config.vocab_size, size=(3, 7))


# --- a torch.nn.Module, and its one step ------------------------------------------------------------
def test_is_an_nn_module_with_parameters(ours, small_config, state_dict, prompts):
    assert isinstance(ours, torch.nn.Module) and isinstance(ours.model, GPT2Model)
    assert ours.device.type == "cpu" and ours.dtype == torch.float32 and ours.config == small_config
    sd = ours.model.state_dict()
    assert sd["blocks.0.c_attn.weight"].shape == (3 * 64, 64)  # nn.Linear's (out, in): Conv1D transposed
    torch.testing.assert_close(sd["blocks.0.c_attn.weight"],
                               torch.from_numpy(state_dict["transformer.h.0.attn.c_attn.weight"].T).float())
    assert ours.model.lm_head.weight is ours.model.wte.weight  # tied, as GPT-2's
    assert ours.wte is ours.model.wte and ours.blocks is ours.model.blocks  # the model's, by name
    with pytest.raises(AttributeError, match="no_such"):
        ours.no_such
    assert ours.nbytes == 4 * sum(v.size for v in state_dict.values())
    assert all(not p.requires_grad for p in ours.parameters())
    torch.testing.assert_close(ours(prompts), ours.forward(prompts), rtol=0, atol=0)
    again = GPT2Model(small_config)
    again.load_state_dict(sd)
    again = CachedDecoder(again.eval())
    torch.testing.assert_close(again.forward(prompts), ours.forward(prompts), rtol=0, atol=0)
    half = CachedDecoder.from_gpt2_state_dict(state_dict, n_head=4, device="cpu").to(torch.float64)
    assert half.dtype == torch.float64 and half.new_cache(1).dtype == torch.float64


def test_fast_is_the_same_step_on_a_cpu(state_dict, ours, prompts):
    """fast=True replays the step as a CUDA graph on a GPU; on a CPU it is the same eager step."""
    fast = CachedDecoder.from_gpt2_state_dict(state_dict, n_head=4, device="cpu", fast=True)
    assert fast.fast and not ours.fast and not fast.uses_cuda_graph  # no CUDA graph on a CPU
    assert fast.compile_decode is not None and ours.graph_decode() is ours and ours.fast
    ours.fast = False
    torch.testing.assert_close(fast.generate(prompts, 20), ours.generate(prompts, 20), rtol=0, atol=0)


def assert_the_graph_shaped_step_matches_the_eager_step(decoder, prompts, start: int = 5):
    """What a CUDA graph replays on a GPU: the one step with its slot as data, reading every slot of
    the cache with the unwritten ones masked. Run eagerly here, it must give the eager step's logits
    and write the same keys and values (used for the Llama-shaped model too, in test_llama.py)."""
    batch, n = prompts.shape
    a, b = decoder.new_cache(batch, n + 3), decoder.new_cache(batch, n + 3)
    decoder.prefill(prompts[:, :start], a)
    decoder.prefill(prompts[:, :start], b)
    for t in range(start, n):
        eager = decoder.decode_step(prompts[:, t], a)
        ids = torch.from_numpy(prompts[:, t : t + 1])
        with torch.inference_mode():
            whole = decoder.model(ids, b, step_at(t, 1, None, b.max_positions, "cpu"))[:, -1]
        b.advance(1, batch)
        torch.testing.assert_close(whole, eager, rtol=0, atol=1e-5)
    for layer in range(decoder.config.n_layer):
        torch.testing.assert_close(b[layer].keys, a[layer].keys, rtol=0, atol=1e-5)
        torch.testing.assert_close(b[layer].values, a[layer].values, rtol=0, atol=1e-5)
    assert a[0].k[:, :, n:].abs().sum() == 0  # nothing written past the last position


def test_the_graph_shaped_step_matches_the_eager_step(ours, prompts):
    assert_the_graph_shaped_step_matches_the_eager_step(ours, prompts)


def test_bfloat16_option_runs(state_dict, ours, prompts):
    half = CachedDecoder.from_gpt2_state_dict(state_dict, n_head=4, device="cpu", dtype="bfloat16")
    assert half.dtype == torch.bfloat16 and half.new_cache(1).dtype == torch.bfloat16
    diff = (half.forward(prompts).float() - ours.forward(prompts)).abs().max().item()
    assert 0 < diff < 1.0  # bfloat16 has ~3 significant digits: close, but not the same numbers
    with pytest.raises(ValueError, match="dtype must be one of"):
        CachedDecoder.from_gpt2_state_dict(state_dict, n_head=4, device="cpu", dtype="int8")


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


def test_cache_nbytes_are_the_bytes_allocated(ours, prompts):
    c = ours.config
    for dtype, size in ((torch.float32, 4), (torch.bfloat16, 2)):
        cache = StaticDecoderCache(c.n_layer, 2, c.n_head, 50, c.head_dim, dtype=dtype)
        assert cache.nbytes == 2 * c.n_layer * 2 * c.n_head * 50 * c.head_dim * size
    cache = ours.new_cache(3)
    assert cache.nbytes == 2 * 3 * 3 * 4 * 256 * 16 * 4
    ours.prefill(prompts, cache)  # allocated once: filling it changes nothing
    assert cache.nbytes == 2 * 3 * 3 * 4 * 256 * 16 * 4


def test_layer_cache_writes_at_the_slots_given_and_the_decoder_counts():
    cache = StaticDecoderCache(1, 2, 3, 10, 4)
    k, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    K, V = cache[0].update(cache.slots(4), k, v)
    assert K.shape == (2, 3, 10, 4) and cache.length == 0  # the whole buffers; not counted yet
    cache.advance(4, 2)
    K, V = cache[0].update(cache.slots(1), k[:, :, :1], v[:, :, :1])
    cache.advance(1, 2)
    assert cache.length == 5 and cache[0].keys.shape == (2, 3, 5, 4)
    torch.testing.assert_close(K[:, :, 4], k[:, :, 0], rtol=0, atol=0)
    torch.testing.assert_close(V[:, :, :4], v, rtol=0, atol=0)
    assert K[:, :, 5:].abs().sum() == 0


# --- errors ---------------------------------------------------------------------------------------
def test_sampling_arguments(ours):
    with pytest.raises(ValueError, match="temperature"):
        ours.generate([[1]], 2, temperature=-1.0)
    with pytest.raises(TypeError, match="temperature"):
        ours.generate([[1]], 2, temperature="hot")


def test_device_none_picks_cuda_only_when_present():
    sd = random_state_dict(GPT2Config.toy(), seed=1)
    d = CachedDecoder.from_gpt2_state_dict(sd, n_head=4)
    assert d.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


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
        ours.generate(prompts, 3, cache=StaticDecoderCache(3, 3, 4, 20, 16, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="StaticDecoderCache of 3 layers"):  # a list is not a cache
        ours.generate(prompts, 3, cache=cache.layers)
    big = ours.new_cache(batch=4, max_positions=17)  # exactly enough positions, and a spare row
    torch.testing.assert_close(ours.generate(prompts, 10, cache=big), ours.generate(prompts, 10), rtol=0, atol=0)




def test_a_padded_batch_through_the_graph_shaped_step(state_dict, ours):
    """A padded step reads the slots its row's mask allows, also when every slot of the cache is
    read (as in a CUDA graph): the same logits as the eager step."""
    ids = torch.from_numpy(np.random.default_rng(6).integers(0, 256, size=(2, 6)))
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    a, b = ours.new_cache(2, 16), ours.new_cache(2, 16)
    ours.prefill(ids, a, attention_mask=mask[:, :6])
    ours.prefill(ids, b, attention_mask=mask[:, :6])
    token = torch.tensor([[5], [7]])
    eager = ours.decode_step(token, a, attention_mask=mask)
    with torch.inference_mode():
        whole = ours.model(token, b, step_at(6, 1, mask, b.max_positions, "cpu"))[:, -1]
    torch.testing.assert_close(whole, eager, rtol=0, atol=1e-5)
    alone = ours.forward(torch.cat([ids[0, 3:], token[0]]))[0, -1]
    torch.testing.assert_close(eager[0], alone, rtol=0, atol=1e-4)
