"""Every public name has an entry in the API reference (docs/api/*.rst)."""

import importlib
from pathlib import Path

import pytest

API = "\n".join(p.read_text() for p in (Path(__file__).parents[1] / "docs" / "api").glob("*.rst"))
MODULES = [
    "deepalign",
    "deepalign.functional",
    "deepalign.alignment",
    "deepalign.data",
    "deepalign.metrics",
    "deepalign.ulgm",
    "deepalign.model",
    "deepalign.text",
    "deepalign.training",
    "deepalign.experiments",
    "deepalign.distributed",
]


def documented(module: str, name: str) -> bool:
    return any(f"{prefix}.{name}" in API for prefix in (module, "deepalign"))


@pytest.mark.parametrize("module", MODULES)
def test_public_names_have_api_entries(module):
    names = [n for n in importlib.import_module(module).__all__ if not n.startswith("__")]
    missing = [n for n in names if not documented(module, n)]
    submodules = [n for n in missing if f"deepalign.{n}" in API]  # e.g. deepalign.functional
    assert sorted(set(missing) - set(submodules)) == []
