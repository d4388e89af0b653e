"""Run a notebook in a fresh kernel, surviving what learners' code can do to a kernel.

* a cell that runs past its timeout is interrupted and counts as failed;
* a kernel that dies (``os._exit``, a segfault, running out of memory) or stops answering is replaced by a
  fresh one, the cells that ran before are replayed into it (their first outputs are kept), and execution
  goes on after the offending cell, so later questions are still graded; after ``max_restarts`` the
  remaining cells are marked as not run;
* the notebook has a wall-clock budget and a number of cells (``Limits``): past them its kernel is killed
  and the rest is not run; a sandboxed kernel that has used its CPU time (all its processes, from its
  cgroup) is killed too;
* one output budget for the notebook counts every message the kernel sends, and streams are merged in
  linear time, so no output can exhaust the grader's memory or time;
* test cells (nbgrader ``grade`` cells) run outside the kernel's input history, so a learner's later cell
  cannot print the hidden tests from ``In``, ``_ih`` or ``%history``;
* every kernel is stopped, its cgroup emptied and removed and its scratch folder removed whatever
  happens, and ``KernelPool.kill_all_now`` does the same at once for a grading process that is told to stop.

The result says, for every code cell, whether it ran cleanly, and if not the error's name and message
(a limit's name, such as ``MemoryLimit``, when the kernel hit one).
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import functools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import weakref
from dataclasses import dataclass, field

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from qkv_grading import cells, cgroup, guard, library, sandbox
from qkv_grading.limits import Limits, describe_bytes
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


OVERHEAD = 64  # what a message costs the output budget beyond its content: a flood of empty prints counts
# How a cell ended when the kernel was stopped: its tests get this as their reason (never "not back").
FATAL = ("Timeout", "KernelDied", "NotRun", "MemoryLimit", "CPULimit", "WallClockLimit", "OutputLimit")


def _size(content: dict) -> int:
    """The bytes a message's content holds (text, data, traceback, a widget's state), in one pass."""
    return OVERHEAD + sum(len(v) if isinstance(v, str) else len(json.dumps(v, default=str))
                          for v in content.values())


def coalesce_streams(outputs: list) -> list:
    """nbclient's merging of a cell's stream outputs (stdout with stdout, stderr with stderr; a carriage
    return not followed by a newline drops what came before it on its line), in time linear in the text:
    nbclient's own regular expression takes time quadratic in a line's length."""
    merged, pieces = [], {}
    for out in outputs:
        if out.get("output_type") == "stream":
            name = out.get("name")
            if name in pieces:
                pieces[name][1].append(str(out.get("text", "")))
                continue
            pieces[name] = (out, [str(out.get("text", ""))])
        merged.append(out)
    for out, parts in pieces.values():
        text = "".join(parts)
        if "\r" in text:
            lines = text.split("\n")
            for k, line in enumerate(lines):
                cut = line.rfind("\r", 0, len(line) - 1)
                if cut >= 0:
                    lines[k] = line[cut + 1:]
            text = "\n".join(lines)
        out["text"] = text
    for k in range(len(merged) - 1):  # as nbclient: stdout before the stderr it arrived with
        a, b = merged[k], merged[k + 1]
        if a.get("output_type") == b.get("output_type") == "stream" and a.get("name") == "stderr" \
                and b.get("name") == "stdout":
            merged[k], merged[k + 1] = b, a
    return merged


class _CappedClient(NotebookClient):
    """nbclient's client, with one output budget for the whole notebook that every message the kernel
    sends counts against (a test's records, ``update_display``, widgets' state, every cell): a message
    that does not fit is dropped. The learner's own output may use a share of it
    (``limits.learner_output_bytes``, at most ``limits.cell_output_bytes`` a cell), so that it cannot
    crowd out the tests' records. It also remembers the last execute reply."""

    def __init__(self, *args, limits: Limits = Limits(), **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.used = 0  # every message, records included
        self.learner_used = 0
        self._bytes: dict[int, int] = {}
        self.truncated: set[int] = set()
        self.records_dropped: set[int] = set()
        self.last_reply: dict | None = None
        self.on_cell_executed = self._remember_reply

    def _remember_reply(self, cell=None, cell_index=None, execute_reply=None, **_):
        self.last_reply = execute_reply

    def process_message(self, msg, cell, cell_index):
        msg_type = msg.get("msg_type")
        content = msg.get("content") or {}
        if msg_type in ("status", "execute_input"):
            return super().process_message(msg, cell, cell_index)
        size = _size(content)
        data = content.get("data") if isinstance(content.get("data"), dict) else {}
        if msg_type == "display_data" and RECORDS_MIME in data and _is_test(cell):
            if self.used + size > self.limits.output_bytes or len(str(data[RECORDS_MIME])) > MAX_RECORD_BYTES:
                self.records_dropped.add(cell_index)
                return None  # the test's records never came back: it says so
            self.used += size
            return super().process_message(msg, cell, cell_index)
        over = (self.used + size > self.limits.output_bytes
                or self.learner_used + size > self.limits.learner_output_bytes
                or self._bytes.get(cell_index, 0) + size > self.limits.cell_output_bytes)
        if msg_type == "error" and over:  # always kept, so that the cell fails with its error's name
            content["traceback"] = []
            content["evalue"] = str(content.get("evalue", ""))[:1000]
            size, over = _size(content), False
        if over:
            if cell_index not in self.truncated:
                self.truncated.add(cell_index)
                cell.outputs.append(nbformat.v4.new_output("stream", name="stdout", text=TRUNCATED))
            return None
        self.used += size
        self.learner_used += size
        self._bytes[cell_index] = self._bytes.get(cell_index, 0) + size
        return super().process_message(msg, cell, cell_index)


def _error_of(cell) -> tuple[str, str] | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return str(out.get("ename", "Error")), str(out.get("evalue", ""))
    return None


def _manager(scratch: str, sandboxed: bool, limits: Limits, group: cgroup.KernelGroup | None = None):
    """A kernel manager for a kernel working in ``scratch``. Sandboxed: the kernel runs under bubblewrap
    (``qkv_grading.sandbox``) in ``group``, talks over Unix sockets in ``scratch`` (it has no network), and
    is interrupted by a message, since a signal would reach bwrap rather than the kernel."""
    from jupyter_client.manager import AsyncKernelManager

    if not sandboxed:
        return AsyncKernelManager(kernel_name=KERNEL_NAME)

    class SandboxedKernelManager(AsyncKernelManager):
        def format_kernel_cmd(self, extra_arguments=None):
            prefix = sandbox.command(scratch, limits, group)  # gives the scratch folder to the kernel's user
            owner = os.stat(scratch)
            if owner.st_uid != os.getuid():
                os.chown(self.connection_file, owner.st_uid, owner.st_gid)  # written 0600 by the grader
            return prefix + super().format_kernel_cmd(extra_arguments)

    km = SandboxedKernelManager(kernel_name=KERNEL_NAME, transport="ipc", ip=os.path.join(scratch, "kernel"))
    km.connection_file = os.path.join(scratch, "kernel.json")
    km.kernel_spec.interrupt_mode = "message"
    return km


@functools.cache
def cgroups() -> cgroup.Hierarchy | str:
    """Where this process makes its kernels' cgroups, or why it cannot (said in the run's notices).
    Found once: the machine's hierarchy does not change while the process runs."""
    return cgroup.detect()


@dataclass
class _Kernel:
    """A kernel started here and not stopped yet: its manager, the scratch folder to remove (None: the
    caller's), its cgroup (None: none), and whether it runs sandboxed."""

    km: object
    folder: str | None
    group: cgroup.KernelGroup | None
    sandboxed: bool


WARM_KERNELS = 3  # booting ahead, so that a worker rarely waits (see KernelPool)
# Imported while a warm kernel boots, then the names are deleted: the learner's namespace starts empty,
# but `import numpy` in the notebook costs nothing.
# (Not qkv: a sandboxed kernel gets its copy of the course library only once its assignment is known.)
_WARM_LINES = ["import numpy, qkv_grading.probe", "del numpy, qkv_grading"]


def _is_test(cell) -> bool:
    return cells.is_graded(cell)


def _seen(task) -> None:
    """Mark a finished task's exception as seen (asyncio would print it at exit)."""
    if not task.cancelled():
        task.exception()


_LOOP: asyncio.AbstractEventLoop | None = None  # the process's one loop for kernels (see _loop)
_LOOP_LOCK = threading.Lock()


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


@dataclass(frozen=True)
class ExecutionSettings:
    """How one process's kernels run: where they make their scratch folders (None: the system's temporary
    folder), whether they run sandboxed (bubblewrap, a cgroup each), and under which limits. Plain data,
    so the pipeline can send it to Dask workers, each of which makes its own ``KernelPool`` from it.
    The default is a learner's ``qkv check`` on their own machine: no sandbox."""

    scratch_root: str | None = None
    sandboxed: bool = False
    limits: Limits = Limits()


_POOLS: weakref.WeakSet = weakref.WeakSet()  # every pool of this process, for the exit hook alone


class KernelPool:
    """The kernels one process runs notebooks in: ``run_notebook`` gives every notebook a fresh kernel of
    its own (never shared, never reused), booted ahead of time when asked (``prewarm``), and stops it,
    its cgroup and its scratch folder when the notebook is done. Made by the pipeline (or a Dask worker,
    from the pipeline's ``ExecutionSettings``) and handed to ``run.run_in_kernel``."""

    def __init__(self, settings: ExecutionSettings = ExecutionSettings()):
        self.settings = settings
        # Kernels booting for the next notebooks, oldest first: (kernel manager, task connecting a client
        # to it). Three, so that a worker rarely waits: a kernel takes longer to boot (imports) than a
        # notebook to run (measured on 2 cores: 0.37 s a notebook with two, 0.34 with three or four).
        self.warm: list[tuple] = []
        self.retiring: set = set()  # tasks finishing the shutdown of kernels already killed (see _retire)
        self.live: dict[int, _Kernel] = {}  # id(km) -> every kernel started here and not stopped yet
        self.warm_failures: list[str] = []  # why kernels could not be booted ahead of time (cold starts)
        _POOLS.add(self)

    def limits_notice(self) -> str | None:
        """What a run should say about this pool's kernels' limits: None when they all hold."""
        found = cgroups() if self.settings.sandboxed else None
        if isinstance(found, str):
            return (f"kernels ran without a cgroup of their own ({found}): memory, processes and CPU time "
                    f"were limited per process only (prlimit), so a kernel that forks, or keeps memory in a "
                    f"memfd, could use more than its limits")
        return None

    async def _launch(self, cwd: str | None):
        """Start a kernel process (it boots in the background) in ``cwd``, or in a new scratch folder that
        is removed when the kernel is stopped; sandboxed, in a cgroup of its own where the machine allows.
        Nothing is left behind if the start fails."""
        settings = self.settings
        scratch = cwd or tempfile.mkdtemp(prefix="qkv-kernel-", dir=settings.scratch_root)
        sandboxed = settings.sandboxed and cwd is None
        found = cgroups() if sandboxed else None
        try:
            group = cgroup.KernelGroup(found, settings.limits) if isinstance(found, cgroup.Hierarchy) else None
        except BaseException:
            if not cwd:
                shutil.rmtree(scratch, ignore_errors=True)
            raise
        km = _manager(scratch, sandboxed, settings.limits, group)
        self.live[id(km)] = _Kernel(km, None if cwd else scratch, group, sandboxed)
        extra = (["--HistoryManager.hist_file=:memory:"]
                 + [f"--IPKernelApp.exec_lines={line}" for line in _WARM_LINES])
        try:
            await km.start_kernel(extra_arguments=extra, cwd=scratch, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        except BaseException:
            await self._stop(km)
            raise
        return km

    def _group(self, km) -> cgroup.KernelGroup | None:
        kernel = self.live.get(id(km))
        return kernel.group if kernel else None

    async def _stop(self, km) -> None:
        """Shut a kernel down (it may be gone already), kill what is left in its cgroup, and remove the
        cgroup and the scratch folder."""
        kernel = self.live.pop(id(km), None)
        try:
            if km.has_kernel:
                await km.shutdown_kernel(now=True)
        except Exception:  # a kernel already gone: nothing left to stop
            pass
        if kernel and kernel.group:
            await asyncio.get_running_loop().run_in_executor(None, kernel.group.remove)
        if kernel and kernel.folder:
            shutil.rmtree(kernel.folder, ignore_errors=True)

    def _close_scratch(self, km) -> None:
        """A sandboxed kernel that answers has bound its sockets: from now on it writes only to its tmpfs."""
        kernel = self.live.get(id(km))
        if kernel and kernel.sandboxed and kernel.folder:
            sandbox.lock(kernel.folder)

    async def _ready_client(self, km):
        """A client connected to ``km``'s kernel once it answers (jupyter_client's handshake, which waits
        for the kernel's first messages)."""
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            self._close_scratch(km)
        except BaseException:
            kc.stop_channels()
            raise
        return kc

    async def _boot_warm(self) -> None:
        """Start booting kernels for the next notebooks, and connecting to them, in the background (while
        the current notebook runs). A failure is written down, never raised: the next notebook then starts
        its own kernel (a cold start), and grading goes on."""
        while len(self.warm) < WARM_KERNELS:
            try:
                km = await self._launch(None)
            except Exception as exc:
                self.warm_failures.append(f"{type(exc).__name__}: {exc}")
                return
            ready = _loop().create_task(self._ready_client(km))
            ready.add_done_callback(_seen)  # a kernel killed before it is used is no error worth a word
            self.warm.append((km, ready))

    def _kill_now(self, km) -> None:
        """SIGKILL a kernel's process group (it runs in a session of its own; sandboxed, the rest of its
        tree dies with bwrap): the kernel stops at once, before anything else runs. Unsandboxed, whatever
        it started in sessions of its own (a `!` command's terminal) is killed first."""
        if not self.settings.sandboxed:
            guard.end_tree(getattr(getattr(km, "provisioner", None), "pid", None))
        pgid = getattr(getattr(km, "provisioner", None), "pgid", None)
        if pgid and pgid != os.getpgid(0):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        group = self._group(km)
        if group is not None:
            group.kill()

    def _retire(self, km, kc) -> None:
        """Kill a kernel now; reap it, close its client and remove its folder in the background, so that
        the next notebook does not wait for jupyter_client's shutdown polling."""
        self._kill_now(km)

        async def finish():
            if kc is not None:
                kc.stop_channels()
            await self._stop(km)

        task = _loop().create_task(finish())
        self.retiring.add(task)
        task.add_done_callback(self.retiring.discard)

    async def _shutdown_warm(self) -> None:
        while self.warm:
            km, ready = self.warm.pop()
            kc = None
            if ready.done() and not ready.cancelled() and ready.exception() is None:
                kc = ready.result()
            ready.cancel()
            self._retire(km, kc)
        await asyncio.gather(*self.retiring, return_exceptions=True)

    def shutdown_warm(self) -> None:
        """Stop the kernels kept warm for the next notebooks, and finish stopping those retired (called at
        exit, and when a batch is done)."""
        if _LOOP is not None and not _LOOP.is_closed():
            try:
                _call(self._shutdown_warm())
            except Exception:
                pass

    def kill_all_now(self) -> None:
        """Kill every kernel this pool started (with whatever they started) and remove their scratch
        folders, at once and without the event loop: for a grading process told to stop (SIGTERM) in the
        middle of a notebook, when an orderly shutdown is not possible."""
        for kernel in list(self.live.values()):
            self._kill_now(kernel.km)
            if kernel.group:
                kernel.group.remove(wait=0.5)
            if kernel.folder:
                shutil.rmtree(kernel.folder, ignore_errors=True)
        self.live.clear()
        self.warm.clear()

    def prewarm(self) -> str | None:
        """Start booting kernels for the next notebooks now (a worker calls this before its first job).
        Returns None, or why no kernel could be started (then notebooks start their own, as without
        pre-warm)."""
        before = len(self.warm_failures)
        _call(self._boot_warm())
        return self.warm_failures[-1] if len(self.warm_failures) > before else None

    def run_notebook(self, nb: nbformat.NotebookNode, cwd: str | None = None, timeout: float = 30,
                     max_restarts: int = 3, limits: Limits | None = None, prewarm: bool = False,
                     forbidden: frozenset = frozenset()) -> RunResult:
        """Execute ``nb`` in place (outputs are written into its cells) and say how each code cell went.

        ``cwd``: the kernel's working folder (default: a scratch folder of its own, removed afterwards); a
        kernel kept warm is used only without one.
        ``limits``: the notebook's budgets (wall-clock, cells, output, CPU time; default: the pool's, which
        also give each kernel its cgroup's and its sandbox's limits).
        ``prewarm``: leave kernels booting for the next calls, so that a batch rarely waits for a kernel.
        ``forbidden``: the library functions a sandboxed kernel is not given (``qkv_grading.library``).
        """
        return _call(self._run(nb, cwd, timeout, max_restarts, limits or self.settings.limits, prewarm,
                               forbidden))

    async def _run(self, nb, cwd: str | None, timeout: float, max_restarts: int, limits: Limits,
                   prewarm: bool, forbidden: frozenset = frozenset()) -> RunResult:
        client = _CappedClient(
            nb, timeout=timeout, startup_timeout=60, kernel_name=KERNEL_NAME, allow_errors=True,
            interrupt_on_timeout=True, iopub_timeout=2, shutdown_kernel="immediate", record_timing=False,
            coalesce_streams=False, store_widget_state=False, limits=limits,
            error_on_timeout={"ename": "Timeout", "evalue": f"the cell ran longer than {timeout:g} s and was stopped"},
        )
        loop = asyncio.get_running_loop()
        budget = limits.wall_budget(timeout)
        deadline = loop.time() + budget
        result = RunResult()
        code = [k for k, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
        good: list[int] = []  # cells that ran without killing the kernel: replayed after a restart
        restarts = 0
        stopped: list[tuple[str, str]] = []  # why the CPU watch stopped the kernel
        seen = cgroup.Events()  # what the current kernel's cgroup had counted after the last cell
        said: set[str] = set()

        def not_run(cells: list[int], why: str, note: str) -> None:
            for k2 in cells:
                result.cells[k2] = CellResult(False, "NotRun", f"not run: {why}")
            result.notes.append(note)

        if len(code) > limits.cells:
            not_run(code[limits.cells:], f"the notebook has more than {limits.cells} code cells",
                    f"the notebook has {len(code)} code cells, more than the {limits.cells} the grader runs: "
                    f"the cells after the {limits.cells}th were not run")
            code = code[:limits.cells]

        async def connect(km) -> None:
            client.km = km
            try:
                await client.async_start_new_kernel_client()
                self._close_scratch(km)
            except BaseException:  # nbclient may already have dropped the kernel: stop it here, whatever its state
                client.km = client.kc = None
                await self._stop(km)
                raise

        async def start() -> None:
            nonlocal seen
            warm = self.warm.pop(0) if cwd is None and self.warm else None  # a warm kernel sits in a scratch folder
            if warm is None:
                await connect(await self._launch(cwd))
            else:
                km, ready = warm
                try:
                    client.km, client.kc = km, await ready  # connected while the last notebook ran
                    client.kc.allow_stdin = False
                except Exception:
                    client.km = client.kc = None
                    self._retire(km, None)
                    self.warm_failures.append("a kernel booted ahead of time did not answer")
                    await connect(await self._launch(cwd))  # a cold start instead
            kernel = self.live.get(id(client.km))
            if kernel and kernel.sandboxed and kernel.folder:  # before its first cell: the library it may use
                library.install(library.view(forbidden, self.settings.scratch_root), kernel.folder)
            group = self._group(client.km)
            seen = group.events() if group else cgroup.Events()
            if prewarm:
                await self._boot_warm()

        async def stop() -> None:
            if client.km is not None:
                self._retire(client.km, client.kc)
                client.km = client.kc = None

        async def watch(group: cgroup.KernelGroup) -> None:
            """While a cell runs: stop the kernel once its processes have used their CPU time."""
            while True:
                await asyncio.sleep(0.2)
                if group.cpu_seconds() > limits.cpu_seconds:
                    stopped.append(("CPULimit", f"the kernel's processes together used more than "
                                                f"{limits.cpu_seconds:g} s of CPU time, and it was stopped"))
                    group.kill()
                    return

        async def execute(k: int, cell) -> None:
            left = deadline - loop.time()
            if left <= 0:
                raise _OutOfTime
            group = self._group(client.km)
            watcher = loop.create_task(watch(group)) if group else None
            try:
                # Test cells stay out of the kernel's input history (In, _ih, %history): code a learner runs
                # later cannot read the hidden tests back from there (outputs are scrubbed too: spec.Scrubber)
                await asyncio.wait_for(client.async_execute_cell(cell, k, store_history=not _is_test(cell)),
                                       min(timeout + 15, left))
            except asyncio.TimeoutError:
                if loop.time() >= deadline - 0.1:
                    raise _OutOfTime from None
                raise
            finally:
                if watcher is not None:
                    watcher.cancel()
            if cell.get("outputs"):
                cell.outputs = coalesce_streams(cell.outputs)

        def events_since(k: int) -> cgroup.Events:
            """What the kernel's cgroup counted while cell ``k`` ran, written down as notes."""
            nonlocal seen
            group = self._group(client.km)
            if group is None:
                return cgroup.Events()
            now = group.events()
            new = cgroup.Events(now.oom_kills - seen.oom_kills, now.fork_refusals - seen.fork_refusals,
                                now.cpu_seconds)
            seen = now
            name = nb.cells[k].get("id")
            if new.oom_kills > 0 and "memory" not in said:
                said.add("memory")
                result.notes.append(f"cell {name}: the kernel's processes together reached the memory limit of "
                                    f"{describe_bytes(limits.memory_bytes)}: {new.oom_kills} of them killed")
            if new.fork_refusals > 0 and "processes" not in said:
                said.add("processes")
                result.notes.append(f"cell {name}: the kernel reached the limit of {limits.processes} processes "
                                    f"and threads: {new.fork_refusals} forks refused")
            return new

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
                out_of_time = False
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
                except _OutOfTime:
                    out_of_time = True
                    fatal = ("WallClockLimit", f"the notebook ran past its budget of {budget:g} s of wall-clock "
                                               f"time, and its kernel was stopped")
                new = events_since(k)
                if stopped or new.cpu_seconds > limits.cpu_seconds:
                    fatal = stopped[0] if stopped else (
                        "CPULimit", f"the kernel's processes together used more than {limits.cpu_seconds:g} s of "
                                    f"CPU time, and it was stopped")
                elif fatal and fatal[0] == "KernelDied" and new.oom_kills:
                    fatal = ("MemoryLimit", f"the kernel's processes together used more than "
                                            f"{describe_bytes(limits.memory_bytes)} of memory, and it was stopped")
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
                if out_of_time or fatal[0] == "CPULimit":  # the notebook's budget is spent: no new kernel
                    if code[pos:]:
                        not_run(code[pos:], fatal[1], "the remaining cells were not run")
                    break
                if restarts > max_restarts:
                    not_run(code[pos:], "too many timeouts or kernel crashes before it",
                            f"stopped after {restarts} kernel restarts; the remaining cells were not run")
                    break
                try:
                    await start()
                    await replay()
                except _OutOfTime:
                    await stop()
                    not_run(code[pos:], f"the notebook ran past its budget of {budget:g} s of wall-clock time",
                            f"the notebook ran past its budget of {budget:g} s of wall-clock time; the remaining "
                            f"cells were not run")
                    break
                except Exception as exc:  # replaying failed (the same crash again): stop here
                    await stop()
                    not_run(code[pos:], "the kernel could not be restored",
                            f"could not restore the kernel after a crash: {type(exc).__name__}")
                    break
        finally:
            await stop()
        for k in sorted(client.records_dropped):
            if result.cells.get(k, CellResult(True)).ok:
                result.cells[k] = CellResult(False, "OutputLimit", (
                    f"this test's results were dropped: the notebook's output passed the grader's budget of "
                    f"{describe_bytes(limits.output_bytes)}"))
        for k in sorted(client.truncated):
            result.notes.append(
                f"cell {nb.cells[k].get('id')}: output past the grader's budget "
                f"({describe_bytes(limits.cell_output_bytes)} a cell, "
                f"{describe_bytes(limits.learner_output_bytes)} in the notebook) was truncated")
        return result


class _OutOfTime(Exception):
    """The notebook's wall-clock budget ran out."""


def _shutdown_all() -> None:
    for pool in list(_POOLS):
        pool.shutdown_warm()


atexit.register(_shutdown_all)
