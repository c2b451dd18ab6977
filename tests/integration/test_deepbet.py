"""A published model with real weights: deepbet (T1 MR brain extraction; its TorchScript ships
in its wheel, installed in the importers venv) imported by `appliance models import deepbet`
and run on a real MR volume, the MNI152 2009a T1 template from nilearn's package written as a
DICOM MR series. The appliance's mask is held to deepbet's own Python run on the same voxels
(Dice >= 0.99), and to a brain mask from the template's own grey- and white-matter maps, a
reference nobody here made (Dice >= 0.95; 0.971 when measured)."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from sqlalchemy import select

from appliance.app.pipelines import run_volume
from appliance.cli import EXIT_REFUSED
from appliance.domain.geometry import VolumeGeometry
from appliance.domain.pipelines import ModelRef
from appliance.inference.backend import OnnxRuntimeBackend
from appliance.inference.catalog import load_catalog
from appliance.inference.ct import UnsupportedSeries, load_series, ras_directions, segment_ct
from appliance.inference.fixed_grid import closest_ras, to_ras
from appliance.store.db import create_db_engine
from appliance.store.models import AuditEvent
from tests.support.cli import run_cli
from tests.support.mr import deepbet_masks, mni_template, ras_affine, write_mr_series
from tests.support.nnunet import Imported, imported_repository

ROOT = Path(__file__).resolve().parents[2]
MIN_DICE_TO_DEEPBET = 0.99
MIN_DICE_TO_TEMPLATE = 0.95
IMPORT_TIMEOUT = 300


def dice(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Imported:
    return imported_repository(
        tmp_path_factory.mktemp("deepbet"), ("deepbet", "--state", "enabled")
    )


@dataclass(frozen=True)
class Template:
    paths: list[Path]
    geometry: VolumeGeometry
    deepbet: NDArray[np.bool_]  # deepbet's own mask, on the series' volume grid
    brain: NDArray[np.bool_]  # from the template's grey and white matter, RAS order


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    directory = tmp_path_factory.mktemp("mni152")
    exported = mni_template(directory / "template")
    paths = write_mr_series(
        np.load(exported["volume"]), np.load(exported["affine"]), directory / "series"
    )
    volume = load_series(paths)
    np.save(directory / "volume.npy", volume.hu)
    np.save(directory / "affine.npy", ras_affine(volume.geometry))
    (mask,) = deepbet_masks(
        [(directory / "volume.npy", directory / "affine.npy")], directory / "deepbet"
    )
    return Template(paths, volume.geometry, mask, np.load(exported["brain"]))


def test_import_lists_both_models_audited_and_servable(imported: Imported) -> None:
    listed = run_cli(imported.config, "models", "list").stdout
    assert "deepbet v1 [MR, torchscript] enabled: brain\n" in listed, listed
    assert "deepbet_locator v1 [MR, torchscript] enabled: brain\n" in listed, listed
    assert "synthetic" not in listed.split("deepbet v1")[1].splitlines()[0], "real weights"
    checked = run_cli(imported.config, "models", "check")
    assert checked.returncode == 0, checked.stdout
    pipelines = run_cli(imported.config, "pipelines", "list").stdout
    assert "deepbet enabled" in pipelines, pipelines
    with create_db_engine(imported.database_url).connect() as connection:
        details = connection.scalars(
            select(AuditEvent.detail).where(AuditEvent.event_type == "model_imported")
        ).all()
    assert any("deepbet_locator v1" in detail for detail in details), details
    assert any("deepbet v1" in detail and "model.pt" in detail for detail in details), details
    card = (imported.repository / "deepbet" / "1" / "card.md").read_text()
    for words in ("SHA-256", "MIT licence", "research tool"):
        assert words in card, card
    # each network keeps only the softmax channel its recipe reads, and the brain model
    # reads its locator's one channel
    catalog = load_catalog(imported.repository)
    brain, locator = (
        catalog.contract(ModelRef(name, 1)) for name in ("deepbet", "deepbet_locator")
    )
    assert brain.output.shape[1] == locator.output.shape[1] == 1
    assert brain.fixed_grid is not None
    assert brain.fixed_grid.locator is not None
    assert (brain.fixed_grid.channel, brain.fixed_grid.locator.channel) == (0, 0)


def test_brain_mask_matches_deepbets_own_run_and_the_templates_anatomy(
    imported: Imported, template: Template
) -> None:
    catalog = load_catalog(imported.repository)
    backend = OnnxRuntimeBackend(imported.repository, threads=2)
    run = run_volume(catalog.pipelines["deepbet"], catalog, template.paths, backend)
    ours = run.findings.labels > 0
    to_deepbet = dice(ours, template.deepbet)
    assert to_deepbet >= MIN_DICE_TO_DEEPBET, to_deepbet
    canonical = to_ras(ours, closest_ras(ras_directions(template.geometry)))
    to_template = dice(canonical, template.brain)
    print(f"Dice to deepbet {to_deepbet:.5f}, to the template's GM+WM {to_template:.4f}")
    assert to_template >= MIN_DICE_TO_TEMPLATE, to_template
    (segment,) = run.findings.segments
    assert (segment.label, segment.type.meaning) == ("brain", "Brain")
    (measured,) = run.findings.measurements
    voxel_ml = float(np.prod(template.geometry.spacing)) / 1000
    assert measured.volume_ml == pytest.approx(np.count_nonzero(template.deepbet) * voxel_ml, 0.01)


def test_a_volume_without_contrast_is_refused_with_the_reason(
    imported: Imported, tmp_path: Path
) -> None:
    catalog = load_catalog(imported.repository)
    backend = OnnxRuntimeBackend(imported.repository, threads=2)
    contract = catalog.contract(ModelRef("deepbet", 1))
    flat = write_mr_series(np.full((40, 48, 30), 7.0, np.float32), np.eye(4), tmp_path / "flat")
    with pytest.raises(UnsupportedSeries, match="no contrast"):
        segment_ct(load_series(flat), backend, contract)


def test_torchscript_import_refuses_a_bad_file_or_template_and_leaves_the_repository(
    imported: Imported, tmp_path: Path
) -> None:
    before = sorted(str(path) for path in imported.repository.rglob("*"))
    not_torchscript = tmp_path / "weights.pt"
    not_torchscript.write_bytes(b"\x80\x04not a torchscript archive")
    template = ROOT / "appliance" / "inference" / "recipes" / "deepbet_locator.yaml"
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(
        template.read_text().replace("[-1, 2, 128, 128, 128]", "[-1, 3, 128, 128, 128]")
    )
    for source, contract, reason in (
        (not_torchscript, template, "cannot be exported"),
        (template, wrong, "not a valid contract"),
    ):
        done = run_cli(
            imported.config, "models", "import", "torchscript", str(source), "--contract",
            str(contract), "--name", "rejected", timeout=IMPORT_TIMEOUT,
        )  # fmt: skip
        assert done.returncode == EXIT_REFUSED, done.stdout + done.stderr
        assert reason in done.stderr, done.stderr
    assert sorted(str(path) for path in imported.repository.rglob("*")) == before
