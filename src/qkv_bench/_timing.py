"""Small timing helpers of the benchmarks: wall-clock seconds, synchronized with the GPU when one runs.

On a shared machine other work steals time now and then, which only ever makes a run slower; so each
measurement is repeated and the fastest run is kept (the usual convention of ``timeit``).
"""

from __future__ import annotations

import time
from collections.abc import Callable


def synchronizer(device: str | None) -> Callable[[], None]:
    """A function that waits for queued GPU work on ``device`` ("cuda…"); a no-op for the CPU or NumPy."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def best_time(fn: Callable[[], object], repeats: int = 3, sync: Callable[[], None] = lambda: None) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn`` (each call synchronized before and after)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def copy_bandwidth(device: str | None = None, nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Memory bandwidth in bytes/s, from copying one large tensor into another (the STREAM "copy"
    convention: bytes read plus bytes written, over the time). ``nbytes`` should dwarf the caches."""
    import torch

    dev = torch.device("cpu" if device is None else device)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch: page faults are not bandwidth
    seconds = best_time(lambda: dst.copy_(src), repeats, synchronizer(str(dev)))
    return 2 * nbytes / seconds
