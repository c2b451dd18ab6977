"""Jobs from received studies to results at a real PACS: the listener receives, the study
completes, the job runs the routed pipeline, and Orthanc ends up with the SEG and SR; a study
with bad input fails with its reason and the next one goes through."""

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import dcmread

from appliance.app.delivery import Deliverer
from appliance.app.job_runner import JobRunner
from appliance.config import Settings
from appliance.domain.jobs import JobState
from appliance.inference.triton_cpu import CpuTritonServer, TritonUnavailable
from appliance.phantoms.ct import Grid, generate_ct
from appliance.phantoms.dicom import write_ct_series, write_us_cine
from appliance.phantoms.ultrasound import generate_cine
from appliance.store.study_ledger import StudyLedger
from tests.support.dcmtk import storescu
from tests.support.orthanc import AE_TITLE, running_orthanc
from tests.support.services import missing_service
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("dcmtk")
REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


def appliance_for(start, pacs_port: int, outbox: Path):  # type: ignore[no-untyped-def]
    """A listener whose settings route to the committed models and deliver to the PACS."""
    return start(
        inference={"repository": str(REPOSITORY), "threads": 2},
        delivery={
            "outbox": str(outbox),
            "destinations": [
                {"name": "pacs", "ae_title": AE_TITLE, "host": "127.0.0.1", "port": pacs_port}
            ],
        },
    )


def complete(settings: Settings, engine, study_uid: str) -> int:  # type: ignore[no-untyped-def]
    studies = StudyLedger(engine, settings.study.completion_policy())
    studies.fold_pending(datetime.now(UTC))
    return studies.force_complete(study_uid, datetime.now(UTC), "test").job_id


def test_a_cine_goes_round_trip_and_bad_input_fails_alone(start, tmp_path: Path) -> None:
    cine = write_us_cine(generate_cine(300_004, frames=6), tmp_path / "us" / "cine.dcm")
    phantom = generate_ct(13, Grid((20, 48, 48), (5.0, 7.0, 7.0)))
    ct = write_ct_series(phantom, tmp_path / "ct")
    del ct[5]  # a gap in the series: the CT pipeline must refuse it with the reason

    with running_orthanc(tmp_path / "pacs") as pacs:
        running = appliance_for(start, pacs.dicom_port, tmp_path / "outbox")
        for files in ([cine], ct):
            sent = storescu(running.port, files)
            assert sent.returncode == 0, sent.stderr
        runner = JobRunner(running.settings, running.engine)
        deliverer = Deliverer(running.settings.delivery, running.engine)

        bad = complete(running.settings, running.engine, str(dcmread(ct[0]).StudyInstanceUID))
        good = complete(running.settings, running.engine, str(dcmread(cine).StudyInstanceUID))
        assert runner.run(bad) is JobState.FAILED
        assert runner.run(good) is JobState.DELIVERING
        assert runner.run(good) is JobState.DELIVERING  # claimed once: a second run is a no-op
        assert deliverer.deliver_due(datetime.now(UTC)).delivered == 2
        assert runner.jobs.settle_deliveries(datetime.now(UTC)) == [(good, JobState.DONE)]
        stored = {
            pacs.get(f"/instances/{i}/simplified-tags")["Modality"] for i in pacs.get("/instances")
        }
    assert stored == {"SEG", "SR"}
    studies = StudyLedger(running.engine, running.settings.study.completion_policy())
    (failed,) = studies.show(str(dcmread(ct[0]).StudyInstanceUID)).jobs
    assert failed.state == JobState.FAILED
    assert failed.reason is not None
    assert "uneven or has gaps" in failed.reason


def test_an_unreachable_triton_sends_the_job_back_until_it_returns(start, tmp_path: Path) -> None:
    server = CpuTritonServer(REPOSITORY, tmp_path / "triton")  # ports chosen, not started yet
    cine = write_us_cine(generate_cine(300_007, frames=4), tmp_path / "us" / "cine.dcm")
    running = start(
        inference={
            "repository": str(REPOSITORY),
            "backend": "triton",
            "triton_url": f"127.0.0.1:{server.grpc_port}",
        },
        delivery={"outbox": str(tmp_path / "outbox")},
        queue={"max_attempts": 10},
    )
    assert storescu(running.port, [cine]).returncode == 0
    job = complete(running.settings, running.engine, str(dcmread(cine).StudyInstanceUID))
    runner = JobRunner(running.settings, running.engine)

    assert runner.run(job) is JobState.QUEUED
    history = runner.jobs.history(job)
    assert history[-1][1].startswith("running -> queued: inference unavailable (attempt 1)")

    try:
        server.start()
    except TritonUnavailable as exc:
        missing_service(str(exc))
    try:
        # gRPC reconnects with its own backoff: the first attempts after the start may still
        # find the channel down, as a worker's retries would.
        def attempt() -> JobState | None:
            state = runner.run(job)
            return None if state is JobState.QUEUED else state

        assert wait_for(attempt, 8, interval=1) is JobState.DELIVERING
    finally:
        server.stop()
    # No destinations: with nothing to deliver, the job is done.
    assert runner.jobs.settle_deliveries(datetime.now(UTC)) == [(job, JobState.DONE)]
