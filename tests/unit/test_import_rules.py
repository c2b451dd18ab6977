"""Architecture rules (docs/architecture.md): dependencies point inward, nothing cycles.

Every module of the package belongs to a unit: its first-level package or module. `domain` is
pure (the standard library and itself); `config` knows `domain` only; the edges (`dicom`,
`inference`, `results`, `store`, `queue`, `web`) know `domain`, `config` and themselves, never
each other; `phantoms` and `training` are reference tools that no edge imports; only `app`
and `cli` wire the edges together, and nothing but `cli` imports `app`. No two modules import
each other, directly or through others, whether at the top of a file or inside a function.
"""

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "appliance"
STDLIB = set(sys.stdlib_module_names)
EDGES = frozenset({"dicom", "inference", "results", "store", "queue", "web"})
CORE = frozenset({"domain", "config"})
# unit -> the units of the package it may import besides itself and the package's own
# __init__ (which holds the version alone)
ALLOWED: dict[str, frozenset[str]] = {
    "domain": frozenset(),
    "config": frozenset({"domain"}),
    **{edge: CORE for edge in EDGES},
    "phantoms": frozenset({"domain"}),
    "training": frozenset({"domain", "inference", "phantoms"}),
    "app": CORE | EDGES | {"phantoms"},
    "cli": CORE | EDGES | {"app", "training"},
    "__main__": frozenset({"cli"}),
    "__init__": frozenset(),
}


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. appliance.app.ingest (a package is named by its __init__'s)
    unit: str
    path: Path


def modules(package: Path) -> dict[str, Module]:
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        unit = parts[1] if len(parts) > 1 else "__init__"
        found[".".join(parts)] = Module(".".join(parts), unit, path)
    return found


def import_statements(module: Module) -> Iterator[list[str]]:
    """Each import in `module`, anywhere in the file, as the module names it may mean:
    `import X` means X; `from X import a, b` means X.a and X.b where they are modules, else
    X itself."""
    tree = ast.parse(module.path.read_text(encoding="utf-8"))
    package = module.name if module.path.name == "__init__.py" else module.name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ([alias.name] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            yield [base, *(f"{base}.{alias.name}" for alias in node.names)]


def imported_names(module: Module) -> Iterator[str]:
    for names in import_statements(module):
        yield names[0]


def dependency_graph(package: Path) -> tuple[dict[str, Module], dict[str, set[str]]]:
    """The package's modules, and for each the modules of the package it imports."""
    found = modules(package)
    graph: dict[str, set[str]] = {}
    for name, module in found.items():
        targets: set[str] = set()
        for base, *members in import_statements(module):
            submodules = {member for member in members if member in found}
            targets |= submodules or ({base} & found.keys())
        graph[name] = targets - {name}
    return found, graph


def layering_violations(found: dict[str, Module], graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for name, targets in sorted(graph.items()):
        unit = found[name].unit
        for target in sorted(targets):
            other = found[target].unit
            if other not in (unit, "__init__") and other not in ALLOWED[unit]:
                problems.append(f"{name} ({unit}) imports {target} ({other})")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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
            visit(node)
    return found


FOUND, GRAPH = dependency_graph(PACKAGE)


def test_every_unit_has_a_rule() -> None:
    assert {module.unit for module in FOUND.values()} <= set(ALLOWED)


@pytest.mark.parametrize(
    "module", [m for m in FOUND.values() if m.unit == "domain"], ids=lambda m: m.name
)
def test_domain_imports_only_the_standard_library_and_itself(module: Module) -> None:
    for name in imported_names(module):
        top = name.split(".")[0]
        assert top in STDLIB or name.startswith("appliance.domain"), f"{module.name}: {name}"


def test_dependencies_point_inward() -> None:
    assert layering_violations(FOUND, GRAPH) == []


def test_no_import_cycles() -> None:
    assert cycles(GRAPH) == []


def test_the_rules_catch_a_wrong_import_and_a_cycle(tmp_path: Path) -> None:
    package = tmp_path / "appliance"
    files = {
        "__init__.py": "",
        "app/__init__.py": "",
        "app/wiring.py": "from appliance.store import ledger\n",
        "store/__init__.py": "",
        "store/ledger.py": "def f():\n    from appliance.web import page  # lazy\n",
        "web/__init__.py": "",
        "web/page.py": "from . import view\n",
        "app/other.py": "",
        "web/view.py": "import appliance.web.page\nfrom appliance.app.other import x\n",
        "config.py": "from appliance.results.findings import SegmentationType\n",
        "results/__init__.py": "",
        "results/findings.py": "",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    found, graph = dependency_graph(package)
    assert layering_violations(found, graph) == [
        "appliance.config (config) imports appliance.results.findings (results)",
        "appliance.store.ledger (store) imports appliance.web.page (web)",
        "appliance.web.view (web) imports appliance.app.other (app)",
    ]
    assert cycles(graph) == [["appliance.web.page", "appliance.web.view"]]


def test_nothing_reads_settings_at_import_time() -> None:
    for module in FOUND.values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign | ast.Expr) and isinstance(node.value, ast.Call):
                called = ast.unparse(node.value.func)
                for forbidden in ("load_settings", "create_db_engine", "open_database"):
                    assert forbidden not in called, f"{module.name} calls {called} at import"


# PyTorch's own modules outside training: the importers' half that loads checkpoints and
# exports ONNX (the importers extra).
TORCH_MODULES = ("appliance.inference.onnx_export", "appliance.inference.nnunet_export")


def test_serving_code_never_imports_torch_or_training() -> None:
    """Only `training/`, the importers' PyTorch modules, and the `train` and `models import`
    commands inside the CLI may import torch, nnunetv2 or those modules."""
    for module in FOUND.values():
        if module.unit in ("training", "cli") or module.name in TORCH_MODULES:
            continue
        for name in imported_names(module):
            assert not name.startswith(
                ("torch", "nnunetv2", "appliance.training", *TORCH_MODULES)
            ), f"{module.name} imports {name}: torch belongs to the train and importers extras"


def test_tests_and_benchmarks_share_helpers_through_tests_support_only() -> None:
    """No test module imports another test module or conftest, and no path is edited: what
    tests and benchmarks share lives in tests/support."""
    root = PACKAGE.parent
    for path in sorted([*(root / "tests").rglob("*.py"), *(root / "bench").rglob("*.py")]):
        text = path.read_text(encoding="utf-8")
        assert "sys.path" not in text or path.name == "test_import_rules.py", path
        for node in ast.walk(ast.parse(text)):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] if node.level == 0 else [f".{node.module}"]
            for name in names:
                if name.startswith(("tests", ".")):
                    assert name.startswith("tests.support"), f"{path}: {name}"
