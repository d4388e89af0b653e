"""The learner's working copy of the exercises: ``work/NAME/`` beside ``exercises/NAME/``.

``exercises/`` is tracked by git and rewritten by ``qkv release``, so a learner who wrote there would
meet conflicts at ``git pull`` and could lose work to a release. ``make lab`` runs this first: every
exercise that has no folder in ``work/`` yet is copied there, and nothing already in ``work/`` is ever
touched again. git ignores ``work/``. ``qkv check NAME`` checks ``work/NAME/NAME.ipynb`` when it exists.

    python -m qkv_grading.workcopy [--root DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from qkv_grading.course import ASSIGNMENTS, RELEASE_DIR, WORK_DIR, find_root


def make_working_copy(root: Path) -> list[str]:
    """Copy ``exercises/NAME/`` to ``work/NAME/`` for every exercise not in ``work/`` yet; return what was
    made. A folder already in ``work/`` is left as it is, whatever it holds."""
    made = []
    for name in ASSIGNMENTS:
        source, dest = root / RELEASE_DIR / name, root / WORK_DIR / name
        if dest.exists() or not source.is_dir():
            continue
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        made.append(f"{WORK_DIR}/{name}/")
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qkv_grading.workcopy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="the course repository (default: found from here)")
    root = find_root(parser.parse_args(argv).root)
    made = make_working_copy(root)
    if made:
        print(f"your working copy of the exercises, in {root / WORK_DIR} (git ignores it; "
              f"nothing there is ever overwritten): made {', '.join(made)}")
    else:
        print(f"your working copy of the exercises: {root / WORK_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
