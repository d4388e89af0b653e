"""The learner's feedback: their notebook, rendered by nbconvert's HTML exporter, with a summary of the
points at the top and each test's points and message under its cell.

Test cells are shown as released (hidden test code never appears); outputs were scrubbed by the judge.
A test's failure is shown once, in the box under its cell: the error its probe raised in the kernel is
not shown again above it (a hidden test's cell, whose visible code only prints, shows no error).
The page is rendered after judging, from a notebook rebuilt of what is known to be safe to show: the
learner's markdown is rendered, its TeX written as MathML (``latex2mathml``) and then sanitized
(Ammonia, through ``nh3``: no script, no handler attribute, no ``javascript:`` link, no image but an
inline one; MathML elements keep their presentation attributes only), outputs keep text and PNG/JPEG
images only, with a width and height only when they are plain numbers (nbconvert writes them unquoted),
and the page carries a Content-Security-Policy that runs no script and loads nothing. What was taken out
is said in a note, for the report's "needs a look". Browsers render MathML themselves, so a page is one
file that needs nothing beside it: it survives ``nbgrader release_feedback`` and ``fetch_feedback``,
which copy the page alone. Files are written in nbgrader's feedback layout,
``feedback/<student>/<assignment>/<assignment>.html`` beside ``timestamp.txt`` and ``submission_secret.txt`` (those ``nbgrader collect`` wrote, when it did), so
that ``nbgrader release_feedback`` can hand them back.
"""

from __future__ import annotations

import copy
import functools
import html
import os
import re
import secrets
from datetime import datetime, timezone
from pathlib import Path
from xml.etree import ElementTree

import nbformat
import nh3
from latex2mathml.converter import convert_to_element
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

from qkv_grading import cells
from qkv_grading.discover import collected

from qkv_grading import manual
from qkv_grading.results import Result, TestResult
from qkv_grading.spec import Spec

COLLECT_FILES = ("timestamp.txt", "submission_secret.txt")  # written by `nbgrader collect`

# No script runs on a page (its math is MathML, which the browser renders): the policy says so.
_CSP = ("default-src 'none'; script-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "font-src data:; base-uri 'none'; form-action 'none'")

_CSS = """
main{max-width:62em;margin:0 auto;padding:0 .6em}
.qkv-summary{margin:1em 0;font-family:var(--jp-ui-font-family,sans-serif)}
.qkv-summary table{border-collapse:collapse}
.qkv-summary td,.qkv-summary th{border:1px solid #ccc;padding:.25em .7em;text-align:left}
.qkv-notes{background:#fff6d6;padding:.4em 1em;margin:.6em 0}
.qkv-test{border-left:6px solid #999;padding:.3em .9em;margin:.2em 0 1.2em 0;
  font-family:var(--jp-ui-font-family,sans-serif);overflow-wrap:anywhere}
.qkv-pass{border-color:#2a2;background:#f0faf0}.qkv-fail{border-color:#c22;background:#fdf0f0}
math[display=block]{overflow-x:auto;overflow-y:hidden;max-width:100%}
pre{white-space:pre-wrap;overflow-wrap:anywhere}
@media (max-width:700px){
  .jp-InputPrompt,.jp-OutputPrompt{display:none}
  .jp-Cell{padding:.2em 0}
  .jp-InputArea,.jp-OutputArea-child{display:block}
}
"""

_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}
<meta http-equiv="Content-Security-Policy" content="{{ resources.qkv_csp }}">
{%- endblock html_head_js -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
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


_CELL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # nbformat's own rule for a cell id
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]*$")
_IMAGES = ("image/png", "image/jpeg")
_SIZE_LIMIT = 100_000  # pixels: a width or height above it is no real image's


def _size(value) -> int | None:
    """An image's width or height, if it is a plain number (nbconvert writes it unquoted)."""
    return value if type(value) is int and 0 < value <= _SIZE_LIMIT else None


def _text_of(value) -> str:
    return "".join(map(str, value)) if isinstance(value, list) else str(value)


def _safe_output(out, repairs: set[str]):
    """A learner's output rebuilt of what is known to be safe to show, or None: text and PNG/JPEG images
    only (HTML or scripts a learner's code displays stay out of the page), an image's width and height
    only when they are plain numbers, nothing else of its metadata (``filenames`` would make the page
    fetch a URL)."""
    kind = out.get("output_type")
    if kind == "stream":
        name = out.get("name") if out.get("name") in ("stdout", "stderr") else "stdout"
        return nbformat.v4.new_output("stream", name=name, text=_text_of(out.get("text", "")))
    if kind == "error":
        tb = out.get("traceback")
        return nbformat.v4.new_output("error", ename=_text_of(out.get("ename", "")),
                                      evalue=_text_of(out.get("evalue", "")),
                                      traceback=[_text_of(t) for t in tb] if isinstance(tb, list) else [])
    if kind not in ("display_data", "execute_result"):
        return None
    data = out.get("data") if isinstance(out.get("data"), dict) else {}
    meta = out.get("metadata") if isinstance(out.get("metadata"), dict) else {}
    kept: dict = {}
    if "text/plain" in data:
        kept["text/plain"] = _text_of(data["text/plain"])
    shown_meta: dict = {}
    for mime in _IMAGES:
        if mime not in data:
            continue
        image = _text_of(data[mime])
        if not _BASE64.match(image):
            repairs.add("an image output that is not base64 was left out of the feedback page")
            continue
        kept[mime] = image
        sizes = meta.get(mime) if isinstance(meta.get(mime), dict) else {}
        safe = {k: _size(sizes[k]) for k in ("width", "height") if k in sizes}
        if any(v is None for v in safe.values()):
            repairs.add("an image's width or height that is not a number was left out of the feedback page")
        safe = {k: v for k, v in safe.items() if v is not None}
        if safe:
            shown_meta[mime] = safe
    if "filenames" in meta:
        repairs.add("an output's file names (a URL the page would fetch) were left out of the feedback page")
    if not kept:
        kept["text/plain"] = "[a rich output, not shown in feedback]"
    if kind == "execute_result":
        count = out.get("execution_count")
        return nbformat.v4.new_output("execute_result", data=kept, metadata=shown_meta,
                                      execution_count=count if type(count) is int else None)
    return nbformat.v4.new_output("display_data", data=kept, metadata=shown_meta)


def shown_notebook(spec: Spec, nb, tests: list[TestResult]) -> tuple[nbformat.NotebookNode, list[str]]:
    """The notebook as the learner sees it, rebuilt of what is known to be safe to show: test cells as
    released, each with its result attached; the learner's cells with their source and safe outputs
    only. Also what had to be left out (a note each), when something of the learner's was dangerous."""
    released = {cells.grade_id(c): c for c in spec.released.cells}
    by_test = {t.id: t for t in tests}
    repairs: set[str] = set()
    shown_cells, ids = [], set()
    for k, cell in enumerate((nb if nb is not None else spec.released).get("cells", [])):
        gid = cells.grade_id(cell)
        kind, source = cell.get("cell_type"), _text_of(cell.get("source", ""))
        trusted = cells.is_instructors(cell)
        cid = cell.get("id") if isinstance(cell.get("id"), str) and _CELL_ID.match(cell.get("id")) else None
        if kind == "code":
            new = nbformat.v4.new_code_cell(source)
            tested = cells.is_test(cell) and gid in by_test
            for out in cell.get("outputs", []) if isinstance(cell.get("outputs"), list) else []:
                if tested and isinstance(out, dict) and out.get("output_type") == "error":
                    continue  # the error its probe raised: the test's box under the cell says it, once
                safe = _safe_output(out, repairs) if isinstance(out, dict) else None
                if safe is not None:
                    new.outputs.append(safe)
            count = cell.get("execution_count")
            new.execution_count = count if type(count) is int else None
            if tested:
                t = by_test[gid]
                new.source = released[gid].source if gid in released else ""
                new.metadata["qkv_test"] = {
                    "id": gid, "passed": t.passed, "message": t.message,
                    "points_text": f"{t.points:g} / {t.max_points:g}"}
        elif kind == "markdown" or (kind == "raw" and not trusted):
            if kind == "raw":  # the learner's raw cell: nbconvert would paste it in as HTML
                source = f"```\n{source}\n```"
            new = nbformat.v4.new_markdown_cell(source)
            if trusted and isinstance(cell.get("attachments"), dict):
                new.attachments = copy.deepcopy(cell["attachments"])
            elif not trusted:
                repairs.update(markdown_threats(_rendered_markdown(source, "")))
        elif kind == "raw":  # the instructor's own raw cell
            new = nbformat.v4.new_raw_cell(source)
            for key in ("format", "raw_mimetype"):
                if isinstance(cell.get("metadata", {}).get(key), str):
                    new.metadata[key] = cell["metadata"][key]
        else:
            continue
        new.id = cid if cid and cid not in ids else f"shown-{k}"
        ids.add(new.id)
        shown_cells.append(new)
    shown = nbformat.v4.new_notebook(cells=shown_cells, metadata=copy.deepcopy(spec.released.metadata))
    return shown, sorted(repairs)


# ---- math, as MathML ---------------------------------------------------------------------------------

def mathml(tex: str, display: str) -> str:
    """TeX as a MathML element (``latex2mathml``), which the browser renders with no script. Text is
    escaped here (``latex2mathml`` writes a ``\\text{...}`` as it is); the sanitizer then keeps MathML
    elements and their presentation attributes only. TeX it cannot read is shown as code."""
    try:
        root = convert_to_element(tex, display=display)
    except Exception:  # latex2mathml raises its own errors and plain ones for TeX it cannot parse
        return f"<code class='tex'>{html.escape(tex)}</code>"
    for element in root.iter():  # it keeps characters as entity text ("&#x02264;"): make them characters
        element.text = html.unescape(element.text) if element.text else element.text
        element.tail = html.unescape(element.tail) if element.tail else element.tail
    root.attrib.pop("xmlns", None)  # an HTML parser puts <math> in MathML's namespace itself
    return ElementTree.tostring(root, encoding="unicode", method="html")


class _MathRenderer(IPythonRenderer):
    """nbconvert's markdown renderer, writing math as MathML where it writes TeX for MathJax."""

    def block_math(self, body: str) -> str:
        return mathml(body, "block")

    def inline_math(self, body: str) -> str:
        return mathml(body, "inline")

    def latex_environment(self, name: str, body: str) -> str:
        return mathml(f"\\begin{{{name}}}{body}\\end{{{name}}}", "block")


def markdown_html(source: str, path: str = "", attachments: dict | None = None) -> str:
    """A markdown cell as nbconvert's HTML exporter renders it (its options), with math as MathML:
    before sanitizing."""
    exporter = _exporter()
    renderer = _MathRenderer(escape=False, attachments=attachments or {}, embed_images=exporter.embed_images,
                             path=path, anchor_link_text=exporter.anchor_link_text,
                             exclude_anchor_links=exporter.exclude_anchor_links, **exporter.lexer_options)
    return MarkdownWithMath(renderer=renderer).render(source)


# ---- the learner's markdown, sanitized ---------------------------------------------------------------

_ALLOWED_CLASS = re.compile(r"^(?!qkv|jp-|mjx|MathJax)[A-Za-z][\w-]{0,40}$")
_THREATS = [
    (re.compile(r"<script", re.I), "a script in a markdown cell was left out of the feedback page"),
    (re.compile(r"<[^>]+\son[a-z]+\s*=", re.I),
     "an event handler in a markdown cell was left out of the feedback page"),
    (re.compile(r"(?:href|src)\s*=\s*[\"']?\s*(?:javascript|vbscript|data:text)", re.I),
     "a javascript: link in a markdown cell was left out of the feedback page"),
    (re.compile(r"<(?:img|iframe|embed|object|video|audio|source|link)[^>]*\s(?:src|href|data|srcset)\s*="
                r"\s*[\"']?\s*(?!data:image/)[^\s\"'>]", re.I),
     "a remote image or embed in a markdown cell was left out of the feedback page"),
]


def markdown_threats(rendered: str) -> list[str]:
    """What sanitizing takes out of a markdown cell's HTML that would have been live: a note for each."""
    return [note for pattern, note in _THREATS if pattern.search(rendered)]


# MathML (Core, and what latex2mathml writes): its elements, and the attributes that say how to lay them out.
# No href, no style: a formula links to nothing and is styled by the page alone.
_MATHML_TAGS = {"math", "mi", "mn", "mo", "ms", "mtext", "mspace", "mrow", "mfrac", "msqrt", "mroot",
                "mstyle", "merror", "mpadded", "mphantom", "msub", "msup", "msubsup", "munder", "mover",
                "munderover", "mmultiscripts", "mprescripts", "none", "mtable", "mtr", "mtd", "menclose",
                "semantics", "annotation"}
_MATHML_ATTRIBUTES = {"display", "displaystyle", "scriptlevel", "mathvariant", "mathcolor", "mathbackground",
                      "mathsize", "stretchy", "fence", "separator", "lspace", "rspace", "minsize", "maxsize",
                      "symmetric", "largeop", "movablelimits", "accent", "accentunder", "form", "columnalign",
                      "rowalign", "columnspacing", "rowspacing", "columnlines", "rowlines", "frame", "width",
                      "height", "depth", "voffset", "linethickness", "notation", "columnspan", "rowspan",
                      "encoding"}


def _attribute(tag: str, name: str, value: str) -> str | None:
    if name == "class":
        kept = [c for c in value.split() if _ALLOWED_CLASS.match(c)]
        return " ".join(kept) or None
    if tag == "img" and name == "src":  # inline images only: the page fetches nothing
        return value if value.startswith(tuple(f"data:{m};" for m in _IMAGES)) else None
    return value


@functools.lru_cache(maxsize=8192)
def sanitize(rendered: str) -> str:
    """HTML of a markdown cell, with what could run or fetch taken out (Ammonia's allowlist: no script,
    no handler attribute, links of http, https and mailto only, images only inline; MathML with its
    layout attributes only)."""
    attributes = {tag: set(names) for tag, names in nh3.ALLOWED_ATTRIBUTES.items()}
    attributes["*"] = attributes.get("*", set()) | {"class"}
    for heading in ("h1", "h2", "h3", "h4", "h5", "h6"):
        attributes[heading] = attributes.get(heading, set()) | {"id"}  # anchor links' targets
    attributes.update({tag: set(_MATHML_ATTRIBUTES) for tag in _MATHML_TAGS})
    return nh3.clean(rendered, tags=set(nh3.ALLOWED_TAGS) | _MATHML_TAGS, attributes=attributes,
                     attribute_filter=_attribute,
                     url_schemes={"http", "https", "mailto", "data"}, link_rel="noopener noreferrer")


@functools.lru_cache(maxsize=8192)
def _rendered_markdown(source: str, path: str) -> str:
    """A markdown cell as nbconvert renders it, math as MathML, before sanitizing: remembered."""
    return markdown_html(source, path)


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

    @pass_context
    def markdown(context, source):
        path = context.get("resources", {}).get("metadata", {}).get("path", "")
        attachments = context.get("cell", {}).get("attachments")
        if attachments:
            return sanitize(markdown_html(source, path, attachments))
        return sanitize(_rendered_markdown(source, path))

    @pass_context
    def highlight(context, source, language=None, metadata=None):
        info = context.get("nb", {}).get("metadata", {}).get("language_info", {})
        language = language or info.get("pygments_lexer", info.get("name")) or "ipython3"
        return _code_html(source, language, (metadata or {}).get("magics_language"))

    # highlight_code comes out cleaned already: the template's clean_html after it sees its own output
    exporter.filters = {"highlight_code": highlight, "clean_html": _clean, "markdown2html": markdown}
    return exporter


def render_page(spec: Spec, shown: nbformat.NotebookNode, tests: list[TestResult], notes: list[str]) -> str:
    """The feedback page of a notebook from ``shown_notebook``, which is validated first (nbformat's
    schema): one that does not validate is not rendered, the released notebook is shown instead."""
    try:
        nbformat.validate(shown)
    except nbformat.ValidationError as exc:
        notes = [*notes, f"the notebook could not be shown ({exc.message[:200]}); the released one is"]
        shown, _ = shown_notebook(spec, None, tests)
    resources = {"qkv_css": _CSS, "qkv_csp": _CSP,
                 "qkv_summary": _summary(spec, tests, notes),
                 "metadata": {"name": f"{spec.name} feedback"}}
    body, _ = _exporter().from_notebook_node(shown, resources=resources)
    return body


def write_feedback(out: Path, student: str, name: str, page: str, submission: Path) -> Path:
    """Write one page in nbgrader's layout under ``out/feedback``, with ``timestamp.txt`` (the one
    ``nbgrader collect`` wrote, else the notebook's time) and ``submission_secret.txt`` when collected:
    each copied only when it is a small regular file (``discover.collected``: a link is never followed).
    The page needs nothing beside it: its math is MathML."""
    folder = out / "feedback" / student / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.html").write_text(page, encoding="utf-8")
    notebook = submission / f"{name}.ipynb"
    stamp, secret = (collected(notebook, fname) for fname in COLLECT_FILES)
    # not collected by nbgrader (handed in otherwise): `release_feedback` still needs a secret for every
    # page; a random one, which nobody else can guess the file name from
    (folder / "submission_secret.txt").write_bytes(secret if secret is not None
                                                   else secrets.token_hex(16).encode())
    if stamp is None:
        try:
            when = os.lstat(notebook).st_mtime  # the link's own time, if it is one: never followed
        except OSError:
            when = 0
        stamp = datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f %Z").encode()
    (folder / "timestamp.txt").write_bytes(stamp)
    return folder / f"{name}.html"
