"""What only the NumPy decoder has: float64 and float32, and the checks of a GPT-2 state dict in depth.
What both decoders must do is in test_decoders.py."""

import numpy as np
import pytest

from qkv.gpt2 import GPT2Config
from qkv.gpt2 import random_state_dict
from qkv.reference import Decoder


@pytest.fixture(scope="module")
def prompts(small_config):
    return np.random.default_rng(1).integers(0, small_config.vocab_size, size=(3, 7))


def test_float32_decoder_close_to_float64(small_state_dict, prompts):
    d64 = Decoder.from_gpt2_state_dict(small_state_dict, n_head=4)
    d32 = Decoder.from_gpt2_state_dict(small_state_dict, n_head=4, dtype=np.float32)
    assert d32.dtype == np.float32
    cache = d32.new_cache(3)  # a float64 mask or constant would promote every later step (and slow it)
    d32.prefill(prompts[:, :5], cache)
    assert d32.decode_step(prompts[:, 5], cache).dtype == np.float32
    assert all(layer.keys.dtype == layer.values.dtype == np.float32 for layer in cache.layers)
    np.testing.assert_allclose(d32.forward(prompts), d64.forward(prompts), atol=2e-3)


def test_accepts_gpt2model_names_without_prefix():
    cfg = GPT2Config.toy()
    sd = random_state_dict(cfg, seed=1)
    bare = {k.removeprefix("transformer."): v for k, v in sd.items()}
    ids = np.arange(5)[None]
    np.testing.assert_array_equal(Decoder.from_gpt2_state_dict(bare, n_head=4).forward(ids),
                                  Decoder.from_gpt2_state_dict(sd, n_head=4).forward(ids))


# --- a broken state dict: one ValueError that names every problem -------------------------------------
@pytest.fixture
def tiny_sd():
    return random_state_dict(GPT2Config.toy(), seed=1)


def _problems(sd, **kwargs) -> str:
    with pytest.raises(ValueError, match="GPT-2 state dict does not fit the model") as info:
        Decoder.from_gpt2_state_dict(sd, n_head=4, **kwargs)
    return str(info.value)


def test_missing_wte_is_named_beside_every_other_problem(tiny_sd):
    del tiny_sd["transformer.wte.weight"]
    del tiny_sd["transformer.ln_f.bias"]
    del tiny_sd["transformer.h.1.mlp.c_proj.weight"]
    tiny_sd["transformer.h.0.attn.c_proj.bias"] = np.zeros(5)
    msg = _problems(tiny_sd)
    assert "missing transformer.wte.weight (expected shape (vocab_size, 32))" in msg
    assert "missing transformer.ln_f.bias (expected shape (32,))" in msg
    assert "missing transformer.h.1.mlp.c_proj.weight (expected shape (128, 32))" in msg
    assert "transformer.h.0.attn.c_proj.bias has shape (5,), expected (32,)" in msg


@pytest.mark.parametrize("name, bad", [("transformer.wte.weight", np.zeros(97)),
                                       ("transformer.wpe.weight", np.zeros((2, 64, 32)))])
def test_a_table_of_the_wrong_rank_is_named(tiny_sd, name, bad):
    tiny_sd[name] = bad
    tiny_sd["transformer.ln_f.weight"] = np.zeros(31)
    msg = _problems(tiny_sd)
    assert f"{name} has shape {bad.shape}, expected" in msg
    assert "transformer.ln_f.weight has shape (31,), expected (32,)" in msg


def test_a_layer_name_that_is_not_a_number_is_named(tiny_sd):
    tiny_sd["transformer.h.x.attn.c_attn.weight"] = np.zeros((32, 96))
    msg = _problems(tiny_sd)
    assert "transformer.h.x.attn.c_attn.weight: 'x' is not a layer number" in msg


def test_one_mis_shaped_mlp_weight_is_blamed_not_the_others(tiny_sd):
    """The MLP width is read off every layer by a vote, so h.0's bad c_fc does not redefine it."""
    tiny_sd["transformer.h.0.mlp.c_fc.weight"] = np.zeros((32, 7))
    msg = _problems(tiny_sd)
    assert msg.splitlines()[1:] == ["  transformer.h.0.mlp.c_fc.weight has shape (32, 7), expected (32, 128)"]


def test_a_gap_in_the_layer_numbers_is_reported(small_state_dict):
    sd = {k: v for k, v in small_state_dict.items() if not k.startswith("transformer.h.1.")}
    msg = _problems(sd)
    assert "block h.1 has no tensors at all (a gap in the layer numbers; found h.0, h.2)" in msg
    assert "missing transformer.h.1.attn.c_attn.weight (expected shape (64, 192))" in msg


def test_a_missing_last_layer_is_caught_when_n_layer_is_given(small_state_dict):
    sd = {k: v for k, v in small_state_dict.items() if not k.startswith("transformer.h.2.")}
    assert Decoder.from_gpt2_state_dict(sd, n_head=4).config.n_layer == 2  # nothing says a block is missing
    msg = _problems(sd, n_layer=3)
    assert "block h.2 has no tensors at all (n_layer=3; found h.0, h.1)" in msg
    assert "missing transformer.h.2.ln_1.weight" in msg
    assert "block h.2 found, but n_layer=2" in _problems(small_state_dict, n_layer=2)
    assert Decoder.from_gpt2_state_dict(small_state_dict, n_head=4, n_layer=3).config.n_layer == 3


def test_an_incomplete_layer_is_reported(tiny_sd):
    del tiny_sd["transformer.h.1.ln_2.bias"]
    assert "missing transformer.h.1.ln_2.bias (expected shape (32,))" in _problems(tiny_sd)


def test_lm_head_must_be_the_tied_embedding(tiny_sd):
    wte = tiny_sd["transformer.wte.weight"]
    ids = np.arange(6)[None]
    plain = Decoder.from_gpt2_state_dict(tiny_sd, n_head=4).forward(ids)
    for tied in (wte, wte.copy(), wte.astype(np.float32)):  # the same numbers, also in a coarser dtype
        loaded = Decoder.from_gpt2_state_dict({**tiny_sd, "lm_head.weight": tied}, n_head=4)
        np.testing.assert_array_equal(loaded.forward(ids), plain)
    msg = _problems({**tiny_sd, "lm_head.weight": wte + 0.01})
    assert "lm_head.weight differs from transformer.wte.weight" in msg and "tie" in msg
    assert "lm_head.weight has shape (90, 32), expected (97, 32)" in _problems({**tiny_sd, "lm_head.weight": wte[:90]})


def test_n_head_must_be_an_int_but_numpy_ints_are_fine(tiny_sd):
    decoder = Decoder.from_gpt2_state_dict(tiny_sd, n_head=np.int64(4))
    assert decoder.config.n_head == 4 and type(decoder.config.n_head) is int
    for bad in (True, 4.0, "4"):
        with pytest.raises(TypeError, match="n_head must be a positive int"):
            Decoder.from_gpt2_state_dict(tiny_sd, n_head=bad)
    with pytest.raises(ValueError, match="n_head must be a positive int"):
        Decoder.from_gpt2_state_dict(tiny_sd, n_head=0)
    with pytest.raises(TypeError, match="mapping"):
        Decoder.from_gpt2_state_dict(list(tiny_sd.items()), n_head=4)


def test_config_sizes_are_plain_ints():
    cfg = GPT2Config(vocab_size=np.int64(11), n_positions=8, n_embd=8, n_layer=np.int32(1), n_head=2)
    assert cfg.vocab_size == 11 and type(cfg.vocab_size) is int and type(cfg.n_layer) is int
    with pytest.raises(TypeError, match=r"GPT2Config.n_head must be a positive int, got True \(of type bool\)"):
        GPT2Config(n_head=True)
    with pytest.raises(ValueError, match="GPT2Config.n_layer must be a positive int, got 0"):
        GPT2Config(n_layer=0)
