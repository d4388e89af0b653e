"""The learner's feedback: their notebook, rendered by nbconvert's HTML exporter, with a summary of the
points at the top and each test's points and message under its cell.

Test cells are shown as released (hidden test code never appears); outputs were scrubbed by the judge.
MathJax is served from the feedback folder itself, so a page opens offline. Files are written in
nbgrader's feedback layout, ``feedback/<student>/<assignment>/<assignment>.html`` beside
``timestamp.txt`` and ``submission_secret.txt`` (those ``nbgrader collect`` wrote, when it did), so
that ``nbgrader release_feedback`` can hand them back.
"""

from __future__ import annotations

import copy
import functools
import html
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path

import nbformat

from qkv_grading import manual
from qkv_grading.results import Result, TestResult
from qkv_grading.spec import Spec

MATHJAX = "mathjax/tex-svg-full.js"  # one file, every TeX extension, glyphs as SVG: no font requests
COLLECT_FILES = ("timestamp.txt", "submission_secret.txt")  # written by `nbgrader collect`

_CSS = """
main{max-width:62em;margin:0 auto;padding:0 .6em}
.qkv-summary{margin:1em 0;font-family:var(--jp-ui-font-family,sans-serif)}
.qkv-summary table{border-collapse:collapse}
.qkv-summary td,.qkv-summary th{border:1px solid #ccc;padding:.25em .7em;text-align:left}
.qkv-notes{background:#fff6d6;padding:.4em 1em;margin:.6em 0}
.qkv-test{border-left:6px solid #999;padding:.3em .9em;margin:.2em 0 1.2em 0;
  font-family:var(--jp-ui-font-family,sans-serif);overflow-wrap:anywhere}
.qkv-pass{border-color:#2a2;background:#f0faf0}.qkv-fail{border-color:#c22;background:#fdf0f0}
pre{white-space:pre-wrap;overflow-wrap:anywhere}
@media (max-width:700px){
  .jp-InputPrompt,.jp-OutputPrompt{display:none}
  .jp-Cell{padding:.2em 0}
  .jp-InputArea,.jp-OutputArea-child{display:block}
}
"""

_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
<script>
window.MathJax = {tex: {inlineMath: [['$', '$'], ['\\(', '\\)']],
                        displayMath: [['$$', '$$'], ['\\[', '\\]']], processEscapes: true},
                  options: {enableMenu: false}};
</script>
<script src="{{ resources.qkv_mathjax }}" defer></script>
{%- endblock html_head_js_mathjax -%}
{%- block extra_css -%}<style>{{ resources.qkv_css }}</style>{%- endblock extra_css -%}
{%- block body_header -%}
{{ super() }}
{{ resources.qkv_summary }}
{%- endblock body_header -%}
{% block codecell %}
{{ super() }}
{%- set t = cell.metadata.get('qkv_test') -%}
{%- if t -%}
<div class="qkv-test {{ 'qkv-pass' if t.passed else 'qkv-fail' }}" data-test="{{ t.id | e }}">
<b>Test {{ t.id | e }}: {{ 'passed' if t.passed else 'failed' }}, {{ t.points_text | e }} points</b>
{%- if t.message %}<p class="qkv-message">{{ t.message | e }}</p>{% endif %}
</div>
{%- endif -%}
{% endblock codecell %}
"""


def _esc(text) -> str:
    return html.escape(str(text))


def _summary(spec: Spec, tests: list[TestResult], notes: list[str]) -> str:
    result = Result(spec.name, "graded", tests, spec.max_score)
    rows = "".join(f"<tr><td>{_esc(q)}</td><td>{s:g} / {m:g}</td></tr>"
                   for q, (s, m) in result.questions().items())
    result.written = spec.written  # graded by hand: waiting until `qkv grade` reads the marks back
    parts = [f"<section class='qkv-summary'><h1>Feedback: {_esc(spec.name)}</h1>",
             f"<table><tr><th>question</th><th>points</th></tr>{rows}{manual.summary_rows(result.written)}",
             f"<tr><th>total</th><th class='qkv-total'>{_esc(manual.total_text(result))}</th></tr>"
             "</table>"]
    if notes:
        parts.append("<div class='qkv-notes'><b>Notes from the grader</b><ul>"
                     + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul></div>")
    parts.append("<p>Under each test cell: its points and, when it failed, what is wrong.</p>"
                 "</section>")
    return "".join(parts)


def _shown_notebook(spec: Spec, nb, tests: list[TestResult]) -> nbformat.NotebookNode:
    """The notebook as the learner sees it: test cells as released, each with its result attached."""
    released = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in spec.released.cells}
    by_test = {t.id: t for t in tests}
    shown = copy.deepcopy(nb if nb is not None else spec.released)
    for cell in shown.cells:
        info = cell.get("metadata", {}).get("nbgrader", {})
        gid = info.get("grade_id")
        if info.get("grade") and gid in by_test:
            t = by_test[gid]
            cell.source = released[gid].source if gid in released else ""
            cell.metadata["qkv_test"] = {
                "id": gid, "passed": t.passed, "message": t.message,
                "points_text": f"{t.points:g} / {t.max_points:g}"}
        trusted = info.get("locked") and not info.get("solution")  # restored from the instructor's
        if cell.cell_type == "raw" and not trusted:  # nbconvert would paste a raw cell in as HTML
            cell.cell_type, cell.source = "markdown", f"```\n{cell.source}\n```"
            for key in ("raw_mimetype", "format"):
                cell.metadata.pop(key, None)
        if cell.cell_type == "markdown" and not trusted:  # the learner's: HTML in it shown as text
            cell.source = _clean(cell.source)
        if cell.cell_type == "code":
            # only text and images: HTML or scripts a learner's code displays stay out of the page
            for out in cell.get("outputs", []):
                data = out.get("data")
                if data:
                    for key in [k for k in data if k not in ("text/plain", "image/png",
                                                             "image/jpeg")]:
                        del data[key]
                    if not data:
                        data["text/plain"] = "[a rich output, not shown in feedback]"
    return shown


@functools.lru_cache(maxsize=8192)
def _code_html(source: str, language: str | None, magics: str | None) -> str:
    """A code cell's input, highlighted and cleaned as nbconvert's lab template does it: remembered, since
    most cells are the same in every submission of an assignment."""
    from nbconvert.filters import Highlight2HTML, clean_html

    return clean_html(Highlight2HTML()(source, language, {"magics_language": magics} if magics else None))


@functools.lru_cache(maxsize=8192)
def _clean(text: str) -> str:
    from nbconvert.filters import clean_html

    return clean_html(text)


@functools.lru_cache(maxsize=1)
def _exporter():
    """One HTML exporter per process (its templates are compiled once), with remembered filters."""
    from jinja2 import DictLoader, pass_context
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", template_file="qkv_feedback.html.j2",
                            extra_loaders=[DictLoader({"qkv_feedback.html.j2": _TEMPLATE})])
    markdown2html = functools.lru_cache(maxsize=8192)(
        lambda source, path: exporter.markdown2html({"resources": {"metadata": {"path": path}}}, source))

    @pass_context
    def markdown(context, source):
        if context.get("cell", {}).get("attachments"):
            return exporter.markdown2html(context, source)
        return markdown2html(source, context.get("resources", {}).get("metadata", {}).get("path", ""))

    @pass_context
    def highlight(context, source, language=None, metadata=None):
        info = context.get("nb", {}).get("metadata", {}).get("language_info", {})
        language = language or info.get("pygments_lexer", info.get("name")) or "ipython3"
        return _code_html(source, language, (metadata or {}).get("magics_language"))

    # highlight_code comes out cleaned already: the template's clean_html after it sees its own output
    exporter.filters = {"highlight_code": highlight, "clean_html": _clean, "markdown2html": markdown}
    return exporter


def feedback_page(spec: Spec, nb, tests: list[TestResult], notes: list[str]) -> str:
    """The feedback page for one submission (``nb``: the executed notebook, outputs scrubbed; None when
    none could be run, and the released notebook is shown with every test's reason)."""
    resources = {"qkv_mathjax": f"../../{MATHJAX}", "qkv_css": _CSS,
                 "qkv_summary": _summary(spec, tests, notes),
                 "metadata": {"name": f"{spec.name} feedback"}}
    body, _ = _exporter().from_notebook_node(_shown_notebook(spec, nb, tests), resources=resources)
    return body


def mathjax_source() -> Path:
    """The MathJax that the `sphinx-mathjax-offline` package ships (in requirements.txt)."""
    import importlib.util

    found = importlib.util.find_spec("sphinx-mathjax-offline")
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError("the sphinx-mathjax-offline package is not installed (it is in "
                                "requirements.txt): feedback pages need its MathJax")
    path = Path(list(found.submodule_search_locations)[0]) / "static" / "mathjax" / Path(MATHJAX).name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall sphinx-mathjax-offline")
    return path


def write_feedback(out: Path, student: str, name: str, page: str, submission: Path) -> Path:
    """Write one page in nbgrader's layout under ``out/feedback``, with ``timestamp.txt`` (the one
    ``nbgrader collect`` wrote, else the notebook's time) and ``submission_secret.txt`` when collected.
    MathJax is copied once into the feedback root."""
    root = out / "feedback"
    mathjax = root / MATHJAX
    if not mathjax.is_file():
        mathjax.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mathjax_source(), mathjax)
    folder = root / student / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.html").write_text(page, encoding="utf-8")
    for fname in COLLECT_FILES:
        if (submission / fname).is_file():
            shutil.copyfile(submission / fname, folder / fname)
    if not (submission / "submission_secret.txt").is_file():
        # not collected by nbgrader (handed in otherwise): `release_feedback` still needs a secret for
        # every page; a random one, which nobody else can guess the file name from
        (folder / "submission_secret.txt").write_text(secrets.token_hex(16))
    if not (submission / "timestamp.txt").is_file():
        nb = submission / f"{name}.ipynb"
        when = datetime.fromtimestamp(nb.stat().st_mtime if nb.is_file() else 0, timezone.utc)
        (folder / "timestamp.txt").write_text(when.strftime("%Y-%m-%d %H:%M:%S.%f %Z"))
    return folder / f"{name}.html"
