"""The ``qkv`` command line: help works, and a command's heavy imports happen only when it runs."""

import re
import subprocess
import sys

import pytest

from qkv_grading import cli


def _modules_loaded_by(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def _help(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 0
    return capsys.readouterr().out


def _listed(text: str) -> set[str]:
    """The subcommands the help lists: one per line, indented under the COMMAND/BENCHMARK heading."""
    return set(re.findall(r"(?m)^    ([a-z][\w-]*)\s{2,}\S", text))


def test_help_lists_every_command(capsys):
    """Every command of COURSE.md, each on its own line of the listing (a word like 'check' in some
    description would not do); removing one, or adding one unlisted here, fails this."""
    assert _listed(_help(capsys, ["--help"])) == {"release", "check", "grade", "bench"}
    assert _listed(_help(capsys, ["bench", "--help"])) == {"decode", "grade"}


def test_help_does_not_import_torch_or_nbgrader():
    loaded = _modules_loaded_by(
        "from qkv_grading import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass")
    assert "torch" not in loaded and "nbgrader" not in loaded


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["no-such-command"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
