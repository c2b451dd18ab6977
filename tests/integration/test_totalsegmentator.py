"""TotalSegmentator drops in: a weights folder shaped exactly like its weights for `total
--fast` (one model, its 117 classes at 3 mm) and for `total` (five part models at 1.5 mm):
its dataset folder and trainer names and its classes, tiny networks trained here
(`tests/fixtures/totalsegmentator/make_fixture.py`). Both tasks are imported by `appliance
models import totalsegmentator`, and the appliance's labels (for `total`, its pipeline's five
stages merged) are held to TotalSegmentator's own Python API run on the same voxels with its
weights folder pointed at the fixture: per class Dice >= 0.995 and >= 99.9 % of voxels
identical. The codes come from the SNOMED CT mapping the package ships, with laterality and
display colours."""

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from appliance.app.pipelines import run_volume
from appliance.cli import EXIT_REFUSED
from appliance.domain.pipelines import ModelRef
from appliance.inference.backend import OnnxRuntimeBackend
from appliance.inference.catalog import load_catalog
from appliance.inference.ct import load_series, segment_ct
from appliance.phantoms.ct import Grid
from tests.support.cli import run_cli
from tests.support.mr import ras_affine
from tests.support.nnunet import (
    Imported,
    assert_parity,
    imported_repository,
    parity,
    require_importer_venv,
    write_phantom_series,
)

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "tests" / "fixtures" / "totalsegmentator"
REFERENCE = ROOT / "tests" / "support" / "totalsegmentator_reference.py"
MODEL = ModelRef("totalsegmentator_total_fast", 1)
SERIES = {  # name: (seed, grid, tilt in degrees); seeds the fixtures' training never saw
    "axial": (905_000, Grid((48, 160, 160), (2.5, 1.5, 1.5)), 0.0),
    "oblique": (905_001, Grid((40, 150, 150), (3.0, 1.6, 1.6)), 15.0),
}
CASES = (("axial", "total_fast"), ("oblique", "total_fast"), ("axial", "total"))


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Imported:
    return imported_repository(
        tmp_path_factory.mktemp("totalsegmentator"),
        *(
            ("totalsegmentator", str(WEIGHTS), "--task", task, "--state", "enabled")
            for task in ("total_fast", "total")
        ),
    )


@dataclass(frozen=True)
class Reference:
    series: dict[str, list[Path]]
    labels: dict[tuple[str, str], NDArray[np.uint8]]  # (series, task): its label map


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """TotalSegmentator's own answers (`totalsegmentator(..., task="total", fast=...)`) for
    each case, read by the appliance and handed over as a NIfTI of the same voxels."""
    python = require_importer_venv()
    directory = tmp_path_factory.mktemp("totalsegmentator-reference")
    series = {}
    for name, (seed, grid, tilt) in SERIES.items():
        series[name] = write_phantom_series(directory / name, seed, grid, tilt)
        volume = load_series(series[name])
        np.save(directory / f"{name}-volume.npy", volume.hu)
        np.save(directory / f"{name}-affine.npy", ras_affine(volume.geometry))
    cases = [
        {
            "volume": str(directory / f"{name}-volume.npy"),
            "affine": str(directory / f"{name}-affine.npy"),
            "task": "total",
            "fast": task == "total_fast",
            "output": str(directory / f"{name}-{task}-labels.npy"),
        }
        for name, task in CASES
    ]
    request = {"weights": str(WEIGHTS), "home": str(directory / "home"), "cases": cases}
    (directory / "request.json").write_text(json.dumps(request))
    done = subprocess.run(
        [str(python), str(REFERENCE), str(directory / "request.json")],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    labels = {(n, t): np.load(directory / f"{n}-{t}-labels.npy") for n, t in CASES}
    return Reference(series, labels)


def print_parity(case: str, ours: NDArray[np.uint8], reference: NDArray[np.uint8]) -> None:
    agreement, labels = parity(ours, reference)
    large = [found.dice for found in labels.values() if found.voxels >= 400]
    print(f"{case}: {agreement:.6f} of voxels identical, classes {sorted(labels)}, "
          f"lowest Dice of a class over 400 voxels {min(large):.4f}")  # fmt: skip


@pytest.mark.parametrize("name", list(SERIES))
def test_labels_match_totalsegmentators_own_runner(
    name: str, imported: Imported, reference: Reference
) -> None:
    catalog = load_catalog(imported.repository)
    backend = OnnxRuntimeBackend(imported.repository, threads=2)
    ours = segment_ct(load_series(reference.series[name]), backend, catalog.contract(MODEL))
    theirs = reference.labels[name, "total_fast"]
    found = set(np.unique(theirs)) - {0}
    assert {1, 5} <= found, f"the fixture finds spleen and liver: {sorted(found)}"
    print_parity(f"{name} total_fast", ours, theirs)
    # A small label may differ by two of the model's 3 mm voxels, each several source voxels.
    coarse = np.prod([3.0 / size for size in SERIES[name][1].spacing])
    assert_parity(ours, theirs, slack=2 * int(np.ceil(coarse)))


def test_the_five_parts_merged_match_totalsegmentators_own_runner(
    imported: Imported, reference: Reference
) -> None:
    """`total`: the imported pipeline's five stages, later parts painted over earlier ones,
    against TotalSegmentator's own merge of its five part models (the fixture's networks are
    barely trained: which classes each finds is theirs to say, the merge must agree)."""
    catalog = load_catalog(imported.repository)
    backend = OnnxRuntimeBackend(imported.repository, threads=2)
    pipeline = catalog.pipelines["totalsegmentator_total"]
    assert [stage.name for stage in pipeline.stages] == [
        "organs", "vertebrae", "cardiac", "muscles", "ribs",
    ]  # fmt: skip
    run = run_volume(pipeline, catalog, reference.series["axial"], backend)
    # each part's classes in the task's one label set, as the importer renumbered them
    parts = {
        stage.name: {label.name: label.value for label in catalog.contract(stage.model).labels}
        for stage in pipeline.stages
    }
    ids = {name: value for classes in parts.values() for name, value in classes.items()}
    ours = np.zeros_like(run.findings.labels)
    for segment in run.findings.segments:
        ours[run.findings.labels == segment.number] = ids[segment.tracking_id]
    theirs = reference.labels["axial", "total"]
    print_parity("axial total", ours, theirs)
    found = [part for part, classes in parts.items() if np.isin(theirs, [*classes.values()]).any()]
    assert len(found) >= 4, f"most parts' classes are in the merge: {found}"
    # the muscles part's stand-in lies on the vertebrae part's class: the later part is kept
    maps = run.stages
    overlap = (maps["vertebrae"] > 0) & (maps["muscles"] > 0) & (maps["ribs"] == 0)
    assert overlap.sum() >= 100, overlap.sum()
    assert np.array_equal(ours[overlap], maps["muscles"][overlap])
    coarse = np.prod([1.5 / size for size in SERIES["axial"][1].spacing])
    assert_parity(ours, theirs, slack=2 * int(np.ceil(coarse)))


def test_codes_keep_laterality_and_every_segment_has_a_colour(imported: Imported) -> None:
    contract = load_catalog(imported.repository).contract(MODEL)
    labels = {label.name: label for label in contract.labels}
    assert len(labels) == 117
    assert labels["kidney_left"].value == 3
    assert labels["kidney_left"].type.value == "64033007"  # kidney
    modifier = labels["kidney_left"].type_modifier
    assert modifier is not None
    assert (modifier.value, modifier.meaning) == ("7771000", "Left")
    assert labels["kidney_right"].type_modifier is not None
    assert labels["kidney_right"].type_modifier.meaning == "Right"
    assert labels["liver"].type_modifier is None
    assert all(label.colour is not None for label in contract.labels)
    recipe = contract.nnunet
    assert recipe is not None
    assert recipe.preresample is not None
    assert (recipe.step, recipe.mirror_axes, recipe.folds) == (0.8, [], [0])
    assert recipe.preresample.spacing_mm == 3.0
    pipelines = run_cli(imported.config, "pipelines", "list").stdout
    assert "totalsegmentator_total_fast enabled" in pipelines, pipelines


def test_a_weights_folder_without_a_part_is_refused_and_nothing_is_written(
    imported: Imported, tmp_path: Path
) -> None:
    partial = tmp_path / "weights"
    shutil.copytree(WEIGHTS, partial)
    shutil.rmtree(partial / "Dataset293_TotalSegmentator_part3_cardiac_1559subj")
    before = sorted(str(path) for path in imported.repository.rglob("*"))
    done = run_cli(
        imported.config, "models", "import", "totalsegmentator", str(partial), "--task",
        "total", "--name", "partial", timeout=300,
    )  # fmt: skip
    assert done.returncode == EXIT_REFUSED, done.stdout + done.stderr
    assert "lacks Dataset293_TotalSegmentator_part3_cardiac_1559subj" in done.stderr
    unknown = run_cli(
        imported.config, "models", "import", "totalsegmentator", str(WEIGHTS), "--task",
        "no_such_task", timeout=300,
    )  # fmt: skip
    assert unknown.returncode == EXIT_REFUSED
    assert "no task 'no_such_task'" in unknown.stderr
    assert sorted(str(path) for path in imported.repository.rglob("*")) == before
