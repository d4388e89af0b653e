"""The book's sources and the built site: what every chapter must contain, and what the site must never
contain (solutions). Source checks are fast; checks of the built site need `make book` first."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
SITE = ROOT / "_build" / "html"
CHAPTERS = sorted(BOOK.glob("0[1-9]_*.md"))
NOTEBOOK_CHAPTERS = [p for p in CHAPTERS if "```{code-cell}" in p.read_text()]
SOLUTION_MARKERS = ["### BEGIN SOLUTION", "### END SOLUTION", "### BEGIN HIDDEN TESTS", "BEGIN HIDDEN TESTS"]


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        for chapter in part.get("chapters", []):
            files.append(chapter["file"])
            files.extend(section["file"] for section in chapter.get("sections", []))
    return files


def test_every_chapter_is_in_the_table_of_contents():
    toc = _toc_files()
    assert len(CHAPTERS) >= 4
    for chapter in CHAPTERS:
        assert f"book/{chapter.stem}" in toc, f"{chapter.name} is not listed in _toc.yml"
    for page in ("book/notation", "book/references"):
        assert page in toc


INSTRUCTOR_PAGES = ["release_collect", "grading", "sandbox", "large_course"]


def test_the_instructors_guide_is_a_part_of_its_own():
    """One page per task, in a part of the table of contents apart from the chapters; the learner's
    exercises page stays among the chapters and stays short."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    parts = {part["caption"]: [c["file"] for c in part["chapters"]] for part in toc["parts"]}
    assert parts["Instructor's guide"] == [f"book/instructor/{p}" for p in INSTRUCTOR_PAGES]
    assert "book/09_exercises" in parts["Chapters"]
    assert len((BOOK / "09_exercises.md").read_text().splitlines()) <= 40, "one screen, for learners"
    for page in ("intro.md", "09_exercises.md"):
        text = (BOOK / page).read_text()
        assert "instructor/release_collect" in text, f"{page} links to the instructor's guide"
    readme = (ROOT / "README.md").read_text()
    assert "book/09_exercises.md" in readme and "book/instructor/" in readme


def test_notation_page_lists_the_textbooks_names():
    text = (BOOK / "notation.md").read_text()
    for name in ("W}^{\\mathrm{head}}", "head}_j", "g(j)", "n_g", "cache}^l", "mathbf{H}", "eq. 4.69"):
        assert name in text, f"the notation page does not list the textbook's {name}"


def test_exercise_pages_show_the_student_notebooks_unexecuted():
    toc = _toc_files()
    exercises = sorted(ROOT.glob("exercises/*/*.ipynb"))
    for notebook in exercises:
        docname = notebook.relative_to(ROOT).with_suffix("").as_posix()
        assert docname in toc, f"exercise {docname} is not in _toc.yml"
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert any(p.startswith("exercises/") for p in config["execute"]["exclude_patterns"])
    assert "solutions/*" in config["exclude_patterns"]
    assert not any(f.startswith("solutions/") for f in toc), "solutions must never be published"


@pytest.mark.parametrize("chapter", NOTEBOOK_CHAPTERS, ids=lambda p: p.stem)
def test_chapter_is_a_myst_notebook_that_shows_the_package_source(chapter):
    text = chapter.read_text()
    front = text.split("---", 2)[1]
    meta = yaml.safe_load(front)
    assert meta["jupytext"]["text_representation"]["format_name"] == "myst"
    assert meta["kernelspec"]["name"] == "python3"
    assert "from qkv" in text, "chapters import their code from the package"
    assert "{literalinclude} ../src/qkv/" in text or "inspect.getsource" in text, \
        "a chapter shows the package's own source, so the page cannot drift from the code"
    assert "mystnb:" in text and "caption:" in text, "every chapter has at least one captioned figure"
    assert "!pip" not in text and "%pip" not in text


# The textbook places of each chapter's formulas (COURSE.md's chapter table): each must be cited.
CITATIONS = {
    "01_weighted_average": ["§2.1.1"],
    "02_queries_keys_values": ["§2.1.1", "eq. 2.6"],
    "03_masked_multihead": ["§2.1.1", "eq. 2.6", "2.11"],
    "04_decoder": ["§2.1", "§5.1"],
    "05_kv_cache": ["§2.3.2", "§5.1", "eq. 5.7"],
    "06_bounded_memory": ["§2.3.3", "eq. 2.52", "2.57", "2.58"],
    "07_todays_models": ["§2.3.4", "eq. 2.71"],
    "08_torch_decoder": ["§5.1", "eq. 5."],
}


@pytest.mark.parametrize("chapter", [p for p in CHAPTERS if not p.stem.startswith("09")], ids=lambda p: p.stem)
def test_chapter_cites_the_textbook_sections_and_equations(chapter):
    text = chapter.read_text()
    assert "Xiao & Zhu 2025" in text and "{cite}`xiao2025foundations`" in text
    missing = [place for place in CITATIONS[chapter.stem] if place not in text]
    assert not missing, f"{chapter.name} does not cite {missing}"


@pytest.mark.parametrize("chapter", [p for p in CHAPTERS if not p.stem.startswith("09")], ids=lambda p: p.stem)
def test_chapter_ends_with_links_to_its_exercises(chapter):
    text = chapter.read_text()
    tail = text[text.rindex("\n## "):]
    assert "Exercise" in tail.split("\n", 2)[1], f"{chapter.name}: the last section should be its exercises"
    links = re.findall(r"\{doc\}`\.\./exercises/([^/`]+)/\1`", tail)
    assert links and all((ROOT / "exercises" / n / f"{n}.ipynb").is_file() for n in links), \
        f"{chapter.name}: its exercises section links to no released exercise"


def test_literalincludes_point_at_real_objects():
    for chapter in CHAPTERS:
        text = chapter.read_text()
        for path, obj in re.findall(r"```\{literalinclude\} (\S+)\n:pyobject: (\S+)", text):
            source = (chapter.parent / path).resolve()
            assert source.is_file(), f"{chapter.name}: {path} does not exist"
            name = obj.split(".")[-1]
            assert re.search(rf"^\s*(def|class) {re.escape(name)}\b", source.read_text(), re.M), \
                f"{chapter.name}: {obj} not found in {path}"


def test_markdown_sources_carry_no_outputs():
    for chapter in CHAPTERS:
        assert "outputs" not in chapter.read_text().split("---", 2)[1], f"{chapter.name} stores outputs"


# --- the built site -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site_text() -> str:
    if not (SITE / "index.html").is_file():
        pytest.fail(f"the site is not built: {SITE} has no index.html. Run `make book` first.")
    parts = []
    for path in SITE.rglob("*"):
        if path.is_file() and path.suffix in {".html", ".ipynb", ".md", ".txt", ".js", ".py"}:
            parts.append(path.read_text(errors="replace"))
    return "\n".join(parts)


def _solution_lines() -> list[str]:
    """Distinctive lines that appear only inside solution blocks and hidden tests (not in the public package)."""
    public = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))
    # A hidden test may repeat a line of a visible one; what the student notebooks show is public too,
    # and so is what the chapters' own cells write (a solution may use the library as a chapter does).
    public += "\n" + "\n".join(p.read_text() for p in (ROOT / "book").rglob("*.md"))
    for notebook in sorted(ROOT.glob("exercises/*/*.ipynb")):
        public += "\n" + "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
    lines = []
    for notebook in sorted(ROOT.glob("solutions/*/*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            source = "".join(cell["source"])
            for block in re.findall(r"### BEGIN (?:SOLUTION|HIDDEN TESTS)\n(.*?)### END (?:SOLUTION|HIDDEN TESTS)",
                                    source, re.S):
                for line in block.splitlines():
                    line = line.strip()
                    if len(line) >= 25 and line not in public and not line.startswith("#"):
                        lines.append(line)
    return lines


def test_site_contains_no_solution_markers(site_text):
    for marker in SOLUTION_MARKERS:
        assert marker not in site_text, f"the built site contains {marker!r}: solutions leaked"


def test_site_contains_no_solution_code(site_text):
    lines = _solution_lines()
    if not list(ROOT.glob("solutions/*/*.ipynb")):
        pytest.fail("no solutions/ notebooks to compare against")
    assert lines, "found no distinctive solution lines to look for"
    plain = html.unescape(re.sub(r"<[^>]+>", "", site_text))
    leaked = [line for line in lines if line in plain or line in site_text]
    assert not leaked, f"solution code appears in the built site: {leaked[:5]}"


CHAPTER_BUDGET_S = 60  # a chapter runs in under a minute on a laptop CPU (the course's rule)


def test_every_chapter_ran_in_under_a_minute_when_the_site_was_built():
    """`make book` executes each chapter and jupyter-cache keeps how long it took; the record read here is the
    one that matches the chapter's current text, so an edited chapter is timed again by the next build."""
    from jupyter_cache import get_cache

    cache_dir = ROOT / "_build" / ".jupyter_cache"
    if not cache_dir.is_dir():
        pytest.fail(f"no execution cache at {cache_dir}: run `make book` first")
    cache = get_cache(cache_dir)
    projects = {Path(record.uri).resolve(): record for record in cache.list_project_records()}
    seconds = {}
    for chapter in NOTEBOOK_CHAPTERS:
        project = projects.get(chapter.resolve())
        assert project is not None, f"{chapter.name} was never executed by `make book`"
        record = cache.get_cached_project_nb(project.pk)
        assert record is not None, f"{chapter.name} changed since the site was built: run `make book`"
        seconds[chapter.name] = record.data["execution_seconds"]
    slow = {name: round(s, 1) for name, s in seconds.items() if s >= CHAPTER_BUDGET_S}
    assert not slow, f"chapters that ran for a minute or more (seconds): {slow}"
    assert len(seconds) == len(NOTEBOOK_CHAPTERS) >= 8


def test_the_guides_advice_on_workers_agrees_with_its_own_measurement():
    """The measured table (2 cores) has one worker fastest; every example that names a number of cores
    gives it half as many workers (before, `--workers 2  # one worker per 2 cores` sat over that table)."""
    guides = {p.name: p.read_text() for p in (BOOK / "instructor").glob("*.md")}
    measured = {int(n): float(s) for n, s in re.findall(
        r"\| `qkv grade --workers (\d+)`, start to finish \| ([\d.]+)", guides["large_course.md"])}
    assert len(measured) >= 2 and min(measured, key=measured.get) == 1, measured
    assert "On 2 cores the default, one worker, is the fastest" in guides["grading.md"]
    advice = [(int(n), int(c)) for text in guides.values() for n, c in
              re.findall(r"--workers (\d+)`? *(?:#[^\n]*?|on) (\d+) cores", text)]
    assert advice and all(n == max(1, c // 2) for n, c in advice), advice
