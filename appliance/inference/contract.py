"""Model contracts: what the appliance must know to run a model and encode its results.

Each version of a model in the Triton repository (`model_repository/<name>/<version>/`)
carries `contract.yaml` beside its model file: the modality it reads and where it came from;
tensor names, dtypes and shapes; the spacing and patch it was trained at; how intensities are
prepared; and each label with the coded concepts a DICOM Segmentation needs (PS3.3 C.8.20.2,
segment property category and type, CID 7150/7151).
"""

from enum import StrEnum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from appliance.domain.concepts import CodedConcept
from appliance.domain.pipelines import ModelRef

CONTRACT_FILE = "contract.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(StrEnum):
    """Where a model came from."""

    REFERENCE = "reference"  # trained here on phantoms (`appliance train`)
    NNUNET = "nnunet"  # imported from an nnU-Net v2 result folder
    TORCHSCRIPT = "torchscript"
    ONNX = "onnx"


class Label(_Strict):
    value: int = Field(ge=1, le=255)
    name: str
    category: CodedConcept
    type: CodedConcept


class TensorSpec(_Strict):
    name: str
    dtype: Literal["float32", "float16", "uint8", "int64"]
    shape: list[int] = Field(description="-1 marks a dynamic dimension (the batch).")


class Intensity(_Strict):
    """How raw pixels become model input: a CT window mapped to [0, 1], or a plain scale."""

    kind: Literal["ct_window", "scale"]
    window: tuple[float, float] | None = None
    scale: float | None = None

    @model_validator(mode="after")
    def _parameters(self) -> "Intensity":
        if self.kind == "ct_window" and (self.window is None or self.window[0] >= self.window[1]):
            raise ValueError("a ct_window needs window: [low, high] with low < high")
        if self.kind == "scale" and not self.scale:
            raise ValueError("a scale needs a non-zero scale")
        return self


class ModelContract(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    version: int = Field(ge=1)
    modality: str = Field(pattern=r"^[A-Z]{2,4}$", description="What it reads: CT, US, ...")
    source: Source = Source.REFERENCE
    synthetic: bool = Field(description="Trained on phantoms: never for clinical use.")
    input: TensorSpec
    output: TensorSpec
    spacing_mm: list[float] | None = None
    patch: list[int]
    intensity: Intensity
    labels: list[Label] = Field(min_length=1)
    card: str = "card.md"

    @model_validator(mode="after")
    def _consistent(self) -> "ModelContract":
        values = [label.value for label in self.labels]
        if len(set(values)) != len(values):
            raise ValueError("label values must be unique")
        if self.output.shape[1] != len(self.labels) + 1:
            raise ValueError("output channels must be one per label plus background")
        if self.input.shape[2:] != self.patch or self.output.shape[2:] != self.patch:
            raise ValueError("input and output spatial shapes must equal the patch")
        return self

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.version)


class ContractError(ValueError):
    pass


def load_contract(version_directory: Path) -> ModelContract:
    """The contract of one model version, `model_repository/<name>/<version>/`."""
    path = version_directory / CONTRACT_FILE
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
        return ModelContract.model_validate(tree)
    except OSError as exc:
        raise ContractError(f"{path}: {exc.strerror}") from exc
    except (yaml.YAMLError, ValidationError) as exc:
        raise ContractError(f"{path}: {exc}") from exc
