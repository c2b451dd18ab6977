"""Faults on the running appliance: a worker killed mid-job and mid-delivery, the PACS down
when results are ready, and a study with bad input."""

import signal
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from appliance.phantoms.ct import Grid, generate_ct
from appliance.phantoms.dicom import write_ct_series, write_us_cine
from appliance.phantoms.ultrasound import generate_cine
from appliance.store.models import AuditEvent, Job
from tests.support.dcmtk import storescu
from tests.support.misbehaving_pacs import MisbehavingPacs
from tests.support.orthanc import AE_TITLE, running_orthanc
from tests.support.processes import serve, wait_for_modalities
from tests.support.services import free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("dcmtk")


def worker_of(appliance: psutil.Process) -> psutil.Process:
    """`serve`'s worker: the child started by multiprocessing's spawn, not its resource
    tracker."""
    for child in appliance.children():
        command = " ".join(child.cmdline())
        if "spawn_main" in command and "resource_tracker" not in command:
            return child
    raise LookupError("serve has no worker process")


def events(engine: Engine, event_type: str) -> list[str]:
    with Session(engine) as session:
        return [
            detail or ""
            for detail in session.scalars(
                select(AuditEvent.detail).where(AuditEvent.event_type == event_type)
            )
        ]


def job_states(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return list(session.scalars(select(Job.state).order_by(Job.id)))


def running_only(engine: Engine) -> bool:
    """Whether the one job is running (False while serve has not created its database)."""
    try:
        return job_states(engine) == ["running"]
    except OperationalError:
        return False


def test_a_worker_killed_mid_job_leaves_one_copy_of_each_result(tmp_path: Path) -> None:
    phantom = generate_ct(14, Grid((120, 200, 200), (2.5, 2.0, 2.0)), lesion_count=2)
    series = write_ct_series(phantom, tmp_path / "ct")
    port = free_port()
    database = tmp_path / "appliance.db"
    with running_orthanc(tmp_path / "pacs", route_to=("APPLIANCE", port)) as pacs:
        appliance = serve(tmp_path, port, pacs.dicom_port, {"queue": {"lease_seconds": 6}})
        try:
            assert storescu(pacs.dicom_port, series, called=AE_TITLE).returncode == 0
            engine = create_engine(f"sqlite:///{database}")
            wait_for(lambda: running_only(engine), 90, interval=0.05)
            killed = worker_of(psutil.Process(appliance.pid))
            killed.send_signal(signal.SIGKILL)
            modalities = wait_for_modalities(pacs, ["CT"] * len(series) + ["SEG", "SR"], 180)
            assert modalities.count("SEG") == 1
            assert modalities.count("SR") == 1
            with Session(engine) as session:
                (job,) = session.scalars(select(Job)).all()
                details = session.scalars(
                    select(AuditEvent.detail).where(AuditEvent.event_type == "job_state")
                ).all()
            assert job.attempts == 2
            assert "running -> queued: lease expired: worker lost" in details
        finally:
            appliance.terminate()
            appliance.wait(timeout=30)


def test_a_study_with_bad_input_fails_and_the_next_goes_through(tmp_path: Path) -> None:
    broken = write_ct_series(generate_ct(15, Grid((20, 48, 48), (5.0, 7.0, 7.0))), tmp_path / "ct")
    del broken[7]  # a gap: the CT pipeline refuses the series with its reason
    cine = write_us_cine(generate_cine(300_006, frames=6), tmp_path / "us" / "cine.dcm")
    port = free_port()
    with running_orthanc(tmp_path / "pacs", route_to=("APPLIANCE", port)) as pacs:
        appliance = serve(tmp_path, port, pacs.dicom_port, {})
        try:
            assert storescu(pacs.dicom_port, broken, called=AE_TITLE).returncode == 0
            assert storescu(pacs.dicom_port, [cine], called=AE_TITLE).returncode == 0
            expected = sorted(["CT"] * len(broken) + ["US", "SEG", "SR", "US"])  # US: outlined
            assert wait_for_modalities(pacs, expected, 120) == expected
            # The cine's results may arrive before the broken series' job has run.
            engine = create_engine(f"sqlite:///{tmp_path}/appliance.db")
            wait_for(lambda: sorted(job_states(engine)) == ["done", "failed"], 60)
            assert wait_for_modalities(pacs, expected, 0) == expected  # none from the failure
        finally:
            appliance.terminate()
            appliance.wait(timeout=30)
    with Session(engine) as session:
        jobs = {job.state: job.reason for job in session.scalars(select(Job))}
    assert set(jobs) == {"failed", "done"}
    assert "uneven or has gaps" in (jobs["failed"] or "")


def test_results_wait_for_a_pacs_that_is_down_and_arrive_once_when_it_is_back(
    tmp_path: Path,
) -> None:
    cine = write_us_cine(generate_cine(300_007, frames=6), tmp_path / "us" / "cine.dcm")
    port, pacs_port = free_port(), free_port()
    database = tmp_path / "appliance.db"
    appliance = serve(
        tmp_path,
        port,
        pacs_port,
        {"delivery": {"retry_initial_seconds": 0.5, "retry_max_seconds": 1.0}},
    )
    try:
        assert storescu(port, [cine], calling=AE_TITLE).returncode == 0  # from the modality
        engine = create_engine(f"sqlite:///{database}")
        wait_for(lambda: len(events(engine, "delivery_retry")) >= 4, 60)  # two rounds
        assert job_states(engine) == ["delivering"]

        with running_orthanc(tmp_path / "pacs", dicom_port=pacs_port) as pacs:
            results = ["SEG", "SR", "US"]  # and the outlined cine
            assert wait_for_modalities(pacs, results, 60) == results
            wait_for(lambda: job_states(engine) == ["done"], 30)
            time.sleep(2)  # a second copy would have arrived by now
            assert wait_for_modalities(pacs, results, 0) == results
        assert len(events(engine, "result_delivered")) == 3
    finally:
        appliance.terminate()
        appliance.wait(timeout=30)


def test_a_worker_killed_mid_delivery_leaves_each_result_delivered_once(tmp_path: Path) -> None:
    cine = write_us_cine(generate_cine(300_008, frames=6), tmp_path / "us" / "cine.dcm")
    port = free_port()
    database = tmp_path / "appliance.db"
    pacs = MisbehavingPacs(delay=4.0)  # the worker is still waiting for its answer when killed
    appliance = serve(
        tmp_path,
        port,
        pacs.port,
        {
            "delivery": {
                "interval_seconds": 3,
                "retry_initial_seconds": 0.5,
                "destinations": [
                    {  # the killed worker's claim on the result lapses after 2 x 5 s
                        "name": "pacs",
                        "ae_title": AE_TITLE,
                        "host": "127.0.0.1",
                        "port": pacs.port,
                        "timeout_seconds": 5,
                    }
                ],
            }
        },
    )
    try:
        assert storescu(port, [cine], calling=AE_TITLE).returncode == 0
        wait_for(lambda: pacs.received, 60)
        worker_of(psutil.Process(appliance.pid)).send_signal(signal.SIGKILL)
        pacs.delay = 0.0
        engine = create_engine(f"sqlite:///{database}")
        wait_for(lambda: job_states(engine) == ["done"], 90)
        delivered = events(engine, "result_delivered")
    finally:
        appliance.terminate()
        appliance.wait(timeout=30)
        pacs.stop()
    assert len(delivered) == 3
    # one SEG, one SR, one outlined cine: a re-send carries the same UID
    assert len(set(pacs.stored)) == 3
