"""Run a notebook in a fresh kernel, surviving what learners' code can do to a kernel.

* a cell that runs past its timeout is interrupted and counts as failed;
* a kernel that dies (``os._exit``, a segfault, running out of memory) or stops answering is replaced by a
  fresh one, the cells that ran before are replayed into it (their first outputs are kept), and execution
  goes on after the offending cell, so later questions are still graded; after ``max_restarts`` the
  remaining cells are marked as not run;
* each cell's output is capped (``max_output_bytes``), so a print in an endless loop cannot exhaust memory.

The result says, for every code cell, whether it ran cleanly, and if not the error's name and message.
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

KERNEL_NAME = "python3"
TRUNCATED = "\n[... output truncated by the grader ...]\n"


@dataclass
class CellResult:
    ok: bool
    ename: str = ""
    evalue: str = ""


@dataclass
class RunResult:
    cells: dict[int, CellResult] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class _CappedClient(NotebookClient):
    """nbclient's client, with a per-cell budget of output bytes and the last execute reply remembered."""

    max_output_bytes = 100_000

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._bytes: dict[int, int] = {}
        self.truncated: set[int] = set()
        self.last_reply: dict | None = None
        self.on_cell_executed = self._remember_reply

    def _remember_reply(self, cell=None, cell_index=None, execute_reply=None, **_):
        self.last_reply = execute_reply

    def output(self, outs, msg, display_id, cell_index):
        content = msg.get("content", {})
        size = len(str(content.get("text", ""))) + sum(len(str(v)) for v in content.get("data", {}).values())
        used = self._bytes.get(cell_index, 0)
        if msg["msg_type"] != "error" and used + size > self.max_output_bytes:
            if cell_index not in self.truncated:
                self.truncated.add(cell_index)
                outs.append(nbformat.v4.new_output("stream", name="stdout", text=TRUNCATED))
            return None
        self._bytes[cell_index] = used + size
        return super().output(outs, msg, display_id, cell_index)


def _error_of(cell) -> tuple[str, str] | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return str(out.get("ename", "Error")), str(out.get("evalue", ""))
    return None


_WARM: tuple | None = None  # (kernel manager, its scratch folder): a kernel booting for the next notebook
_LOOP: asyncio.AbstractEventLoop | None = None
# Imported while a warm kernel boots, then the names are deleted: the learner's namespace starts empty,
# but `import numpy` in the notebook costs nothing.
_WARM_LINES = ["import numpy, qkv.reference, qkv.grading.testing", "del numpy, qkv"]


async def _launch(cwd: str | None):
    """Start a kernel process (it boots in the background) in ``cwd``, or in a new scratch folder."""
    from jupyter_client.manager import AsyncKernelManager

    scratch = cwd or tempfile.mkdtemp(prefix="qkv-kernel-")
    km = AsyncKernelManager(kernel_name=KERNEL_NAME)
    extra = ["--HistoryManager.hist_file=:memory:"] + [f"--IPKernelApp.exec_lines={line}" for line in _WARM_LINES]
    await km.start_kernel(extra_arguments=extra, cwd=scratch, stderr=subprocess.DEVNULL)
    return km, scratch


def shutdown_warm() -> None:
    """Stop the kernel kept warm for a next notebook (called at exit, and when a batch is done)."""
    global _WARM
    if _WARM is not None and _LOOP is not None and not _LOOP.is_closed():
        km, scratch = _WARM
        _WARM = None
        try:
            _LOOP.run_until_complete(km.shutdown_kernel(now=True))
        except Exception:
            pass
        shutil.rmtree(scratch, ignore_errors=True)


atexit.register(shutdown_warm)


def prewarm() -> None:
    """Start booting a kernel for the next notebook now (a worker calls this before its first job)."""
    global _WARM, _LOOP
    if _LOOP is None or _LOOP.is_closed():
        _LOOP = asyncio.new_event_loop()
    if _WARM is None:
        _WARM = _LOOP.run_until_complete(_launch(None))


async def _run(nb, cwd: str | None, timeout: float, max_restarts: int, max_output_bytes: int,
               prewarm: bool) -> RunResult:
    client = _CappedClient(
        nb, timeout=timeout, startup_timeout=60, kernel_name=KERNEL_NAME, allow_errors=True,
        interrupt_on_timeout=True, iopub_timeout=2, shutdown_kernel="immediate", record_timing=False,
        error_on_timeout={"ename": "Timeout", "evalue": f"the cell ran longer than {timeout:g} s and was stopped"},
    )
    client.max_output_bytes = max_output_bytes
    result = RunResult()
    code = [k for k, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
    good: list[int] = []  # cells that ran without killing the kernel: replayed after a restart
    restarts = 0

    scratch_dirs: list[str] = []

    async def start() -> None:
        global _WARM
        if _WARM is not None:
            km, scratch = _WARM  # booted while the previous notebook ran
            _WARM = None
        else:
            km, scratch = await _launch(cwd)
        scratch_dirs.append(scratch)
        client.km = km
        await client.async_start_new_kernel_client()
        if prewarm:
            _WARM = await _launch(None)

    async def stop() -> None:
        if client.km is not None:
            try:
                await client._async_cleanup_kernel()
            except Exception:  # a kernel already gone: nothing left to stop
                pass
            client.km = client.kc = None

    async def replay() -> None:
        for k in good:
            original = nb.cells[k]
            try:
                await asyncio.wait_for(client.async_execute_cell(copy.deepcopy(original), k), timeout + 10)
            finally:
                nb.cells[k] = original

    await start()
    try:
        pos = 0
        while pos < len(code):
            k = code[pos]
            cell = nb.cells[k]
            fatal = None
            client.last_reply = None
            try:
                await asyncio.wait_for(client.async_execute_cell(cell, k), timeout + 15)
                reply = client.last_reply or {}
                status = reply.get("content", {}).get("status", "ok")
                err = _error_of(nb.cells[k])
                if status == "error" and reply.get("content", {}).get("ename") == "Timeout":
                    fatal = ("Timeout", reply["content"]["evalue"])
                elif err:
                    result.cells[k] = CellResult(False, *err)
                elif status != "ok":
                    result.cells[k] = CellResult(False, "Error", f"the kernel answered {status!r}")
                else:
                    result.cells[k] = CellResult(True)
            except DeadKernelError:
                fatal = ("KernelDied", "the kernel died while running this cell (os._exit, a crash, or out of memory)")
            except asyncio.TimeoutError:
                fatal = ("Timeout", f"the kernel stopped answering after {timeout:g} s")
            if fatal is None:
                good.append(k)
                pos += 1
                continue
            result.cells[k] = CellResult(False, *fatal)
            nb.cells[k].outputs = [nbformat.v4.new_output("error", ename=fatal[0], evalue=fatal[1], traceback=[])]
            result.notes.append(f"cell {nb.cells[k].get('id')}: {fatal[1]}")
            restarts += 1
            pos += 1
            await stop()
            if restarts > max_restarts:
                for k2 in code[pos:]:
                    result.cells[k2] = CellResult(False, "NotRun", "not run: too many timeouts or kernel crashes before it")
                result.notes.append(f"stopped after {restarts} kernel restarts; the remaining cells were not run")
                break
            try:
                await start()
                await replay()
            except Exception as exc:  # replaying failed (the same crash again): stop here
                await stop()
                for k2 in code[pos:]:
                    result.cells[k2] = CellResult(False, "NotRun", "not run: the kernel could not be restored")
                result.notes.append(f"could not restore the kernel after a crash: {type(exc).__name__}")
                break
    finally:
        await stop()
        for folder in scratch_dirs:
            if folder != cwd:
                shutil.rmtree(folder, ignore_errors=True)
    for k in client.truncated:
        result.notes.append(f"cell {nb.cells[k].get('id')}: output longer than {max_output_bytes} bytes was truncated")
    return result


def run_notebook(nb: nbformat.NotebookNode, cwd: str | None = None, timeout: float = 30, max_restarts: int = 3,
                 max_output_bytes: int = 100_000, prewarm: bool = False) -> RunResult:
    """Execute ``nb`` in place (outputs are written into its cells) and say how each code cell went.

    ``cwd``: the kernel's working folder (default: a scratch folder of its own, removed afterwards).
    ``prewarm``: leave a kernel booting for the next call, so that a batch never waits for a kernel to start.
    """
    global _LOOP
    if _LOOP is None or _LOOP.is_closed():
        _LOOP = asyncio.new_event_loop()  # one loop per process: the warm kernel's sockets live on it
    return _LOOP.run_until_complete(_run(nb, cwd, timeout, max_restarts, max_output_bytes, prewarm))
