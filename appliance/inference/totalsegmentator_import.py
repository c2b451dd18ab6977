"""Importing TotalSegmentator's weights: a task's nnU-Net result folders, read from the folder
its weights were unpacked into, imported as one model per part with TotalSegmentator's own
recipe around nnU-Net's (fold 0, tile step 0.8, no test-time mirroring, its reorientation and
resampling), its parts' classes renumbered into the task's one label set, and one pipeline
whose stages paint the parts in TotalSegmentator's order.

What a task is made of (dataset ids, trainers, spacing, class maps) and how each class is
coded (the SNOMED CT mapping with laterality and display colour, which TotalSegmentator's own
DICOM writer drops the modifiers of) are read from the installed totalsegmentator package,
never written here by hand. It is installed in the importers venv only.
"""

import csv
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.domain.concepts import CodedConcept
from appliance.inference.contract import ModelContract, Preresample
from appliance.inference.importing import ImportRefused
from appliance.inference.nnunet_import import (
    ExportedNetwork,
    ModelCodes,
    NnunetFolder,
    import_nnunet,
)

STEP = 0.8  # `nnUNet_predict_image`: tile step 0.8 for the total tasks
RESAMPLING_ORDER = 1  # `totalsegmentator(resampling_order=1)`
# `nnUNet_predict_image` predicts a resampled volume of more voxels than this in three slabs
# when a task has several parts (a constant in its code, not in its configuration).
SPLIT_ABOVE = 512 * 512 * 900
PLANS = "nnUNetPlans"
CONFIGURATION = "3d_fullres"
# The multi-part tasks and where the package keeps their part class maps (nnunet.py).
_PART_MAPS = {
    "total": ("class_map_5_parts", "map_taskid_to_partname_ct"),
    "total_v3": ("class_map_5_parts_total_v3", "map_taskid_to_partname_ct_v3"),
    "total_mr": ("class_map_parts_mr", "map_taskid_to_partname_mr"),
}


@dataclass(frozen=True)
class Part:
    task_id: int
    folder: str  # the dataset folder's name, as the weights unpack
    name: str  # a short name for the part's model
    classes: dict[int, str]  # channel: class name


@dataclass(frozen=True)
class Task:
    name: str  # total, total_fast, ...
    modality: str
    trainer: str
    spacing_mm: float
    parts: tuple[Part, ...]
    labels: dict[str, int]  # the task's one label set: class name: value


def _package(module: str) -> Any:
    try:
        return importlib.import_module(f"totalsegmentator.{module}")
    except ImportError as exc:
        raise ImportRefused(
            "the totalsegmentator package is not installed here (the importers extra)"
        ) from exc


def read_task(task: str) -> Task:
    """`total`, `total_fast`, `total_fastest`, `total_mr_fast`, ...: the task and its mode
    as the package's TASK_CONFIGS declare them."""
    config = _package("map_tasks_config")
    maps = _package("map_to_binary")
    base, _, mode = task.rpartition("_")
    if mode not in ("fast", "fastest") or base not in config.TASK_CONFIGS:
        base, mode = task, "default"
    declared = config.TASK_CONFIGS.get(base)
    if declared is None or mode not in declared.get("sub_modes", {"default": None}):
        raise ImportRefused(f"TotalSegmentator has no task {task!r}")
    settings = {**declared, **declared.get("sub_modes", {}).get(mode, {})}
    ids = settings["task_id"] if isinstance(settings["task_id"], list) else [settings["task_id"]]
    if len(ids) > 1 and base not in _PART_MAPS:
        raise ImportRefused(f"task {task} has parts this importer has no class maps for")
    parts = []
    for task_id in ids:
        if len(ids) > 1:
            part_maps, part_names = (getattr(maps, name) for name in _PART_MAPS[base])
            part = part_names[task_id]
            classes, short = part_maps[part], part.removeprefix("class_map_part_")
        else:
            classes, short = maps.class_map[base], mode
        folder = config.TASK_ID_WEIGHTS_CONFIGS[task_id]["foldername"]
        parts.append(Part(int(task_id), folder, short, dict(classes)))
    labels = {name: value for value, name in maps.class_map[base].items()}
    resample = settings.get("resample")
    if not isinstance(resample, (int, float)):
        raise ImportRefused(f"task {task} does not resample to one isotropic spacing")
    modality = "MR" if base.endswith("_mr") else "CT"
    return Task(task, modality, str(settings["trainer"]), float(resample), tuple(parts), labels)


def read_snomed() -> dict[str, ModelCodes]:
    """The package's `resources/totalsegmentator_snomed_mapping.csv`: each class's property
    category and type, its modifier (left, right) and its display colour."""
    path = Path(_package("map_to_binary").__file__).parent / "resources"
    path = path / "totalsegmentator_snomed_mapping.csv"
    prefix = "SegmentedProperty"

    def code(row: dict[str, str], sequence: str) -> CodedConcept | None:
        value = (row.get(f"{prefix}{sequence}CodeSequence.CodeValue") or "").strip()
        if not value:
            return None
        return CodedConcept(
            row[f"{prefix}{sequence}CodeSequence.CodingSchemeDesignator"].strip(),
            value,
            row[f"{prefix}{sequence}CodeSequence.CodeMeaning"].strip(),
        )

    codes = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            category, kind = code(row, "Category"), code(row, "Type")
            if category is None or kind is None:
                continue
            rgb = [int(part) for part in (row.get("DicomRGBColor") or "").split(",") if part]
            colour = (rgb[0], rgb[1], rgb[2]) if len(rgb) == 3 else None
            codes[row["Structure"].strip()] = ModelCodes(
                category, kind, code(row, "TypeModifier"), colour
            )
    return codes


def result_folder(weights: Path, task: Task, part: Part) -> Path:
    folder = weights / part.folder / f"{task.trainer}__{PLANS}__{CONFIGURATION}"
    if not folder.is_dir():
        raise ImportRefused(
            f"{weights} lacks {part.folder}/{folder.name} (part {part.name} of task {task.name})"
        )
    return folder


def check_classes(folder: NnunetFolder, part: Part) -> None:
    """The folder's labels are the part's classes, channel for channel."""
    found = {
        int(value): name
        for name, value in folder.dataset.get("labels", {}).items()
        if name != "background" and isinstance(value, int)
    }
    if found != part.classes:
        differ = sorted(set(found.items()) ^ set(part.classes.items()))[:3]
        raise ImportRefused(
            f"{folder.path.parent.name}: its labels are not part {part.name}'s classes "
            f"(first differences: {differ})"
        )


def import_totalsegmentator(
    weights: Path,
    repository: Path,
    task_name: str,
    export: Callable[[NnunetFolder, Path], ExportedNetwork],
    *,
    name: str | None = None,
) -> tuple[list[ModelContract], Path]:
    """Every part of `task_name` from `weights` (TotalSegmentator's weights folder), and the
    pipeline that runs them; returns the contracts and the pipeline file."""
    from appliance.inference.nnunet_import import read_folder

    task = read_task(task_name)
    codes = read_snomed()
    stem = name or f"totalsegmentator_{task.name}"
    folders = [result_folder(weights, task, part) for part in task.parts]
    for folder, part in zip(folders, task.parts, strict=True):
        check_classes(read_folder(folder, [0]), part)  # all parts checked before any export
    wrapper = Preresample(
        spacing_mm=task.spacing_mm, order=RESAMPLING_ORDER, dtype="int32",
        split_above=SPLIT_ABOVE if len(task.parts) > 1 else None,
    )  # fmt: skip
    contracts = []
    for folder, part in zip(folders, task.parts, strict=True):
        model = stem if len(task.parts) == 1 else f"{stem}_{part.name}"
        imported = import_nnunet(
            folder, repository, model, codes, export, folds=[0], modality=task.modality,
            step=STEP, mirroring=False, renumbered=task.labels, preresample=wrapper,
            pipeline=False,
        )  # fmt: skip
        contracts.append(imported)
    return contracts, declare_parts_pipeline(repository, stem, task, contracts)


def declare_parts_pipeline(
    repository: Path, stem: str, task: Task, contracts: list[ModelContract]
) -> Path:
    """One pipeline for the task, unless one is there: a volume stage per part, later parts
    painted over earlier ones as TotalSegmentator merges them; every class a segment with its
    volume."""
    path = repository / f"{stem}.pipeline.yaml"
    if path.exists():
        return path
    stages = "".join(
        f"  - name: {part.name if len(contracts) > 1 else 'segment'}\n"
        "    kind: volume\n"
        f"    model: {{name: {contract.name}, version: {contract.version}}}\n"
        "    findings: per_label\n"
        "    measurements: [volume]\n"
        for contract, part in zip(contracts, task.parts, strict=True)
    )
    path.write_text(
        f"# Written by `appliance models import totalsegmentator` for task {task.name}.\n"
        f"name: {stem}\n"
        f"description: TotalSegmentator {task.name} ({len(task.labels)} classes at "
        f"{task.spacing_mm:g} mm), every structure found with its volume\n"
        f"stages:\n{stages}",
        encoding="utf-8",
    )
    return path
