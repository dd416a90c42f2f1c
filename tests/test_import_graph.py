"""The package's import graph, built from the source with `ast`: no cycles between files, and the three layers
import one way (core <- integration <- tools).

Every import statement counts, including imports inside functions; only `if TYPE_CHECKING:` blocks (never run)
are left out. Importing `a.b.c` also runs `a/__init__` and `a/b/__init__`, so those count as edges too, except
for a module's own enclosing packages (they are always initialised before it, and may import it back).
"""

from __future__ import annotations

import ast
from pathlib import Path

import ee_diffusion

ROOT = Path(ee_diffusion.__file__).parent
PACKAGE = "ee_diffusion"
#: The layers by module-name prefix; every other module of the package is core.
INTEGRATION = ("ee_diffusion.pipelines", "ee_diffusion.training", "ee_diffusion.default_model",
               "ee_diffusion.results", "ee_diffusion.pipeline_hooks")
TOOLS = ("ee_diffusion.calibration", "ee_diffusion.eval", "ee_diffusion.cli", "ee_diffusion.demo")
#: The package root only re-exports public names lazily (by string, through importlib).
FACADE = "ee_diffusion"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def layer(module: str) -> str:
    if any(module == p or module.startswith(p + ".") for p in TOOLS):
        return "tools"
    if any(module == p or module.startswith(p + ".") for p in INTEGRATION):
        return "integration"
    return "core"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, type_checking: bool = False):
    """Every Import/ImportFrom node, those in `if TYPE_CHECKING:` blocks only with `type_checking`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node) and not type_checking:
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The package modules an import statement loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
        return [n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")]
    if node.level:
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
        return []
    targets = [base]
    # `from package import submodule` loads the submodule too.
    targets += [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
    return targets


def import_graph(type_checking: bool = False) -> dict[str, set[str]]:
    """module -> the package modules it imports (with `type_checking`, also those under `if TYPE_CHECKING:`)."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges: set[str] = set()
        own_packages = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        for node in _imports(ast.parse(path.read_text(encoding="utf-8")), type_checking):
            for target in _resolve(module, path, node):
                parts = target.split(".")
                # the target and every package that importing it initialises
                for i in range(1, len(parts) + 1):
                    name = ".".join(parts[:i])
                    if name in MODULES and name != module and name not in own_packages:
                        edges.add(name)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_imports_inside_functions_and_skips_type_checking():
    graph = import_graph()
    assert "ee_diffusion.hooks" in graph["ee_diffusion.pipelines.base"]
    assert "ee_diffusion.demo" in graph["ee_diffusion.cli"]  # imported inside a function only
    assert "ee_diffusion.pipelines" not in graph[FACADE]  # under TYPE_CHECKING only
    # a crafted cycle is found
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_files():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_even_through_type_checking_imports():
    """Annotations-only imports count too: a cycle there is a design knot even if it never runs."""
    graph = import_graph(type_checking=True)
    assert "ee_diffusion.pipelines" in graph[FACADE]  # the facade's TYPE_CHECKING imports are seen here
    cycle = find_cycle({module: targets - {FACADE} for module, targets in graph.items()})
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layers_import_one_way():
    allowed = {"core": {"core"}, "integration": {"core", "integration"}, "tools": {"core", "integration", "tools"}}
    wrong = [
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module, targets in import_graph().items()
        if module != FACADE
        for target in targets
        if target != FACADE and layer(target) not in allowed[layer(module)]
    ]
    assert not wrong, "\n".join(wrong)


def test_no_package_file_is_over_450_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert not long, long


def test_nothing_in_the_package_imports_the_repositorys_bench():
    """`bench/` (the benchmarks on our own models) is not installed: the package may not import it, not even under
    `TYPE_CHECKING` (every import statement counts here)."""

    def imports_bench(node: ast.Import | ast.ImportFrom) -> bool:
        if isinstance(node, ast.Import):
            return any(alias.name == "bench" or alias.name.startswith("bench.") for alias in node.names)
        return node.level == 0 and (node.module == "bench" or (node.module or "").startswith("bench."))

    crafted = ast.parse("import bench.models\nfrom bench import presets\nfrom .bench_config import X\nimport benchmark")
    assert [imports_bench(node) for node in crafted.body] == [True, True, False, False]
    found = [f"{module}:{node.lineno}" for module, path in MODULES.items()
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, (ast.Import, ast.ImportFrom)) and imports_bench(node)]
    assert not found, found
