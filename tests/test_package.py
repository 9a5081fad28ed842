"""The package as users get it: metadata, licence, imports, the README.

Fast: pyproject's metadata (PEP 639 licence, a setuptools that reads it, core dependencies
torch and numpy only, Lightning in ``dev`` only); ``import deepalign`` and its public modules
work with transformers, matplotlib, tqdm and Lightning uninstalled (blocked), and import none
of them when they are installed; the README's drop-in snippet runs; every path the README names
exists and ships in the source distribution. Slow: the sdist and the wheel carry LICENSE and
the sdist every file the README names. (scripts/package_check.sh, run by scripts/test.sh, installs
the wheel into a clean virtual environment.)
"""

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
README = (ROOT / "README.md").read_text()
OPTIONAL = ("transformers", "matplotlib", "tqdm", "lightning", "scipy", "sklearn")
PUBLIC = (
    "deepalign",
    "deepalign.functional",
    "deepalign.alignment",
    "deepalign.ulgm",
    "deepalign.data",
    "deepalign.metrics",
    "deepalign.model",
    "deepalign.distributed",
)


def test_license_is_mit_and_declared_the_pep_639_way():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 deepalign developers" in text
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")]
    (setuptools,) = [
        Requirement(r) for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")
    ]
    # setuptools 77 is the first that accepts a license expression string.
    assert not setuptools.specifier.contains("76.1")
    assert setuptools.specifier.contains("77.0")


def test_core_dependencies_are_torch_and_numpy_and_lightning_is_dev_only():
    project = PYPROJECT["project"]
    assert sorted(Requirement(r).name for r in project["dependencies"]) == ["numpy", "torch"]
    extras = {
        name: {Requirement(r).name for r in reqs}
        for name, reqs in project["optional-dependencies"].items()
    }
    assert [name for name, reqs in extras.items() if "lightning" in reqs] == ["dev"]
    assert "sphinx-mathjax-offline" in extras["docs"]
    assert {"build", "twine"} <= extras["dev"]


BLOCKER = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))

class Uninstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

def loaded():
    return BLOCKED & {name.split(".")[0] for name in sys.modules}

if sys.argv[2] == "block":
    sys.meta_path.insert(0, Uninstalled())
import numpy, torch  # torch itself imports tqdm when it is installed (torch.hub)
before = loaded()
for module in sys.argv[3].split(","):
    __import__(module)
print(",".join(sorted(loaded() - before)))
"""


def run_import(mode: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", BLOCKER, ",".join(OPTIONAL), mode, ",".join(PUBLIC)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_import_works_with_only_torch_and_numpy():
    done = run_import("block")
    assert done.returncode == 0, done.stderr[-3000:]


def test_import_loads_no_optional_dependency():
    done = run_import("allow")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == ""


def test_the_blocker_blocks():
    pytest.importorskip("scipy")  # installed, and not imported by torch or numpy
    command = [sys.executable, "-c", BLOCKER, "scipy", "block", "scipy.linalg"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert "No module named 'scipy' (blocked)" in done.stderr


def test_readme_drop_in_snippet_runs():
    section = README.split("## Drop the loss into your model", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.S)[1]
    namespace = {"__name__": "__readme__"}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert namespace["audio_net"].weight.grad is not None


def readme_paths() -> list[str]:
    """Repository paths the README names in backticks (examples/..., scripts/..., ...)."""
    tokens = re.findall(r"`([^`\s]+)`", README)
    roots = ("examples/", "scripts/", "docs/", "benchmarks/", "tests/", "LICENSE")
    return sorted({t.rstrip("/") for t in tokens if t.startswith(roots)})


def test_readme_paths_exist_and_the_readme_links_nothing_relative():
    paths = readme_paths()
    assert "examples/lightning_module.py" in paths
    assert [p for p in paths if not (ROOT / p).exists()] == []
    links = re.findall(r"\]\(([^)]+)\)|<(https?://[^>]+)>", README)
    relative = [a or b for a, b in links if not (a or b).startswith(("https://", "http://", "#"))]
    assert relative == []


@pytest.mark.slow
def test_sdist_and_wheel_carry_the_licence_and_the_readme_paths(tmp_path):
    command = [sys.executable, "-m", "build", "--outdir", str(tmp_path), str(ROOT)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = tmp_path.glob("*.whl")
    (sdist,) = tmp_path.glob("*.tar.gz")
    wheel_names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in wheel_names if n.endswith(".dist-info/licenses/LICENSE")]
    assert not [n for n in wheel_names if n.startswith(("tests/", "examples/", "docs/"))]
    top = sdist.name.removesuffix(".tar.gz")
    with tarfile.open(sdist) as archive:
        sdist_names = {n.removeprefix(f"{top}/") for n in archive.getnames()}
    assert "LICENSE" in sdist_names
    shipped = [
        p
        for p in readme_paths()
        if p in sdist_names or any(n.startswith(f"{p}/") for n in sdist_names)
    ]
    assert sorted(set(readme_paths()) - set(shipped)) == []
    assert not [n for n in sdist_names if n.endswith(".pkl") or n.startswith("docs/_build")]
