"""Sphinx configuration: the user guide (Markdown, through MyST), docs/design.md as it
is, and the API reference from the docstrings.

Build it as .ci/run does (warnings are errors; the second command runs every example)::

    pip install -e '.[docs]'
    sphinx-build -W --keep-going -b html docs docs/_build/html
    sphinx-build -W --keep-going -b doctest docs docs/_build/doctest
"""

from __future__ import annotations

import doctest
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import requests_opsnow

if TYPE_CHECKING:
    from sphinx.application import Sphinx

sys.path.insert(0, str(Path(__file__).parent))  # doctest_support, for the examples

project = "requests-opsnow"
copyright = "the requests-opsnow developers; Apache-2.0"
release = requests_opsnow.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# docs/design.md links to its own sections ("#token-lifecycle"): MyST makes anchors for
# headings up to this level.
myst_heading_anchors = 3

# Every page's examples run against a fake server of their own (doctest_support.py).
doctest_global_setup = """
from doctest_support import open_page
_docs_page = open_page()
fake = _docs_page.fake
"""
doctest_global_cleanup = "_docs_page.close()"
# Sphinx's default without IGNORE_EXCEPTION_DETAIL: an exception's message is checked too.
doctest_default_flags = doctest.ELLIPSIS | doctest.DONT_ACCEPT_TRUE_FOR_1

autodoc_member_order = "bysource"
autodoc_typehints = "signature"


def drop_type_docstrings(
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """A constant has no docstring of its own: autodoc would show its type's (dict's)."""
    if what == "data" and lines and type(obj).__doc__ and obj.__doc__ == type(obj).__doc__:
        lines.clear()


def setup(app: Sphinx) -> None:
    app.connect("autodoc-process-docstring", drop_type_docstrings)


html_theme = "alabaster"
html_title = f"requests-opsnow {release}"
html_static_path: list[str] = []
