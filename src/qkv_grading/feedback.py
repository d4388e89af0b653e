"""The learner's feedback page: score per question, their code and outputs, and each test's result and
message. Hidden test code is never shown: test cells appear as released."""

from __future__ import annotations

import html

from qkv_grading.results import questions
from qkv_grading.spec import Spec


_CSS = """body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap}
.test{border-left:5px solid #999;padding:.2em .8em;margin:1em 0}.pass{border-color:#2a2}.fail{border-color:#c22}
.out{background:#fff;border:1px solid #ddd}.notes{background:#fff6d6;padding:.6em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em}"""


def _esc(text) -> str:
    return html.escape(str(text))


def _outputs_html(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        kind = out.get("output_type")
        if kind == "stream":
            parts.append(out.get("text", ""))
        elif kind in ("execute_result", "display_data"):
            parts.append(out.get("data", {}).get("text/plain", "[non-text output]"))
        elif kind == "error":
            parts.append(f"{out.get('ename', '')}: {out.get('evalue', '')}")
    text = "".join(p if p.endswith("\n") else p + "\n" for p in parts)
    if len(text) > 5000:
        text = text[:5000] + "\n[... cut ...]\n"
    return f"<pre class='out'>{_esc(text)}</pre>" if text.strip() else ""


def feedback_page(spec: Spec, nb, tests: list[dict], notes: list[str]) -> str:
    """HTML feedback: the learner's code and outputs, and for each test its visible code, result and
    message. Hidden test code is never shown: test cells are shown as released."""
    released_src = {c.metadata.get("nbgrader", {}).get("grade_id"): c.source for c in spec.released.cells}
    by_test = {t["id"]: t for t in tests}
    score = sum(t["points"] for t in tests)
    rows = "".join(f"<tr><td>{_esc(q)}</td><td>{s:g} / {m:g}</td></tr>"
                   for q, (s, m) in questions({"tests": tests}).items())
    body = [f"<h1>Feedback: {_esc(spec.name)}</h1><p><b>Score: {score:g} / {spec.max_score:g}</b></p>",
            f"<table><tr><th>question</th><th>points</th></tr>{rows}</table>"]
    if notes:
        body.append("<div class='notes'><b>Notes from the grader</b><ul>"
                    + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul></div>")
    if nb is not None:
        for cell in nb.cells:
            info = cell.get("metadata", {}).get("nbgrader", {})
            cid = info.get("grade_id") if info.get("grade") else None
            if cid in by_test:
                t = by_test[cid]
                cls, verdict = ("pass", "passed") if t["passed"] else ("fail", "failed")
                msg = "" if t["passed"] else f"<p><b>What is wrong:</b> {_esc(t['message'])}</p>"
                body.append(f"<div class='test {cls}'><p><b>Test {_esc(cid)}</b>: {verdict}, "
                            f"{t['points']:g} / {t['max_points']:g} points</p>"
                            f"<pre>{_esc(released_src.get(cid, ''))}</pre>{msg}</div>")
            elif cell.cell_type == "markdown":
                body.append(f"<div class='md'><pre>{_esc(cell.source)}</pre></div>")
            elif cell.cell_type == "code":
                body.append(f"<pre>{_esc(cell.source)}</pre>{_outputs_html(cell)}")
    else:
        body.append("<ul>" + "".join(f"<li>{_esc(t['id'])}: 0 / {t['max_points']:g}</li>" for t in tests) + "</ul>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_esc(spec.name)} feedback</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")
