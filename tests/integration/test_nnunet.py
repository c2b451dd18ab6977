"""An nnU-Net v2 model imported and served with its reference implementation's answers.

The committed fixture (a small 3d_fullres model trained here by the real nnunetv2, two folds;
`tests/fixtures/nnunet/make_fixture.py`) is imported by `appliance models import nnunet`, and
the appliance's labels are compared with `nnUNetPredictor`'s on the same DICOM series, read
as nnU-Net's SimpleITK reader reads it: per label Dice >= 0.995 and >= 99.9 % of voxels
identical, through ONNX Runtime and through the real Triton server. Bad folders are refused
with their reason, the repository untouched."""

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from sqlalchemy import select

from appliance.cli import EXIT_REFUSED
from appliance.inference.backend import InferenceBackend, OnnxRuntimeBackend
from appliance.inference.contract import ModelContract, load_contract
from appliance.inference.ct import load_series, segment_ct
from appliance.inference.triton import TritonBackend
from appliance.inference.triton_cpu import CpuTritonServer, TritonUnavailable
from appliance.phantoms.ct import Grid
from appliance.store.db import create_db_engine
from appliance.store.models import AuditEvent
from tests.support.cli import run_cli
from tests.support.nnunet import (
    CODES,
    RESULT,
    Imported,
    ReferenceCase,
    assert_parity,
    imported_repository,
    reference_origin,
    run_reference,
    write_phantom_series,
)
from tests.support.services import missing_service

ROOT = Path(__file__).resolve().parents[2]


def import_fixture(config: Path, name: str, *extra: str) -> tuple[int, str]:
    result = run_cli(
        config, "models", "import", "nnunet", str(RESULT), "--name", name,
        "--codes", str(CODES), "--synthetic", *extra, timeout=300,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Imported:
    """The reference repository plus the fixture imported twice: both folds, and fold 0."""
    return imported_repository(
        tmp_path_factory.mktemp("imported"),
        *(
            ("nnunet", str(RESULT), "--name", name, "--codes", str(CODES), "--synthetic",
             "--folds", folds)
            for name, folds in (("phantom_organs", "0,1"), ("phantom_organs_fold0", "0"))
        ),
    )  # fmt: skip


SERIES = {  # name: (seed, grid, tilt in degrees); seeds the fixture's training never saw
    "anisotropic": (902_000, Grid((60, 160, 160), (3.0, 2.0, 2.0)), 0.0),
    "smaller-than-patch": (902_002, Grid((8, 40, 40), (5.0, 3.5, 3.5)), 0.0),
    "oblique-anisotropic": (902_001, Grid((20, 160, 160), (5.0, 1.4, 1.4)), 20.0),
}
CASES = {  # name: (series, model, folds, step, mirroring)
    "two-folds-mirrored": ("anisotropic", "phantom_organs", (0, 1), 0.5, True),
    "unmirrored": ("anisotropic", "phantom_organs", (0, 1), 0.5, False),
    "step-0.8": ("anisotropic", "phantom_organs", (0, 1), 0.8, True),
    "one-fold": ("anisotropic", "phantom_organs_fold0", (0,), 0.5, True),
    "smaller-than-patch": ("smaller-than-patch", "phantom_organs", (0, 1), 0.5, True),
    "oblique-anisotropic": ("oblique-anisotropic", "phantom_organs", (0, 1), 0.5, True),
}


@dataclass(frozen=True)
class References:
    series: dict[str, list[Path]]
    labels: dict[str, NDArray[np.uint8]]
    directory: Path


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> References:
    """nnUNetPredictor's answers for every case, from one run of the reference."""
    directory = tmp_path_factory.mktemp("nnunet-reference")
    series = {
        name: write_phantom_series(directory / name, seed, grid, tilt)
        for name, (seed, grid, tilt) in SERIES.items()
    }
    cases = [
        ReferenceCase(series[name][0].parent, folds, step, mirroring)
        for name, _, folds, step, mirroring in CASES.values()
    ]
    labels = run_reference(cases, directory / "out")
    return References(series, dict(zip(CASES, labels, strict=True)), directory / "out")


def variant(contract: ModelContract, step: float, mirroring: bool) -> ModelContract:
    """The contract with the predictor's step and mirroring of a case (the same graph)."""
    assert contract.nnunet is not None
    recipe = contract.nnunet.model_copy(
        update={"step": step, "mirror_axes": contract.nnunet.mirror_axes if mirroring else []}
    )
    return contract.model_copy(update={"nnunet": recipe})


def segment_case(
    case: str, imported: Imported, references: References, backend: InferenceBackend
) -> NDArray[np.uint8]:
    series, model, _, step, mirroring = CASES[case]
    contract = load_contract(imported.repository / model / "1")
    volume = load_series(references.series[series])
    index = list(CASES).index(case)
    origin = reference_origin(references.directory, index)
    np.testing.assert_allclose(volume.geometry.origin, origin, atol=1e-3)  # same slice order
    return segment_ct(volume, backend, variant(contract, step, mirroring))


@pytest.mark.parametrize("case", list(CASES))
def test_labels_match_nnunet_predictor(
    case: str, imported: Imported, references: References
) -> None:
    backend = OnnxRuntimeBackend(imported.repository, threads=2)
    ours = segment_case(case, imported, references, backend)
    assert_parity(ours, references.labels[case])


@pytest.fixture(scope="module")
def triton(imported: Imported, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    server = CpuTritonServer(imported.repository, tmp_path_factory.mktemp("triton"))
    try:
        server.start()
    except TritonUnavailable as exc:
        missing_service(str(exc))
    yield server.grpc_port
    server.stop()


@pytest.mark.parametrize("case", ["two-folds-mirrored", "oblique-anisotropic"])
def test_labels_match_nnunet_predictor_through_triton(
    case: str, imported: Imported, references: References, triton: int
) -> None:
    backend = TritonBackend(f"127.0.0.1:{triton}", "grpc", timeout_s=120)
    ours = segment_case(case, imported, references, backend)
    assert_parity(ours, references.labels[case])


def test_models_list_shows_the_import_beside_the_reference_models(imported: Imported) -> None:
    listed = run_cli(imported.config, "models", "list")
    checked = run_cli(imported.config, "models", "check")

    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert any(line.startswith("organ_ct v1 [CT, reference] enabled") for line in lines), lines
    assert "phantom_organs v1 [CT, nnunet] shadow: liver, spleen, kidney" in listed.stdout
    assert checked.returncode == 0, checked.stdout
    assert "phantom_organs: ok" in checked.stdout
    engine = create_db_engine(imported.database_url)
    with engine.connect() as connection:
        details = connection.scalars(
            select(AuditEvent.detail).where(AuditEvent.event_type == "model_imported")
        ).all()
    engine.dispose()
    assert sorted(details) == [
        f"model {name} v1 (shadow): nnU-Net v2 folder {RESULT.name}"
        for name in ("phantom_organs", "phantom_organs_fold0")
    ]


def _edit_json(folder: Path, name: str, change: object) -> None:
    path = folder / name
    tree = json.loads(path.read_text())
    change(tree)  # type: ignore[operator]
    path.write_text(json.dumps(tree))


def _configuration(tree: dict) -> dict:  # type: ignore[type-arg]
    return tree["configurations"]["3d_fullres"]  # type: ignore[no-any-return]


BAD_FOLDERS = {  # name: (how the folder is spoiled, import arguments, reason shown)
    "not-a-result": (lambda f: shutil.rmtree(f / "fold_0"), (), "not an nnU-Net v2 result"),
    "missing-fold": (lambda f: None, ("--folds", "0,3"), "fold 3 has no checkpoint_final.pth"),
    "unknown-normaliser": (
        lambda f: _edit_json(
            f, "plans.json", lambda t: _configuration(t).update(normalization_schemes=["Odd"])
        ),
        (), "unknown normaliser 'Odd'",
    ),
    "unknown-resampler": (
        lambda f: _edit_json(
            f, "plans.json", lambda t: _configuration(t).update(resampling_fn_data="odd")
        ),
        (), "unknown resampler 'odd'",
    ),
    "checkpoint-not-of-its-plans": (
        lambda f: _edit_json(
            f, "plans.json",
            lambda t: _configuration(t)["architecture"]["arch_kwargs"].update(
                features_per_stage=[4, 8, 16]
            ),
        ),
        (), "does not match its plans",
    ),
    "label-without-code": (
        lambda f: _edit_json(
            f, "dataset.json", lambda t: t["labels"].update(gallbladder=4)
        ),
        (), "no code for label gallbladder",
    ),
}  # fmt: skip


def _tree(repository: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(repository)), p.stat().st_size) for p in repository.rglob("*"))


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_a_bad_folder_is_refused_with_its_reason_and_nothing_written(
    case: str, imported: Imported, tmp_path: Path
) -> None:
    spoil, arguments, reason = BAD_FOLDERS[case]
    folder = tmp_path / (RESULT.name if case != "not-a-result" else "some_folder")
    shutil.copytree(RESULT, folder)
    spoil(folder)  # type: ignore[operator]
    before = _tree(imported.repository)

    result = run_cli(
        imported.config, "models", "import", "nnunet", str(folder), "--name", "spoiled",
        "--codes", str(CODES), *arguments, timeout=300,
    )  # fmt: skip

    assert result.returncode == EXIT_REFUSED, result.stdout + result.stderr
    assert reason in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert _tree(imported.repository) == before
