"""What every importer shares: the refusal it raises, the version it takes, the checksum its
card records, and the default pipeline it declares for the model it adds."""

import hashlib
from pathlib import Path

from appliance.inference.contract import ModelContract
from appliance.inference.repository import version_folders


class ImportRefused(ValueError):
    """The model cannot be imported; the message says why. Nothing was written."""


def free_version(repository: Path, name: str, version: int | None) -> int:
    """`version`, or the one after the model's last; refused when it is taken."""
    existing = [int(folder.name) for folder in version_folders(repository / name)]
    number = version or (max(existing) + 1 if existing else 1)
    if number in existing:
        raise ImportRefused(f"model {name} already has version {number}")
    return number


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def declare_pipeline(repository: Path, contract: ModelContract, origin: str) -> Path:
    """`<name>.pipeline.yaml` for the model alone, unless one is there: every label a segment
    with its volume. Edit it to choose labels, measurements or a cascade (docs/models.md)."""
    path = repository / f"{contract.name}.pipeline.yaml"
    if not path.exists():
        path.write_text(
            f"# Written by `appliance models import` for {contract.ref}.\n"
            f"name: {contract.name}\n"
            f"description: {contract.name} (imported from {origin}), every label with its "
            "volume\n"
            "stages:\n"
            "  - name: segment\n"
            "    kind: volume\n"
            f"    model: {{name: {contract.name}, version: {contract.version}}}\n"
            "    findings: per_label\n"
            "    measurements: [volume]\n",
            encoding="utf-8",
        )
    return path
