"""A tiny character-level GPT-2 trained on text the package ships, so chapter 4 can show real words.

The corpus is ``qkv/data/tiny_corpus.txt`` (a few kilobytes the course wrote about queries, keys and
caches). ``python -m qkv.tinylm`` trains a GPT-2-shaped model on it (one to a few minutes on a CPU) with
Hugging Face's ``GPT2LMHeadModel`` and writes ``qkv/data/tinylm.npz``: the weights under GPT-2's parameter
names, in float16 (well under 1 MB), plus the alphabet. ``load_tiny_model()`` reads that file into the
NumPy ``qkv.reference.Decoder``, which needs neither torch nor transformers.

Tokens are characters: token id t is the t-th character of the sorted alphabet (ids count from 0).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from qkv.gpt2 import GPT2Config
from qkv.reference.decoder import Decoder

DATA = "data"
CORPUS = "tiny_corpus.txt"
WEIGHTS = "tinylm.npz"
TAU = 4  # heads: stored in the weights file too, since it cannot be read off the tensors


def tiny_config(vocab_size: int) -> GPT2Config:
    """The shape of the tiny model: width 64, 2 layers, τ = 4 heads, 128 positions."""
    return GPT2Config(vocab_size=vocab_size, n_positions=128, n_embd=64, n_layer=2, n_head=TAU)


@dataclass(frozen=True)
class CharTokenizer:
    alphabet: str  # every character the model knows, sorted; a character's index is its token id

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)

    def encode(self, text: str) -> np.ndarray:
        unknown = sorted(set(text) - set(self.alphabet))
        if unknown:
            raise ValueError(f"characters {unknown!r} are not in the model's alphabet {self.alphabet!r}")
        index = {c: t for t, c in enumerate(self.alphabet)}
        return np.array([index[c] for c in text], dtype=np.int64)

    def decode(self, ids) -> str:
        return "".join(self.alphabet[int(t)] for t in np.asarray(ids).reshape(-1))


def corpus_text() -> str:
    return resources.files("qkv").joinpath(DATA, CORPUS).read_text(encoding="utf-8")


def weights_path() -> Path:
    return Path(str(resources.files("qkv").joinpath(DATA, WEIGHTS)))


def load_tiny_model(path: str | Path | None = None) -> tuple[Decoder, CharTokenizer]:
    """The trained tiny model as a NumPy ``Decoder`` (float64) and its tokenizer."""
    path = weights_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; train it with `python -m qkv.tinylm`")
    with np.load(path) as data:
        alphabet = "".join(chr(c) for c in data["alphabet"])
        tau = int(data["n_head"])
        state = {name: data[name] for name in data.files if name not in ("alphabet", "n_head")}
    return Decoder.from_gpt2_state_dict(state, n_head=tau), CharTokenizer(alphabet)


def mean_loss(decoder: Decoder, ids: np.ndarray, context: int = 64) -> float:
    """Average next-character cross-entropy (nats) over consecutive windows of ``context`` characters."""
    losses = []
    for start in range(0, len(ids) - context - 1, context):
        window = ids[start : start + context + 1]
        logits = decoder.forward(window[:-1])[0]  # (context, vocab)
        logits = logits - logits.max(axis=-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        losses.append(-log_probs[np.arange(context), window[1:]].mean())
    return float(np.mean(losses))


def train(steps: int = 1500, *, seed: int = 0, batch: int = 16, context: int = 128, lr: float = 3e-3,
          log_every: int = 0) -> tuple[dict[str, np.ndarray], CharTokenizer]:
    """Train the tiny model on the corpus; return its GPT-2 state dict (NumPy float32) and tokenizer.

    Needs torch and transformers (imported here, not at module import).
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    text = corpus_text()
    tokenizer = CharTokenizer.from_text(text)
    config = tiny_config(tokenizer.vocab_size)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.n_positions, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=config.layer_norm_eps,
        tie_word_embeddings=True))
    data = torch.tensor(tokenizer.encode(text))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(1, steps + 1):
        starts = torch.randint(0, len(data) - context - 1, (batch,), generator=generator)
        x = torch.stack([data[s : s + context] for s in starts])  # (batch, context)
        loss = model(input_ids=x, labels=x).loss  # labels are shifted inside the model
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if log_every and step % log_every == 0:
            print(f"step {step:5d}  loss {loss.item():.3f}")
    state = {name: t.detach().cpu().numpy().astype(np.float32) for name, t in model.state_dict().items()
             if not name.endswith((".attn.bias", ".attn.masked_bias")) and name != "lm_head.weight"}
    return state, tokenizer


def save(state: dict[str, np.ndarray], tokenizer: CharTokenizer, path: str | Path) -> None:
    arrays = {name: value.astype(np.float16) for name, value in state.items()}
    np.savez_compressed(path, alphabet=np.array([ord(c) for c in tokenizer.alphabet], dtype=np.int32),
                        n_head=np.array(TAU), **arrays)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help=f"default: the package's data/{WEIGHTS}")
    args = parser.parse_args(argv)
    out = args.out or weights_path()
    t0 = time.perf_counter()
    state, tokenizer = train(args.steps, seed=args.seed, log_every=100)
    save(state, tokenizer, out)
    decoder, tokenizer = load_tiny_model(out)
    print(f"trained in {time.perf_counter() - t0:.0f} s; wrote {out} ({out.stat().st_size / 1024:.0f} KiB); "
          f"loss on the corpus {mean_loss(decoder, tokenizer.encode(corpus_text())):.3f} nats/char")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
