"""The nnU-Net fixture and its reference runs: the committed result folder, the venv that
holds PyTorch and nnunetv2 (`.venv-nnunet`, made by scripts/test), CT series to feed both
sides, and the parity measures the tests assert."""

import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread

from appliance.phantoms.ct import Grid, generate_ct
from appliance.phantoms.dicom import write_ct_series
from tests.support.cli import run_cli
from tests.support.services import missing_service
from tests.support.settings import write_config

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "nnunet"
RESULT = FIXTURE / "Dataset901_Phantom" / "nnUNetTrainer_20epochs__nnUNetPlans__3d_fullres"
CODES = FIXTURE / "codes.csv"
IMPORTER_VENV = ROOT / ".venv-nnunet"
REFERENCE = ROOT / "tests" / "support" / "nnunet_reference.py"
IMPORT_TIMEOUT = 300


def require_importer_venv() -> Path:
    python = IMPORTER_VENV / "bin" / "python"
    if not python.exists():
        missing_service("the importers venv .venv-nnunet (scripts/test makes it)")
    return python


@dataclass(frozen=True)
class ReferenceCase:
    series: Path
    folds: tuple[int, ...] = (0, 1)
    step: float = 0.5
    mirroring: bool = True
    postprocessing: Path | None = None


def run_reference(cases: list[ReferenceCase], directory: Path) -> list[NDArray[np.uint8]]:
    """nnUNetPredictor's label maps of `cases` (SimpleITK's axis order), in one process."""
    python = require_importer_venv()
    directory.mkdir(parents=True, exist_ok=True)
    tree = [
        {
            "series": str(case.series), "model": str(RESULT), "folds": list(case.folds),
            "step": case.step, "mirroring": case.mirroring,
            "postprocessing": str(case.postprocessing) if case.postprocessing else None,
            "output": str(directory / f"reference_{index}.npy"),
        }
        for index, case in enumerate(cases)
    ]  # fmt: skip
    (directory / "cases.json").write_text(json.dumps(tree))
    subprocess.run(
        [str(python), str(REFERENCE), str(directory / "cases.json")],
        check=True, capture_output=True, timeout=900,
    )  # fmt: skip
    return [np.load(entry["output"]) for entry in tree]


def reference_origin(directory: Path, index: int) -> tuple[float, float, float]:
    geometry = json.loads((directory / f"reference_{index}.npy.json").read_text())
    return tuple(geometry["origin"])  # type: ignore[return-value]


def write_phantom_series(
    directory: Path, seed: int, grid: Grid, tilt_degrees: float = 0.0
) -> list[Path]:
    """A phantom CT series; with a tilt, its planes are turned about the patient's x axis
    (an oblique acquisition) and its files written in shuffled order."""
    paths = write_ct_series(generate_ct(seed, grid, noise_hu=10.0), directory)
    if tilt_degrees:
        angle = math.radians(tilt_degrees)
        column = [0.0, math.cos(angle), math.sin(angle)]
        normal = [0.0, -math.sin(angle), math.cos(angle)]
        rows, columns = grid.shape[1:]
        dz, dy, dx = grid.spacing
        for index, path in enumerate(paths):
            dataset = dcmread(path)
            dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, *column]
            corner = [-(columns - 1) / 2 * dx, 0.0, 0.0]
            offset = (index - (len(paths) - 1) / 2) * dz
            start = -(rows - 1) / 2 * dy
            dataset.ImagePositionPatient = [
                round(corner[0], 4),
                round(start * column[1] + offset * normal[1], 4),
                round(start * column[2] + offset * normal[2], 4),
            ]
            dataset.save_as(path, enforce_file_format=True)
        order = np.random.default_rng(seed).permutation(len(paths))
        for rank, index in enumerate(order):
            paths[index].rename(paths[index].with_name(f"shuffled_{rank:04d}.dcm"))
        paths = sorted(directory.glob("*.dcm"))
    return paths


MIN_DICE = 0.995
MIN_AGREEMENT = 0.999
# A label of fewer voxels than this moves its Dice by more than 0.005 a voxel: it is held to
# at most SMALL_LABEL_SLACK voxels different instead.
SMALL_LABEL = 400
SMALL_LABEL_SLACK = 2


@dataclass(frozen=True)
class LabelParity:
    dice: float
    voxels: int  # the larger of the two sides' counts
    differing: int  # voxels where one side has the label and the other not


def parity(
    ours: NDArray[np.uint8], reference: NDArray[np.uint8]
) -> tuple[float, dict[int, LabelParity]]:
    """The share of voxels with the same label, and each label's agreement."""
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    agreement = float(np.mean(ours == reference))
    labels = {}
    for label in sorted((set(np.unique(ours)) | set(np.unique(reference))) - {0}):
        a, b = ours == label, reference == label
        labels[int(label)] = LabelParity(
            float(2 * np.sum(a & b) / (np.sum(a) + np.sum(b))),
            int(max(np.sum(a), np.sum(b))),
            int(np.sum(a ^ b)),
        )
    return agreement, labels


def assert_parity(
    ours: NDArray[np.uint8], reference: NDArray[np.uint8], slack: int = SMALL_LABEL_SLACK
) -> None:
    """The thresholds; `slack` is how many voxels a small label may differ by (a model that
    works on a coarser grid than the source's differs by whole coarse voxels)."""
    agreement, labels = parity(ours, reference)
    assert agreement >= MIN_AGREEMENT, (agreement, labels)
    assert any(found.voxels >= SMALL_LABEL for found in labels.values()), labels
    for found in labels.values():
        if found.voxels >= SMALL_LABEL:
            assert found.dice >= MIN_DICE, (agreement, labels)
        else:
            assert found.differing <= slack, (agreement, labels)


@dataclass(frozen=True)
class Imported:
    """A copy of the reference repository with a database, into which a test imports."""

    config: Path
    repository: Path
    database_url: str


def imported_repository(directory: Path, *imports: tuple[str, ...]) -> Imported:
    """The reference repository copied under `directory`, the database made, and each of
    `imports` (the words after `appliance models import`) run as an operator would."""
    require_importer_venv()
    repository = directory / "repository"
    shutil.copytree(ROOT / "model_repository", repository)
    config = write_config(directory, {"inference": {"repository": str(repository)}})
    assert run_cli(config, "db", "upgrade").returncode == 0
    for words in imports:
        done = run_cli(config, "models", "import", *words, timeout=IMPORT_TIMEOUT)
        assert done.returncode == 0, done.stdout + done.stderr
    return Imported(config, repository, f"sqlite:///{directory}/appliance.db")
