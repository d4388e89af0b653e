"""The torch decoder on a GPU: the same equivalences as on the CPU, plus the CUDA graph of the decode step and half
precision. Run with ``pytest -m gpu`` (``make test-gpu``) on a machine with CUDA; the default run deselects
these. They fail, rather than skip, where CUDA is missing: a GPU run that tests nothing must not pass."""

import numpy as np
import pytest

from qkv.gpt2 import GPT2Config, random_state_dict
from qkv.reference import Decoder

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def torch():
    import torch

    assert torch.cuda.is_available(), "these tests need CUDA: run `pytest -m gpu` on a machine with a GPU"
    return torch


@pytest.fixture(scope="module")
def state_dict():
    return random_state_dict(GPT2Config.small(), seed=0, std=0.3)


@pytest.fixture(scope="module")
def prompts():
    return np.random.default_rng(1).integers(0, 256, size=(3, 7))


def _decoder(torch, state_dict, **kwargs):
    from qkv.torch_decoder import CachedDecoder

    return CachedDecoder.from_gpt2_state_dict(state_dict, n_head=4, **kwargs)


def test_device_none_picks_cuda(torch, state_dict):
    assert _decoder(torch, state_dict).device.type == "cuda"


def test_gpu_logits_match_numpy_reference(torch, state_dict, prompts):
    ours = _decoder(torch, state_dict, device="cuda")
    ref = Decoder.from_gpt2_state_dict(state_dict, n_head=4)
    np.testing.assert_allclose(ours.forward(prompts).cpu().numpy(), ref.forward(prompts), rtol=0, atol=1e-4)
    np.testing.assert_array_equal(ours.generate(prompts, 30).cpu().numpy(), ref.generate(prompts, 30))


def test_gpu_cached_uncached_and_cpu_agree(torch, state_dict, prompts):
    gpu = _decoder(torch, state_dict, device="cuda")
    cpu = _decoder(torch, state_dict, device="cpu")
    cached = gpu.generate(prompts, 40)
    assert cached.device.type == "cuda"
    torch.testing.assert_close(cached, gpu.generate(prompts, 40, use_cache=False), rtol=0, atol=0)
    torch.testing.assert_close(cached.cpu(), cpu.generate(prompts, 40), rtol=0, atol=0)


def test_cuda_graph_matches_eager(torch, state_dict, prompts):
    eager = _decoder(torch, state_dict, device="cuda")
    graphed = _decoder(torch, state_dict, device="cuda", fast=True)
    assert graphed.uses_cuda_graph
    torch.testing.assert_close(graphed.generate(prompts, 50), eager.generate(prompts, 50), rtol=0, atol=0)
    cache = graphed.new_cache(3)
    pointers = [layer.k.data_ptr() for layer in cache.layers]
    graphed.prefill(prompts, cache)
    token = torch.as_tensor(prompts[:, -1], device="cuda")
    for step in range(1, 6):
        token = graphed.decode_step(token, cache).argmax(-1)
        assert cache.length == 7 + step
    assert [layer.k.data_ptr() for layer in cache.layers] == pointers
    # a second generate with a new cache recaptures the graph and still agrees
    torch.testing.assert_close(graphed.generate(prompts[:1], 20), eager.generate(prompts[:1], 20), rtol=0, atol=0)


def test_seeded_sampling_is_reproducible_on_gpu(torch, state_dict, prompts):
    ours = _decoder(torch, state_dict, device="cuda", fast=True)
    a = ours.generate(prompts, 20, temperature=1.0, seed=3)
    torch.testing.assert_close(a, ours.generate(prompts, 20, temperature=1.0, seed=3), rtol=0, atol=0)
    assert not torch.equal(a, ours.generate(prompts, 20, temperature=1.0, seed=4))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_on_gpu(torch, state_dict, prompts, dtype):
    full = _decoder(torch, state_dict, device="cuda")
    half = _decoder(torch, state_dict, device="cuda", dtype=dtype, fast=True)
    assert half.dtype == getattr(torch, dtype) and half.new_cache(1).nbytes == full.new_cache(1).nbytes // 2
    diff = (half.forward(prompts).float() - full.forward(prompts)).abs().max().item()
    assert diff < 0.5
    out = half.generate(prompts, 20)
    assert out.shape == (3, 27)
    np.testing.assert_array_equal(out[:, :7].cpu().numpy(), prompts)
    # Each new token is the half-precision model's own greedy choice given the tokens before it: its logit,
    # recomputed from scratch, is the largest (up to rounding, where two logits all but tie).
    logits = half.forward(out[:, :-1])[:, 6:].float()  # (3, 20, vocab): the logits that chose out[:, 7:]
    chosen = logits.gather(-1, out[:, 7:, None])[..., 0]
    assert (logits.max(-1).values - chosen).max().item() < 0.05
    assert len(set(out[:, 7:].flatten().tolist())) >= 5, "degenerate generation would make this check weak"


def test_hugging_face_greedy_on_gpu(torch):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=211, n_positions=96, n_embd=48, n_layer=3, n_head=6, initializer_range=0.3,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval().cuda()
    from qkv.torch_decoder import CachedDecoder

    ours = CachedDecoder.from_gpt2_state_dict(model.state_dict(), n_head=6, device="cuda", fast=True)
    ids = torch.from_numpy(np.random.default_rng(3).integers(0, 211, size=(3, 8))).cuda()
    with torch.no_grad():
        theirs = model.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False, use_cache=True,
                                pad_token_id=0, attention_mask=torch.ones_like(ids))
    torch.testing.assert_close(ours.generate(ids, 64), theirs, rtol=0, atol=0)


def test_generate_into_a_given_cache_on_gpu(torch, state_dict, prompts):
    ours = _decoder(torch, state_dict, device="cuda", fast=True)
    cache = ours.new_cache(3, 27)  # the device check must accept the decoder's own cuda:0 cache
    torch.testing.assert_close(ours.generate(prompts, 20, cache=cache), ours.generate(prompts, 20), rtol=0, atol=0)
    with pytest.raises(ValueError, match="too small for this generation"):
        ours.generate(prompts, 21, cache=cache)
    cpu_cache = _decoder(torch, state_dict, device="cpu").new_cache(3, 27)
    with pytest.raises(ValueError, match="on cpu but this decoder computes in torch.float32 on cuda"):
        ours.generate(prompts, 20, cache=cpu_cache)


def test_bench_bound_counts_every_cache_slot_with_cuda_graphs(torch):
    """A graphed decode step attends over every slot of its cache, so the bound counts them all."""
    from qkv_bench import decode

    kw = dict(preset="toy", backend="torch", device="cuda", prompt=4, new_tokens=6, uncached_tokens=2,
              repeats=1, hf=False, positions=[8, 16])
    graphed, eager = decode.measure(fast=True, **kw), decode.measure(fast=False, **kw)
    assert graphed["cuda_graph"] and not eager["cuda_graph"]
    assert "CUDA graph" in decode.format_table(graphed) and "CUDA graph" not in decode.format_table(eager)
    from test_bench_decode import expected_bytes_per_token

    assert eager["bytes_per_token"] == pytest.approx(expected_bytes_per_token(GPT2Config.toy(), 4, 6, False))
    assert graphed["bytes_per_token"] == pytest.approx(expected_bytes_per_token(GPT2Config.toy(), 4, 6, True))
