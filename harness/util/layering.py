"""The package's import graph read from source (ast), and the two rules it must keep: no upward import, no cycle."""
from __future__ import annotations

import ast
from pathlib import Path


def _module_name(root: Path, path: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Return {module: the package's modules it imports}, for every .py file under root (a package folder)."""
    files = {_module_name(root, p): p for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                # `from pkg import name` imports the module pkg.name where there is one, else pkg itself
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            edges.update(t for t in targets if t in files and t != root.name and t != name)
        graph[name] = edges
    return graph


def layer_of(module: str, layers) -> str | None:
    """Return the name of the layer a module belongs to (its first part below the package), or None."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    return next((parts[1] for group in layers if parts[1] in group), None)


def _rank(module: str, layers) -> int | None:
    head = layer_of(module, layers)
    return next((i for i, group in enumerate(layers) if head in group), None)


def upward_imports(graph: dict[str, set[str]], layers) -> list[str]:
    """Return one message per import that points from a lower layer to a higher one, naming both modules."""
    problems = []
    for module in sorted(graph):
        low = _rank(module, layers)
        for target in sorted(graph[module]):
            high = _rank(target, layers)
            if low is not None and high is not None and high > low:
                problems.append(f"{module} (layer {layer_of(module, layers)}) imports {target} "
                                f"(layer {layer_of(target, layers)}), a layer above it: "
                                "move the shared code down, or the importer up")
    return problems


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one import cycle as [a, b, ..., a], or None when the graph has none."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None
