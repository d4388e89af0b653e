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
import copy
import os
import subprocess
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


async def _run(nb, cwd: str, timeout: float, max_restarts: int, max_output_bytes: int) -> RunResult:
    client = _CappedClient(
        nb, timeout=timeout, startup_timeout=60, kernel_name=KERNEL_NAME, allow_errors=True,
        interrupt_on_timeout=True, iopub_timeout=2, shutdown_kernel="immediate", record_timing=False,
        error_on_timeout={"ename": "Timeout", "evalue": f"the cell ran longer than {timeout:g} s and was stopped"},
        resources={"metadata": {"path": cwd}},
    )
    client.max_output_bytes = max_output_bytes
    result = RunResult()
    code = [k for k, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
    good: list[int] = []  # cells that ran without killing the kernel: replayed after a restart
    restarts = 0

    async def start() -> None:
        client.km = client.create_kernel_manager()
        await client.async_start_new_kernel(stderr=subprocess.DEVNULL)  # the kernel's own log lines, not cell output
        await client.async_start_new_kernel_client()

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
    for k in client.truncated:
        result.notes.append(f"cell {nb.cells[k].get('id')}: output longer than {max_output_bytes} bytes was truncated")
    return result


def run_notebook(nb: nbformat.NotebookNode, cwd: str | None = None, timeout: float = 30, max_restarts: int = 2,
                 max_output_bytes: int = 100_000) -> RunResult:
    """Execute ``nb`` in place (outputs are written into its cells) and say how each code cell went."""
    cwd = cwd or os.getcwd()
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_run(nb, cwd, timeout, max_restarts, max_output_bytes))
    finally:
        loop.close()
