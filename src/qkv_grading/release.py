"""Regenerate exercises/ (the student versions) from solutions/ (the nbgrader source notebooks).

The result is byte-for-byte reproducible: solutions are replaced by stubs, hidden tests removed, outputs
cleared, instruction and test cells locked with nbgrader checksums, and nothing that changes between runs
(timestamps, random ids) is written. Files other than the notebook in solutions/NAME/ are copied as they are.

With --check nothing is written: the command exits 1 and lists what differs when exercises/ is out of date.
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import sys
from pathlib import Path

from qkv_grading.course import (ASSIGNMENTS, RELEASE_DIR, SOURCE_DIR, dumps, find_root, read_notebook,
                                release_notebook, source_path)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if exercises/ is out of date")
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


def differences(root: Path) -> list[str]:
    """One line per file that differs (with the size of the change), empty when in sync."""
    want, have = expected_tree(root), actual_tree(root)
    lines = []
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
    """Write exercises/ from solutions/; return the files written or removed."""
    want, have = expected_tree(root), actual_tree(root)
    out = root / RELEASE_DIR
    touched = []
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


def main(args: argparse.Namespace) -> int:
    root = find_root(args.root)
    if args.check:
        lines = differences(root)
        if lines:
            print(f"{RELEASE_DIR}/ is out of sync with {SOURCE_DIR}/ ({len(lines)} file(s)); run `qkv release`:")
            print("\n".join("  " + line for line in lines))
            return 1
        print(f"{RELEASE_DIR}/ is in sync with {SOURCE_DIR}/ ({len(ASSIGNMENTS)} assignments)")
        return 0
    touched = release(root)
    print("\n".join(touched) if touched else f"{RELEASE_DIR}/ already up to date")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    configure(parser)
    sys.exit(main(parser.parse_args()))
