"""The appliance end to end: a real Orthanc auto-routes a stable study to the appliance and
receives the SEG and SR back into the same study, untouched by anyone. Once for each way of
running: `appliance serve` on the embedded defaults (kombu's SQLite transport); production's
listen, sweep and worker roles as processes of their own on PostgreSQL with Redis, and with
RabbitMQ; inference through the real Triton server."""

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from appliance.inference.triton_cpu import CpuTritonServer, TritonUnavailable
from appliance.phantoms.ct import Grid, generate_ct
from appliance.phantoms.dicom import write_ct_series, write_us_cine
from appliance.phantoms.ultrasound import generate_cine
from tests.support.cli import run_cli
from tests.support.datasets import PATIENT_ID, PATIENT_NAME
from tests.support.dcmtk import storescu
from tests.support.mr import mni_template, write_mr_series
from tests.support.nnunet import CODES, RESULT, require_importer_venv
from tests.support.orthanc import AE_TITLE, running_orthanc
from tests.support.processes import (
    REPOSITORY,
    Mode,
    appliance_config,
    production_mode,
    running_roles,
    serve,
    wait_for_modalities,
)
from tests.support.services import free_port, missing_service

pytestmark = pytest.mark.usefixtures("dcmtk")
ACCESSION = "ACC-SECRET-7731"  # SH: 16 characters at most


@pytest.fixture(params=["embedded", "redis+postgresql", "rabbitmq+postgresql", "triton"])
def mode(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mode]:
    """How the appliance runs: `serve` on the embedded defaults; production's roles as
    processes of their own on PostgreSQL with Redis or RabbitMQ; inference through the real
    Triton server."""
    if request.param == "embedded":
        yield Mode({})
    elif request.param in ("redis+postgresql", "rabbitmq+postgresql"):
        broker = request.param.split("+")[0]
        with production_mode(broker, request.getfixturevalue("postgres_url")) as production:
            yield production
    else:
        server = CpuTritonServer(REPOSITORY, tmp_path / "triton")
        try:
            server.start()
        except TritonUnavailable as exc:
            missing_service(str(exc))
        yield Mode(
            {
                "inference": {
                    "backend": "triton",
                    "triton_url": f"127.0.0.1:{server.grpc_port}",
                    "triton_protocol": "grpc",
                }
            }
        )
        server.stop()


def test_orthanc_routes_a_cine_and_gets_seg_and_sr_back(mode: Mode, tmp_path: Path) -> None:
    cine = write_us_cine(generate_cine(300_005, frames=8), tmp_path / "cine.dcm")
    identified = dcmread(cine)  # a patient whose name and IDs no log line may show
    identified.PatientName = PATIENT_NAME
    identified.PatientID = PATIENT_ID
    identified.AccessionNumber = ACCESSION
    identified.save_as(cine)
    study = str(identified.StudyInstanceUID)
    port = free_port()
    with (
        running_orthanc(tmp_path / "pacs", route_to=("APPLIANCE", port)) as pacs,
        running_roles(tmp_path, port, pacs.dicom_port, mode),
    ):
        sent = storescu(pacs.dicom_port, [cine], called=AE_TITLE)
        assert sent.returncode == 0, sent.stderr
        # the cine, its SEG and SR, and the cine with the outlines drawn for viewers
        modalities = wait_for_modalities(pacs, ["SEG", "SR", "US", "US"], 120)
        logs = [log.read_text(errors="replace")[-3000:] for log in tmp_path.glob("*.log")]
        assert modalities == ["SEG", "SR", "US", "US"], "\n".join(logs)
        for identifier in pacs.get("/instances"):
            stored = dcmread(BytesIO(pacs.get(f"/instances/{identifier}/file")))
            assert stored.StudyInstanceUID == study
        time.sleep(4)  # Orthanc's study is stable again: it must not route it twice
        assert pacs.instance_count() == 4
    logs = {log.name: log.read_text(errors="replace") for log in tmp_path.glob("*.log")}
    assert logs, "the roles wrote no log"
    for secret in (*PATIENT_NAME.split("^"), PATIENT_ID, ACCESSION):
        assert [name for name, text in logs.items() if secret in text] == [], secret


def test_demo_follows_its_studies_to_the_pacs(tmp_path: Path) -> None:
    port = free_port()
    with running_orthanc(tmp_path / "pacs") as pacs:
        appliance = serve(tmp_path, port, pacs.dicom_port, {})
        try:
            demo = subprocess.run(
                [
                    sys.executable, "-m", "appliance", "--config", str(tmp_path / "appliance.yaml"),
                    "demo", "--port", str(port), "--calling", AE_TITLE, "--ct-slices", "80",
                    "--frames", "6", "--timeout", "240",
                ],
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
        finally:
            appliance.terminate()
            appliance.wait(timeout=30)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        # SEG and SR for each study, and the cine with its outlines where the cyst was found
        assert demo.stdout.count("SEG             -> pacs: delivered") == 2
        assert demo.stdout.count("SR (TID 1500)   -> pacs: delivered") == 2
        assert demo.stdout.count("-> pacs: delivered") == pacs.instance_count()
        assert "delivering -> done" in demo.stdout
        assert demo.stdout.count("findings: http://127.0.0.1:") == 2


def imported_and_routed(
    tmp_path: Path, imports: list[tuple[str, ...]], rule: dict[str, object], series: list[Path]
) -> dict[str, Dataset]:
    """An operator runs the `appliance` commands `imports` against a copy of the reference
    repository and routes by `rule`; a PACS sends `series`. What the PACS then holds that is
    not the series, by modality."""
    repository = tmp_path / "repository"
    shutil.copytree(REPOSITORY, repository)
    mode = Mode({"inference": {"repository": str(repository)}, "routing": {"rules": [rule]}})
    port = free_port()
    with running_orthanc(tmp_path / "pacs", route_to=("APPLIANCE", port)) as pacs:
        config = appliance_config(tmp_path, port, pacs.dicom_port, mode.settings)
        for command in [("db", "upgrade"), *imports]:
            done = run_cli(config, *command, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
        with running_roles(tmp_path, port, pacs.dicom_port, mode):
            sent = storescu(pacs.dicom_port, series, called=AE_TITLE)
            assert sent.returncode == 0, sent.stderr
            modality = str(dcmread(series[0], stop_before_pixels=True).Modality)
            expected = [modality] * len(series) + ["SEG", "SR"]
            found = wait_for_modalities(pacs, expected, 240)
            logs = [log.read_text(errors="replace")[-3000:] for log in tmp_path.glob("*.log")]
            assert found == sorted(expected), "\n".join(logs)
        results = {}
        for identifier in pacs.get("/instances"):
            stored = dcmread(BytesIO(pacs.get(f"/instances/{identifier}/file")))
            if stored.Modality in ("SEG", "SR"):
                results[str(stored.Modality)] = stored
    return results


def test_orthanc_routes_a_ct_to_an_imported_nnunet_model_and_gets_seg_and_sr_back(
    tmp_path: Path,
) -> None:
    """An operator imports the nnU-Net fixture (it arrives in shadow), enables it, and routes
    CT to its pipeline: the PACS gets its SEG and SR."""
    require_importer_venv()
    series = write_ct_series(
        generate_ct(902_010, Grid((24, 96, 96), (5.0, 3.5, 3.5))), tmp_path / "ct"
    )
    results = imported_and_routed(
        tmp_path,
        [
            ("models", "import", "nnunet", str(RESULT), "--name", "phantom_organs",
             "--codes", str(CODES), "--synthetic"),
            ("models", "enable", "phantom_organs", "--version", "1"),
        ],
        {"name": "phantom-organs", "pipeline": "phantom_organs", "modalities": ["CT"]},
        series,
    )  # fmt: skip
    seg, sr = results["SEG"], results["SR"]
    labels = {str(item.SegmentLabel) for item in seg.SegmentSequence}
    assert "liver" in labels, labels
    algorithms = {
        str(item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName)
        for item in seg.SegmentSequence
    }
    assert algorithms == {"phantom_organs"}
    texts = " ".join(str(e.value) for e in sr.iterall() if e.keyword == "TextValue")
    assert "Volumes: liver " in texts
    assert "not for clinical use" in texts, "a model trained on synthetic data is flagged"


def test_orthanc_routes_a_t1_mr_to_deepbet_and_gets_the_brain_back(tmp_path: Path) -> None:
    """A real model with real weights end to end: deepbet imported from its package, a real
    T1 volume (the MNI152 template as a DICOM MR series) routed to its pipeline; the PACS gets
    a SEG of the brain and an SR with its volume."""
    require_importer_venv()
    template = mni_template(tmp_path / "template")
    series = write_mr_series(
        np.load(template["volume"]), np.load(template["affine"]), tmp_path / "mr"
    )
    results = imported_and_routed(
        tmp_path,
        [("models", "import", "deepbet", "--state", "enabled")],
        {"name": "brain-mr", "pipeline": "deepbet", "modalities": ["MR"]},
        series,
    )
    seg, sr = results["SEG"], results["SR"]
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "brain"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "12738006"
    assert len(seg.PerFrameFunctionalGroupsSequence) > 100, "a brain over many slices"
    texts = " ".join(str(e.value) for e in sr.iterall() if e.keyword == "TextValue")
    assert "Volumes: brain " in texts, texts
    assert "not for clinical use" not in texts, "real weights: not flagged as synthetic"
