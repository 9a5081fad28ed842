"""Sphinx configuration for the deepalign documentation (built with -W: warnings are errors).

``nitpicky = True``: every cross-reference to a deepalign name must resolve. References to other
projects (Python, PyTorch, NumPy, matplotlib) link through intersphinx when their inventories can
be fetched; offline (CI, a laptop on a train) they render as plain code and do not warn. The
ignore list below names those projects' namespaces only, never ``deepalign``.

Mathematics is typeset by MathJax served from the build (``sphinx-mathjax-offline``, in the
``docs`` extra), so the pages render without a network; ``tests/test_docs.py`` checks it in
headless Chromium.
"""

import socket
import sys

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
    "sphinx-mathjax-offline",  # MathJax 3 copied into _static/mathjax: no CDN
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    *(["sphinx.ext.intersphinx"] if _online() else []),
]

autodoc_member_order = "bysource"
# Types go into the Args entries a docstring already has ("documented"); "all" would append a
# second, type-only parameter list after napoleon's custom sections (Shape:, Raises:).
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
# Every documented member of every autoclass. Beware: with a boolean default Sphinx replaces a
# page's ``:members: a, b`` list by "all"; leave members out with ``:exclude-members:``.
autodoc_default_options = {"members": True}
# An undocumented override (``forward``, ``extra_repr``) must not borrow torch.nn.Module's
# boilerplate docstring; it is then undocumented and left out.
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = True
# "nn" is torch.nn as deepalign's modules import it (``from torch import nn``).
_EXTERNAL = sorted({*sys.stdlib_module_names, "torch", "nn", "numpy", "matplotlib", "transformers"})
nitpick_ignore_regex = [(r"py:.*", rf"({'|'.join(_EXTERNAL)})(\..*)?")]
# String annotations that autodoc cannot evaluate (imports under TYPE_CHECKING): their targets.
autodoc_type_aliases = {"Figure": "matplotlib.figure.Figure"}

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "torch": ("https://docs.pytorch.org/docs/stable", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "matplotlib": ("https://matplotlib.org/stable", None),
}
intersphinx_timeout = 5

# Docstring examples run under pytest --doctest-modules; this builder runs the pages' own.
# The quickstart's snippets carry their own imports: tests/test_docs.py runs them without this
# setup, in a namespace of their own.
doctest_test_doctest_blocks = ""
doctest_global_setup = """
import torch
import deepalign
torch.manual_seed(0)
"""

html_theme = "alabaster"
exclude_patterns = ["_build"]
