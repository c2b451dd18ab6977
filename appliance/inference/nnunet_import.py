"""Importing an nnU-Net v2 trained-model folder (`TRAINER__PLANS__CONFIGURATION/` with
`dataset.json`, `plans.json` and `fold_k/checkpoint_final.pth`) as a model version.

Everything the folder says is read and checked here, before anything is written: the
configuration (with what it inherits), the reader, preprocessor, normaliser and resamplers,
the labels and the operator's codes for them. Only then are the checkpoints loaded and the
network exported (`nnunet_export`, which needs PyTorch and nnunetv2), and the version is
moved into the repository in one step. A refusal names its reason and leaves the repository
as it was.

A checkpoint is a Python pickle: loading it runs whatever code it names. Import only folders
whose origin you trust; the operator names the folder, and nothing else is ever loaded.
"""

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from appliance.domain.applicability import Domain
from appliance.domain.concepts import CodedConcept
from appliance.inference.backend import MODEL_FILE
from appliance.inference.contract import (
    Label,
    ModelContract,
    NnunetRecipe,
    Normalisation,
    Preresample,
    Region,
    Resampling,
    Source,
    TensorSpec,
)
from appliance.inference.importing import ImportRefused, declare_pipeline, free_version, sha256
from appliance.inference.repository import add_version

CHECKPOINT = "checkpoint_final.pth"
SUPPORTED_READERS = ("SimpleITKIO",)  # the array axis order the appliance's volumes have
_NORMALISERS: dict[str, Literal["ct", "zscore", "rescale_to_01", "none"]] = {
    "CTNormalization": "ct",
    "ZScoreNormalization": "zscore",
    "RescaleTo01Normalization": "rescale_to_01",
    "NoNormalization": "none",
}
_RESAMPLERS = ("resample_data_or_seg_to_shape",)
_ANISOTROPY_THRESHOLD = 3.0  # nnunetv2.configuration.ANISO_THRESHOLD


@dataclass(frozen=True)
class ModelCodes:
    category: CodedConcept
    type: CodedConcept
    modifier: CodedConcept | None
    colour: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class NnunetFolder:
    """A trained-model folder as read and checked, before any checkpoint is loaded."""

    path: Path
    trainer: str
    plans_name: str
    configuration: str
    dataset: dict[str, Any]
    plans: dict[str, Any]
    settings: dict[str, Any]  # the configuration, with what it inherits
    folds: tuple[int, ...]

    def checkpoint(self, fold: int) -> Path:
        return self.path / f"fold_{fold}" / CHECKPOINT


@dataclass(frozen=True)
class ExportedNetwork:
    """What loading the checkpoints told: the trainer, and the axes it allows mirroring on."""

    trainer: str
    configuration: str
    mirror_axes: tuple[int, ...]


def _json(path: Path) -> dict[str, Any]:
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ImportRefused(
            f"not an nnU-Net v2 result folder: {path.name}: {exc.strerror}"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ImportRefused(f"{path.name} is not JSON: {exc}") from exc
    if not isinstance(tree, dict):
        raise ImportRefused(f"{path.name} is not a JSON object")
    return tree


def configuration_of(plans: dict[str, Any], name: str) -> dict[str, Any]:
    """A configuration of the plans with what it `inherits_from`, as nnU-Net's PlansManager
    resolves it."""
    configurations = plans.get("configurations", {})
    chain: list[str] = []
    while name not in chain:
        if name not in configurations:
            raise ImportRefused(f"configuration {name!r} is not in plans.json")
        chain.append(name)
        parent = configurations[name].get("inherits_from")
        if parent is None:
            break
        name = parent
    else:
        raise ImportRefused(f"configurations inherit in a circle: {' -> '.join(chain)}")
    settings: dict[str, Any] = {}
    for link in reversed(chain):
        settings.update(configurations[link])
    settings.pop("inherits_from", None)
    return settings


def read_folder(path: Path, folds: Sequence[int] | None = None) -> NnunetFolder:
    """The folder, checked: an nnU-Net v2 result of a 3d configuration the appliance can run,
    with every requested fold's final checkpoint (all folds present when none are named)."""
    if not path.is_dir():
        raise ImportRefused(f"{path} is not a folder")
    parts = path.name.split("__")
    if len(parts) != 3 or not all(parts):
        raise ImportRefused(
            f"not an nnU-Net v2 result folder: {path.name!r} is not TRAINER__PLANS__CONFIGURATION"
        )
    trainer, plans_name, configuration = parts
    dataset = _json(path / "dataset.json")
    plans = _json(path / "plans.json")
    settings = configuration_of(plans, configuration)
    found = sorted(
        int(fold.name.removeprefix("fold_"))
        for fold in path.glob("fold_*")
        if fold.name.removeprefix("fold_").isdigit() and (fold / CHECKPOINT).is_file()
    )
    chosen = tuple(folds) if folds else tuple(found)
    if not chosen:
        raise ImportRefused(f"no fold_k/{CHECKPOINT} in {path.name}")
    missing = [fold for fold in chosen if fold not in found]
    if missing:
        raise ImportRefused(
            f"fold {', '.join(map(str, missing))} has no {CHECKPOINT} (found: "
            f"{', '.join(map(str, found)) or 'none'})"
        )
    folder = NnunetFolder(
        path, trainer, plans_name, configuration, dataset, plans, settings, chosen
    )
    _check_runnable(folder)
    return folder


def _check_runnable(folder: NnunetFolder) -> None:
    settings, plans = folder.settings, folder.plans
    patch = settings.get("patch_size")
    if not isinstance(patch, list) or len(patch) != 3:
        raise ImportRefused(
            f"configuration {folder.configuration!r} is not 3d (patch {patch}); the appliance "
            "runs 3d configurations"
        )
    if settings.get("previous_stage"):
        raise ImportRefused(
            f"configuration {folder.configuration!r} is a cascade stage; import its stages' "
            "full-resolution model instead"
        )
    channels = folder.dataset.get("channel_names") or folder.dataset.get("modality") or {}
    if len(channels) != 1:
        raise ImportRefused(
            f"the model reads {len(channels)} input channels; the appliance feeds one series"
        )
    reader = plans.get("image_reader_writer")
    if reader not in SUPPORTED_READERS:
        raise ImportRefused(
            f"unknown image reader {reader!r} (supported: {', '.join(SUPPORTED_READERS)})"
        )
    if settings.get("preprocessor_name", "DefaultPreprocessor") != "DefaultPreprocessor":
        raise ImportRefused(f"unknown preprocessor {settings['preprocessor_name']!r}")
    if plans.get("label_manager", "LabelManager") != "LabelManager":
        raise ImportRefused(f"unknown label manager {plans['label_manager']!r}")
    for scheme in settings.get("normalization_schemes", []):
        if scheme not in _NORMALISERS:
            raise ImportRefused(
                f"unknown normaliser {scheme!r} (supported: {', '.join(_NORMALISERS)})"
            )
    for key in ("resampling_fn_data", "resampling_fn_probabilities"):
        if settings.get(key) not in _RESAMPLERS:
            raise ImportRefused(f"unknown resampler {settings.get(key)!r} ({key})")


def _resampling(kwargs: dict[str, Any]) -> Resampling:
    return Resampling(
        order=kwargs.get("order", 3),
        order_z=kwargs.get("order_z", 0),
        force_separate_z=kwargs.get("force_separate_z"),
    )


def normalisation(folder: NnunetFolder) -> Normalisation:
    (scheme,) = folder.settings["normalization_schemes"]
    use_mask = bool((folder.settings.get("use_mask_for_norm") or [False])[0])
    kind = _NORMALISERS[scheme]
    if kind != "ct":
        return Normalisation(scheme=kind, use_mask=use_mask)
    properties = folder.plans.get("foreground_intensity_properties_per_channel", {}).get("0")
    try:
        return Normalisation(
            scheme="ct",
            use_mask=use_mask,
            clip=(properties["percentile_00_5"], properties["percentile_99_5"]),
            mean=properties["mean"],
            std=properties["std"],
        )
    except (TypeError, KeyError) as exc:
        raise ImportRefused(
            "CTNormalization needs the plans' foreground_intensity_properties_per_channel "
            "(percentile_00_5, percentile_99_5, mean, std)"
        ) from exc


def label_values(folder: NnunetFolder) -> tuple[dict[str, int], list[Region] | None]:
    """The labels a model paints, by name, and its regions when it is region-based. nnU-Net
    numbers labels consecutively from background 0; an `ignore` label is never predicted."""
    labels = {name: value for name, value in folder.dataset.get("labels", {}).items()}
    labels.pop("ignore", None)
    if labels.pop("background", None) != 0:
        raise ImportRefused("dataset.json has no background label 0")
    if not labels:
        raise ImportRefused("dataset.json has no labels besides background")
    if all(isinstance(value, int) for value in labels.values()):
        values = sorted(labels.values())
        if values != list(range(1, len(values) + 1)) or values[-1] > 255:
            raise ImportRefused("labels must be numbered 1, 2, ... up to 255, as nnU-Net has them")
        return labels, None
    order = folder.dataset.get("regions_class_order")
    if not isinstance(order, list) or len(order) != len(labels):
        raise ImportRefused("a region-based dataset.json needs regions_class_order, one per region")
    regions = []
    painted = {}
    for (name, members), paints in zip(labels.items(), order, strict=True):
        members = [members] if isinstance(members, int) else list(members)
        regions.append(Region(labels=members, paints=paints))
        painted[name] = paints
    return painted, regions


def read_codes(path: Path) -> dict[str, ModelCodes]:
    """The operator's codes: a CSV with a header `name,category,type[,modifier]`, each code
    written `SCHEME:VALUE:Meaning` (for example `SCT:10200004:Liver`)."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise ImportRefused(f"codes file {path}: {exc.strerror}") from exc
    codes = {}
    for number, row in enumerate(rows, start=2):
        try:
            name = row["name"].strip()
            modifier = (row.get("modifier") or "").strip()
            codes[name] = ModelCodes(
                _code(row["category"]), _code(row["type"]), _code(modifier) if modifier else None
            )
        except (KeyError, AttributeError) as exc:
            raise ImportRefused(
                f"codes file {path.name} needs the columns name, category, type "
                "(and optionally modifier)"
            ) from exc
        except ValueError as exc:
            raise ImportRefused(f"codes file {path.name}, line {number}: {exc}") from exc
    return codes


def _code(text: str) -> CodedConcept:
    parts = [part.strip() for part in text.split(":", 2)]
    if len(parts) != 3:
        raise ValueError(f"{text!r} is not SCHEME:VALUE:Meaning")
    return CodedConcept(*parts)


def coded_labels(
    values: dict[str, int], codes: Mapping[str, ModelCodes], renumbered: Mapping[str, int]
) -> list[Label]:
    """The contract's labels in channel order; a label without a code stops the import and
    is named. `renumbered` gives labels another value than their channel (a merged set)."""
    uncoded = [name for name in values if name not in codes]
    if uncoded:
        raise ImportRefused(f"no code for label {', '.join(uncoded)} in the codes file")
    return [
        Label(
            value=renumbered.get(name, value), name=name, category=codes[name].category,
            type=codes[name].type, type_modifier=codes[name].modifier, colour=codes[name].colour,
        )
        for name, value in sorted(values.items(), key=lambda item: item[1])
    ]  # fmt: skip


def build_contract(
    folder: NnunetFolder,
    network: ExportedNetwork,
    name: str,
    version: int,
    codes: Mapping[str, ModelCodes],
    modality: str,
    synthetic: bool,
    step: float,
    mirroring: bool,
    largest_component: Sequence[Sequence[int]] = (),
    renumbered: Mapping[str, int] | None = None,
    preresample: Preresample | None = None,
) -> ModelContract:
    if network.configuration != folder.configuration:
        raise ImportRefused(
            f"the checkpoints were trained for {network.configuration!r}, the folder says "
            f"{folder.configuration!r}"
        )
    values, regions = label_values(folder)
    settings = folder.settings
    patch = [int(size) for size in settings["patch_size"]]
    outputs = len(regions) if regions else len(values) + 1
    try:
        return ModelContract(
            name=name,
            version=version,
            modality=modality,
            # What the folder says of its input: one modality; a scout is never a volume.
            domain=Domain(modalities=[modality], excluded_image_types=["LOCALIZER"]),
            source=Source.NNUNET,
            synthetic=synthetic,
            input=TensorSpec(name="image", dtype="float32", shape=[-1, 1, *patch]),
            output=TensorSpec(name="logits", dtype="float32", shape=[-1, outputs, *patch]),
            patch=patch,
            nnunet=NnunetRecipe(
                transpose_forward=folder.plans.get("transpose_forward", [0, 1, 2]),
                transpose_backward=folder.plans.get("transpose_backward", [0, 1, 2]),
                spacing_mm=[float(value) for value in settings["spacing"]],
                anisotropy_threshold=_ANISOTROPY_THRESHOLD,
                resample_data=_resampling(settings.get("resampling_fn_data_kwargs", {})),
                resample_logits=_resampling(settings.get("resampling_fn_probabilities_kwargs", {})),
                normalisation=normalisation(folder),
                step=step,
                mirror_axes=list(network.mirror_axes) if mirroring else [],
                folds=list(folder.folds),
                regions=regions,
                largest_component=[list(group) for group in largest_component],
                preresample=preresample,
            ),
            labels=coded_labels(values, codes, renumbered or {}),
        )
    except ValidationError as exc:
        raise ImportRefused(f"the plans make no valid contract: {exc}") from exc


def postprocessing_groups(path: Path | None, values: dict[str, int]) -> list[list[int]]:
    """The largest-component steps of nnU-Net's `postprocessing.json` (written by
    `nnUNetv2_find_best_configuration`), as groups of label values."""
    if path is None:
        return []
    tree = _json(path)
    groups = []
    for function, kwargs in zip(
        tree.get("postprocessing_fns", []), tree.get("postprocessing_kwargs", []), strict=True
    ):
        if function != "remove_all_but_largest_component_from_segmentation":
            raise ImportRefused(f"unknown postprocessing {function!r} in {path.name}")
        group = kwargs.get("labels_or_regions")
        members = group if isinstance(group, list) else [group]
        flat = [value for member in members for value in ([member] if isinstance(member, int)
                                                           else member)]  # fmt: skip
        unknown = sorted(set(flat) - set(values.values()))
        if unknown:
            raise ImportRefused(f"{path.name} names labels the model has not: {unknown}")
        groups.append(flat)
    return groups


def card(folder: NnunetFolder, contract: ModelContract) -> str:
    """The model card: what the folder says of the model, where it came from, and what the
    appliance does not know about it."""
    recipe = contract.nnunet
    assert recipe is not None
    dataset, settings = folder.dataset, folder.settings
    labels = "\n".join(
        f"| {label.value} | {label.name} | {label.type.scheme} {label.type.value} "
        f"{label.type.meaning} |"
        for label in contract.labels
    )
    checkpoints = "\n".join(
        f"| {fold} | `{sha256(folder.checkpoint(fold))}` |" for fold in folder.folds
    )
    warning = "**Synthetic training data; not for clinical use.**\n\n" if contract.synthetic else ""
    return (
        f"# {contract.name} (version {contract.version})\n\n{warning}"
        f"Imported from the nnU-Net v2 result folder `{folder.path.name}` of dataset "
        f"`{folder.plans.get('dataset_name', '?')}` on {datetime.now(UTC):%Y-%m-%d} by "
        "`appliance models import nnunet`. The appliance has not validated this model: its "
        "accuracy is what its authors measured, on their data.\n\n"
        f"## Dataset\n{dataset.get('name', '?')}: {dataset.get('description', 'no description')}"
        f"\n\nTraining cases: {dataset.get('numTraining', '?')}. Reference: "
        f"{dataset.get('reference', 'not given')}. Licence: {dataset.get('licence', 'not given')}."
        f"\n\n## Labels\n| value | name | code |\n|---|---|---|\n{labels}\n\n"
        f"## Inference\nTrainer `{folder.trainer}`, plans `{folder.plans_name}`, configuration "
        f"`{folder.configuration}`; patch {settings['patch_size']} at "
        f"{recipe.spacing_mm} mm (after transpose {recipe.transpose_forward}); "
        f"normalisation {recipe.normalisation.scheme}; sliding-window step {recipe.step}; "
        f"mirroring on axes {recipe.mirror_axes or 'none'}; folds {recipe.folds} averaged in "
        "logit space.\n\n"
        f"## Checkpoints\n| fold | SHA-256 |\n|---|---|\n{checkpoints}\n"
    )


def import_nnunet(
    path: Path,
    repository: Path,
    name: str,
    codes: Mapping[str, ModelCodes],
    export: Callable[[NnunetFolder, Path], ExportedNetwork],
    *,
    version: int | None = None,
    folds: Sequence[int] | None = None,
    modality: str | None = None,
    synthetic: bool = False,
    step: float = 0.5,
    mirroring: bool = True,
    postprocessing: Path | None = None,
    renumbered: Mapping[str, int] | None = None,
    preresample: Preresample | None = None,
    pipeline: bool = True,
) -> ModelContract:
    """Import `path` into `repository` as `name` (next free version unless `version`);
    `export` loads the checkpoints and writes the ONNX file (`nnunet_export.export_network`
    where PyTorch is installed). `renumbered`, `preresample` and `pipeline` serve importers
    that wrap nnU-Net (TotalSegmentator's parts)."""
    folder = read_folder(path, folds)
    values, _ = label_values(folder)
    coded_labels(values, codes, {})  # a missing code stops before any export
    groups = postprocessing_groups(postprocessing, values)
    channel = next(iter((folder.dataset.get("channel_names") or {}).values()), "")
    chosen_modality = modality or ("CT" if str(channel).upper() == "CT" else None)
    if chosen_modality is None:
        raise ImportRefused(f"the input channel is {channel!r}: say its --modality (CT, MR, ...)")
    number = free_version(repository, name, version)

    def stage(directory: Path) -> ModelContract:
        network = export(folder, directory / MODEL_FILE)
        contract = build_contract(
            folder, network, name, number, codes, chosen_modality, synthetic, step,
            mirroring, groups, renumbered, preresample,
        )  # fmt: skip
        (directory / contract.card).write_text(card(folder, contract), encoding="utf-8")
        return contract

    contract = add_version(repository, name, number, stage)
    if pipeline:
        declare_pipeline(repository, contract, "nnU-Net")
    return contract
