"""A learner's self-check: run an exercise notebook and report every question as passed or failed.

    qkv check 01_weighted_average          the exercise by name: exercises/01_weighted_average/... of the
                                           course repository around the working directory
    qkv check path/to/my_copy.ipynb        any copy, by its path

Runs the notebook in a fresh kernel with the visible tests as released (the hidden tests run only when an
instructor grades). A test cell that was deleted or edited is noticed by comparing with the released
notebook, and the released version is run instead: that is also what grading does. Exits 1 if any test
fails, 0 when all visible tests pass.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

from qkv_grading.course import ASSIGNMENTS, find_root, release_path
from qkv_grading.probe import split
from qkv_grading.results import TestResult


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", help="an exercise's name (e.g. 01_weighted_average) or the path of a "
                                         "notebook (e.g. exercises/01_weighted_average/01_weighted_average.ipynb)")
    parser.add_argument("--assignment", default=None, choices=ASSIGNMENTS,
                        help="which exercise it is (default: from the file name or its cells)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds each cell may run (default 30)")
    parser.add_argument("--root", default=None, help="the course repository (default: found from the notebook)")


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
    there, else an exercise's name (``01_weighted_average``, with or without ``.ipynb``), found in
    ``exercises/`` of the course repository at or above the working directory."""
    path = Path(given)
    if path.is_file():
        return path
    name = path.name.removesuffix(".ipynb")
    if name in ASSIGNMENTS and (path.parent == Path(".") or path.parent.name == name):
        try:
            return release_path(find_root(root_arg), name)
        except FileNotFoundError:
            pass
    return path


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


def main(args: argparse.Namespace) -> int:
    from qkv_grading.judge import judge_run
    from qkv_grading.run import run_in_kernel
    from qkv_grading.spec import load_spec

    path = locate(args.notebook, args.root)
    try:
        nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
    except FileNotFoundError:
        print(f"qkv check: no such file {path}, and no exercise of that name (the exercises: "
              f"{', '.join(ASSIGNMENTS)})", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"qkv check: {path} is not a readable notebook ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    name = args.assignment or guess_assignment(path, nb)
    if name is None:
        print(f"qkv check: cannot tell which exercise {path.name} is; pass --assignment NAME", file=sys.stderr)
        return 2
    spec = load_spec(_root(args, path), name, hidden=False)
    result = judge_run(run_in_kernel(nb, spec, timeout=args.timeout), spec)
    info = {c.get("id"): c.metadata.get("qkv", {}) for c in spec.released.cells}
    hidden_only_ids = {c.metadata.get("nbgrader", {}).get("grade_id") for c in spec.released.cells
                       if c.metadata.get("qkv", {}).get("hidden_tests") and _checked_only_when_graded(c)}

    print(f"{name}: checking {path}")
    for note in result.notes:
        print(f"  note: {note} (grading uses the released version)")
    failed = 0
    by_question: dict[str, list[TestResult]] = {}
    for t in result.tests:
        by_question.setdefault(t.question, []).append(t)
    for q, tests in by_question.items():
        bad = [t for t in tests if not t.passed]
        hidden_only = [t for t in tests if t.id in hidden_only_ids]
        if bad:
            failed += len(bad)
            print(f"  {q}: FAILED")
            for t in bad:
                print(f"      {t.id}: {t.message}")
        else:
            # with hidden tests a wrong answer can pass what is visible: say only what was checked
            extra = (" the visible checks; more tests run when it is graded"
                     if any(info.get(t.id, {}).get("hidden_tests") for t in tests) else "")
            if len(hidden_only) == len(tests):
                print(f"  {q}: no visible test; it is checked when graded")
            else:
                print(f"  {q}: passed{extra}")
    if failed:
        print(f"{failed} test(s) failed")
        return 1
    print("all visible tests passed")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    configure(parser)
    sys.exit(main(parser.parse_args()))
