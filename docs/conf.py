"""Sphinx configuration of mpidcr's documentation site (``make docs``; offline, warnings are errors)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "mpidcr"
author = "mpidcr developers"
copyright = "2026, mpidcr developers"
from mpidcr import __version__ as release  # noqa: E402

version = release
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "figures/README.md"]
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
napoleon_numpy_docstring = True
napoleon_google_docstring = False
html_theme = "alabaster"
html_static_path = ["_static"]
html_title = f"mpidcr {release}"
# links from the pages to the repository's other files (jobs/, mpidcr/, tests/) are not pages
suppress_warnings = ["myst.xref_missing"]
