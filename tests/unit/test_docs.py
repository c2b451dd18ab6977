"""The README's configuration reference, the example config and the architecture page keep up
with the code."""

import re
from pathlib import Path

import yaml
from pydantic import BaseModel

from appliance.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += field_paths(annotation, f"{prefix}{name}.")
        else:
            paths.append(f"{prefix}{name}")
    return paths


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [path for path in field_paths(Settings) if f"`{path}`" not in readme]
    assert missing == []


def test_every_setting_has_a_description() -> None:
    def undocumented(model: type[BaseModel], prefix: str = "") -> list[str]:
        found = []
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                found += undocumented(annotation, f"{prefix}{name}.")
            elif not field.description:
                found.append(prefix + name)
        return found

    assert undocumented(Settings) == []


def test_example_config_is_valid_and_complete() -> None:
    tree = yaml.safe_load((ROOT / "deploy" / "appliance.example.yaml").read_text())
    Settings.model_validate(tree)

    def leaves(node: dict[str, object], prefix: str = "") -> set[str]:
        out: set[str] = set()
        for key, value in node.items():
            if isinstance(value, dict):
                out |= leaves(value, f"{prefix}{key}.")
            else:
                out.add(prefix + key)
        return out

    assert leaves(tree) == set(field_paths(Settings))


def test_the_architecture_page_names_every_module_and_only_modules_that_are() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:[a-z_]+/)+(?:[a-z_]+\.py)?)", page))
    package = ROOT / "appliance"
    missing = sorted(
        name for name in named if not (package / name).exists() and not (ROOT / name).exists()
    )
    modules = {
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "__init__.py"
        and "migrations" not in path.parts
        and len(path.relative_to(package).parts) > 1
    }
    folders = tuple(name for name in named if name.endswith("/"))
    unnamed = sorted(m for m in modules - named if not m.startswith(folders))
    assert (missing, unnamed) == ([], [])
