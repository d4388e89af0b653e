"""`qkv bench decode` on the tiny preset: the table has its rows, and every number in it is a real,
positive, finite measurement (not the speed goals: timings on a shared machine are not test material)."""

import math
import re

import pytest

pytest.importorskip("torch")

from qkv import cli  # noqa: E402
from qkv.bench import decode  # noqa: E402
from qkv.config import DecoderConfig  # noqa: E402
from qkv.gpt2 import expected_shapes  # noqa: E402

TINY = ["--preset", "tiny", "--new-tokens", "8", "--uncached-tokens", "4", "--prompt", "6", "--repeats", "1"]
ROW = re.compile(r"^  (.+?)\s{2,}(-?[\d.]+(?:e[+-]?\d+)?|nan|inf)\s+(tokens/s|x|ms|GB/s|MB|%)$")


def _rows(text: str) -> dict[str, float]:
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
    assert out.startswith(f"qkv bench decode: backend {backend}, preset tiny")
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
    r = decode.measure(preset="tiny", backend="torch", prompt=4, new_tokens=6, uncached_tokens=3, repeats=1,
                       hf=False, positions=[8, 40], device="cpu")
    assert r["hf_tokens_per_s"] is None and r["ratio_vs_hf"] is None
    assert list(r["step_ms"]) == [8, 40] and all(ms > 0 for ms in r["step_ms"].values())
    for key in ("cached_tokens_per_s", "uncached_tokens_per_s", "ratio_cached_vs_uncached", "bandwidth_GBps",
                "bytes_per_token", "bound_tokens_per_s", "bound_fraction"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert "Hugging Face" not in decode.format_table(r)
    # bytes per token: the weights once per step, plus the cache read so far, in float32
    cfg = DecoderConfig.tiny()
    assert r["weight_bytes"] == decode.weight_bytes_per_step(cfg, 1, 4)
    assert r["weight_bytes"] < r["bytes_per_token"] < r["weight_bytes"] + decode.cache_bytes_read(cfg, 1, 10, 4)
    assert r["n_params"] == sum(math.prod(shape) for shape in expected_shapes(cfg).values())


def test_bad_settings_are_reported(capsys):
    assert cli.main(["bench", "decode", "--preset", "tiny", "--new-tokens", "100"]) == 2
    assert "exceed the tiny model's n_positions=64" in capsys.readouterr().err
    with pytest.raises(ValueError, match="float32 only"):
        decode.measure(preset="tiny", backend="numpy", new_tokens=8, dtype="bfloat16")
    with pytest.raises(ValueError, match="positions must lie in"):
        decode.measure(preset="tiny", new_tokens=8, positions=[1, 80])
