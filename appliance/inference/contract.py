"""Model contracts: what the appliance must know to run a model and encode its results.

Each version of a model in the Triton repository (`model_repository/<name>/<version>/`)
carries `contract.yaml` beside its model file: the modality it reads and where it came from;
tensor names, dtypes and shapes; the spacing and patch it was trained at; how intensities are
prepared; and each label with the coded concepts a DICOM Segmentation needs (PS3.3 C.8.20.2,
segment property category and type, CID 7150/7151).
"""

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from appliance.domain.applicability import Domain
from appliance.domain.concepts import CodedConcept
from appliance.domain.findings import Sensitivity
from appliance.domain.pipelines import ModelRef
from appliance.domain.plausibility import Plausible

CONTRACT_FILE = "contract.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(StrEnum):
    """Where a model came from."""

    REFERENCE = "reference"  # trained here on phantoms (`appliance train`)
    NNUNET = "nnunet"  # imported from an nnU-Net v2 result folder
    TORCHSCRIPT = "torchscript"
    ONNX = "onnx"


Channel = Annotated[int, Field(ge=0, le=255)]


class Label(_Strict):
    """One structure. An nnU-Net model's labels are listed in the order of its output
    channels (the first is channel 1); `value` is what the label map holds, which may differ
    from the channel when several models' labels are merged into one set (TotalSegmentator's
    parts)."""

    value: int = Field(ge=1, le=255)
    name: str
    category: CodedConcept
    type: CodedConcept
    type_modifier: CodedConcept | None = None  # laterality, for example
    colour: tuple[Channel, Channel, Channel] | None = Field(
        default=None, description="Recommended display colour, RGB."
    )
    plausible: Plausible | None = Field(
        default=None, description="Published bounds; a finding outside them is for review."
    )


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


class Resampling(_Strict):
    """nnU-Net's resampler (`resample_data_or_seg_to_shape`): spline `order` in-plane, and
    along the low-resolution axis `order_z` when the spacing is more anisotropic than
    `anisotropy_threshold` (`force_separate_z` None decides by spacing; True or False
    forces it)."""

    order: int = Field(ge=0, le=5)
    order_z: int = Field(ge=0, le=5)
    force_separate_z: bool | None = None


class Normalisation(_Strict):
    """nnU-Net's intensity scheme of the single input channel: `ct` clips to the training
    foreground's 0.5 and 99.5 percentiles, then z-scores with its mean and standard deviation;
    `zscore` z-scores with the image's own (inside the non-zero mask with `use_mask`);
    `rescale_to_01` maps the image's range to [0, 1]; `none` leaves it."""

    scheme: Literal["ct", "zscore", "rescale_to_01", "none"]
    use_mask: bool = False
    clip: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None

    @model_validator(mode="after")
    def _parameters(self) -> "Normalisation":
        if self.scheme == "ct" and (self.clip is None or self.mean is None or self.std is None):
            raise ValueError("ct normalisation needs clip, mean and std")
        if self.clip is not None and self.clip[0] > self.clip[1]:
            raise ValueError("clip must be [low, high] with low <= high")
        return self


class Region(_Strict):
    """One output channel of a region-based model: the labels it covers, and the label it
    paints where its sigmoid exceeds one half (`regions_class_order`)."""

    labels: list[int] = Field(min_length=1)
    paints: int = Field(ge=1, le=255)


class Preresample(_Strict):
    """A wrapper's own resampling around nnU-Net's predictor (TotalSegmentator's
    `nnUNet_predict_image`): the volume turned to the closest RAS axes, resampled to an
    isotropic `spacing_mm` by scipy's zoom of `order` (edges 'nearest'), cast to `dtype`
    (truncating) unless it had that spacing already; the labels brought back by order 0."""

    spacing_mm: float = Field(gt=0)
    order: int = Field(default=1, ge=0, le=5)
    dtype: Literal["int32", "float32"] = "int32"
    # Above this many resampled voxels (and 200 planes up the body), the volume is predicted
    # in three slabs overlapping by `split_margin` planes, as the multi-part tasks do it.
    split_above: int | None = Field(default=None, gt=0)
    split_margin: int = Field(default=20, ge=1)


class NnunetRecipe(_Strict):
    """Everything nnU-Net v2's predictor does to a volume at inference (nnUNetPredictor,
    3d configurations), as a trained model's plans, dataset and checkpoint say: the axis
    transpose, cropping to the non-zero box, normalisation before resampling to the target
    spacing, a sliding window of the patch at `step` with Gaussian weights, test-time
    mirroring, the folds averaged in logit space (inside the exported graph), the logits
    resampled back before the argmax or the regions' thresholds, and a largest-component
    postprocessing of the labels that ask for it."""

    transpose_forward: list[int] = Field(min_length=3, max_length=3)
    transpose_backward: list[int] = Field(min_length=3, max_length=3)
    spacing_mm: list[float] = Field(min_length=3, max_length=3)  # in the transposed order
    anisotropy_threshold: float = Field(default=3.0, gt=1)
    resample_data: Resampling
    resample_logits: Resampling
    normalisation: Normalisation
    step: float = Field(default=0.5, gt=0, le=1)
    gaussian: bool = True
    mirror_axes: list[int] = Field(default_factory=list)  # axes of the patch, 0-based
    folds: list[int] = Field(min_length=1)
    regions: list[Region] | None = None  # one per output channel (region-based models)
    # Postprocessing steps, in order: of each group of labels only the largest part stays.
    largest_component: list[list[int]] = Field(default_factory=list)
    preresample: Preresample | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "NnunetRecipe":
        for name in ("transpose_forward", "transpose_backward"):
            if sorted(getattr(self, name)) != [0, 1, 2]:
                raise ValueError(f"{name} must be a permutation of 0, 1, 2")
        back = [self.transpose_forward.index(axis) for axis in range(3)]
        if back != self.transpose_backward:
            raise ValueError("transpose_backward must undo transpose_forward")
        if any(axis not in (0, 1, 2) for axis in self.mirror_axes):
            raise ValueError("mirror_axes are axes 0, 1 and 2 of the patch")
        return self


class Locator(_Strict):
    """A smaller model run first, on the whole volume resized to its `patch`, whose mask
    gives the box the main model reads: the planes where more than `min_fraction` of the
    mask lies, the box grown by `margin` of its size on each side (deepbet's bounding-box
    model)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    version: int = Field(ge=1)
    patch: list[int] = Field(min_length=3, max_length=3)
    channel: int = Field(default=1, ge=0)
    threshold: float = Field(default=0.5, gt=0, lt=1)
    margin: float = Field(default=0.1, ge=0, le=1)
    min_fraction: float = Field(default=0.02, ge=0, lt=1)

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.version)


class FixedGridRecipe(_Strict):
    """A model that reads the whole volume at once (deepbet's recipe, and any like it): the
    volume turned to the closest RAS axes (nibabel's `as_closest_canonical`), optionally
    cropped to a locator's box, resized to the patch by PyTorch's nearest-exact rule;
    intensities clipped to `percentiles` of the whole volume resized to `percentile_grid`,
    mapped to [0, 1], z-scored (unbiased deviation) and mapped to `scale` * z + `shift`;
    the `channel` probability above `threshold`, resized back; then the largest
    26-connected part, its holes filled."""

    percentiles: tuple[float, float] = (0.5, 99.5)
    percentile_grid: list[int] = Field(min_length=3, max_length=3)
    scale: float = 1.0
    shift: float = 0.0
    channel: int = Field(default=1, ge=0)
    threshold: float = Field(default=0.5, gt=0, lt=1)
    locator: Locator | None = None
    largest_component: bool = True
    fill_holes: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> "FixedGridRecipe":
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise ValueError("percentiles must be [low, high] with 0 <= low < high <= 100")
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
    intensity: Intensity | None = None
    nnunet: NnunetRecipe | None = Field(
        default=None, description="An imported nnU-Net model's inference recipe."
    )
    fixed_grid: FixedGridRecipe | None = Field(
        default=None, description="A whole-volume model's recipe (deepbet's, for example)."
    )
    labels: list[Label] = Field(min_length=1)
    domain: Domain | None = Field(
        default=None,
        description="What the model was made for: series outside it never reach it; a "
        "series that does not state a fact it names gets findings for review.",
    )
    sensitivity: Sensitivity | None = Field(
        default=None,
        description="A search for separate findings: how many it reported of those present "
        "in studies it never saw. The report says it beside the search's answer.",
    )
    card: str = "card.md"

    @model_validator(mode="after")
    def _consistent(self) -> "ModelContract":
        values = [label.value for label in self.labels]
        if len(set(values)) != len(values):
            raise ValueError("label values must be unique")
        names = {label.name for label in self.labels}
        for label in self.labels:
            pair = label.plausible.pair if label.plausible else None
            if pair is not None and (pair not in names or pair == label.name):
                raise ValueError(f"{label.name}'s pair {pair} is not another of the model's labels")
        recipes = [self.intensity, self.nnunet, self.fixed_grid]
        if sum(recipe is not None for recipe in recipes) != 1:
            raise ValueError("a model has one of an intensity, an nnunet or a fixed_grid recipe")
        if self.fixed_grid is not None and self.output.shape[1] <= self.fixed_grid.channel:
            raise ValueError("the fixed_grid channel is not one of the output's")
        if self.fixed_grid is not None and len(self.labels) != 1:
            raise ValueError("a fixed_grid model segments one structure: one label")
        regions = self.nnunet.regions if self.nnunet else None
        if regions and {region.paints for region in regions} != set(values):
            raise ValueError("a region-based model's labels are the values its regions paint")
        channels = len(regions) if regions else len(self.labels) + 1
        # a whole-volume model may give its one structure's probability alone
        single = self.fixed_grid is not None and self.output.shape[1] == 1
        if self.output.shape[1] != channels and not single:
            raise ValueError(
                "output channels must be one per region" if regions
                else "output channels must be one per label plus background"
            )  # fmt: skip
        if self.input.shape[2:] != self.patch or self.output.shape[2:] != self.patch:
            raise ValueError("input and output spatial shapes must equal the patch")
        return self

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.version)

    @property
    def grid_spacing_mm(self) -> list[float] | None:
        """The spacing the model works at, in the volume's axis order (slice, row, column)."""
        if self.nnunet is None:
            return self.spacing_mm
        return [self.nnunet.spacing_mm[axis] for axis in self.nnunet.transpose_backward]


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
