"""Sphinx extension of the book: drop inline scripts that a page would otherwise load twice.

sphinx-thebe 0.3.1 (pulled in by Jupyter Book 1) registers its inline configuration script
(``const THEBE_JS_URL = ...``) once with filename ``None`` and once with ``""``, which Sphinx 7.4
does not recognise as the same script, so every page carried it twice and the browser raised
``SyntaxError: Identifier 'THEBE_JS_URL' has already been declared``.
This handler keeps the first copy of each (filename, body) pair.
"""

from __future__ import annotations

from typing import Any


def _key(script: Any) -> tuple[str, str]:
    # the registry's copy has filename None and the builder's copy "", so both count as "no file"
    filename = getattr(script, "filename", script) or ""
    attributes = getattr(script, "attributes", {}) or {}
    return (str(filename), str(attributes.get("body", "")))


def dedupe_scripts(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple[str, str]] = set()
    kept = []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def setup(app: Any) -> dict:
    app.connect("html-page-context", dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
