"""The sandbox a learner's kernel runs in when it is graded: bubblewrap, never a home-made jail.

A kernel sees, read-only, only what it needs to run: the system's libraries (/usr), the Python it runs
on, the installed packages, and the course's two packages it imports (``qkv`` and ``qkv_grading``). It
does not see the course repository (``solutions/``, other students' submissions), the gradebook or the
output folder, nor the grader's environment (``--clearenv``: only ``environment()`` is set). It writes
only to a tmpfs of its own, limited in bytes and in files, and for its first second to the scratch folder
where its sockets are (Unix sockets: the kernel has no network, not even loopback), which is closed to it
once it is up. Of the course library it sees only the copy the grader puts in that folder
(``qkv_grading.library``: the installed ``qkv`` is hidden), less what the assignment's tests forbid. It
runs as a user of its own (a random uid as root; the grader's own user in a user
namespace otherwise), in its own process-id namespace, so it cannot signal the grader or another kernel.
Its processes together are held to the memory, process and CPU limits of a cgroup of its own
(``qkv_grading.cgroup``), each of them to ``prlimit``'s limits on address space, file size and CPU time.
``--die-with-parent`` and the pid namespace take the whole process tree down with the kernel.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import sysconfig
from pathlib import Path

from qkv_grading import cgroup, library
from qkv_grading.cgroup import KernelGroup
from qkv_grading.limits import Limits

PACKAGE = "bubblewrap"  # the Debian package that provides bwrap


class SandboxMissing(RuntimeError):
    """bwrap is not installed (and the instructor did not pass --no-sandbox)."""


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


HOME = "/home/learner"  # the kernel's only writable place, a tmpfs of its own (also its TMPDIR)
# /tmp holds only the folders above the scratch folder, as root's: as root a kernel cannot write there
# (without root it owns it, and may write that many bytes).
TMP_BYTES = 65536
# Settings a kernel may take from the grader's environment (never a path, a token or a password).
PASSED_ON = ("LANG", "LC_ALL", "MPLBACKEND", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# Inside the sandbox, before the kernel's own user takes over: mount its tmpfs, limited in bytes and in
# files (bwrap's --size limits bytes only), then exec the rest.
MOUNT = 'mount -t tmpfs -o "$1" qkv-home "$2" && cd "$2" || exit 125; shift 2; exec "$@"'


def environment(scratch: str | None = None) -> dict[str, str]:
    """The kernel's whole environment (bwrap --clearenv, then these): where it may write, how it finds
    its Python and the course's packages (with ``scratch``, the course library's copy there first), and a
    few settings; nothing else of the grader's."""
    import qkv
    import qkv_grading

    site = {os.path.realpath(p) for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])}
    parents = []
    for pkg in (qkv, qkv_grading):  # a worktree's src/ on PYTHONPATH, or an editable install's
        parent = str(Path(pkg.__file__).resolve().parent.parent)
        if parent not in site and parent not in parents:
            parents.append(parent)
    env = {name: os.environ[name] for name in PASSED_ON if name in os.environ}
    env.update({
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
        "HOME": HOME, "TMPDIR": HOME, "MPLCONFIGDIR": os.path.join(HOME, ".matplotlib"),
        "IPYTHONDIR": os.path.join(HOME, ".ipython"), "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    if scratch:
        parents.insert(0, os.path.join(scratch, library.FOLDER))
    if parents:
        env["PYTHONPATH"] = os.pathsep.join(parents)
    return env


def _installed_library() -> list[str]:
    """The installed course library, hidden under an empty folder: a kernel imports the grader's copy of
    it from its scratch folder instead (``qkv_grading.library``)."""
    import qkv

    return ["--tmpfs", str(Path(qkv.__file__).resolve().parent)]


def rootless() -> bool:
    """Whether kernels run as the grader's own user in a user namespace (the grader is not root)."""
    return os.geteuid() != 0


def command(scratch: str, limits: Limits = Limits(), group: KernelGroup | None = None) -> list[str]:
    """The command prefix that runs a program in the sandbox. Its writable places: its own tmpfs
    (``HOME``, ``limits.disk_bytes`` and ``limits.files``) and ``scratch``, where the grader and the
    kernel meet (the connection file and the sockets; ``lock`` closes it once the kernel is up). With
    ``group``, its first process joins that cgroup before anything else runs.

    As root the kernel runs as a user of its own (a random uid); otherwise as the grader's user, in a user
    namespace of its own (where it is that namespace's root, without capabilities)."""
    if rootless():
        # root of a user namespace of its own (mapped to the grader's user outside): allowed to mount its
        # tmpfs, then without any capability (bounding set emptied) before the kernel starts
        uid = gid = 0
        user = ["--unshare-user", "--uid", "0", "--gid", "0"]
        become: list[str] = []
    else:
        uid = gid = 61000 + secrets.randbelow(4000)  # the process limit counts per user
        os.chown(scratch, uid, gid)
        user = []
        become = [f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    # there before the kernel starts, so that its import system looks in it (Python skips a folder on
    # its path that was missing when first searched); the copy comes in before the first cell runs
    os.makedirs(os.path.join(scratch, library.FOLDER), exist_ok=True)
    roots = _readable_roots()
    binds = []
    for root in roots:
        binds += ["--ro-bind", root, root]
    env = []
    for name, value in environment(scratch).items():
        env += ["--setenv", name, value]
    place = ["/bin/sh", "-c", cgroup.PLACE, "qkv-cgroup", *group.procs_files(), "--"] if group else []
    # with a cgroup the worker stops the kernel when its processes together have used their CPU time, and
    # says why; each process's own limit is then a backstop a little above it
    cpu = max(1, int(limits.cpu_seconds)) + (5 if group else 0)
    tmpfs = f"size={limits.disk_bytes},nr_inodes={limits.files},mode=0700,uid={uid},gid={gid}"
    return [
        *place,
        "bwrap", *user, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
        "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv", *env,
        "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SYS_ADMIN",
        "--cap-add", "CAP_SETPCAP",  # for setpriv to empty the bounding set: no capability survives
        "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--symlink", "usr/bin", "/bin", "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
        "--ro-bind-try", "/etc/localtime", "/etc/localtime",
        "--dir", HOME, "--perms", "0755", "--size", str(TMP_BYTES), "--tmpfs", "/tmp",
        *_dirs(roots + [scratch]), *binds, *_hidden(), *_installed_library(),
        "--proc", "/proc", "--dev", "/dev", "--bind", scratch, scratch, "--remount-ro", "/",
        "--chdir", "/",
        "--", "/bin/sh", "-c", MOUNT, "qkv-home", tmpfs, HOME,
        "/usr/bin/setpriv", *become, "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--",
        "/usr/bin/prlimit", f"--as={limits.address_space_bytes}", f"--nproc={limits.processes}",
        f"--cpu={cpu}", f"--fsize={limits.file_bytes}", "--core=0", "--",
    ]


def lock(scratch: str) -> None:
    """Close the meeting folder once the kernel is up (its sockets are bound): as root it goes back to the
    grader's user, so the kernel can no longer write files there; its writable space is its tmpfs alone.
    (Without root the kernel is the folder's owner: there it stays writable, each file held by
    ``limits.file_bytes``.)"""
    if not rootless():
        os.chown(scratch, os.getuid(), os.getgid())
        os.chmod(scratch, 0o755)
