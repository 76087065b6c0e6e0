"""Each script of a page once.

sphinx-thebe (which Jupyter Book always loads) registers its inline configuration script
(`const THEBE_JS_URL = ...`) once per build environment it sees; when it is registered twice, every
page declares the constant twice and the browser reports a SyntaxError. The page context's script list
is deduplicated here, keeping the first of equal scripts (an inline script's file name is None or
"", depending on who registered it).
"""


def _unique_scripts(app, pagename, templatename, context, doctree):
    seen, scripts = set(), []
    for script in context.get("script_files", []):
        attributes = getattr(script, "attributes", None) or {}
        key = (getattr(script, "filename", script) or "", tuple(sorted(attributes.items())))
        if key not in seen:
            seen.add(key)
            scripts.append(script)
    context["script_files"] = scripts


def setup(app):
    app.connect("html-page-context", _unique_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
