"""No import cycle among deepalign's modules, counting imports inside functions and under
TYPE_CHECKING (every Import and ImportFrom node of the syntax tree)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "deepalign"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The deepalign modules that ``path`` imports anywhere (``from a import b`` counts
    ``a.b`` when that is a module, else ``a``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # a submodule imported by name counts as that module, a name as its module
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            # "import deepalign.cli.runs" imports deepalign, deepalign.cli too: count the module
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports(p, modules) for p in paths}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_checker_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_the_checker_sees_imports_in_functions_and_type_checking(tmp_path, monkeypatch):
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from deepalign.training import TrainConfig\n"
        "def f():\n    import deepalign.data\n    from deepalign import stats\n"
    )
    path = PACKAGE / "model.py"
    modules = {"deepalign", "deepalign.model", "deepalign.training", "deepalign.data",
               "deepalign.stats"}  # fmt: skip
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source)
    assert imports(path, modules) == {"deepalign.training", "deepalign.data", "deepalign.stats"}


def test_no_import_cycle_in_the_package():
    edges = graph()
    assert "deepalign.training" in edges["deepalign.cli.runs"]
    found = cycle(edges)
    assert found is None, " -> ".join(found)


def test_the_library_never_imports_the_application():
    for module, targets in graph().items():
        if not module.startswith("deepalign.cli") and module != "deepalign.__main__":
            assert not {t for t in targets if t.startswith("deepalign.cli")}, module
