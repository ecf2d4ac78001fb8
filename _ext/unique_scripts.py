"""Sphinx extension: drop repeated <script> entries from each page.

sphinx-thebe (loaded by Jupyter Book 1) adds its inline `const THEBE_JS_URL = ...` script once per
reading pass, so a page built after notebook execution declares the constant twice and the browser
raises a SyntaxError. The list is edited in place: sphinx.ext.mathjax adds its script to the same
list later in this event (a new list hid it, and no page loaded MathJax)."""


def _unique(app, pagename, templatename, context, doctree):
    seen, kept = set(), []
    for js in context.get('script_files', []):
        # None and '' both mean an inline script
        key = (getattr(js, 'filename', str(js)) or '',
               repr(sorted(getattr(js, 'attributes', {}).items())))
        if key not in seen: seen.add(key); kept.append(js)
    # in place: it is the builder's list, and handlers after this one (MathJax's) append to it
    context['script_files'][:] = kept


def setup(app):
    # early: the event stops at the first handler that returns a value
    app.connect('html-page-context', _unique, priority=100)
    return dict(parallel_read_safe=True, parallel_write_safe=True)
