"""Sphinx configuration for the deepalign documentation (built with -W: warnings are errors)."""

import deepalign

project = "deepalign"
author = "deepalign developers"
copyright = "2026, deepalign developers"
release = deepalign.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = False

# The documentation is built offline: intersphinx reads no inventory unless one is cached.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "torch": ("https://docs.pytorch.org/docs/stable", None),
    "numpy": ("https://numpy.org/doc/stable", None),
}
intersphinx_disabled_reftypes = ["*"]
intersphinx_timeout = 1
suppress_warnings = ["intersphinx.external"]

doctest_global_setup = """
import torch
import deepalign
torch.manual_seed(0)
"""

html_theme = "alabaster"
exclude_patterns = ["_build"]
