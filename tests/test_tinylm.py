"""The tiny character model of chapter 4: its shipped weights, tokenizer, and the training script."""

import numpy as np
import pytest

from qkv.tinylm import (CharTokenizer, corpus_text, load_tiny_model, mean_loss, save, tiny_config,
                        weights_path)


def test_tokenizer_round_trips_the_corpus():
    text = corpus_text()
    tokenizer = CharTokenizer.from_text(text)
    ids = tokenizer.encode(text)
    assert ids.min() == 0 and ids.max() == tokenizer.vocab_size - 1
    assert tokenizer.decode(ids) == text
    with pytest.raises(ValueError, match="alphabet"):
        tokenizer.encode("Capital?")


def test_shipped_weights_are_small_and_load():
    assert weights_path().stat().st_size < 1_000_000
    decoder, tokenizer = load_tiny_model()
    assert decoder.config == tiny_config(tokenizer.vocab_size)
    assert tokenizer == CharTokenizer.from_text(corpus_text())


def test_shipped_model_has_learned_the_corpus():
    decoder, tokenizer = load_tiny_model()
    uniform = np.log(tokenizer.vocab_size)  # ~3.4 nats/char for an untrained model
    assert mean_loss(decoder, tokenizer.encode(corpus_text())) < 0.5 < uniform


def test_cached_and_uncached_generation_give_the_same_words():
    decoder, tokenizer = load_tiny_model()
    prompt = tokenizer.encode("the cache ")
    cached = decoder.generate(prompt, 60, use_cache=True)
    plain = decoder.generate(prompt, 60, use_cache=False)
    np.testing.assert_array_equal(cached, plain)
    text = tokenizer.decode(cached)
    assert text.startswith("the cache ")
    words = text.split()
    corpus_words = set(corpus_text().replace(",", " ").replace(".", " ").split())
    # a trained model writes words of its corpus, not character soup
    assert sum(w.strip(",.") in corpus_words for w in words) >= 0.8 * len(words)


@pytest.mark.slow
def test_training_script_writes_weights_the_decoder_loads(tmp_path):
    from qkv.tinylm import train  # needs torch and transformers, both required: a missing one fails here

    state, tokenizer = train(steps=3, batch=2, context=16)
    assert "lm_head.weight" not in state  # tied to wte
    path = tmp_path / "w.npz"
    save(state, tokenizer, path)
    decoder, loaded = load_tiny_model(path)
    assert loaded == tokenizer
    np.testing.assert_allclose(decoder.model.wte, state["transformer.wte.weight"].astype(np.float16), atol=0)
    out = decoder.generate(tokenizer.encode("the "), 5)
    assert out.shape == (1, 9)
