"""The package's layers (docs/ARCHITECTURE.md): no import goes up a layer, no import cycle, a light import.

Imports are read from the source (every `import` statement, inside functions too; only those under
`if TYPE_CHECKING:` are left out), so a function-level import that dodges a cycle at run time is caught.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "smc_trainer"

# lowest first; a module may import its own layer and the layers before it, never one after it
LAYERS = (("version", "errors", "plugins", "registry"), ("engine",), ("methods",), ("release",), ("training",),
          ("metrics",), ("tasks",), ("runs",), ("reference_docs", "cli", "__main__"))
LAYER_OF = {name: rank for rank, names in enumerate(LAYERS) for name in names}
HEAVY = ("transformers", "datasets", "accelerate", "evaluate", "peft")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST, importer: str, is_package: bool) -> list[str]:
    """Every module name an import statement of `tree` names, TYPE_CHECKING blocks aside."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = importer if is_package else importer.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (only names that are modules of the package)."""
    modules = all_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found = _imported_names(tree, name, path.name == "__init__.py")
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return len(LAYERS)  # the package itself: the public names of every layer (loaded lazily)
    if parts[1] not in LAYER_OF:
        raise AssertionError(f"{module} belongs to no layer; add it to one (docs/ARCHITECTURE.md)")
    return LAYER_OF[parts[1]]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for importer, imported in graph.items():
        for target in imported:
            if target == "smc_trainer":
                continue
            if layer_of(target) > layer_of(importer) or layer_of(target) == len(LAYERS):
                bad.append(f"{importer} -> {target}")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_every_module_sits_in_a_layer():
    for module in all_modules():
        layer_of(module)  # raises for a module outside every layer


def test_no_import_goes_up_a_layer():
    assert upward_imports(import_graph()) == []


def test_no_import_cycles_counting_function_level_imports():
    assert cycles(import_graph()) == []


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The checker itself: a planted upward import and a planted cycle are reported."""
    graph = {"smc_trainer.engine.masks": {"smc_trainer.training.trainer"},
             "smc_trainer.training.trainer": {"smc_trainer.engine.masks"},
             "smc_trainer.runs.sweep": {"smc_trainer.reference_docs"}}
    assert upward_imports(graph) == ["smc_trainer.engine.masks -> smc_trainer.training.trainer",
                                     "smc_trainer.runs.sweep -> smc_trainer.reference_docs"]
    assert cycles(graph) == [["smc_trainer.engine.masks", "smc_trainer.training.trainer"]]
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import smc_trainer.runs\n" \
             "def f():\n    from smc_trainer.runs import sweep\n"
    names = _imported_names(ast.parse(source), "smc_trainer.engine.x", False)
    assert "smc_trainer.runs.sweep" in names and names.count("smc_trainer.runs") == 1  # not TYPE_CHECKING's


def _heavy_modules_after(statement: str) -> list[str]:
    code = (f"import sys\n{statement}\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return eval(out.stdout.strip())  # a printed list of module names


ENGINE_MODULES = sorted(m for m in all_modules() if m.startswith("smc_trainer.engine."))


@pytest.mark.parametrize("statement", [
    "import smc_trainer",
    "import smc_trainer; smc_trainer.__version__; smc_trainer.MaskSet; smc_trainer.find_targets",
    "import " + ", ".join(ENGINE_MODULES),
    "import smc_trainer.methods as m; [m.get_method_class(n) for n in m.method_names()]",
])
def test_light_import(statement):
    assert _heavy_modules_after(statement) == []


def test_public_names_resolve_lazily():
    import smc_trainer

    for name in smc_trainer.__all__:
        assert getattr(smc_trainer, name) is not None
    assert smc_trainer.SparseTrainer.__module__ == "smc_trainer.training.trainer"
    with pytest.raises(AttributeError, match="no_such_name"):
        smc_trainer.no_such_name  # noqa: B018


def test_the_package_root_holds_only_its_own_modules():
    """The flat re-export modules of the unreleased 0.1.0 (`smc_trainer.trainer`, `.masks`, ...) are gone: the
    root holds the layer-0 modules, the command line, the generated-docs module and the layer packages only."""
    root = {p.stem for p in PACKAGE_DIR.glob("*.py")} - {"__init__"}
    assert root == {"version", "errors", "plugins", "registry", "reference_docs", "cli", "__main__"}
