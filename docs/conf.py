"""Sphinx configuration for the deepalign documentation (built with -W: warnings are errors)."""

import socket

import deepalign


def _online(host: str = "docs.python.org") -> bool:
    """Intersphinx needs the inventories of Python/PyTorch/NumPy; offline builds skip it."""
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


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
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    *(["sphinx.ext.intersphinx"] if _online() else []),
]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = False

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "torch": ("https://docs.pytorch.org/docs/stable", None),
    "numpy": ("https://numpy.org/doc/stable", None),
}
intersphinx_timeout = 5

# Docstring examples run under pytest --doctest-modules; this builder runs the pages' own.
doctest_test_doctest_blocks = ""
doctest_global_setup = """
import torch
import deepalign
torch.manual_seed(0)
"""

html_theme = "alabaster"
exclude_patterns = ["_build"]
