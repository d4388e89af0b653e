"""Regenerate exercises/ (the student versions) from solutions/ (the nbgrader source notebooks).

The result is byte-for-byte reproducible: solutions are replaced by stubs, hidden tests removed, outputs
cleared, instruction and test cells locked with nbgrader checksums, and nothing that changes between runs
(timestamps, random ids) is written. Files other than the notebook in solutions/NAME/ are copied as they are. A question's heading states its
points, "## Question 1 (3 points): ...": they are written from its tests' nbgrader metadata, in solutions/
and in exercises/, so a change of points is made in the metadata alone (and the grader does not take a
heading released with the old points for a learner's edit).

With --check nothing is written: the command exits 1 and lists what differs when exercises/ is out of date.
It plans every test (``qkv_grading.library.plan``: a graded kernel is sent each test's probes as data)
and exits 1, naming the assignment and the cell, for one that cannot be planned. It also grades every
solution against all of its tests, hidden ones included, with the grader's own run and judge (in the
sandbox when bwrap is installed), and exits 1 unless each gets full marks: a hidden test whose expected
value is wrong is found here, not when a class is graded. --sync-only skips that grading step.
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from qkv_grading.course import (ASSIGNMENTS, RELEASE_DIR, SOURCE_DIR, dumps, find_root, instructor_notebook,
                                points_in_headings, read_notebook, release_notebook, source_path)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true",
                        help="only compare, and grade the solutions; exit 1 if exercises/ is out of date or a "
                             "solution loses a point")
    parser.add_argument("--sync-only", action="store_true",
                        help="with --check: compare exercises/ with solutions/, without grading the solutions")
    parser.add_argument("--root", default=None, help="the course repository (default: found from the working directory)")


def expected_tree(root: Path) -> dict[str, bytes]:
    """Relative path under exercises/ -> the bytes it should hold."""
    files: dict[str, bytes] = {}
    for name in ASSIGNMENTS:
        src = source_path(root, name)
        if not src.is_file():
            raise FileNotFoundError(f"missing source notebook {src}")
        files[f"{name}/{name}.ipynb"] = dumps(release_notebook(read_notebook(src))).encode()
        for extra in sorted((root / SOURCE_DIR / name).rglob("*")):
            rel = extra.relative_to(root / SOURCE_DIR)
            if extra.is_file() and extra != src and ".ipynb_checkpoints" not in rel.parts and "__pycache__" not in rel.parts:
                files[rel.as_posix()] = extra.read_bytes()
    return files


def actual_tree(root: Path) -> dict[str, bytes]:
    out = root / RELEASE_DIR
    if not out.is_dir():
        return {}
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".ipynb_checkpoints" not in p.parts}


def stale_headings(root: Path) -> dict[str, list[str]]:
    """Assignment -> the questions whose heading in solutions/ states other points than its tests' metadata."""
    stale = {}
    for name in ASSIGNMENTS:
        src = source_path(root, name)
        changed = points_in_headings(read_notebook(src)) if src.is_file() else []
        if changed:
            stale[name] = changed
    return stale


def write_headings(root: Path) -> list[str]:
    """Write the points of every question heading in solutions/ from its tests' metadata (the release does
    the same), so that a change of points is made in the metadata alone; return the files written."""
    touched = []
    for name, questions in stale_headings(root).items():
        src = source_path(root, name)
        nb = read_notebook(src)
        points_in_headings(nb)
        src.write_text(dumps(nb), encoding="utf-8")
        touched.append(f"wrote     {SOURCE_DIR}/{name}/{name}.ipynb (the points in the heading of "
                       f"{', '.join(questions)}, from its tests' metadata)")
    return touched


def differences(root: Path) -> list[str]:
    """One line per file that differs (with the size of the change), empty when in sync."""
    want, have = expected_tree(root), actual_tree(root)
    lines = [f"heading   {SOURCE_DIR}/{name}/{name}.ipynb: the heading of {', '.join(qs)} states other points "
             f"than its tests' metadata" for name, qs in stale_headings(root).items()]
    for rel in sorted(set(want) | set(have)):
        if rel not in have:
            lines.append(f"missing   {RELEASE_DIR}/{rel}")
        elif rel not in want:
            lines.append(f"extra     {RELEASE_DIR}/{rel} (no source in {SOURCE_DIR}/)")
        elif want[rel] != have[rel]:
            try:
                diff = list(difflib.unified_diff(have[rel].decode().splitlines(), want[rel].decode().splitlines(),
                                                 lineterm="", n=0))
                added = sum(1 for d in diff if d.startswith("+") and not d.startswith("+++"))
                removed = sum(1 for d in diff if d.startswith("-") and not d.startswith("---"))
                lines.append(f"changed   {RELEASE_DIR}/{rel} (+{added} -{removed} lines against a fresh release)")
            except UnicodeDecodeError:
                lines.append(f"changed   {RELEASE_DIR}/{rel} (binary)")
    return lines


def release(root: Path) -> list[str]:
    """Write exercises/ from solutions/ (and the points of question headings in solutions/ from the
    tests' metadata); return the files written or removed."""
    touched = write_headings(root)
    want, have = expected_tree(root), actual_tree(root)
    out = root / RELEASE_DIR
    for rel, data in want.items():
        if have.get(rel) != data:
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            touched.append(f"wrote     {RELEASE_DIR}/{rel}")
    for rel in sorted(set(have) - set(want)):
        (out / rel).unlink()
        touched.append(f"removed   {RELEASE_DIR}/{rel}")
    for folder in sorted(out.rglob("*"), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            shutil.rmtree(folder)
    return touched


@dataclass(frozen=True)
class SolutionGrade:
    """One solution graded as a submission: its score, and the message of every test it failed."""

    assignment: str
    score: float
    max_score: float
    failures: tuple[str, ...]


def grade_solutions(root: Path, timeout: float = 30.0) -> list[SolutionGrade]:
    """Run each solution notebook, hidden tests included, and judge it as ``qkv grade`` does: the solution
    runs in a kernel (sandboxed when bwrap is installed), the checks in this process."""
    from qkv_grading import execute, sandbox
    from qkv_grading.judge import judge_run
    from qkv_grading.run import run_in_kernel
    from qkv_grading.spec import load_spec

    pool = execute.KernelPool(execute.ExecutionSettings(sandboxed=sandbox.available()))
    grades = []
    try:
        for name in ASSIGNMENTS:
            spec = load_spec(root, name, hidden=True)
            run = run_in_kernel(read_notebook(source_path(root, name)), spec, pool, timeout=timeout)
            result = judge_run(run, spec)
            failures = tuple(f"{t.id}: {t.message}" for t in result.tests if not t.passed)
            grades.append(SolutionGrade(name, result.score, result.max_score, failures))
    finally:
        pool.shutdown_warm()
    return grades


def plan_errors(root: Path) -> list[str]:
    """Why each assignment whose tests cannot be planned fails (``qkv_grading.library.plan``): a graded
    kernel is sent each test's probes as data, so a probe part that uses what a probe returns, passes
    arguments that are not plain data, or fails in the grader cannot be graded. No kernel runs here."""
    from qkv_grading import library

    errors = []
    for name in ASSIGNMENTS:
        try:
            library.plan(instructor_notebook(read_notebook(source_path(root, name))), name)
        except library.PlanError as exc:
            errors.append(str(exc))
    return errors


def main(args: argparse.Namespace) -> int:
    root = find_root(args.root)
    if args.check:
        lines = differences(root)
        if lines:
            print(f"{RELEASE_DIR}/ is out of sync with {SOURCE_DIR}/ ({len(lines)} file(s)); run `qkv release`:")
            print("\n".join("  " + line for line in lines))
            return 1
        print(f"{RELEASE_DIR}/ is in sync with {SOURCE_DIR}/ ({len(ASSIGNMENTS)} assignments)")
        errors = plan_errors(root)
        if errors:
            print(f"{len(errors)} assignment(s) have a test the grader cannot send a kernel as data; fix them "
                  f"in {SOURCE_DIR}/:")
            print("\n".join("  " + e for e in errors))
            return 1
        if getattr(args, "sync_only", False):
            return 0
        from qkv_grading.judge import InstructorError

        try:
            grades = grade_solutions(root)
        except InstructorError as exc:
            print(f"a solution cannot be graded: {exc}")
            return 1
        short = [g for g in grades if g.failures or g.score < g.max_score]
        for g in grades:
            print(f"  {g.assignment}: the solution scores {g.score:g} of {g.max_score:g}")
            for failure in g.failures:
                print(f"      {failure}")
        if short:
            print(f"{len(short)} solution(s) lose points against their own tests, hidden ones included: fix "
                  f"the tests (or the solutions) in {SOURCE_DIR}/, then run `qkv release`")
            return 1
        print("every solution gets full marks from all of its tests, hidden ones included")
        return 0
    touched = release(root)
    print("\n".join(touched) if touched else f"{RELEASE_DIR}/ already up to date")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    configure(parser)
    sys.exit(main(parser.parse_args()))
