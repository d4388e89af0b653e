"""Small fixes to the built site: every page loads without a console error, and code fits its column.

* sphinx-thebe (which Jupyter Book always loads) registers its inline configuration script twice, and
  the second copy fails with "Identifier 'THEBE_JS_URL' has already been declared": keep the first.
* pydata-sphinx-theme writes an empty colour mode for a first-time visitor and then reports it as
  invalid: give it a default mode ("auto", the theme's own default).
* The exercise pages show the released notebooks, whose test cells hold lines longer than the column:
  their body is marked (class ``qkv-wrap-code``) so that _static/qkv.css wraps those lines instead of
  hiding them behind a scroll bar.
"""

from __future__ import annotations




def _fix_page(app, pagename, templatename, context, doctree) -> None:
    # pydata-sphinx-theme's layout reads this template variable; sphinx-book-theme does not set it
    context.setdefault("default_mode", "auto")
    if pagename.startswith("exercises/") and context.get("body"):
        context["body"] = f'<div class="qkv-wrap-code">{context["body"]}</div>'
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        # the same file, or the same inline body, counts once (inline scripts come as filename None or "")
        filename = getattr(script, "filename", script) or ""
        attributes = getattr(script, "attributes", None)
        body = attributes.get("body", "") if isinstance(attributes, dict) else ""
        key = (str(filename), body)
        if key in seen:
            continue
        seen.add(key)
        kept.append(script)
    scripts[:] = kept


def setup(app):
    app.connect("html-page-context", _fix_page, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
