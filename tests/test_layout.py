"""The code's shape, as the README's layout section states it: ladder_jax's imports run one
way (no cycle, counting imports inside functions), and no function of ladder_jax or
experiments takes more than 6 positional parameters."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_POSITIONAL = 6


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(package: str) -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, known: set[str]) -> set[str]:
    """The ladder_jax modules a module imports at run time (anywhere in it; not under
    ``if TYPE_CHECKING``): ``from a.b import c`` counts as a.b.c when c is a module."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in known:
                    found.add(sub)
                elif node.module in known:
                    found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a self-import (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_import_graph_of_ladder_jax_has_no_cycle():
    modules = _modules("ladder_jax")
    graph = {name: _imports(ast.parse(path.read_text()), set(modules)) - {name}
             for name, path in modules.items()}
    # The walk itself sees the edges that matter: config uses the model families' validation.
    assert "ladder_jax.models" in graph["ladder_jax.config"]
    assert "ladder_jax.errors" in graph["ladder_jax.config"]
    assert graph["ladder_jax.errors"] == set()  # the leaf every layer imports
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_function_takes_more_than_six_positional_parameters():
    too_many = []
    for package in ("ladder_jax", "experiments"):
        for path in _modules(package).values():
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    args = [*node.args.posonlyargs, *node.args.args]
                    if args and args[0].arg in ("self", "cls"):
                        args = args[1:]
                    if len(args) > MAX_POSITIONAL:
                        too_many.append(f"{path.relative_to(ROOT)}:{node.lineno} "
                                        f"{getattr(node, 'name', 'lambda')} ({len(args)})")
    assert too_many == []
