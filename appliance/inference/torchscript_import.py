"""Importing a TorchScript model: the operator supplies the recipe as a contract template
(`contract.yaml` without its version), the importer exports the archive to ONNX with the
template's tensors and adds the version to the repository; a published model whose recipe the
appliance knows (deepbet) comes with its templates in `recipes/`.

PyTorch is needed for the export only (`onnx_export.export_torchscript`, the importers venv);
this module reads and writes files and never imports it.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import ValidationError

from appliance.inference.backend import MODEL_FILE
from appliance.inference.contract import ModelContract, Source
from appliance.inference.importing import ImportRefused, declare_pipeline, free_version, sha256
from appliance.inference.repository import add_version

RECIPES = Path(__file__).parent / "recipes"


class Export(Protocol):
    """Exports `source` to ONNX at `path` (`onnx_export.export_torchscript`); `input_shape`
    is without the batch; `foreground`, the one channel of a two-channel softmax to keep."""

    def __call__(
        self,
        source: Path,
        path: Path,
        input_shape: Sequence[int],
        input_name: str,
        output_name: str,
        *,
        foreground: int | None = None,
    ) -> None: ...


def read_template(path: Path) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ImportRefused(f"cannot read the contract template {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ImportRefused(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ImportRefused(f"{path} is not a contract template (a mapping)")
    return tree


def build_contract(
    template: dict[str, Any], name: str, version: int, locator: ModelContract | None
) -> ModelContract:
    """The template as a contract of `name` `version`, its locator pinned to `locator` (and
    to channel 0 where the locator's output is the one channel its own recipe reads)."""
    tree = {**template, "name": name, "version": version, "source": Source.TORCHSCRIPT.value}
    grid = tree.get("fixed_grid")
    if locator is not None and isinstance(grid, dict) and isinstance(grid.get("locator"), dict):
        pinned = {"name": locator.name, "version": locator.version}
        if locator.output.shape[1] == 1:
            pinned["channel"] = 0
        tree["fixed_grid"] = {**grid, "locator": {**grid["locator"], **pinned}}
    try:
        return ModelContract.model_validate(tree)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise ImportRefused(f"the contract template is not a valid contract: {errors}") from exc


def card(source: Path, contract: ModelContract, notes: str) -> str:
    warning = "**Synthetic training data; not for clinical use.**\n\n" if contract.synthetic else ""
    labels = "\n".join(
        f"| {label.value} | {label.name} | {label.type.scheme} {label.type.value} "
        f"{label.type.meaning} |"
        for label in contract.labels
    )
    return (
        f"# {contract.name} (version {contract.version})\n\n{warning}"
        f"Imported from the TorchScript file `{source.name}` (SHA-256 `{sha256(source)}`) on "
        f"{datetime.now(UTC):%Y-%m-%d} by `appliance models import torchscript`; it reads "
        f"{contract.modality}.\n\n"
        f"## Labels\n| value | name | code |\n|---|---|---|\n{labels}\n\n{notes}"
    )


def read_channel_only(contract: ModelContract) -> tuple[int | None, ModelContract]:
    """A whole-volume model reads one channel of its two-channel output: the repository keeps
    that channel alone (the export folds the softmax into it, `onnx_graph`), and its contract
    says so. Returns the channel to keep (None: the output as it is) and the contract."""
    recipe = contract.fixed_grid
    if recipe is None or contract.output.shape[1] != 2:
        return None, contract
    output = contract.output.model_copy(update={"shape": [-1, 1, *contract.output.shape[2:]]})
    one = contract.model_copy(
        update={"output": output, "fixed_grid": recipe.model_copy(update={"channel": 0})}
    )
    return recipe.channel, ModelContract.model_validate(one.model_dump())


def import_torchscript(
    source: Path,
    repository: Path,
    template_file: Path,
    export: Export,
    *,
    name: str | None = None,
    version: int | None = None,
    notes: str = "",
    locator: ModelContract | None = None,
    pipeline: bool = True,
) -> ModelContract:
    """Import the archive `source` into `repository` by the contract template; `pipeline`
    declares `<name>.pipeline.yaml` for it unless one is there."""
    if not source.is_file():
        raise ImportRefused(f"{source} is not a file")
    template = read_template(template_file)
    chosen = name or str(template.get("name", ""))
    number = free_version(repository, chosen, version)
    contract = build_contract(template, chosen, number, locator)  # a bad template stops here

    foreground, stored = read_channel_only(contract)

    def stage(directory: Path) -> ModelContract:
        try:
            export(
                source, directory / MODEL_FILE, contract.input.shape[1:], contract.input.name,
                contract.output.name, foreground=foreground,
            )  # fmt: skip
        except Exception as exc:  # torch meets a file it cannot load in any way
            raise ImportRefused(f"{source.name} cannot be exported: {exc}") from exc
        (directory / stored.card).write_text(card(source, stored, notes), encoding="utf-8")
        return stored

    added = add_version(repository, chosen, number, stage)
    if pipeline:
        declare_pipeline(repository, added, "TorchScript")
    return added


@dataclass(frozen=True)
class Deepbet:
    """deepbet's two TorchScript archives, found in its installed package."""

    locator: Path
    brain: Path


def find_deepbet() -> Deepbet:
    spec = find_spec("deepbet")
    if spec is None or spec.origin is None:
        raise ImportRefused("deepbet is not installed here (pip install deepbet)")
    models = Path(spec.origin).parents[1] / "data" / "models"
    found = Deepbet(models / "bbox_model.pt", models / "model.pt")
    if not (found.locator.is_file() and found.brain.is_file()):
        raise ImportRefused(f"deepbet's weights are not in {models}")
    return found


def import_deepbet(
    repository: Path, export: Export, files: Deepbet | None = None
) -> tuple[ModelContract, ModelContract]:
    """deepbet's locator and brain model, each at its next version, the brain model's
    contract pinned to the locator it was imported with; one pipeline, `deepbet`."""
    found = files or find_deepbet()
    notes = (RECIPES / "deepbet.md").read_text(encoding="utf-8")
    locator = import_torchscript(
        found.locator, repository, RECIPES / "deepbet_locator.yaml", export, notes=notes,
        pipeline=False,
    )  # fmt: skip
    brain = import_torchscript(
        found.brain, repository, RECIPES / "deepbet.yaml", export, notes=notes,
        locator=locator,
    )  # fmt: skip
    return locator, brain
