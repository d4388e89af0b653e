"""A cgroup per graded kernel: memory, processes and CPU limited for the kernel's processes as a whole.

The kernel's resource controls, used as container runtimes (runc, crun) use them: folders in the cgroup
filesystem, made below the grader's own cgroup (so that whatever limits the grader is under hold its
kernels too), with the limits written into them. The kernel's first process joins its group before it
execs the sandbox (``PLACE``, a line of ``sh``), so everything it forks is counted from the start. When
the kernel ends every process left in the group is killed and the folders are removed.

cgroup v1 (one hierarchy per controller) or v2 (one hierarchy with the memory, pids and cpu controllers
enabled for the grader's cgroup, as ``systemd-run --scope -p Delegate=yes`` leaves them), whichever the
machine has. Where neither can be written (a user who is not root, without a delegated cgroup),
``detect`` says why, and the run says so in its notices.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from qkv_grading.limits import Limits

V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
V2_CONTROLLERS = ("memory", "pids", "cpu")
PERIOD_US = 100_000  # the CPU quota's period (the kernel's default)
# The kernel's first process writes its pid into every cgroup.procs named before "--", then execs the rest.
PLACE = ('while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"')


@dataclass(frozen=True)
class Hierarchy:
    """Where kernels' groups are made: ``version`` 1 or 2; ``parents``: controller -> the grader's own
    cgroup folder in that controller's hierarchy (v2: one folder, under the key "")."""

    version: int
    parents: dict[str, Path]


@dataclass
class Events:
    """What the kernel ran into: processes killed for memory, forks refused, CPU seconds used."""

    oom_kills: int = 0
    fork_refusals: int = 0
    cpu_seconds: float = 0.0


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount point, root inside its hierarchy, filesystem type, super options) of every cgroup mount."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, kinds = left.split(), right.split()
            if len(fields) >= 5 and len(kinds) >= 3 and kinds[0] in ("cgroup", "cgroup2"):
                out.append((fields[4].replace("\\040", " "), fields[3], kinds[0], set(kinds[2].split(","))))
    return out


def _own() -> dict[str, str]:
    """controller -> this process's cgroup path in that controller's hierarchy ("" for v2)."""
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                own[c] = path
    return own


def _inside(mount: str, root: str, path: str) -> Path | None:
    """The folder of cgroup ``path`` under a mount of its hierarchy's ``root`` (None: not visible)."""
    rel = os.path.relpath(path, root)
    return None if rel.startswith("..") else Path(mount) / ("" if rel == "." else rel)


def _writable(folder: Path) -> str | None:
    """Why no group can be made under ``folder`` (None: one can)."""
    probe = folder / f"qkv-probe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        return f"cannot make a cgroup in {folder} ({exc.strerror or exc})"
    return None


def detect() -> Hierarchy | str:
    """The hierarchy to make kernels' groups in, or why there is none."""
    try:
        mounts, own = _mounts(), _own()
    except OSError as exc:
        return f"cannot read this process's cgroups ({exc})"
    parents: dict[str, Path] = {}
    for mount, root, kind, options in mounts:
        for c in V1_CONTROLLERS:
            if kind == "cgroup" and c in options and c in own and c not in parents:
                folder = _inside(mount, root, own[c])
                if folder is not None:
                    parents[c] = folder
    why = None
    if all(c in parents for c in V1_CONTROLLERS):
        for folder in set(parents.values()):
            why = why or _writable(folder)
        if why is None:
            return Hierarchy(1, parents)
    for mount, root, kind, _ in mounts:
        if kind == "cgroup2" and "" in own:
            folder = _inside(mount, root, own[""])
            if folder is None:
                continue
            found = _v2_ready(folder)
            if isinstance(found, Hierarchy):
                return found
            why = why or found
    return why or "this machine has no cgroup hierarchy with the memory, pids and cpu controllers"


def _v2_ready(folder: Path) -> Hierarchy | str:
    """cgroup v2: the grader's own cgroup must let its children use memory, pids and cpu."""
    try:
        enabled = set((folder / "cgroup.subtree_control").read_text().split())
        if not set(V2_CONTROLLERS) <= enabled:
            (folder / "cgroup.subtree_control").write_text(
                " ".join(f"+{c}" for c in V2_CONTROLLERS if c not in enabled))
    except OSError as exc:
        return (f"cgroup v2 at {folder} does not give its children the memory, pids and cpu controllers "
                f"({exc.strerror or exc}); run the grader in a delegated cgroup (systemd-run --user "
                f"--scope -p Delegate=yes)")
    return _writable(folder) or Hierarchy(2, {"": folder})


def _write(path: Path, value) -> None:
    path.write_text(f"{value}\n")


def _read_int(path: Path, key: str | None = None) -> int:
    """A number from a cgroup file: the whole file, or the value after ``key`` on one of its lines."""
    try:
        text = path.read_text()
    except OSError:
        return 0
    if key is None:
        return int(text.split()[0]) if text.split() else 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return 0


class KernelGroup:
    """One kernel's cgroup (a folder per v1 controller, or one v2 folder), with ``limits`` written in."""

    def __init__(self, hierarchy: Hierarchy, limits: Limits):
        self.version = hierarchy.version
        name = f"qkv-kernel-{os.getpid()}-{secrets.token_hex(4)}"
        self.folders: dict[str, Path] = {}
        try:
            for c, parent in hierarchy.parents.items():
                folder = parent / name
                if folder not in self.folders.values():
                    folder.mkdir()
                self.folders[c] = folder
            self._set(limits)
        except BaseException:
            self.remove()
            raise

    def _set(self, limits: Limits) -> None:
        quota = max(1000, int(limits.cpus * PERIOD_US))
        if self.version == 1:
            mem = self.folders["memory"]
            _write(mem / "memory.limit_in_bytes", limits.memory_bytes)
            if (mem / "memory.memsw.limit_in_bytes").exists():  # swap too: no way around the limit
                _write(mem / "memory.memsw.limit_in_bytes", limits.memory_bytes)
            _write(self.folders["pids"] / "pids.max", limits.processes)
            _write(self.folders["cpu"] / "cpu.cfs_period_us", PERIOD_US)
            _write(self.folders["cpu"] / "cpu.cfs_quota_us", quota)
        else:
            folder = self.folders[""]
            _write(folder / "memory.max", limits.memory_bytes)
            if (folder / "memory.swap.max").exists():
                _write(folder / "memory.swap.max", 0)
            _write(folder / "pids.max", limits.processes)
            _write(folder / "cpu.max", f"{quota} {PERIOD_US}")

    def procs_files(self) -> list[str]:
        """The files a process writes its pid into to join the group (one per hierarchy)."""
        return sorted({str(f / "cgroup.procs") for f in self.folders.values()})

    def events(self) -> Events:
        if self.version == 1:
            return Events(
                oom_kills=_read_int(self.folders["memory"] / "memory.oom_control", "oom_kill"),
                fork_refusals=_read_int(self.folders["pids"] / "pids.events", "max"),
                cpu_seconds=_read_int(self.folders["cpuacct"] / "cpuacct.usage") / 1e9)
        folder = self.folders[""]
        return Events(oom_kills=_read_int(folder / "memory.events", "oom_kill"),
                      fork_refusals=_read_int(folder / "pids.events", "max"),
                      cpu_seconds=_read_int(folder / "cpu.stat", "usage_usec") / 1e6)

    def cpu_seconds(self) -> float:
        return self.events().cpu_seconds

    def _pids(self) -> set[int]:
        pids: set[int] = set()
        for procs in self.procs_files():
            try:
                pids.update(int(p) for p in Path(procs).read_text().split())
            except OSError:
                pass
        return pids

    def kill(self) -> None:
        """SIGKILL every process in the group. Each is held by a pidfd first, and signalled only if it is
        still in the group after that, so a pid the system has given to another process is never hit."""
        kill_file = self.folders.get("", Path("/nonexistent")) / "cgroup.kill"
        if self.version == 2 and kill_file.exists():
            try:
                _write(kill_file, 1)
                return
            except OSError:
                pass
        for _ in range(50):
            pids = self._pids()
            if not pids:
                return
            held = {}
            for pid in pids:
                try:
                    held[pid] = os.pidfd_open(pid)
                except OSError:
                    pass
            still = self._pids()
            for pid, fd in held.items():
                try:
                    if pid in still:
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                except OSError:
                    pass
                finally:
                    os.close(fd)
            time.sleep(0.01)

    def remove(self, wait: float = 2.0) -> bool:
        """Kill what is left and remove the group's folders; False if one could not be removed in
        ``wait`` seconds (a process stuck in the kernel)."""
        self.kill()
        deadline = time.monotonic() + wait
        left = set(self.folders.values())
        while left:
            for folder in list(left):
                try:
                    folder.rmdir()
                    left.discard(folder)
                except FileNotFoundError:
                    left.discard(folder)
                except OSError:
                    pass
            if not left or time.monotonic() > deadline:
                break
            self.kill()
            time.sleep(0.02)
        return not left
