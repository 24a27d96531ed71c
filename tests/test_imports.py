"""The packages' module-level imports form no cycle.

A cycle works only while the modules happen to be imported in one order, and makes each module of
it unreadable without the others. Imports inside functions run later and are left out; so are
imports under ``if TYPE_CHECKING:``, which never run.

``recon.io`` is held to more: counting the imports inside its functions too, its modules still
depend one way (the readers on ``recon.io.slices``, the dispatch in ``recon.io.volume`` on the
readers), so a reader never needs the module that dispatches to it.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("recon", "operators")


def _modules() -> dict:
    """Every module of the packages: dotted name -> path."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _module_level(body, functions: bool = False):
    """The statements that run when the module is imported: not TYPE_CHECKING, and function bodies
    only with ``functions``."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not functions:
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _module_level(node.orelse, functions)
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(node, field, None)
            if isinstance(inner, list):
                yield from _module_level(inner, functions)


def _imports(name: str, path: Path, modules: dict, functions: bool = False) -> set:
    """The package modules that ``name`` imports at module level (and inside functions with ``functions``)."""
    is_package = path.name == "__init__.py"
    targets = set()
    for node in _module_level(ast.parse(path.read_text(), str(path)).body, functions):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in modules else base)
    return {target for target in targets if target in modules and target != name}


def _cycle(graph: dict):
    """One cycle of ``graph`` as a list of nodes, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_graph_sees_the_packages_imports():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert "recon.batch.runner" in graph and "operators.ct" in graph
    assert "recon.batch.formats" in graph["recon.batch.runner"]
    assert "operators.base" in graph["operators.ct"]


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_level_import_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    cycle = _cycle(graph)
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


def test_imports_inside_functions_are_counted_only_when_asked(tmp_path):
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("class Reader:\n    def read(self):\n        import a\n")
    modules = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    assert _imports("b", modules["b"], modules) == set()
    assert _imports("b", modules["b"], modules, functions=True) == {"a"}
    graph = {name: _imports(name, path, modules, functions=True) for name, path in modules.items()}
    assert _cycle(graph) == ["a", "b", "a"]


def test_no_import_cycle_in_recon_io_even_inside_functions():
    modules = _modules()
    io = {name: path for name, path in modules.items() if name == "recon.io" or name.startswith("recon.io.")}
    graph = {name: _imports(name, path, modules, functions=True) & set(io) for name, path in io.items()}
    assert "recon.io.dicom" in graph["recon.io.export"]  # imported inside a function
    cycle = _cycle(graph)
    assert cycle is None, "import cycle in recon.io (counting imports inside functions): " + " -> ".join(cycle)
