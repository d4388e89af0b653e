"""The Llama-shaped decoders (NumPy and torch) against Hugging Face ``LlamaForCausalLM`` on the same
random weights, offline: four shapes from multi-head (n_kv_heads = τ) to multi-query (1)."""

import numpy as np
import pytest
import torch

from qkv.llama import LlamaConfig, random_state_dict
from qkv.memory import cache_bytes
from qkv.reference import Decoder
from qkv.torch_decoder import CachedDecoder
from qkv_bench.decode_llama import hf_config
from test_torch_decoder import assert_the_graph_shaped_step_matches_the_eager_step

from transformers import LlamaForCausalLM

SHAPES = {"MHA": 8, "GQA-4": 4, "GQA-2": 2, "MQA": 1}  # n_kv_heads, with τ = 8
N_NEW = 32


def kind_of(config: LlamaConfig) -> dict:
    if config.n_kv_heads == config.n_head:
        return {"kind": "full"}
    if config.n_kv_heads == 1:
        return {"kind": "multi-query"}
    return {"kind": "grouped-query", "groups": config.n_kv_heads}


def load(backend: str, sd, config: LlamaConfig):
    if backend == "numpy":
        return Decoder.from_llama_state_dict(sd, n_head=config.n_head, dtype=np.float32,
                                             n_positions=config.n_positions)
    return CachedDecoder.from_llama_state_dict(sd, n_head=config.n_head, device="cpu",
                                               n_positions=config.n_positions)


def array(x) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@pytest.fixture(scope="module", params=list(SHAPES))
def shape(request):
    config = LlamaConfig.tiny(n_kv_heads=SHAPES[request.param])
    # std 0.2: greedy decoding wanders over many tokens, so token-for-token checks mean something
    sd = random_state_dict(config, seed=1, std=0.2)
    hf = LlamaForCausalLM(hf_config(config)).eval()
    hf.load_state_dict({name: torch.from_numpy(w) for name, w in sd.items()}, strict=True)
    return config, sd, hf


@pytest.fixture(scope="module", params=["numpy", "torch"])
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def prompts(shape):
    return np.random.default_rng(0).integers(0, shape[0].vocab_size, size=(2, 9))


def test_logits_match_hugging_face(shape, backend, prompts):
    config, sd, hf = shape
    with torch.no_grad():
        expected = hf(torch.from_numpy(prompts)).logits.numpy()
    got = array(load(backend, sd, config).forward(prompts))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_greedy_tokens_match_hugging_face(shape, backend, prompts):
    config, sd, hf = shape
    with torch.no_grad():
        expected = hf.generate(torch.from_numpy(prompts), max_new_tokens=N_NEW,
                               do_sample=False, attention_mask=torch.ones(prompts.shape)).numpy()
    got = array(load(backend, sd, config).generate(prompts, N_NEW))
    assert len(set(expected[:, 9:].ravel())) > 8  # the run visits many tokens
    np.testing.assert_array_equal(got, expected)


def test_cached_decoding_equals_recomputation(shape, backend, prompts):
    config, sd, _ = shape
    model = load(backend, sd, config)
    full = array(model.forward(prompts))
    cache = model.new_cache(batch=2, max_positions=9)
    steps = [array(model.prefill(prompts[:, :4], cache))]
    steps += [array(model.decode_step(prompts[:, t], cache))[:, None] for t in range(4, 9)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(array(model.generate(prompts, 12, use_cache=False)),
                                  array(model.generate(prompts, 12)))


@pytest.mark.parametrize("length", [1, 40])
def test_cache_bytes_measured_equal_the_formula(shape, backend, prompts, length):
    config, sd, _ = shape
    model = load(backend, sd, config)
    batch = 3
    cache = model.new_cache(batch=batch, max_positions=length)
    ids = np.random.default_rng(5).integers(0, config.vocab_size, (batch, length))
    model.prefill(ids, cache)
    layers = [cache[layer] for layer in range(config.n_layer)]
    # the arrays actually allocated: n_kv_heads heads, not τ
    if backend == "numpy":
        measured = sum(c._k.nbytes + c._v.nbytes for c in layers)
    else:
        measured = sum(c.k.nbytes + c.v.nbytes for c in layers)
    assert all(c.keys.shape == (batch, config.n_kv_heads, length, config.head_dim)
               for c in layers)
    expected = cache_bytes(**kind_of(config), i=length, n_layer=config.n_layer,
                           tau=config.n_head, head_dim=config.head_dim, bytes_per_number=4,
                           batch=batch)
    assert measured == cache.nbytes == expected


def test_loads_hugging_face_tensors_and_reads_the_shape(backend):
    config = LlamaConfig.tiny(n_kv_heads=2)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(hf_config(config)).eval()
    model = load(backend, hf.state_dict(), config)
    assert (model.config.n_kv_heads, model.config.d_ff, model.config.n_layer) == (2, 96, 2)
    ids = np.arange(10)[None, :]
    with torch.no_grad():
        expected = hf(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(array(model.forward(ids)), expected, atol=1e-4, rtol=0)


def test_tied_output_layer():
    config = LlamaConfig(**{**LlamaConfig.tiny().__dict__, "tie_word_embeddings": True})
    sd = random_state_dict(config, seed=2, std=0.2)
    assert "lm_head.weight" not in sd
    hf = LlamaForCausalLM(hf_config(config)).eval()
    hf.load_state_dict({n: torch.from_numpy(w) for n, w in sd.items()}, strict=False)
    ids = np.arange(7)[None, :]
    with torch.no_grad():
        expected = hf(torch.from_numpy(ids)).logits.numpy()
    for backend in ("numpy", "torch"):
        model = load(backend, sd, config)
        assert model.config.tie_word_embeddings
        np.testing.assert_allclose(array(model.forward(ids)), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_bad_state_dicts_are_named(backend_name):
    config = LlamaConfig.tiny(n_kv_heads=2)
    sd = random_state_dict(config, seed=0)
    missing = {n: w for n, w in sd.items() if not n.endswith("layers.1.mlp.up_proj.weight")}
    with pytest.raises(ValueError, match=r"missing model\.layers\.1\.mlp\.up_proj\.weight"):
        load(backend_name, missing, config)
    bad = dict(sd)
    bad["model.layers.0.self_attn.k_proj.weight"] = np.zeros((24, 64), np.float32)
    with pytest.raises(ValueError, match=r"k_proj\.weight has shape \(24, 64\), expected \(16, 64\)"):
        load(backend_name, bad, config)
    loader = (Decoder if backend_name == "numpy" else CachedDecoder).from_llama_state_dict
    with pytest.raises(ValueError, match="n_head=3 must split"):
        loader(sd, n_head=3)
    with pytest.raises(ValueError, match="not a whole number of key/value heads"):
        loader(sd, n_head=2)  # head_dim 32: k_proj's 16 rows are half a head
    with pytest.raises(TypeError, match="mapping"):
        loader([1, 2], n_head=8)


def test_the_cache_shrinks_by_the_group_size():
    sizes = {}
    for name, g in SHAPES.items():
        config = LlamaConfig.tiny(n_kv_heads=g)
        model = Decoder.from_llama_state_dict(random_state_dict(config), n_head=8,
                                              n_positions=128)
        cache = model.new_cache(1, 20)
        model.prefill(np.zeros((1, 20), dtype=np.int64), cache)
        sizes[name] = cache.nbytes
    assert sizes["MHA"] == 2 * sizes["GQA-4"] == 4 * sizes["GQA-2"] == 8 * sizes["MQA"]


def test_the_decoders_grouped_attention_equals_attention_per_query_head():
    """grouped_attend (a group's query heads stacked as rows of its key/value head, Q Kᵀ taken
    as (K Qᵀ)ᵀ) gives each query head h (from 0) Att(q^[h], K^[h // r], V^[h // r]), with
    and without a causal mask over cached positions, for r = 1 (MHA) to τ (MQA)."""
    from qkv.reference import attention, causal_mask
    from qkv.reference.llama_decoder import grouped_attend

    rng = np.random.default_rng(2)
    q = rng.standard_normal((2, 8, 3, 4))  # (batch, τ, n, head_dim): 3 new positions
    for g in (8, 4, 2, 1):
        k, v = rng.standard_normal((2, 2, g, 7, 4))  # (batch, g, i, head_dim): 4 cached + 3
        for mask in (None, causal_mask(3, 7)):
            out = grouped_attend(q, k, v, mask)
            assert out.shape == q.shape
            r = 8 // g
            for h in range(8):
                expected = attention(q[:, h], k[:, h // r], v[:, h // r], mask)
                np.testing.assert_allclose(out[:, h], expected, atol=1e-12)


def test_the_graph_shaped_step_matches_the_eager_step(shape, prompts):
    """The one Llama step as a CUDA graph replays it (see test_torch_decoder.py), here eagerly."""
    config, sd, _ = shape
    assert_the_graph_shaped_step_matches_the_eager_step(load("torch", sd, config), prompts)


def test_the_llama_benchmark_times_a_step_and_formats_its_tables():
    from qkv_bench.decode_llama import (DecodeRow, StepRow, decode_row, format_tables, step_ms,
                                       step_row)

    config = LlamaConfig.tiny(n_kv_heads=2)
    row = decode_row(config, batch=2, prompt=8, new_tokens=4, repeats=1, numpy=True)
    assert (row.batch, row.prompt, row.new_tokens) == (2, 8, 4)
    assert min(row.torch_tps, row.numpy_tps, row.hf_tps) > 0
    for backend in ("numpy", "torch"):
        model = load(backend, random_state_dict(config), config)
        ms, nbytes = step_ms(model, 2, 50, 1, backend)
        assert ms > 0
        assert nbytes == cache_bytes("grouped-query", 50, n_layer=2, tau=8, head_dim=8,
                                     bytes_per_number=4, batch=2, groups=2)
    row = step_row(config, "numpy", 2, 50, 1)  # the GQA and MHA steps, interleaved
    assert row.gqa_ms > 0 and row.mha_ms > 0
    assert row.mha_cache_mib == 4 * row.gqa_cache_mib  # τ = 8 heads against g = 2
    text = format_tables([DecodeRow(1, 512, 32, 30.0, 20.0, 10.0)],
                         [StepRow("torch", 8, 2048, 5.0, 10.0, 1.0, 4.0)], config)
    assert "3.00" in text and "2.00" in text and "0.50" in text  # torch/HF, numpy/HF, GQA/MHA


def test_one_decoder_class_loads_both_shapes_and_refuses_nothing():
    """GPT-2 and Llama are siblings under one decoding core: the same Decoder (CachedDecoder)
    holds either model, and neither model class carries the other's loader."""
    from qkv.gpt2 import GPT2Config
    from qkv.gpt2 import random_state_dict as gpt2_weights
    from qkv.reference import GPT2Model, LlamaDecoder, LlamaModel
    from qkv.torch_gpt2 import GPT2Model as TorchGPT2
    from qkv.torch_llama import LlamaModel as TorchLlama

    config = LlamaConfig.tiny()
    llama, gpt2 = random_state_dict(config), gpt2_weights(GPT2Config.toy())
    for loader, llama_cls, gpt2_cls in ((Decoder, LlamaModel, GPT2Model),
                                        (CachedDecoder, TorchLlama, TorchGPT2)):
        assert type(loader.from_llama_state_dict(llama, n_head=8).model) is llama_cls
        assert type(loader.from_gpt2_state_dict(gpt2, n_head=4).model) is gpt2_cls
        assert not hasattr(llama_cls, "from_gpt2_state_dict")
        assert not hasattr(gpt2_cls, "from_llama_state_dict")
    assert LlamaDecoder is Decoder  # the old name, kept for one release


@pytest.fixture(scope="module")
def padded(shape):
    """Three prompts of 9, 5 and 2 tokens, left-padded to 9 with random tokens (never read)."""
    config = shape[0]
    rng = np.random.default_rng(4)
    ids = rng.integers(0, config.vocab_size, size=(3, 9))
    mask = np.ones((3, 9), dtype=np.int64)
    mask[1, :4] = mask[2, :7] = 0
    return ids, mask


def test_a_padded_batch_matches_hugging_face_and_each_prompt_alone(shape, backend, padded):
    """Left padding with rotary positions per row: Hugging Face's generate with the same mask
    gives the same tokens, and so does each prompt decoded alone."""
    config, sd, hf = shape
    ids, mask = padded
    with torch.no_grad():
        expected = hf.generate(torch.from_numpy(ids), max_new_tokens=16, do_sample=False,
                               attention_mask=torch.from_numpy(mask)).numpy()
    model = load(backend, sd, config)
    got = array(model.generate(ids, 16, attention_mask=mask))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(array(model.generate(ids, 16, use_cache=False,
                                                       attention_mask=mask)), got)
    for row, start in enumerate((0, 4, 7)):
        alone = array(model.generate(ids[row, start:], 16))[0]
        np.testing.assert_array_equal(got[row, 9:], alone[9 - start:])
    assert len(set(got[:, 9:].ravel())) > 5  # the run visits many tokens


def test_an_all_ones_mask_is_no_padding(shape, backend, prompts):
    config, sd, _ = shape
    model = load(backend, sd, config)
    ones = array(model.generate(prompts, 4, attention_mask=np.ones(prompts.shape, dtype=np.int64)))
    np.testing.assert_array_equal(ones, array(model.generate(prompts, 4)))
