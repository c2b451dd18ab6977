"""Architecture rules: dependencies point inward (see ARCHITECTURE.md, package layout).

`domain` is pure: standard library and itself only. The edge packages depend on `domain` and
never on each other; only `cli` and `runtime` wire everything together.
"""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "appliance"
EDGES = ("dicom", "audit", "inference", "results", "queue", "web")
STDLIB = set(sys.stdlib_module_names)


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(subpackage: str) -> list[Path]:
    return sorted((PACKAGE / subpackage).rglob("*.py"))


@pytest.mark.parametrize("path", modules("domain"), ids=lambda p: p.name)
def test_domain_imports_only_stdlib_and_domain(path: Path) -> None:
    for name in imports_of(path):
        top = name.split(".")[0]
        assert top in STDLIB or name.startswith("appliance.domain"), f"{path.name} imports {name}"


@pytest.mark.parametrize(
    "path",
    [p for edge in EDGES if (PACKAGE / edge).exists() for p in modules(edge)],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_edges_do_not_import_each_other(path: Path) -> None:
    own = path.relative_to(PACKAGE).parts[0]
    for name in imports_of(path):
        parts = name.split(".")
        if parts[0] != "appliance" or len(parts) < 2:
            continue
        assert parts[1] not in ("cli", "runtime"), f"{path.name} imports the wiring {name}"
        if parts[1] in EDGES:
            assert parts[1] == own, f"{own}/{path.name} imports another edge: {name}"


def test_nothing_reads_settings_at_import_time() -> None:
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign | ast.Expr) and isinstance(node.value, ast.Call):
                called = ast.unparse(node.value.func)
                for forbidden in ("load_settings", "create_db_engine"):
                    assert forbidden not in called, f"{path.name} calls {called} at import"


def test_serving_code_never_imports_torch_or_training() -> None:
    """Only `training/` itself, and the `train` command inside the CLI, may import it."""
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] in ("training", "cli.py"):
            continue
        for name in imports_of(path):
            assert not name.startswith(("torch", "appliance.training")), (
                f"{path.name} imports {name}: torch belongs to the train extra only"
            )
