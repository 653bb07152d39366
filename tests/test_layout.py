"""The package's layout rules, checked on the source text (the layer order itself is import-linter's, in CI).

- no module over 500 lines;
- no import cycle between crfrnn's modules, counting imports inside functions (a late import hides a cycle from
  the interpreter, not from this test; the command line imports the library late so that ``--help`` is quick);
- no private name of one crfrnn module used from another (``from crfrnn.x import _y``, ``x._y`` on a module);
- no module inside the package imports names from the package root (the root is the users' door, not a layer).

Each rule has a test that shows it can fail on a small made-up tree.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 500


def module_name(path: Path, root: Path) -> str:
    parts = list(path.with_suffix("").relative_to(root).parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def read_tree(root: Path) -> dict[str, tuple[Path, ast.Module]]:
    return {module_name(p, root): (p, ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(root.rglob("*.py"))}


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, tree: ast.Module, modules: set[str]):
    """Yield ``(target module, imported name or None, node, inside a function)`` for imports of crfrnn's modules."""
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node

    def in_function(node: ast.AST) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                return True
        return False

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name, None, node, in_function(node)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(node, module, path.name == "__init__.py")
            if target not in modules:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    yield sub, None, node, in_function(node)
                else:
                    yield target, alias.name, node, in_function(node)


def long_modules(tree: dict) -> list[str]:
    out = []
    for name, (path, _) in tree.items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            out.append(f"{name}: {lines} lines")
    return out


def private_names(tree: dict) -> list[str]:
    modules = set(tree)
    found = []
    for name, (path, mod) in tree.items():
        bound: dict[str, str] = {}  # local name -> crfrnn module it is bound to
        for target, imported, node, _ in _imports(name, path, mod, modules):
            if imported is not None and imported.startswith("_") and not imported.startswith("__") and target != name:
                found.append(f"{name}:{node.lineno} imports {imported} from {target}")
            if imported is None:
                for alias in node.names:
                    full = alias.name if isinstance(node, ast.Import) else f"{target}"
                    local = alias.asname or alias.name.split(".")[0]
                    if isinstance(node, ast.ImportFrom) or alias.asname:
                        bound[local] = full if isinstance(node, ast.Import) else target
        for node in ast.walk(mod):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and bound[node.value.id] != name
            ):
                found.append(f"{name}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


def root_imports(tree: dict, root: str = "crfrnn") -> list[str]:
    modules = set(tree)
    return [
        f"{name}:{node.lineno} imports {imported} from the package root"
        for name, (path, mod) in tree.items()
        if name != root
        for target, imported, node, _ in _imports(name, path, mod, modules)
        if target == root and imported is not None and imported != "__version__"
    ]


def cycles(tree: dict) -> list[list[str]]:
    modules = set(tree)
    graph: dict[str, set[str]] = {name: set() for name in tree}
    for name, (path, mod) in tree.items():
        for target, _, _, _ in _imports(name, path, mod, modules):
            if target != name and not name.startswith(target + "."):  # a package's own __init__ runs first anyway
                graph[name].add(target)
    # Tarjan's strongly connected components; a component of more than one module is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def tree():
    return read_tree(SRC)


def test_no_long_module(tree):
    assert long_modules(tree) == []


def test_no_import_cycle(tree):
    assert cycles(tree) == []


def test_no_private_name_across_modules(tree):
    assert private_names(tree) == []


def test_no_import_from_the_root(tree):
    assert root_imports(tree) == []


def _fake(tmp_path: Path, files: dict[str, str]) -> dict:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return read_tree(tmp_path)


def test_the_checks_can_fail(tmp_path):
    tree = _fake(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import f\n",
            "pkg/a.py": "from pkg.b import _g\nimport pkg.c as c\n\ndef f():\n    return c._h\n",
            "pkg/b.py": "from pkg import f as root_f\n\ndef _g():\n    from pkg.a import f\n",
            "pkg/c.py": "x = 1\n" * (MAX_LINES + 1),
        },
    )
    assert cycles(tree) == [["pkg.a", "pkg.b"]]
    assert private_names(tree) == ["pkg.a:1 imports _g from pkg.b", "pkg.a:5 uses c._h"]
    assert root_imports(tree, "pkg") == ["pkg.b:1 imports f from the package root"]
    assert long_modules(tree) == [f"pkg.c: {MAX_LINES + 1} lines"]
