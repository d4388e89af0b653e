"""The sandbox a learner's kernel runs in when it is graded: bubblewrap, never a home-made jail.

A kernel sees, read-only, only what it needs to run: the system's libraries (/usr), the Python it runs
on, the installed packages, and the course's two packages it imports (``qkv`` and ``qkv_grading``). It
does not see the course repository (``solutions/``, other students' submissions), the gradebook or the
output folder. It writes only to its own scratch folder, which also holds the sockets it talks to the
grader through (Unix sockets: the kernel has no network, not even loopback). It runs as a user of its
own (not root), in its own process-id namespace, so it cannot signal the grader or another kernel, under
limits on memory (address space), processes and CPU time. ``--die-with-parent`` and the pid namespace
take the whole process tree down with the kernel.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "bubblewrap"  # the Debian package that provides bwrap


class SandboxMissing(RuntimeError):
    """bwrap is not installed (and the instructor did not pass --no-sandbox)."""


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 4 * 2**30  # address space: NumPy and a kernel need ~1 GiB of it
    processes: int = 256  # threads count too (BLAS pools)
    cpu_seconds: int = 600  # the whole kernel's CPU time; a cell's wall-clock timeout is separate


def available() -> bool:
    return shutil.which("bwrap") is not None


def require() -> None:
    if not available():
        raise SandboxMissing(
            f"the sandbox tool bwrap is missing: install the Debian package {PACKAGE!r} "
            f"(apt-get install {PACKAGE}), or grade without a sandbox with --no-sandbox")


def _readable_roots() -> list[str]:
    """What a kernel needs to read: its Python, its packages, the course's packages (never the repository)."""
    import qkv
    import qkv_grading

    paths = {sys.prefix, sys.base_prefix, sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
             sysconfig.get_paths()["platlib"], os.path.realpath(sys.executable)}
    paths.add(str(Path(os.path.realpath(sys.executable)).parent.parent))
    for pkg in (qkv, qkv_grading):
        paths.add(str(Path(pkg.__file__).resolve().parent))
    return sorted(p for p in paths if p and os.path.exists(p) and not p.startswith("/usr/"))


def _dirs(paths: list[str]) -> list[str]:
    """bwrap makes missing parent folders private (0700), which a kernel's own user cannot enter: make
    every parent of a bound path 0755 first."""
    args, made = [], set()
    for path in paths:
        parts = Path(path).parts
        for k in range(2, len(parts)):
            parent = str(Path(*parts[:k]))
            if parent not in made:
                made.add(parent)
                args += ["--perms", "0755", "--dir", parent]
    return args


def _hidden() -> list[str]:
    """Installed packages a graded kernel has no use for, hidden under an empty folder: the debugger
    (debugpy), which ipykernel would otherwise import at every start (a third of a kernel's start-up)
    and which opens sockets of its own."""
    import importlib.util

    spec = importlib.util.find_spec("debugpy")
    if spec is None or not spec.submodule_search_locations:
        return []
    return ["--tmpfs", list(spec.submodule_search_locations)[0]]


def command(scratch: str, limits: Limits = Limits()) -> list[str]:
    """The command prefix that runs a program in the sandbox, with ``scratch`` as its only writable place."""
    uid = 61000 + secrets.randbelow(4000)  # a user of its own: the process limit counts per user
    os.chown(scratch, uid, uid)
    roots = _readable_roots()
    binds = []
    for root in roots:
        binds += ["--ro-bind", root, root]
    return [
        "bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
        "--die-with-parent", "--new-session", "--cap-add", "CAP_SETUID,CAP_SETGID",
        "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--symlink", "usr/bin", "/bin", "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
        "--ro-bind-try", "/etc/localtime", "/etc/localtime",
        "--tmpfs", "/tmp", *_dirs(roots + [scratch]), *binds, *_hidden(),
        "--proc", "/proc", "--dev", "/dev", "--bind", scratch, scratch,
        "--chdir", scratch, "--setenv", "HOME", scratch, "--setenv", "TMPDIR", scratch,
        "--unsetenv", "JPY_PARENT_PID",  # the grader is outside its pid namespace: --die-with-parent instead
        "--setenv", "MPLCONFIGDIR", scratch, "--setenv", "IPYTHONDIR", os.path.join(scratch, ".ipython"),
        "--",
        "/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
        "--bounding-set=-all", "--",
        "/usr/bin/prlimit", f"--as={limits.memory_bytes}", f"--nproc={limits.processes}",
        f"--cpu={limits.cpu_seconds}", "--core=0", "--",
    ]
