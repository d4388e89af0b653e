"""The ``qkv`` command line: help works, and a command's heavy imports happen only when it runs."""

import subprocess
import sys

import pytest

from qkv_grading import cli


def _modules_loaded_by(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for name in ("release", "check", "grade", "bench"):
        assert name in text


def test_help_does_not_import_torch_or_nbgrader():
    loaded = _modules_loaded_by(
        "from qkv_grading import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass")
    assert "torch" not in loaded and "nbgrader" not in loaded


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["no-such-command"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
