"""Write a trained model into the repository: its ONNX file, contract, Triton config and card."""

from datetime import UTC, datetime
from pathlib import Path

from torch import nn

from appliance.inference.contract import ModelContract
from appliance.inference.onnx_export import export_onnx as export
from appliance.inference.repository import write_config, write_contract

SYNTHETIC_WARNING = (
    "**Synthetic training data; not for clinical use.** This reference model was trained only "
    "on procedural phantoms to prove the serving path. Replace it with a validated model "
    "before any clinical use."
)


def export_onnx(model: nn.Module, path: Path, contract: ModelContract) -> None:
    """The model as its contract's ONNX file."""
    export(model, path, contract.input.shape[1:], contract.input.name, contract.output.name)


def publish(
    directory: Path,
    contract: ModelContract,
    intended_use: str,
    training: str,
    metrics: dict[str, float],
    targets: dict[str, float],
) -> None:
    """Write `contract` and its card into the version folder `directory/<version>/` (beside
    the exported model) and render the model's Triton config over all its versions."""
    version = directory / str(contract.version)
    version.mkdir(parents=True, exist_ok=True)
    write_contract(version, contract)
    write_config(directory)

    def row(name: str, value: float) -> str:
        if name not in targets:
            return f"| {name} | {value:.3f} | | |"
        verdict = "met" if value >= targets[name] else "NOT MET"
        return f"| {name} | {value:.3f} | >= {targets[name]:.2f} | {verdict} |"

    rows = "\n".join(row(name, value) for name, value in metrics.items())
    labels = "\n".join(
        f"| {label.value} | {label.name} | {label.type.scheme} {label.type.value} "
        f"{label.type.meaning} |"
        for label in contract.labels
    )
    (version / contract.card).write_text(
        f"# {contract.name} (version {contract.version})\n\n{SYNTHETIC_WARNING}\n\n"
        f"## Intended use\n{intended_use}\n\n## Labels\n| value | name | code |\n|---|---|---|\n"
        f"{labels}\n\n## Training\n{training}\n\n"
        f"## Measured on held-out phantoms\n| metric | value | target | |\n|---|---|---|---|\n"
        f"{rows}\n\nWritten {datetime.now(UTC):%Y-%m-%d} by `appliance train {contract.name}`.\n",
        encoding="utf-8",
    )
