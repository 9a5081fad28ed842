"""The documentation: API coverage, anchors, the quickstart's snippets, offline mathematics.

Fast: every public name has an entry in docs/api/*.rst; no ``.. data::`` entry repeats the
module it is in (Sphinx would prefix it again: ``deepalign.data.deepalign.data.PRESETS``); every
snippet of the quickstart runs as pasted, each in a fresh namespace without any set-up.
Slow: the built HTML has the anchors and links the pages promise, and a page with an equation,
built with the project's configuration, is typeset by the MathJax copy in the build when
headless Chromium renders it without a network.
"""

import doctest
import importlib
import pkgutil
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[1] / "docs"
API = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.rst"))
# Every public module (no leading underscore): a new one is covered without editing this list.
SUBMODULES = pkgutil.iter_modules(importlib.import_module("deepalign").__path__)
MODULES = ["deepalign", *sorted(f"deepalign.{m.name}" for m in SUBMODULES if m.name[0] != "_")]


def api_entries(text: str) -> list[str]:
    """Full names of the objects the API pages document (names relative to the current module
    resolved as Sphinx resolves them)."""
    current, names = None, []
    for line in text.splitlines():
        match = re.match(r"\.\. (?:py:)?(?:auto)?(\w+):: (\S+)", line)
        if match is None:
            continue
        kind, name = match.groups()
        if kind in ("module", "currentmodule"):
            current = None if name == "None" else name
            names.append(name)
        elif name.startswith("deepalign") or current is None:
            names.append(name)
        else:
            names.append(f"{current}.{name}")
    return names


def resolve(name: str) -> object:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attribute in parts[i:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(name)


DOCUMENTED = {id(resolve(name)) for name in api_entries(API)}


def test_api_entries_resolve_relative_names():
    page = (
        ".. automodule:: deepalign.metrics\n\n.. data:: MOSI_KEYS\n"
        ".. autofunction:: deepalign.parse_spec\n"
    )
    assert api_entries(page) == [
        "deepalign.metrics",
        "deepalign.metrics.MOSI_KEYS",
        "deepalign.parse_spec",
    ]


@pytest.mark.parametrize("module", MODULES)
def test_public_names_have_api_entries(module):
    """An object re-exported by several modules needs one entry, under any of its names."""
    imported = importlib.import_module(module)
    names = [n for n in imported.__all__ if not n.startswith("__")]
    assert [n for n in names if id(getattr(imported, n)) not in DOCUMENTED] == []


def doubled_data_entries(text: str) -> list[str]:
    """``.. data::`` names that start with the module a preceding directive made current."""
    current, doubled = None, []
    for line in text.splitlines():
        if match := re.match(r"\.\. (?:auto)?module:: (\S+)|\.\. currentmodule:: (\S+)", line):
            current = match[1] or match[2]
            current = None if current == "None" else current
        elif (match := re.match(r"\.\. (?:py:)?data:: (\S+)", line)) and current:
            doubled += [match[1]] if match[1].startswith(f"{current}.") else []
    return doubled


def test_doubled_data_entries_are_detected():
    page = ".. automodule:: deepalign.metrics\n\n.. data:: deepalign.metrics.MOSI_KEYS\n"
    assert doubled_data_entries(page) == ["deepalign.metrics.MOSI_KEYS"]
    assert doubled_data_entries(page.replace(".. data:: deepalign.metrics.", ".. data:: ")) == []


@pytest.mark.parametrize("page", sorted((DOCS / "api").glob("*.rst")), ids=lambda p: p.name)
def test_data_entries_do_not_repeat_their_module(page):
    assert doubled_data_entries(page.read_text()) == []


def doctest_blocks(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every ``.. doctest::`` block of an rst page, dedented, options dropped."""
    lines, blocks, i = path.read_text().splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip().startswith(".. doctest::"):
            start, i, body = i + 1, i + 1, []
            while i < len(lines) and (not lines[i].strip() or lines[i][:1].isspace()):
                body.append(lines[i])
                i += 1
            text = textwrap.dedent("\n".join(body)).strip("\n")
            text = re.sub(r"\A(:[\w-]+:.*\n)+", "", text)
            blocks.append((start, text + "\n"))
        else:
            i += 1
    return blocks


QUICKSTART = DOCS / "quickstart.rst"


def test_quickstart_python_is_all_doctested():
    text = QUICKSTART.read_text()
    assert not re.search(r"\.\. code-block:: (python|pycon)|^::$", text, re.M)
    assert len(doctest_blocks(QUICKSTART)) >= 3


@pytest.mark.parametrize(("line", "block"), doctest_blocks(QUICKSTART), ids=lambda v: str(v)[:9])
def test_quickstart_snippet_runs_as_pasted(line, block):
    parser = doctest.DocTestParser()
    test = parser.get_doctest(block, {}, f"quickstart.rst:{line}", str(QUICKSTART), line)
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    result = runner.run(test, out=report.append)
    assert result.failed == 0, "".join(report)
    assert result.attempted > 0


# ---------------------------------------------------------------------------------------- slow


def sphinx_build(source: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sphinx", "-q", "-b", "html", *extra, str(source), str(out)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_built_html_has_single_anchors_and_resolved_links(tmp_path):
    done = sphinx_build(DOCS, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    html = {p.relative_to(tmp_path).as_posix(): p.read_text() for p in tmp_path.rglob("*.html")}
    ids = {i for text in html.values() for i in re.findall(r'id="(deepalign\.[^"]+)"', text)}
    assert not [i for i in ids if re.search(r"deepalign\.(\w+)\.deepalign\.\1\.", i)]
    for anchor in (
        "deepalign.data.PRESETS",
        "deepalign.metrics.MOSI_KEYS",
        "deepalign.alignment.DEFAULT_ALIASES",
        "deepalign.MSAConfig.preset",
    ):
        assert anchor in ids, anchor
        # A cross-reference (the entry's own permalink is class="headerlink").
        link = re.compile(rf'class="reference internal" href="[^"]*#{re.escape(anchor)}"')
        assert any(link.search(text) for text in html.values()), f"no link to {anchor}"
    quickstart = html["quickstart.html"]
    assert 'href="api/alignment.html#deepalign.alignment.DEFAULT_ALIASES"' in quickstart


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("headless Chromium not installed (Debian: apt-get install -y chromium)")


def render(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
    ]
    command = [chromium(), *flags, *args, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


PAGE = r"""Offline mathematics
===================

The covariance alignment loss is

.. math::

   \theta = \frac{1}{4d^2} \lVert C_a - C_b \rVert_F^2,

and inline :math:`\frac{a}{b}` too.
"""


@pytest.mark.slow
def test_mathematics_is_typeset_offline_in_headless_chromium(tmp_path):
    browser = chromium()
    source, out = tmp_path / "src", tmp_path / "html"
    source.mkdir()
    (source / "index.rst").write_text(PAGE)
    done = sphinx_build(source, out, "-W", "-c", str(DOCS))  # the project's configuration
    assert done.returncode == 0, done.stderr[-3000:]
    page = (out / "index.html").read_text()
    scripts = re.findall(r'<script[^>]*src="([^"]+)"', page)
    assert "_static/mathjax/tex-chtml.js" in scripts
    assert not [s for s in scripts if "://" in s or s.startswith("//")]  # no CDN
    assert (out / "_static" / "mathjax" / "tex-chtml.js").stat().st_size > 100_000

    url = (out / "index.html").as_uri()
    dom = render(url, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<mjx-container") == 2, f"{browser}: formulas not typeset"
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<script.*?</script>", "", dom.stdout, flags=re.S))
    assert "\\frac" not in text  # no raw TeX left on the page

    shot = tmp_path / "page.png"
    done = render(url, tmp_path / "profile", "--window-size=800,600", f"--screenshot={shot}")
    assert done.returncode == 0, done.stderr[-2000:]
    image = pytest.importorskip("PIL.Image").open(shot).convert("L")
    assert image.size == (800, 600)
    dark = sum(image.histogram()[:128])  # text and formulas are dark on a light page
    assert 0.002 < dark / (800 * 600) < 0.5
