"""The Llama-shaped torch decoder on a GPU: Hugging Face's ``LlamaForCausalLM`` and the NumPy decoder on
the same random weights, cached against uncached, GPU against CPU, the CUDA-graph decode step against
the lesson step, and bfloat16. Run with ``pytest -m gpu`` (``make test-gpu``); like test_torch_gpu, these
fail rather than skip where CUDA is missing."""

import numpy as np
import pytest

from qkv.llama import LlamaConfig, random_state_dict
from qkv.reference import Decoder
from qkv_bench.decode_llama import hf_config

pytestmark = pytest.mark.gpu

SHAPES = {"MHA": 8, "GQA-4": 4, "MQA": 1}  # n_kv_heads, with τ = 8
N_NEW = 32


@pytest.fixture(scope="module")
def torch():
    import torch

    assert torch.cuda.is_available(), "these tests need CUDA: run `pytest -m gpu` on a machine with a GPU"
    return torch


@pytest.fixture(scope="module", params=list(SHAPES))
def shape(request, torch):
    from transformers import LlamaForCausalLM

    config = LlamaConfig.tiny(n_kv_heads=SHAPES[request.param])
    sd = random_state_dict(config, seed=1, std=0.2)  # greedy decoding wanders over many tokens
    hf = LlamaForCausalLM(hf_config(config)).eval()
    hf.load_state_dict({name: torch.from_numpy(w) for name, w in sd.items()}, strict=True)
    return config, sd, hf.cuda()


@pytest.fixture(scope="module")
def prompts(shape):
    return np.random.default_rng(0).integers(0, shape[0].vocab_size, size=(2, 9))


def _ours(sd, config, **options):
    from qkv.torch_decoder import CachedDecoder

    return CachedDecoder.from_llama_state_dict(sd, n_head=config.n_head,
                                               n_positions=config.n_positions, **options)


def test_gpu_logits_match_hugging_face_and_numpy(torch, shape, prompts):
    config, sd, hf = shape
    ours = _ours(sd, config, device="cuda")
    assert ours.device.type == "cuda"
    with torch.no_grad():
        theirs = hf(torch.from_numpy(prompts).cuda()).logits
    got = ours.forward(prompts)
    torch.testing.assert_close(got, theirs, rtol=0, atol=1e-4)
    reference = Decoder.from_llama_state_dict(sd, n_head=config.n_head, n_positions=config.n_positions)
    np.testing.assert_allclose(got.cpu().numpy(), reference.forward(prompts), rtol=0, atol=1e-4)


@pytest.mark.parametrize("fast", [False, True], ids=["lesson-step", "cuda-graph"])
def test_gpu_greedy_tokens_match_hugging_face(torch, shape, prompts, fast):
    config, sd, hf = shape
    ids = torch.from_numpy(prompts).cuda()
    with torch.no_grad():
        expected = hf.generate(ids, max_new_tokens=N_NEW, do_sample=False,
                               attention_mask=torch.ones_like(ids))
    ours = _ours(sd, config, device="cuda", fast=fast)
    assert ours.uses_cuda_graph == fast
    got = ours.generate(prompts, N_NEW)
    assert len(set(expected[:, 9:].flatten().tolist())) > 8  # the run visits many tokens
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_gpu_cached_uncached_and_cpu_agree(torch, shape, prompts):
    config, sd, _ = shape
    gpu = _ours(sd, config, device="cuda", fast=True)
    cached = gpu.generate(prompts, 24)
    assert cached.device.type == "cuda"
    torch.testing.assert_close(cached, gpu.generate(prompts, 24, use_cache=False), rtol=0, atol=0)
    cpu = _ours(sd, config, device="cpu")
    torch.testing.assert_close(cached.cpu(), cpu.generate(prompts, 24), rtol=0, atol=0)


def test_the_cuda_graph_replays_the_lesson_step_in_place(torch, shape, prompts):
    """Step by step: the replayed graph's logits are the lesson step's, it writes the same rotated keys
    and values into the same storage, and a new cache (another batch) is captured again."""
    config, sd, _ = shape
    graphed = _ours(sd, config, device="cuda", fast=True)
    lesson = _ours(sd, config, device="cuda")
    a, b = graphed.new_cache(2, 20), lesson.new_cache(2, 20)
    pointers = [layer.k.data_ptr() for layer in a.layers]
    graphed.prefill(prompts[:, :4], a)
    lesson.prefill(prompts[:, :4], b)
    for t in range(4, 9):
        torch.testing.assert_close(graphed.decode_step(prompts[:, t], a),
                                   lesson.decode_step(prompts[:, t], b), rtol=0, atol=1e-4)
        assert a.length == b.length == t + 1
    assert [layer.k.data_ptr() for layer in a.layers] == pointers
    for layer in range(config.n_layer):
        torch.testing.assert_close(a[layer].keys, b[layer].keys, rtol=0, atol=1e-5)
        torch.testing.assert_close(a[layer].values, b[layer].values, rtol=0, atol=1e-5)
    torch.testing.assert_close(graphed.generate(prompts[:1], 12), lesson.generate(prompts[:1], 12),
                               rtol=0, atol=0)


def test_bfloat16_on_gpu(torch, shape, prompts):
    config, sd, _ = shape
    full = _ours(sd, config, device="cuda")
    half = _ours(sd, config, device="cuda", dtype="bfloat16", fast=True)
    assert half.dtype == torch.bfloat16
    assert half.new_cache(1).nbytes == full.new_cache(1).nbytes // 2
    assert (half.forward(prompts).float() - full.forward(prompts)).abs().max().item() < 0.5
    out = half.generate(prompts, 20)
    np.testing.assert_array_equal(out[:, :9].cpu().numpy(), prompts)
    # each new token is the bfloat16 model's own greedy choice given the tokens before it (up to ties)
    logits = half.forward(out[:, :-1])[:, 8:].float()  # (2, 20, vocab): the logits that chose out[:, 9:]
    chosen = logits.gather(-1, out[:, 9:, None])[..., 0]
    assert (logits.max(-1).values - chosen).max().item() < 0.05
    assert len(set(out[:, 9:].flatten().tolist())) >= 5, "degenerate generation would make this check weak"
