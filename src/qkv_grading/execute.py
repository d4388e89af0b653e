"""Run a notebook in a fresh kernel, surviving what learners' code can do to a kernel.

* a cell that runs past its timeout is interrupted and counts as failed;
* a kernel that dies (``os._exit``, a segfault, running out of memory) or stops answering is replaced by a
  fresh one, the cells that ran before are replayed into it (their first outputs are kept), and execution
  goes on after the offending cell, so later questions are still graded; after ``max_restarts`` the
  remaining cells are marked as not run;
* each cell's output is capped (``max_output_bytes``), so a print in an endless loop cannot exhaust memory;
* test cells (nbgrader ``grade`` cells) run outside the kernel's input history, so a learner's later cell
  cannot print the hidden tests from ``In``, ``_ih`` or ``%history``;
* every kernel is stopped and its scratch folder removed whatever happens, and ``kill_all_now`` does the
  same at once for a grading process that is told to stop.

The result says, for every code cell, whether it ran cleanly, and if not the error's name and message.
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from qkv_grading import guard, sandbox

from qkv_grading.probe import MIME as RECORDS_MIME
from qkv_grading.wire import MAX_BYTES as MAX_RECORD_BYTES

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
        if RECORDS_MIME in content.get("data", {}):  # a test's records: kept whole up to their own limit
            if len(str(content["data"][RECORDS_MIME])) > MAX_RECORD_BYTES:
                content["data"] = {"text/plain": "[records larger than the grader accepts]"}
            return super().output(outs, msg, display_id, cell_index)
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


class _SandboxedKernelManager:
    """Made on first use (jupyter_client is imported lazily): see ``_manager``."""


def _manager(scratch: str, sandboxed: bool):
    """A kernel manager for a kernel working in ``scratch``. Sandboxed: the kernel runs under bubblewrap
    (``qkv_grading.sandbox``), talks over Unix sockets in ``scratch`` (it has no network), and is
    interrupted by a message, since a signal would reach bwrap rather than the kernel."""
    from jupyter_client.manager import AsyncKernelManager

    if not sandboxed:
        return AsyncKernelManager(kernel_name=KERNEL_NAME)

    class SandboxedKernelManager(AsyncKernelManager):
        def format_kernel_cmd(self, extra_arguments=None):
            prefix = sandbox.command(scratch)  # gives the scratch folder to the kernel's own user
            owner = os.stat(scratch)
            os.chown(self.connection_file, owner.st_uid, owner.st_gid)  # written 0600 by the grader
            return prefix + super().format_kernel_cmd(extra_arguments)

    km = SandboxedKernelManager(kernel_name=KERNEL_NAME, transport="ipc", ip=os.path.join(scratch, "kernel"))
    km.connection_file = os.path.join(scratch, "kernel.json")
    km.kernel_spec.interrupt_mode = "message"
    return km


SANDBOX = False  # kernels of `qkv check` (a learner on their own machine); `qkv grade` workers: configure()


def configure(scratch_root: str | None, sandboxed: bool) -> None:
    """Where this process's kernels make their scratch folders, and whether they run sandboxed."""
    global SCRATCH_ROOT, SANDBOX
    SCRATCH_ROOT, SANDBOX = scratch_root, sandboxed


# Kernels booting for the next notebooks, oldest first: (kernel manager, task connecting a client to it).
# Three, so that a worker rarely waits: a kernel takes longer to boot (imports) than a notebook to run
# (measured on 2 cores: 0.37 s a notebook with two, 0.34 with three or four).
_WARM: list[tuple] = []
WARM_KERNELS = 3
_RETIRING: set = set()  # tasks finishing the shutdown of kernels already killed (see _retire)
_LIVE: dict[int, tuple] = {}  # id(km) -> (km, scratch folder) for every kernel started here and not stopped yet
_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()
SCRATCH_ROOT: str | None = None  # where scratch folders are made (None: the system's temporary folder)
WARM_FAILURES: list[str] = []  # why kernels could not be booted ahead of time (grading went on with cold starts)
# Imported while a warm kernel boots, then the names are deleted: the learner's namespace starts empty,
# but `import numpy` in the notebook costs nothing.
_WARM_LINES = ["import numpy, qkv.reference, qkv_grading.probe", "del numpy, qkv, qkv_grading"]


def _is_test(cell) -> bool:
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("grade"))


async def _launch(cwd: str | None):
    """Start a kernel process (it boots in the background) in ``cwd``, or in a new scratch folder that is
    removed when the kernel is stopped. Nothing is left behind if the start fails."""
    scratch = cwd or tempfile.mkdtemp(prefix="qkv-kernel-", dir=SCRATCH_ROOT)
    km = _manager(scratch, SANDBOX and cwd is None)
    _LIVE[id(km)] = (km, None if cwd else scratch)
    extra = ["--HistoryManager.hist_file=:memory:"] + [f"--IPKernelApp.exec_lines={line}" for line in _WARM_LINES]
    try:
        await km.start_kernel(extra_arguments=extra, cwd=scratch, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    except BaseException:
        await _stop(km)
        raise
    return km


async def _stop(km) -> None:
    """Shut a kernel down (it may be gone already) and remove its scratch folder."""
    _, folder = _LIVE.pop(id(km), (km, None))
    try:
        if km.has_kernel:
            await km.shutdown_kernel(now=True)
    except Exception:  # a kernel already gone: nothing left to stop
        pass
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


async def _ready_client(km):
    """A client connected to ``km``'s kernel once it answers (jupyter_client's handshake, which waits for
    the kernel's first messages)."""
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
    except BaseException:
        kc.stop_channels()
        raise
    return kc


async def _boot_warm() -> None:
    """Start booting kernels for the next notebooks, and connecting to them, in the background (while the
    current notebook runs). A failure is written down, never raised: the next notebook then starts its own
    kernel (a cold start), and grading goes on."""
    while len(_WARM) < WARM_KERNELS:
        try:
            km = await _launch(None)
        except Exception as exc:
            WARM_FAILURES.append(f"{type(exc).__name__}: {exc}")
            return
        ready = _loop().create_task(_ready_client(km))
        ready.add_done_callback(_seen)  # a kernel killed before it is used is no error worth a word
        _WARM.append((km, ready))


def _seen(task) -> None:
    """Mark a finished task's exception as seen (asyncio would print it at exit)."""
    if not task.cancelled():
        task.exception()


def _kill_now(km) -> None:
    """SIGKILL a kernel's process group (it runs in a session of its own; sandboxed, the rest of its tree
    dies with bwrap): the kernel stops at once, before anything else runs. Unsandboxed, whatever it
    started in sessions of its own (a `!` command's terminal) is killed first."""
    if not SANDBOX:
        guard.end_tree(getattr(getattr(km, "provisioner", None), "pid", None))
    pgid = getattr(getattr(km, "provisioner", None), "pgid", None)
    if pgid and pgid != os.getpgid(0):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


def _retire(km, kc) -> None:
    """Kill a kernel now; reap it, close its client and remove its folder in the background, so that the
    next notebook does not wait for jupyter_client's shutdown polling."""
    _kill_now(km)

    async def finish():
        if kc is not None:
            kc.stop_channels()
        await _stop(km)

    task = _loop().create_task(finish())
    _RETIRING.add(task)
    task.add_done_callback(_RETIRING.discard)


def _loop() -> asyncio.AbstractEventLoop:
    """The process's one event loop for kernels, running in a thread of its own, so that the kernel booted
    for the next notebook connects, and stopped kernels are reaped, while this process does other work."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP.is_closed():
            _LOOP = asyncio.new_event_loop()
            threading.Thread(target=_LOOP.run_forever, name="qkv-kernels", daemon=True).start()
    return _LOOP


def _call(coro):
    """Run ``coro`` on the kernels' loop and wait for its result here; stopping here (Ctrl-C) cancels it,
    and its ``finally`` stops its kernel."""
    future = asyncio.run_coroutine_threadsafe(coro, _loop())
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


async def _shutdown_warm() -> None:
    while _WARM:
        km, ready = _WARM.pop()
        kc = None
        if ready.done() and not ready.cancelled() and ready.exception() is None:
            kc = ready.result()
        ready.cancel()
        _retire(km, kc)
    await asyncio.gather(*_RETIRING, return_exceptions=True)


def shutdown_warm() -> None:
    """Stop the kernels kept warm for the next notebooks, and finish stopping those retired (called at
    exit, and when a batch is done)."""
    if _LOOP is not None and not _LOOP.is_closed():
        try:
            _call(_shutdown_warm())
        except Exception:
            pass


atexit.register(shutdown_warm)


def kill_all_now() -> None:
    """Kill every kernel this process started (with whatever they started) and remove their scratch folders,
    at once and without the event loop: for a grading process told to stop (SIGTERM) in the middle of a
    notebook, when an orderly shutdown is not possible."""
    for km, folder in list(_LIVE.values()):
        _kill_now(km)
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
    _LIVE.clear()
    _WARM.clear()


def prewarm() -> str | None:
    """Start booting kernels for the next notebooks now (a worker calls this before its first job).
    Returns None, or why no kernel could be started (then notebooks start their own, as without pre-warm)."""
    before = len(WARM_FAILURES)
    _call(_boot_warm())
    return WARM_FAILURES[-1] if len(WARM_FAILURES) > before else None


async def _run(nb, cwd: str | None, timeout: float, max_restarts: int, max_output_bytes: int,
               prewarm: bool) -> RunResult:
    client = _CappedClient(
        nb, timeout=timeout, startup_timeout=60, kernel_name=KERNEL_NAME, allow_errors=True,
        interrupt_on_timeout=True, iopub_timeout=2, shutdown_kernel="immediate", record_timing=False,
        coalesce_streams=True,
        error_on_timeout={"ename": "Timeout", "evalue": f"the cell ran longer than {timeout:g} s and was stopped"},
    )
    client.max_output_bytes = max_output_bytes
    result = RunResult()
    code = [k for k, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
    good: list[int] = []  # cells that ran without killing the kernel: replayed after a restart
    restarts = 0

    async def connect(km) -> None:
        client.km = km
        try:
            await client.async_start_new_kernel_client()
        except BaseException:  # nbclient may already have dropped the kernel: stop it here, whatever its state
            client.km = client.kc = None
            await _stop(km)
            raise

    async def start() -> None:
        warm = _WARM.pop(0) if cwd is None and _WARM else None  # a warm kernel sits in a scratch folder
        if warm is None:
            await connect(await _launch(cwd))
        else:
            km, ready = warm
            try:
                client.km, client.kc = km, await ready  # connected while the last notebook ran
                client.kc.allow_stdin = False
            except Exception:
                client.km = client.kc = None
                _retire(km, None)
                WARM_FAILURES.append("a kernel booted ahead of time did not answer")
                await connect(await _launch(cwd))  # a cold start instead
        if prewarm:
            await _boot_warm()

    async def stop() -> None:
        if client.km is not None:
            _retire(client.km, client.kc)
            client.km = client.kc = None

    async def execute(k: int, cell) -> None:
        # Test cells stay out of the kernel's input history (In, _ih, %history): code a learner runs later
        # cannot read the hidden tests back from there. (Outputs are scrubbed as well: see core.py.)
        await asyncio.wait_for(client.async_execute_cell(cell, k, store_history=not _is_test(cell)),
                               timeout + 15)

    def not_run(cells: list[int], why: str, note: str) -> None:
        for k2 in cells:
            result.cells[k2] = CellResult(False, "NotRun", f"not run: {why}")
        result.notes.append(note)

    async def replay() -> None:
        for k in good:
            original = nb.cells[k]
            try:
                await execute(k, copy.deepcopy(original))
            finally:
                nb.cells[k] = original

    try:
        await start()
        pos = 0
        while pos < len(code):
            k = code[pos]
            cell = nb.cells[k]
            fatal = None
            client.last_reply = None
            try:
                await execute(k, cell)
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
                not_run(code[pos:], "too many timeouts or kernel crashes before it",
                        f"stopped after {restarts} kernel restarts; the remaining cells were not run")
                break
            try:
                await start()
                await replay()
            except Exception as exc:  # replaying failed (the same crash again): stop here
                await stop()
                not_run(code[pos:], "the kernel could not be restored",
                        f"could not restore the kernel after a crash: {type(exc).__name__}")
                break
    finally:
        await stop()
    for k in client.truncated:
        result.notes.append(f"cell {nb.cells[k].get('id')}: output longer than {max_output_bytes} bytes was truncated")
    return result


def run_notebook(nb: nbformat.NotebookNode, cwd: str | None = None, timeout: float = 30, max_restarts: int = 3,
                 max_output_bytes: int = 100_000, prewarm: bool = False) -> RunResult:
    """Execute ``nb`` in place (outputs are written into its cells) and say how each code cell went.

    ``cwd``: the kernel's working folder (default: a scratch folder of its own, removed afterwards); a kernel
    kept warm is used only without one.
    ``prewarm``: leave kernels booting for the next calls, so that a batch rarely waits for a kernel to start.
    """
    return _call(_run(nb, cwd, timeout, max_restarts, max_output_bytes, prewarm))
