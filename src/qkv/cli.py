"""The ``qkv`` command: one entry point for instructors, learners and benchmarks.

Each subcommand lives in its own module, which provides ``configure(parser)`` (its arguments) and
``main(args) -> int`` (its exit status). A module is imported only when its command is named, so
``qkv --help`` stays quick even though grading pulls in nbgrader and benchmarks pull in torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "release": ("qkv.grading.release", "regenerate exercises/ from solutions/ (or --check they agree)"),
    "check": ("qkv.grading.check", "a learner's self-check of one exercise notebook"),
    "grade": ("qkv.grading.grade", "autograde a folder of submissions into a gradebook and CSVs"),
}
BENCHES = {
    "decode": ("qkv_bench.decode", "tokens/s of cached vs uncached decoding, beside Hugging Face GPT-2"),
    "grade": ("qkv.bench.grade", "seconds per notebook of qkv grade vs plain nbgrader autograde"),
}


def _add(subparsers, name: str, module: str, help_text: str, wanted: bool) -> None:
    """Add subcommand ``name``; import its module (for its arguments) only when it is the one ``wanted``."""
    if not wanted:
        subparsers.add_parser(name, help=help_text)
        return
    mod = importlib.import_module(module)
    parser = subparsers.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip(),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    mod.configure(parser)
    parser.set_defaults(_main=mod.main)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    words = [a for a in argv if not a.startswith("-")]
    command = words[0] if words else None
    bench = words[1] if command == "bench" and len(words) > 1 else None
    parser = argparse.ArgumentParser(prog="qkv", description="Tools of the qkv course.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        _add(sub, name, module, help_text, wanted=name == command)
    bench_parser = sub.add_parser("bench", help="benchmarks that print ratios measured side by side in one run")
    bench_sub = bench_parser.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    for name, (module, help_text) in BENCHES.items():
        _add(bench_sub, name, module, help_text, wanted=name == bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    return int(args._main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
