"""Benchmarks of the qkv course: they print ratios measured side by side in one run."""
