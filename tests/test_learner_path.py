"""A learner's first hour, end to end, from a fresh clone: `qkv check` by an exercise's name, and `make lab`
opening JupyterLab (on 127.0.0.1) where an exercise is opened and run in Debian's chromium.

The clone reuses this checkout's .venv (PATH and VIRTUAL_ENV, and `make VENV=...`) instead of installing
again. It clones what is committed: commit before running it.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-default-apps", "--disable-extensions"]

pytestmark = pytest.mark.slow


def _env() -> dict:
    return dict(os.environ, PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                VIRTUAL_ENV=str(VENV), PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1")


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("fresh") / "qkv-course"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True, timeout=120)
    return dest


def test_a_fresh_clone_checks_an_exercise_by_its_name(clone):
    run = subprocess.run(["qkv", "check", "01_weighted_average"], cwd=clone / "book", env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr  # the blank exercise: every question fails, with a message
    assert run.stdout.startswith(f"01_weighted_average: checking {clone}/exercises/01_weighted_average/"), run.stdout
    assert "output is not written yet" in run.stdout and "NameError" not in run.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, proc, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"make lab stopped with status {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"JupyterLab did not listen on port {port} within {seconds:g} s")


def _checks_running(pid: int, seconds: float = 30) -> list:
    """`qkv check` processes among the descendants of process ``pid`` (make lab) that are still there
    after ``seconds`` (a check that has printed its report may still be stopping its kernel)."""
    import psutil

    deadline = time.monotonic() + seconds
    while True:
        found = _checks_now(psutil.Process(pid))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _checks_now(parent) -> list:
    import psutil

    found = []
    for proc in parent.children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            line = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "qkv check" in line or "qkv_grading" in line and "check" in line:
            found.append(line)
    return found


def _in_a_terminal(port: int, token: str, command: str, until: str, seconds: float = 240) -> str:
    """Open a terminal of the JupyterLab at ``port`` (its REST API and websocket, as the browser does),
    type ``command`` and return what it printed once ``until`` appears."""
    import asyncio
    import json
    import urllib.request

    from tornado.websocket import websocket_connect

    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/terminals", data=b"{}", method="POST",
                                     headers={"Authorization": f"token {token}"})
    name = json.load(urllib.request.urlopen(request, timeout=30))["name"]

    async def talk() -> str:
        ws = await websocket_connect(f"ws://127.0.0.1:{port}/terminals/websocket/{name}?token={token}")
        await ws.write_message(json.dumps(["stdin", command + "\r"]))
        text, deadline = "", time.monotonic() + seconds
        while until not in text.split(command, 1)[-1] and time.monotonic() < deadline:
            msg = await asyncio.wait_for(ws.read_message(), timeout=deadline - time.monotonic())
            kind, *rest = json.loads(msg)
            if kind == "stdout":
                text += rest[0]
        ws.close()
        return text

    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", asyncio.run(talk()))


def test_make_lab_opens_an_exercise_that_runs_and_checks_itself(clone, tmp_path):
    from playwright.sync_api import sync_playwright

    port, token = _free_port(), secrets.token_hex(8)
    log = open(tmp_path / "lab.log", "w")
    stamp = VENV / ".installed-stamp"
    proc = subprocess.Popen(
        ["make", "-o", str(stamp), "lab", f"VENV={VENV}",
         f"LAB_ARGS=--no-browser --allow-root --port={port} --IdentityProvider.token={token}"],
        cwd=clone, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(port, proc)
        listening = subprocess.run(["ss", "-ltn", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert f"127.0.0.1:{port}" in listening and f"0.0.0.0:{port}" not in listening, listening
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/lab/tree/01_weighted_average/01_weighted_average.ipynb"
                      f"?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
            # only what a learner uses: no nbgrader menu, no "Create Assignment", no formgrader
            menus = page.locator(".lm-MenuBar-itemLabel").all_inner_texts()
            assert "Run" in menus and not any("nbgrader" in m.lower() for m in menus), menus
            assert "Create Assignment" not in page.inner_text("body")
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=90_000)
            page.wait_for_timeout(2000)
            # the learner runs the cells one by one: the unanswered question 1, then its test, then a test
            # whose checks are all hidden
            for heading in ("values = np.array", "# Test: output has one entry",
                            "# Test: random scores of several shapes"):
                page.locator(".jp-CodeCell", has_text=heading).first.locator(".jp-InputArea-editor").click()
                page.keyboard.press("Shift+Enter")
                page.wait_for_timeout(1000)
            page.locator(".jp-OutputArea-output", has_text="NotImplementedError").first.wait_for(timeout=120_000)
            page.locator(".jp-OutputArea-output", has_text="output is not written yet").first.wait_for(
                timeout=120_000)
            page.locator(".jp-OutputArea-output", has_text="checked when graded").first.wait_for(timeout=60_000)
            failure = page.locator(".jp-OutputArea-output", has_text="output is not written yet").first.inner_text()
            assert "Traceback" not in failure and "checks.py" not in failure, failure
            # the command the notebook gives, as written, in a new cell
            page.locator(".jp-Notebook .jp-Cell").last.click()
            page.keyboard.press("Escape")
            page.keyboard.press("b")
            page.keyboard.press("Enter")
            page.keyboard.type("!qkv check 01_weighted_average")
            page.keyboard.press("Control+s")  # saved, as autosave would: the check reads this very cell
            page.wait_for_timeout(1500)
            page.keyboard.press("Shift+Enter")
            page.locator(".jp-OutputArea-output", has_text="01_weighted_average: checking").first.wait_for(
                timeout=180_000)
            report = page.locator(".jp-OutputArea-output", has_text="01_weighted_average: checking").first
            text = report.inner_text()
            assert f"{clone}/work/01_weighted_average/01_weighted_average.ipynb" in text, text
            assert re.search(r"q1: FAILED", text) and "test(s) failed" in text, text
            # the saved cell was skipped inside the check: no check in a check, and none left running
            assert "1 cell(s) that run qkv check were skipped" in text, text
            assert not _checks_running(proc.pid)
            browser.close()
        # JupyterLab's terminal: `qkv` on its PATH, and the self-study check with the hidden tests
        out = _in_a_terminal(port, token, "qkv check 01_weighted_average --all", until="test(s) failed")
        assert f"01_weighted_average: checking {clone}/work/01_weighted_average/01_weighted_average.ipynb " \
               "with every test, hidden ones included" in out, out
        assert "score: 0 of 10 points" in out and "command not found" not in out, out
        assert not _checks_running(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # make and the JupyterLab it started (their own session)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    intro = [c for c in (clone / "exercises/01_weighted_average/01_weighted_average.ipynb").read_text().split("\\n")
             if "qkv check" in c]
    assert any("!qkv check 01_weighted_average" in line for line in intro), intro
