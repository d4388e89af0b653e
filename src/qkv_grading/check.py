"""A learner's self-check: run an exercise notebook and report every question as passed or failed.

    qkv check 01_weighted_average          the exercise by name: your working copy work/NAME/NAME.ipynb
                                           (the one `make lab` opens), else exercises/NAME/NAME.ipynb, of the
                                           course repository around the working directory
    qkv check path/to/my_copy.ipynb        any copy, by its path
    qkv check 01_weighted_average --all    every test, hidden ones included (self-study, in a clone that
                                           has solutions/): what failed, never the hidden code

Runs the notebook in a fresh kernel with the visible tests as released (the hidden tests run only when an
instructor grades, or with --all). A test cell that was deleted or edited is noticed by comparing with the
released notebook, and the released version is run instead: that is also what grading does. A cell that
runs `qkv check` itself is skipped, and nothing the notebook started outlives the check. Exits 1 if any
test fails, 0 when all pass.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import nbformat

from qkv_grading import cells, guard
from qkv_grading.course import ASSIGNMENTS, find_root, release_path, source_path, working_path
from qkv_grading.probe import split
from qkv_grading.results import TestResult


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", help="an exercise's name (e.g. 01_weighted_average) or the path of a "
                                         "notebook (e.g. work/01_weighted_average/01_weighted_average.ipynb)")
    parser.add_argument("--all", action="store_true",
                        help="run the hidden tests too (needs solutions/, as in a clone of the course) and say "
                             "per question what failed, without showing the hidden code")
    parser.add_argument("--assignment", default=None, choices=ASSIGNMENTS,
                        help="which exercise it is (default: from the file name or its cells)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds each cell may run (default 30)")
    parser.add_argument("--root", default=None, help="the course repository (default: found from the notebook)")


class NotFound(Exception):
    """What the learner named is not a notebook that can be found; the message says why."""


def guess_assignment(path: Path, nb) -> str | None:
    for name in ASSIGNMENTS:
        if path.stem == name or path.parent.name == name:
            return name
    for name in ASSIGNMENTS:  # a renamed copy: look for the assignment's name in its title cell
        if any(name.split("_", 1)[0] in c.get("source", "")[:200] and "Exercise" in c.get("source", "")[:200]
               for c in nb.get("cells", [])[:1]):
            return name
    return None


def locate(given: str, root_arg: str | None) -> Path:
    """The notebook ``given`` names: a path (relative to the working directory) when there is a file
    there, else an exercise's name (``01_weighted_average``, with or without ``.ipynb``), found in the
    course repository at or above the working directory: the learner's working copy in ``work/`` when
    there is one, else the released notebook in ``exercises/``. Raises ``NotFound`` saying why not."""
    path = Path(given)
    if path.is_file():
        return path
    name = path.name.removesuffix(".ipynb")
    if name not in ASSIGNMENTS:
        raise NotFound(f"no such file {given}, and {name} is not an exercise's name (the exercises: "
                       f"{', '.join(ASSIGNMENTS)})")
    if path.parent != Path(".") and path.parent.name != name:
        raise NotFound(f"no such file {given}")
    try:
        root = find_root(root_arg)
    except FileNotFoundError:
        raise NotFound(f"{name} is an exercise, but there is no course repository at or above {Path.cwd()} "
                       f"to find it in: run the check inside your clone of the course, or give the "
                       f"notebook's path") from None
    for candidate in (working_path(root, name), release_path(root, name)):
        if candidate.is_file():
            return candidate
    raise NotFound(f"{name} is an exercise, but the course repository {root} holds no "
                   f"{working_path(root, name).relative_to(root)} nor {release_path(root, name).relative_to(root)}")


def _checked_only_when_graded(cell) -> bool:
    """A released test cell whose checks part holds no check: imports, comments and a print only (its
    checks are hidden, and run when the notebook is graded)."""
    _, checks = split(cell.get("source", ""))
    lines = [ln.strip() for ln in checks.splitlines()]
    return not any(ln and not ln.startswith(("#", "from ", "import ", "print(")) for ln in lines)


def _root(args, path: Path) -> Path:
    if args.root:
        return find_root(args.root)
    for start in (path.parent, None):
        try:
            return find_root(start)
        except FileNotFoundError:
            continue
    return find_root(Path(__file__))


def _stop(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through the run, whose `finally` stops every kernel


def main(args: argparse.Namespace) -> int:
    if guard.inside_a_check():
        print("qkv check: skipped: this was started from a notebook that qkv check is running, and a check "
              "never runs inside itself")
        return 0
    try:
        path = locate(args.notebook, args.root)
        nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
    except NotFound as exc:
        print(f"qkv check: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"qkv check: {path} is not a readable notebook ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    name = args.assignment or guess_assignment(path, nb)
    if name is None:
        print(f"qkv check: cannot tell which exercise {path.name} is; pass --assignment NAME", file=sys.stderr)
        return 2
    root = _root(args, path)
    if args.all and not source_path(root, name).is_file():
        print(f"qkv check: --all runs the hidden tests, which live in {source_path(root, name)}, and this "
              f"course folder has no such file (a released copy of the exercises holds no hidden tests)",
              file=sys.stderr)
        return 2
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    os.environ[guard.ENV] = "1"  # inherited by the kernel: a `qkv check` started there stops at once
    try:
        with guard.contained():
            return _check(args, path, nb, name, root)
    finally:
        del os.environ[guard.ENV]
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check(args, path: Path, nb, name: str, root: Path) -> int:
    from qkv_grading.execute import KernelPool
    from qkv_grading.judge import judge_run
    from qkv_grading.run import run_in_kernel
    from qkv_grading.spec import load_spec

    spec = load_spec(root, name, hidden=args.all)
    skipped = sum(1 for c in nb.get("cells", []) if c.get("cell_type") == "code"
                  and guard.starts_check(c.get("source", "")))
    pool = KernelPool()  # on the learner's own machine: no sandbox, a fresh kernel for the notebook
    try:
        result = judge_run(run_in_kernel(nb, spec, pool, timeout=args.timeout), spec)
    finally:
        pool.shutdown_warm()  # and waits for the kernel that ran to be stopped
    info = {c.get("id"): c.metadata.get("qkv", {}) for c in spec.released.cells}
    hidden_only_ids = {cells.grade_id(c) for c in spec.released.cells
                       if c.metadata.get("qkv", {}).get("hidden_tests") and _checked_only_when_graded(c)}

    more = f": qkv check {name} --all runs them" if source_path(root, name).is_file() else ""
    some_hidden = False
    print(f"{name}: checking {path}" + (" with every test, hidden ones included" if args.all else ""))
    if skipped:
        print(f"  note: {skipped} cell(s) that run qkv check were skipped: a check never runs inside itself")
    for note in result.notes:
        suffix = " (grading uses the released version)" if note.startswith("locked cell") else ""
        print(f"  note: {note}{suffix}")
    failed = 0
    by_question: dict[str, list[TestResult]] = {}
    for t in result.tests:
        by_question.setdefault(t.question, []).append(t)
    for q, tests in by_question.items():
        bad = [t for t in tests if not t.passed]
        points = (f" ({sum(t.points for t in tests):g} of {sum(t.max_points for t in tests):g} points)"
                  if args.all else "")
        if bad:
            failed += len(bad)
            print(f"  {q}: FAILED{points}")
            for t in bad:
                print(f"      {t.id}: {t.message}")
        elif args.all:
            print(f"  {q}: passed{points}")
        elif all(t.id in hidden_only_ids for t in tests):
            print(f"  {q}: no visible test; it is checked when graded")
        else:
            # with hidden tests a wrong answer can pass what is visible: say only what was checked
            hidden = any(info.get(t.id, {}).get("hidden_tests") for t in tests)
            some_hidden = some_hidden or hidden
            extra = " the visible checks; more tests run when it is graded" if hidden else ""
            print(f"  {q}: passed{extra}")
    if args.all:
        by_hand = any(cells.is_written(c) for c in spec.released.cells)
        print(f"score: {result.score:g} of {result.max_score:g} points, hidden tests included"
              + (" (written answers are graded by hand, not here)" if by_hand else ""))
    if failed:
        print(f"{failed} test(s) failed")
    elif args.all:
        print("all tests passed, hidden ones included")
    else:
        print("all visible tests passed")
    if some_hidden and more:
        print(f"visible checks can pass a wrong answer; the hidden tests run when it is graded{more}")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    configure(parser)
    sys.exit(main(parser.parse_args()))
