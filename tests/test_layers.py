"""The package's layout is its architecture: imports go one way, and no module imports
itself back through others (function-level imports included; typing-only imports
under `if TYPE_CHECKING:` are not imports at run time and are left out)."""
from __future__ import annotations

import ast
from pathlib import Path

import lab

ROOT = Path(lab.__file__).resolve().parent

# lowest first: a module may import from its own layer or a lower one
LAYERS = [
    ("lab.errors", "lab.resources", "lab.table", "lab.state"),
    ("lab.model",),
    ("lab.render",),
    ("lab.host",),
    ("lab.providers",),
    ("lab.deploy",),
    ("lab.drill",),
    ("lab.app",),
    ("lab.cli",),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _runtime_nodes(tree: ast.AST):
    """Every node, skipping the bodies of `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) \
                    and child.test.id == "TYPE_CHECKING":
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imports_of(name: str) -> set[str]:
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lab"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "lab":
                continue
            for a in node.names:
                full = f"{target}.{a.name}"
                found.add(full if full in MODULES else target)
    return {m for m in found if m in MODULES and m != name}


def _layer(name: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{name} belongs to no layer: add it to LAYERS")


def test_every_module_is_in_a_layer_and_imports_only_downwards():
    upward = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
              for m in MODULES if m != "lab" for t in imports_of(m)
              if t != "lab" and _layer(t) > _layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = {m: imports_of(m) for m in MODULES}
    state, cycles, stack = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_function_level_imports(tmp_path):
    """A back edge hidden in a function body is what made the old CLI a knot."""
    assert "lab.app.lab" in imports_of("lab.app.deploy")
    assert "lab.model.topology" in imports_of("lab.model.scenario")   # inside build()
