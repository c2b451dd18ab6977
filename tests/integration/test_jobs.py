"""Jobs from received studies to results at a real PACS: the listener receives, the study
completes, the job runs the routed pipeline, and Orthanc ends up with the SEG and SR; a study
with bad input fails with its reason and the next one goes through."""

import fcntl
import re
import shutil
import threading
import time
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.app.delivery import Deliverer
from appliance.app.job_runner import JobRunner
from appliance.app.lane import InferenceLane
from appliance.config import Settings
from appliance.domain.jobs import JobState
from appliance.inference.triton_cpu import CpuTritonServer, TritonUnavailable
from appliance.phantoms.ct import Grid, generate_ct
from appliance.phantoms.dicom import write_ct_series, write_us_cine
from appliance.phantoms.ultrasound import generate_cine
from appliance.store.models import AuditEvent, Delivery, Job, StageTiming
from appliance.store.queries import DashboardQueries
from appliance.store.study_ledger import StudyLedger
from tests.support.dcmtk import storescu
from tests.support.orthanc import AE_TITLE, running_orthanc
from tests.support.services import ON_SQLITE_ONLY, missing_service
from tests.support.settings import TEST_PEERS
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("dcmtk")
REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


def appliance_for(start, pacs_port: int, outbox: Path, **sections):  # type: ignore[no-untyped-def]
    """A listener whose settings route to the committed models and deliver to the PACS."""
    return start(
        **sections,
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
        lane = tmp_path / "lane"
        runner = JobRunner(running.settings, running.engine, lane=InferenceLane(lane))
        deliverer = Deliverer(running.settings.delivery, running.engine)

        bad = complete(running.settings, running.engine, str(dcmread(ct[0]).StudyInstanceUID))
        good = complete(running.settings, running.engine, str(dcmread(cine).StudyInstanceUID))
        assert runner.run(bad) is JobState.FAILED
        with lane.open("ab") as other_job:  # another job's models hold the lane for a while
            fcntl.flock(other_job, fcntl.LOCK_EX)
            threading.Timer(1.0, fcntl.flock, (other_job, fcntl.LOCK_UN)).start()
            assert runner.run(good) is JobState.DELIVERING
        assert runner.run(good) is JobState.DELIVERING  # claimed once: a second run is a no-op
        # the cine's SEG, SR and outlined copy
        assert deliverer.deliver_due(datetime.now(UTC)).delivered == 3
        assert runner.jobs.settle_deliveries(datetime.now(UTC)) == [(good, JobState.DONE)]
        stored = {
            pacs.get(f"/instances/{i}/simplified-tags")["Modality"] for i in pacs.get("/instances")
        }
    assert stored == {"SEG", "SR", "US"}
    with Session(running.engine) as session:
        encoded = session.scalars(
            select(AuditEvent.detail).where(
                AuditEvent.job_id == good, AuditEvent.detail.startswith("running -> encoded")
            )
        ).one()
    waited = re.search(r"([0-9.]+) s waiting for another job's models", encoded)
    assert waited is not None, encoded
    assert float(waited.group(1)) >= 0.5
    studies = StudyLedger(running.engine, running.settings.study.completion_policy())
    (failed,) = studies.show(str(dcmread(ct[0]).StudyInstanceUID)).jobs
    assert failed.state == JobState.FAILED
    assert failed.reason is not None
    assert "uneven or has gaps" in failed.reason


@ON_SQLITE_ONLY
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


@ON_SQLITE_ONLY
def test_an_echo_is_declined_and_a_withheld_finding_never_reaches_the_pacs(
    start, tmp_path: Path
) -> None:
    """The real echocardiogram cine in pydicom's package (Image Type EPICARDIAL) goes to no
    model, with the reason in the job's record; a CT whose field of view cuts the liver gets
    its other findings delivered and the liver held back, as `withhold` asks."""
    echo = tmp_path / "echo" / "echo.dcm"
    echo.parent.mkdir()
    shutil.copyfile(get_testdata_file("examples_ybr_color.dcm", download=False) or "", echo)
    ct = write_ct_series(generate_ct(13, Grid((20, 48, 48), (5.0, 7.0, 7.0))), tmp_path / "ct")

    with running_orthanc(tmp_path / "pacs") as pacs:
        running = start(
            inference={"repository": str(REPOSITORY), "threads": 2, "low_confidence": "withhold"},
            delivery={
                "outbox": str(tmp_path / "outbox"),
                "destinations": [
                    {"name": "pacs", "ae_title": AE_TITLE, "host": "127.0.0.1",
                     "port": pacs.dicom_port}
                ],
            },
        )  # fmt: skip
        for files, options in (([echo], ["-xy"]), (ct, [])):  # the echo is JPEG Baseline
            sent = storescu(running.port, files, *options)
            assert sent.returncode == 0, sent.stderr
        runner = JobRunner(running.settings, running.engine)
        deliverer = Deliverer(running.settings.delivery, running.engine)
        declined = complete(running.settings, running.engine, str(dcmread(echo).StudyInstanceUID))
        cut = complete(running.settings, running.engine, str(dcmread(ct[0]).StudyInstanceUID))

        assert runner.run(declined) is JobState.DELIVERING
        record = " ".join(detail for _, detail in runner.jobs.history(declined))
        assert "running -> encoded: 0 results; US series" in record
        assert "not given to pipeline us: outside its models' domain" in record
        assert "EPICARDIAL is none of ABDOMINAL" in record

        assert runner.run(cut) is JobState.DELIVERING
        record = " ".join(detail for _, detail in runner.jobs.history(cut))
        assert "low-confidence findings withheld" in record
        row = DashboardQueries(running.engine).job(cut)
        assert row is not None
        assert row.job.withheld >= 1
        assert row.job.flagged == 0
        assert deliverer.deliver_due(datetime.now(UTC)).delivered == 2
        settled = dict(runner.jobs.settle_deliveries(datetime.now(UTC)))
        assert settled == {declined: JobState.DONE, cut: JobState.DONE}
        stored = [pacs.get(f"/instances/{i}/file") for i in pacs.get("/instances")]
    results = {ds.Modality: ds for ds in (dcmread(BytesIO(data)) for data in stored)}
    assert set(results) == {"SEG", "SR"}  # from the CT alone
    labels = [str(item.SegmentLabel) for item in results["SEG"].SegmentSequence]
    assert "liver" not in labels
    assert not any(label.endswith("(low confidence)") for label in labels)
    texts = [
        str(element.value) for element in results["SR"].iterall() if element.keyword == "TextValue"
    ]
    assert any("Withheld as low confidence: liver (cut by the field of view" in t for t in texts)


@ON_SQLITE_ONLY
def test_each_destination_gets_the_seg_form_it_accepts(start, tmp_path: Path) -> None:
    """An older PACS takes the BINARY SEG, a newer archive (over STOW-RS) the Label Map; each
    gets the SR that references its own SEG, and the two forms never share a UID."""
    ct = write_ct_series(generate_ct(13, Grid((20, 48, 48), (5.0, 7.0, 7.0))), tmp_path / "ct")
    with (
        running_orthanc(tmp_path / "old") as old,
        running_orthanc(tmp_path / "new", dicomweb=True) as new,
    ):
        running = start(
            inference={"repository": str(REPOSITORY), "threads": 2},
            results={"segmentation_type": "binary"},
            delivery={
                "outbox": str(tmp_path / "outbox"),
                "destinations": [
                    {"name": "old", "ae_title": AE_TITLE, "host": "127.0.0.1",
                     "port": old.dicom_port},
                    {"name": "new", "kind": "stow", "url": new.dicomweb_url,
                     "segmentation_type": "labelmap"},
                ],
            },
        )  # fmt: skip
        assert storescu(running.port, ct).returncode == 0
        job = complete(running.settings, running.engine, str(dcmread(ct[0]).StudyInstanceUID))
        runner = JobRunner(running.settings, running.engine)
        assert runner.run(job) is JobState.DELIVERING
        deliverer = Deliverer(running.settings.delivery, running.engine)
        assert deliverer.deliver_due(datetime.now(UTC)).delivered == 4
        received = {
            name: {
                ds.Modality: ds
                for ds in (
                    dcmread(BytesIO(pacs.get(f"/instances/{i}/file")))
                    for i in pacs.get("/instances")
                )
                if ds.Modality in ("SEG", "SR")
            }
            for name, pacs in (("old", old), ("new", new))
        }
    assert str(received["old"]["SEG"].SegmentationType) == "BINARY"
    assert str(received["new"]["SEG"].SegmentationType) == "LABELMAP"
    for objects in received.values():
        evidence = {
            str(item.ReferencedSOPInstanceUID)
            for study in objects["SR"].CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for item in series.ReferencedSOPSequence
        }
        assert objects["SEG"].SOPInstanceUID in evidence
    uids = [ds.SOPInstanceUID for objects in received.values() for ds in objects.values()]
    assert len(set(uids)) == 4


def test_a_job_started_on_release_holds_its_results_for_the_settle_and_a_late_instance_cancels_it(
    start, tmp_path: Path
) -> None:
    """A peer that sends studies whole: the job starts as the association is released, and
    its results leave only after the settle; a study that gets another instance
    within the settle re-opens, and the job of its first version is cancelled, never
    delivered; the new version's job delivers."""
    cines = [
        write_us_cine(generate_cine(300_010 + k, frames=4), tmp_path / f"us{k}" / "cine.dcm")
        for k in range(3)
    ]
    # a settle of 5 s: the late instances must come within it under a loaded CI machine
    peers = [
        {**peer, "complete_on_release": True, "release_settle_seconds": 5} for peer in TEST_PEERS
    ]
    with running_orthanc(tmp_path / "pacs") as pacs:
        running = appliance_for(
            start,
            pacs.dicom_port,
            tmp_path / "outbox",
            listener={"port": 0, "peers": peers},
            study={"hint_settle_seconds": 30},  # the release, not the count hints, decides
        )
        studies = StudyLedger(running.engine, running.settings.completion_policy())
        runner = JobRunner(running.settings, running.engine, lane=InferenceLane(tmp_path / "l"))

        def released(cine: Path) -> int:
            assert storescu(running.port, [cine]).returncode == 0
            studies.fold_pending(datetime.now(UTC))
            found = wait_for(lambda: studies.start_released(datetime.now(UTC)), 10, interval=0.1)
            (study,) = found
            assert study.reason.value == "released"
            return study.job_id

        held = released(cines[0])
        assert runner.run(held) is JobState.DELIVERING
        with Session(running.engine) as session:
            job = session.get_one(Job, held)
            assert job.results_after is not None
            encoded = session.scalars(
                select(AuditEvent.occurred_at).where(
                    AuditEvent.job_id == held,
                    AuditEvent.detail.startswith("running -> encoded"),
                )
            ).one()
            waited = session.scalars(
                select(StageTiming.seconds).where(
                    StageTiming.job_id == held, StageTiming.stage == "settle"
                )
            ).one()
        assert encoded >= job.results_after, "its results waited for the settle"
        assert waited > 0

        def another(cine: Path) -> None:
            """A second cine of the same series."""
            late = dcmread(cine)
            late.SOPInstanceUID = late.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            late.InstanceNumber = 2
            late.save_as(cine.with_name("late.dcm"), enforce_file_format=True)
            assert storescu(running.port, [cine.with_name("late.dcm")]).returncode == 0
            studies.fold_pending(datetime.now(UTC))

        superseded = released(cines[1])
        another(cines[1])  # within the settle
        assert runner.run(superseded) is JobState.CANCELLED
        (_, reason), *_ = reversed(runner.jobs.history(superseded))
        assert "arrived within the settle after its sender's release" in reason
        (again,) = wait_for(lambda: studies.start_released(datetime.now(UTC)), 10, interval=0.1)
        assert again.version == 2
        assert runner.run(again.job_id) is JobState.DELIVERING
        kept = released(cines[2])
        time.sleep(5.5)
        another(cines[2])  # after the settle: the next version's, not a reason to hold this one
        assert runner.run(kept) is JobState.DELIVERING

        delivered = Deliverer(running.settings.delivery, running.engine).deliver_due(
            datetime.now(UTC)
        )
        # SEG, SR and outlined copy of each cine its job found: the first study's one, the
        # second's two (by its second version's job) and the third's two (its first
        # version's job ran after the late one came); none of the cancelled job's
        assert delivered.delivered == 15
        with Session(running.engine) as session:
            sent = session.scalars(select(Delivery.job_id)).all()
        assert sorted(set(sent)) == sorted([held, again.job_id, kept])
