"""`qkv bench decode` on the toy preset: the table has its rows, and every number in it is a real,
positive, finite measurement (not the speed goals: timings on a shared machine are not test material)."""

import math
import re

import pytest

from qkv_grading import cli
from qkv_bench import decode
from qkv.gpt2 import GPT2Config, expected_shapes, random_state_dict

TINY = ["--preset", "toy", "--new-tokens", "8", "--uncached-tokens", "4", "--prompt", "6", "--repeats", "1"]
ROW = re.compile(r"^  (.+?)\s{2,}(-?[\d.]+(?:e[+-]?\d+)?|nan|inf)\s+(tokens/s|x|ms|GB/s|MB|%)$")


def _rows(text: str) -> dict[str, float]:
    """The rows of one table (its title line first) as {row name: number}."""
    rows = {}
    for line in text.splitlines()[1:]:
        match = ROW.match(line)
        assert match, f"unexpected line in the table: {line!r}"
        rows[match.group(1)] = float(match.group(2))
    return rows


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_cli_prints_ratios_and_positive_finite_numbers(capsys, backend):
    assert cli.main(["bench", "decode", "--backend", backend, *TINY]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"qkv bench decode: backend {backend}, preset toy")
    rows = _rows(out)
    who = "torch CachedDecoder" if backend == "torch" else "NumPy Decoder"
    for name in (f"{who}, cached", f"{who}, uncached (4 new tokens)", "Hugging Face GPT-2 generate, cached",
                 "ratio ours cached / HF cached", "ratio ours cached / ours uncached",
                 "decode step at position 16", "decode step at position 32", "decode step at position 64",
                 "memory bandwidth (tensor copy)", "bytes read per token (weights + cache)", "bandwidth bound",
                 "fraction of the bound reached"):
        assert name in rows, f"missing row {name!r} in:\n{out}"
        assert math.isfinite(rows[name]) and rows[name] > 0, f"{name} = {rows[name]}"
    cached, hf = rows[f"{who}, cached"], rows["Hugging Face GPT-2 generate, cached"]
    assert rows["ratio ours cached / HF cached"] == pytest.approx(cached / hf, rel=0.02)


def test_measure_returns_documented_keys_without_hf():
    r = decode.measure(preset="toy", backend="torch", prompt=4, new_tokens=6, uncached_tokens=3, repeats=1,
                       hf=False, positions=[8, 40], device="cpu")
    assert r["hf_tokens_per_s"] is None and r["ratio_vs_hf"] is None
    assert list(r["step_ms"]) == [8, 40] and all(ms > 0 for ms in r["step_ms"].values())
    for key in ("cached_tokens_per_s", "uncached_tokens_per_s", "ratio_cached_vs_uncached", "bandwidth_GBps",
                "bytes_per_token", "bound_tokens_per_s", "bound_fraction"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert "Hugging Face" not in decode.format_table(r)
    # bytes per token: the weights once per step (28640 float32 numbers, see test_expected_bytes_by_hand),
    # plus the cache read so far
    cfg = GPT2Config.toy()
    assert r["weight_bytes"] == 4 * 28640
    assert r["bytes_per_token"] == pytest.approx(expected_bytes_per_token(cfg, 4, 6, False))
    assert r["n_params"] == sum(math.prod(shape) for shape in expected_shapes(cfg).values())


def test_bad_settings_are_reported(capsys):
    assert cli.main(["bench", "decode", "--preset", "toy", "--new-tokens", "100"]) == 2
    assert "exceed the toy model's n_positions=64" in capsys.readouterr().err
    with pytest.raises(ValueError, match="float32 only"):
        decode.measure(preset="toy", backend="numpy", new_tokens=8, dtype="bfloat16")
    with pytest.raises(ValueError, match="positions must lie in"):
        decode.measure(preset="toy", new_tokens=8, positions=[1, 80])


# --- the printed table ----------------------------------------------------------------------------
def _result(**changes) -> dict:
    """A result as ``measure`` returns it, with made-up numbers (no timing)."""
    r = {"preset": "toy", "backend": "numpy", "device": "cpu", "dtype": "float32", "batch": 1, "prompt": 6,
         "new_tokens": 8, "uncached_tokens": 4, "n_params": 12_345, "cached_tokens_per_s": 1234.56,
         "uncached_tokens_per_s": 300.0, "hf_tokens_per_s": 1000.0, "ratio_vs_hf": 1.23456,
         "ratio_cached_vs_uncached": 4.115, "step_ms": {16: 0.0123, 32: 0.5, 64: 12.0}, "bandwidth_GBps": 20.0,
         "bytes_per_token": 113_000.0, "weight_bytes": 110_000, "bound_tokens_per_s": 180_000.0,
         "bound_fraction": 1.23e-5, "cuda_graph": False}
    return {**r, **changes}


def test_small_numbers_keep_significant_digits():
    """The toy preset reaches ~0.001 % of the bound; one decimal would print 0.0 (the old flaky failure)."""
    r = _result()
    rows = _rows(decode.format_table(r))
    assert rows["fraction of the bound reached"] == pytest.approx(100 * r["bound_fraction"], rel=0.01)
    assert rows["decode step at position 16"] == pytest.approx(0.0123, rel=0.01)
    assert rows["bytes read per token (weights + cache)"] == pytest.approx(0.113, rel=0.01)
    # numbers of 1 and more keep their fixed decimals, so the columns stay easy to read
    table = decode.format_table(r)
    assert "1234.6 tokens/s" in table and "12.00 ms" in table and "1.23 x" in table
    assert all(v > 0 for v in rows.values())


def test_title_says_when_steps_read_the_whole_cache():
    assert "CUDA graph" not in decode.format_table(_result())
    title = decode.format_table(_result(backend="torch", device="cuda:0", cuda_graph=True)).splitlines()[0]
    assert "CUDA graph: each decode step attends over every cache slot" in title


def test_several_presets_print_one_table_each(capsys):
    args = ["bench", "decode", "--backend", "numpy", "--no-hf", "--preset", "toy", *TINY]
    assert cli.main(args) == 0
    tables = capsys.readouterr().out.split("\n\n")
    assert len(tables) == 2
    for table in tables:
        assert table.startswith("qkv bench decode: backend numpy, preset toy")
        assert _rows(table.strip())["NumPy Decoder, cached"] > 0


def test_every_preset_is_checked_before_the_first_measurement(capsys, monkeypatch):
    measured = []
    monkeypatch.setattr(decode, "measure", lambda **kw: measured.append(kw["preset"]) or _result(**kw))
    args = ["bench", "decode", "--no-hf", "--new-tokens", "100", "--preset", "gpt2-small", "--preset", "toy"]
    assert cli.main(args) == 2
    assert measured == [], "gpt2-small was measured before toy's settings were found not to fit"
    assert "exceed the toy model's n_positions=64" in capsys.readouterr().err
    assert cli.main(["bench", "decode", "--no-hf", "--new-tokens", "8", "--preset", "toy", "--preset", "small"]) == 0
    assert measured == ["toy", "small"]
    titles = [line for line in capsys.readouterr().out.splitlines() if line.startswith("qkv bench decode:")]
    assert [t.split("preset ")[1].split()[0] for t in titles] == ["toy", "small"]
    assert cli.main(["bench", "decode", "--no-hf"]) == 0
    assert measured[-1] == "gpt2-small"  # the default stays one table, for GPT-2 small


def test_bound_counts_every_cache_slot_when_steps_replay_a_cuda_graph(monkeypatch):
    """On a GPU a graphed step reads all prompt + new_tokens cache slots; here the CPU decoder stays eager
    and only the backend's flag is set, to check the accounting (test_torch_gpu.py runs the real thing)."""
    kw = dict(preset="toy", backend="torch", device="cpu", prompt=4, new_tokens=6, uncached_tokens=2, repeats=1,
              hf=False, positions=[8, 16])
    eager = decode.measure(**kw)
    init = decode._TorchBackend.__init__

    def graphed_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.uses_cuda_graph = True

    monkeypatch.setattr(decode._TorchBackend, "__init__", graphed_init)
    graphed = decode.measure(**kw)
    assert graphed["cuda_graph"] and not eager["cuda_graph"]
    assert eager["bytes_per_token"] == pytest.approx(expected_bytes_per_token(GPT2Config.toy(), 4, 6, False))
    assert graphed["bytes_per_token"] == pytest.approx(expected_bytes_per_token(GPT2Config.toy(), 4, 6, True))
    assert "each decode step attends over every cache slot" in decode.format_table(graphed).splitlines()[0]


def expected_bytes_per_token(cfg, prompt: int, new_tokens: int, graphed: bool, element_size: int = 4) -> float:
    """Bytes one generated token reads, batch 1, counted here from the tensors of a GPT-2 state dict and
    not from the benchmark's own helpers: a step reads every weight except the two embedding tables, the
    tied (d, vocab) output layer, one row of each table, and the cached k, v of every layer so far (with
    a CUDA graph, all prompt + new_tokens slots). The prefill reads the weights once; decode steps run at
    positions prompt+1 … prompt+new_tokens−1. (test_torch_gpu.py checks the GPU run against this too.)"""
    sd = random_state_dict(cfg)
    tables = {"transformer.wte.weight", "transformer.wpe.weight"}
    d = cfg.n_embd
    weights = sum(v.size for k, v in sd.items() if k not in tables) + sd["transformer.wte.weight"].size + 2 * d
    total = prompt + new_tokens
    cached = sum(2 * cfg.n_layer * d * (total if graphed else p) for p in range(prompt + 1, total))
    return element_size * (weights * (total - prompt) + cached) / new_tokens


def test_expected_bytes_by_hand():
    """The toy shape (d=32, 2 layers, f=128, vocab 97) by hand: a block reads 4·32 (LayerNorms) + 32·96+96
    + 32·32+32 + 32·128+128 + 128·32+32 = 12704 numbers; a step 2·12704 + 64 (ln_f) + 32·97 + 2·32."""
    assert expected_bytes_per_token(GPT2Config.toy(), 4, 1, False) == 4 * (2 * 12704 + 64 + 32 * 97 + 64)
    # two tokens: the prefill, then one step at position 5 reading 5 cached positions of 2 layers × (k, v)
    assert expected_bytes_per_token(GPT2Config.toy(), 4, 2, False) == 4 * (2 * 28640 + 2 * 2 * 32 * 5) / 2


def test_cuda_asked_for_without_cuda_is_reported(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["bench", "decode", "--device", "cuda", "--no-hf", *TINY]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_default_new_tokens_fit_each_preset(capsys, monkeypatch):
    """Without --new-tokens every preset generates 256 tokens, or as many as its positions leave after the
    prompt: `--preset toy --preset gpt2-small` runs as the issue's one-run comparison asks."""
    seen = {}
    monkeypatch.setattr(decode, "measure", lambda **kw: seen.setdefault(kw["preset"], kw["new_tokens"]) and _result(**kw))
    assert cli.main(["bench", "decode", "--backend", "numpy", "--no-hf", "--preset", "toy", "--preset", "gpt2-small"]) == 0
    assert seen == {"toy": 64 - 16, "gpt2-small": 256}
    assert cli.main(["bench", "decode", "--no-hf", "--prompt", "64", "--preset", "toy"]) == 2
    assert "exceed the toy model's n_positions=64" in capsys.readouterr().err
