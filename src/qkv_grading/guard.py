"""What keeps a check from running itself, and from leaving processes behind.

A learner's notebook may hold a cell that runs ``!qkv check NAME`` (the notebook suggests it, and
JupyterLab saves it). Run as it is, every check would start the check again inside its own kernel, a
chain of kernels that ends only at a timeout. So:

* ``skip_self_checks`` replaces every code cell that starts ``qkv check`` by one that prints a plain
  note, before a notebook runs (for ``qkv check`` and ``qkv grade`` alike);
* a kernel that ``qkv check`` runs has ``ENV`` set, and a ``qkv check`` started there by any other
  route stops at once (``inside_a_check``);
* ``end_tree`` kills a kernel's descendants, also those in sessions of their own (a ``!`` command runs
  in a terminal of its own, out of the kernel's process group), and ``contained`` whatever a check
  started that still runs when it ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys

import nbformat
import psutil

ENV = "QKV_CHECK_RUNNING"
SKIPPED = ("qkv check: this cell runs qkv check, which never runs inside a check or a grading run: "
           "skipped")
# `qkv check`, `qkv  "check"`, `["qkv", "check"`, `qkv_grading.cli check`: the command and its first word
_CHECK = re.compile(r"""\bqkv(?:_grading(?:\.cli)?)?\b['",\s]*check\b""")
# a line that runs a command: a shell escape (`!`, `!!`), a line magic that runs one, or a call that does
_RUNS = re.compile(r"""^\s*(?:!|%(?:sx|system|sc)\b|[\w\s,]+=\s*!|.*\b(?:subprocess|os\.system|os\.popen|os\.exec\w*|"""
                   r"""get_ipython\(\)\.(?:system|getoutput)|pexpect)\b)""")
_SHELL_CELL = re.compile(r"^\s*%%(?:bash|sh|script|system)\b")


def starts_check(source: str) -> bool:
    """Whether code cell ``source`` runs ``qkv check`` (a shell escape, a ``%%bash`` cell, a subprocess)."""
    text = "".join(source) if isinstance(source, list) else str(source)
    shell_cell = bool(_SHELL_CELL.match(text))
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not _CHECK.search(line):
            continue
        if shell_cell or _RUNS.match(line):
            return True
    return False


def skip_self_checks(nb: nbformat.NotebookNode) -> int:
    """Replace, in place, every code cell of ``nb`` that runs ``qkv check`` by a cell printing ``SKIPPED``;
    return how many there were."""
    skipped = 0
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and starts_check(cell.get("source", "")):
            cell["source"] = f"print({SKIPPED!r})"
            skipped += 1
    return skipped


def inside_a_check() -> bool:
    """Whether this process was started, by whatever route, from a kernel that ``qkv check`` runs."""
    return bool(os.environ.get(ENV))


def end_tree(pid: int | None) -> None:
    """SIGKILL every descendant of process ``pid`` (not ``pid`` itself), whatever session it is in. No
    waiting: whoever is their parent reaps them (or, once ``pid`` is gone, the one they are handed to)."""
    if not pid:
        return
    try:
        procs = psutil.Process(pid).children(recursive=True)
    except psutil.Error:  # gone already
        return
    _kill(procs)


@contextlib.contextmanager
def contained():
    """While inside: orphans of this process's descendants are handed to it (Linux's child subreaper),
    so a process a kernel left running in the background (``!sleep 100 &``) stays one of ours. On the way
    out: SIGKILL every descendant started inside that still runs, and reap it."""
    before = {p.pid for p in _descendants()}
    adopting = _subreaper(True)
    try:
        yield
    finally:
        _kill([p for p in _descendants() if p.pid not in before])
        # reap ours: the children killed, and the grandchildren handed to us when their parent died
        psutil.wait_procs([p for p in _children() if p.pid not in before], timeout=2)
        if adopting:
            _subreaper(False)


def _descendants() -> list:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _children() -> list:
    try:
        return psutil.Process().children()
    except psutil.Error:
        return []


def _kill(procs: list) -> None:
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass


def _subreaper(on: bool) -> bool:
    """Turn Linux's child subreaper on or off for this process; False where there is none."""
    if not sys.platform.startswith("linux"):
        return False
    PR_SET_CHILD_SUBREAPER = 36
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
