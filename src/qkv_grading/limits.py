"""What one graded kernel, and one notebook, may use: every limit in one dataclass, lowered in tests.

The operating system holds a kernel to them, never a count in Python: a cgroup per kernel for memory,
processes and CPU (``qkv_grading.cgroup``), a size- and inode-limited tmpfs as its only writable place,
and ``prlimit`` for what a single process may do (``qkv_grading.sandbox``). The grading worker holds a
notebook to its wall-clock budget, its number of cells and its output budget
(``qkv_grading.execute``), killing the kernel when one runs out.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 2**20
GiB = 2**30


@dataclass(frozen=True)
class Limits:
    """Per kernel (all its processes together): ``memory_bytes`` (memfd and tmpfs pages included),
    ``processes`` (threads count too: BLAS pools), ``cpu_seconds`` (CPU time of all its processes, forks
    included) on at most ``cpus`` cores at once, ``disk_bytes`` and ``files`` of writable space.
    Per process: ``address_space_bytes`` (a huge allocation fails at once with MemoryError) and
    ``file_bytes`` (the largest file it may write). Per notebook: ``notebook_seconds`` of wall-clock time
    (None: as long as four cells that each run to their timeout, and 15 s more for starting kernels and
    for a flood of output), ``cells`` code cells, ``output_bytes`` of output of every kind, of
    which the learner's own output (not a test's records) may use ``learner_output_bytes``, and at most
    ``cell_output_bytes`` in one cell."""

    memory_bytes: int = 4 * GiB
    processes: int = 256
    cpu_seconds: float = 600.0
    cpus: float = 1.0
    disk_bytes: int = 512 * MiB
    files: int = 20_000
    address_space_bytes: int = 4 * GiB
    file_bytes: int = 256 * MiB
    notebook_seconds: float | None = None
    cells: int = 400
    output_bytes: int = 8_000_000
    learner_output_bytes: int = 2_000_000
    cell_output_bytes: int = 100_000

    def wall_budget(self, timeout: float) -> float:
        """The notebook's wall-clock budget, given a cell's timeout."""
        return self.notebook_seconds if self.notebook_seconds is not None else 4 * timeout + 15


def describe_bytes(n: int) -> str:
    """``n`` bytes the way a reader thinks of them: 512 MiB, 4 GiB, 100 kB."""
    if n >= GiB and n % GiB == 0:
        return f"{n // GiB} GiB"
    if n >= MiB:
        return f"{n / MiB:g} MiB"
    return f"{n / 1000:g} kB"
