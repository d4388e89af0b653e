"""The package's architecture, checked by the project itself (STYLE rule 18).

The import contracts live in pyproject.toml ([tool.importlinter]) and are run here, so `make test`
runs them: no import cycles inside a package, ``qkv.reference`` without torch, ``qkv`` without the
grading and benchmark machinery. import-linter sees imports inside functions as well as at the top of
a module, so a cycle cannot hide in one; the AST check below also forbids imports inside the lesson
package's functions, except for the optional dependencies named in ``OPTIONAL``.
"""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "qkv"

# (module, function) -> the only top-level packages it may import inside its body: heavy optional
# dependencies needed by one tool that the lesson code around it does not need.
OPTIONAL = {
    ("qkv/tinylm.py", "train"): {"torch", "transformers"},  # `python -m qkv.tinylm` trains with HF
}


def function_imports(path: Path) -> list[tuple[str, int, str]]:
    """(function, line, imported module) for every import inside a function of ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    found += [(node.name, inner.lineno, alias.name) for alias in inner.names]
                elif isinstance(inner, ast.ImportFrom):
                    module = "." * inner.level + (inner.module or "")
                    found.append((node.name, inner.lineno, module))
    return found


def test_no_imports_inside_the_lesson_packages_functions():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE.parent).as_posix()
        for function, line, module in function_imports(path):
            allowed = OPTIONAL.get((name, function), set())
            if module.split(".")[0] not in allowed:
                problems.append(f"{name}:{line} imports {module} inside {function}()")
    assert not problems, "imports inside functions (STYLE rule 18):\n" + "\n".join(problems)


def test_the_ast_check_sees_an_import_inside_a_function(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import numpy\n\ndef f():\n    from qkv import checks\n    return checks\n")
    assert function_imports(source) == [("f", 4, "qkv")]


def lint_imports(config: Path, cwd: Path = ROOT, env=None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), str(config), "--no-cache", "--no-logo"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
    result = lint_imports(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout, result.stdout


@pytest.mark.slow
def test_the_contracts_fail_on_a_cycle(tmp_path):
    """A copy of the packages with two cycles added back (reference.cache -> reference.decoder, which
    imports the cache; and the grader's judge -> spec, which builds the judge): both acyclic contracts
    must be broken."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__"))
    cache = src / "qkv" / "reference" / "cache.py"
    cache.write_text(cache.read_text(encoding="utf-8") + "\n\ndef _cycle():\n"
                     "    from qkv.reference import decoder\n    return decoder\n", encoding="utf-8")
    judge = src / "qkv_grading" / "judge.py"
    judge.write_text(judge.read_text(encoding="utf-8") + "\n\ndef _cycle():\n"
                     "    from qkv_grading import spec\n    return spec\n", encoding="utf-8")
    config = tmp_path / "pyproject.toml"
    config.write_text((ROOT / "pyproject.toml").read_text(encoding="utf-8"), encoding="utf-8")
    result = lint_imports(config, tmp_path, {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0, result.stdout
    assert "No cycles are allowed in qkv.reference" in result.stdout, result.stdout
    assert "- .cache -> .decoder (1 import)" in result.stdout, result.stdout
    assert "No cycles are allowed in qkv_grading" in result.stdout, result.stdout
    assert any(edge in result.stdout for edge in ("- .spec -> .judge (1 import)", "- .judge -> .spec (1 import)")), \
        result.stdout


def test_the_test_cells_assertions_keep_their_old_name_for_one_release():
    """``qkv_grading.assertions`` (what test cells import) was ``qkv_grading.checks``, one letter from
    ``qkv_grading.check`` (the ``qkv check`` command). The course imports the new name only; a learner's
    notebook downloaded before the rename still imports the old one, and gets the same functions."""
    import re

    import qkv_grading.assertions as new
    import qkv_grading.checks as old

    imported = set()
    for path in sorted([*ROOT.glob("solutions/*/*.ipynb"), *ROOT.glob("exercises/*/*.ipynb")]):
        text = path.read_text(encoding="utf-8")
        assert "qkv_grading.checks" not in text, path
        for names in re.findall(r"from qkv_grading\.assertions import ([\w ,]+)", text):
            imported |= {name.split(" as ")[0].strip() for name in names.split(",")}
    assert imported and imported <= set(new.__all__), imported - set(new.__all__)
    assert all(getattr(old, name) is getattr(new, name) for name in new.__all__)
