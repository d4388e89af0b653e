"""nbgrader's exchange end to end, as the instructor's guide (book/instructor/release_collect.md) has it: release
from the course repository, two students (Linux users of their own) fetch and submit, the instructor
changes a test's points and releases again, collects in a class folder of its own (the owner check
passes), grades with `qkv grade`, releases the feedback, and each student fetches their page, which
Chromium opens as fetched (nbgrader copies the page alone): its formulas are MathML, rendered with no
script and no file beside the page.

It needs root, to create the two student users (removed afterwards); the exchange is a temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from grading_helpers import ROOT, filled, read_csv, write_nb
from test_site import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="creates two Linux users for the students: needs root")]

BIN = Path(sys.executable).parent
NAME = "01_weighted_average"
COURSE = "qkv-course"


# What of a page's math the browser rendered: MathML elements, those with no size, TeX left in the text
MATH_JS = r"""
() => {
  const math = [...document.querySelectorAll("math")];
  const clone = document.body.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, math").forEach(el => el.remove());
  return {math: math.length, scripts: document.scripts.length,
          unsized: math.filter(el => !(el.getBoundingClientRect().width > 0
                                       && el.getBoundingClientRect().height > 0)).length,
          raw: (clone.textContent.match(/\$|\\\(|\\\[/g) || []).length};
}
"""


def _math_in_chromium(pages: list[Path]) -> list[dict]:
    """Each page opened from its file in Chromium, nothing else reachable: what ``MATH_JS`` found, with
    every URL the page asked for."""
    from playwright import sync_api  # in requirements.txt: missing, it must fail, not skip

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing; run `make system-deps` (Debian's chromium package)"
    seen = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        for path in pages:
            page = browser.new_page()
            asked: list[str] = []

            def guard(route, request, asked=asked, own=path.as_uri()):
                if request.url == own:
                    route.continue_()
                else:  # anything else the page asks for: recorded, and refused
                    asked.append(request.url)
                    route.abort()

            page.route("**/*", guard)
            page.goto(path.as_uri(), wait_until="load")
            seen.append(dict(page.evaluate(MATH_JS), asked=asked))
            page.close()
        browser.close()
    return seen


def _run(args, cwd, env, user=None) -> subprocess.CompletedProcess:
    """Run a command as ``user`` (a pwd entry; None: this user), output captured, failing loudly."""
    kwargs = {}
    if user is not None:
        kwargs = dict(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        env = dict(env, HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    run = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=300, **kwargs)
    assert run.returncode == 0, f"{args}: {run.stdout}\n{run.stderr}"
    return run


@pytest.fixture
def students():
    """Two student users with a home each, and their nbgrader config naming the exchange; removed after."""
    exchange = Path(tempfile.mkdtemp(prefix="qkv-exchange-"))
    exchange.chmod(0o777)
    shared = Path(tempfile.mkdtemp(prefix="qkv-students-"))  # what every student may run
    shared.chmod(0o755)
    tag = secrets.token_hex(3)
    users = []
    try:
        for who in ("ada", "grace"):
            name = f"qkv{who}{tag}"
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True, timeout=60)
            user = pwd.getpwnam(name)
            users.append(user)
            config = Path(user.pw_dir) / ".jupyter" / "nbgrader_config.py"
            config.parent.mkdir()
            config.write_text(f"c = get_config()\nc.Exchange.root = {str(exchange)!r}\n")
            for path in (config.parent, config):
                os.chown(path, user.pw_uid, user.pw_gid)
        yield exchange, users, shared
    finally:
        for user in users:
            subprocess.run(["userdel", "--remove", user.pw_name], capture_output=True, timeout=60)
        shutil.rmtree(exchange, ignore_errors=True)
        shutil.rmtree(shared, ignore_errors=True)


def _students_nbgrader(user, folder: Path) -> Path:
    """The `nbgrader` command as a student runs it: this venv's, when a student may run its Python. Where
    the venv's Python sits in a folder other users cannot enter (a pyenv build under /root), a venv of the
    system's Python of the same version that sees this venv's packages."""
    try:
        subprocess.run([str(BIN / "python"), "-c", "0"], user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                       check=True, capture_output=True, timeout=60)
        return BIN / "nbgrader"
    except (PermissionError, subprocess.CalledProcessError):
        pass
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/bin:/usr/local/bin")
    assert system, f"no {version} that a student user may run"
    bridge = folder / "student-venv"
    subprocess.run([system, "-m", "venv", "--without-pip", str(bridge)], check=True, timeout=120)
    site = next((bridge / "lib").glob("python3*/site-packages"))
    (site / "course.pth").write_text(f"{BIN.parent / 'lib' / version / 'site-packages'}\n")
    script = bridge / "bin" / "nbgrader"
    script.write_text(f"#!{bridge / 'bin' / 'python'}\nimport sys\nfrom nbgrader.apps.nbgraderapp import main\n"
                      f"sys.exit(main())\n")
    script.chmod(0o755)
    for path in [folder, *bridge.rglob("*"), bridge]:
        path.chmod(path.stat().st_mode | 0o005 | (0o001 if path.is_dir() else 0))
    return script


def test_release_fetch_submit_collect_grade_and_fetch_feedback_through_the_exchange(students, tmp_path):
    exchange, (ada, grace), shared = students
    nbgrader = _students_nbgrader(ada, shared)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", QKV_EXCHANGE=str(exchange))
    student_env = {"PATH": env["PATH"], "LANG": "C.UTF-8"}
    repo = tmp_path / "qkv-course"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True, timeout=120)

    # the instructor releases from the repository
    _run([BIN / "nbgrader", "release_assignment", NAME], repo, env)
    assert (exchange / COURSE / "outbound" / NAME / f"{NAME}.ipynb").is_file()

    # each student fetches, works (ada solves it, grace hands it in blank) and submits
    for user, answers in ((ada, filled(NAME)), (grace, None)):
        home = Path(user.pw_dir)
        _run([nbgrader, "fetch_assignment", NAME, "--course", COURSE], home, student_env, user)
        mine = home / NAME / f"{NAME}.ipynb"
        assert mine.is_file() and mine.stat().st_uid == user.pw_uid
        if answers is not None:
            write_nb(answers, mine)
        _run([nbgrader, "submit", NAME, "--course", COURSE], home, student_env, user)

    # then the instructor gives q1_value one point more, in the metadata only, and releases again
    source = repo / "solutions" / NAME / f"{NAME}.ipynb"
    nb = json.loads(source.read_text())
    next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == "q1_value")[
        "metadata"]["nbgrader"]["points"] += 1
    source.write_text(json.dumps(nb, indent=1) + "\n")
    _run([BIN / "qkv", "release"], repo, env)

    # collect, grade and release feedback in the class folder, outside the repository
    course = tmp_path / "qkv-class"
    course.mkdir()
    (course / "nbgrader_config.py").write_text(
        f"c = get_config()\nc.CourseDirectory.course_id = {COURSE!r}\nc.Exchange.root = {str(exchange)!r}\n")
    collect = _run([BIN / "nbgrader", "collect", NAME], course, env)
    assert "cheating attempt" not in collect.stdout + collect.stderr  # each submission owned by its student
    for user in (ada, grace):
        assert (course / "submitted" / user.pw_name / NAME / f"{NAME}.ipynb").is_file()
    _run([BIN / "qkv", "grade", "submitted", "--out", ".", "--root", repo, "--no-progress"], course, env)
    grades = {row["student"]: row for row in read_csv(course / "grades.csv")}
    assert float(grades[ada.pw_name]["score"]) == float(grades[ada.pw_name]["max_score"]) == 11, grades
    assert float(grades[grace.pw_name]["score"]) == 0.0
    _run([BIN / "nbgrader", "release_feedback", NAME], course, env)

    # each student fetches their own page: the new points, and no note about the old heading
    fetched = []
    for user, score in ((ada, "11"), (grace, "0")):
        home = Path(user.pw_dir)
        _run([nbgrader, "fetch_feedback", NAME, "--course", COURSE], home, student_env, user)
        pages = list((home / NAME / "feedback").glob(f"*/{NAME}.html"))
        assert len(pages) == 1, pages
        page = pages[0].read_text()
        assert "Question 1 (4 points)" in page
        assert "was edited" not in page and "restored" not in page
        assert re.search(rf"\b{score}(\.0)? (/|of) 11\b", page), page[:3000]
        fetched.append(pages[0])

    # opened where fetch_feedback put it, with nothing beside it: the math is there, laid out
    for path, math in zip(fetched, _math_in_chromium(fetched)):
        assert math["math"] >= 10 and math["unsized"] == 0 and math["raw"] == 0, (path, math)
        assert math["scripts"] == 0 and math["asked"] == [], (path, math)
