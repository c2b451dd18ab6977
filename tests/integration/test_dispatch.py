"""Dispatch through a real broker: the workers are handed at most `dispatch_window` jobs,
urgent ones first on the urgent queue, and a finished job frees its place for the next."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from appliance.app.dispatch import Dispatcher
from appliance.app.job_runner import JobRunner
from appliance.domain.jobs import JobState, UnknownJob
from appliance.queue.celery_app import QUEUES, make_app
from appliance.store.job_ledger import JobLedger, LostJob
from appliance.store.models import Job
from appliance.store.study_ledger import StudyLedger
from tests.support.datasets import new_series, write_series
from tests.support.dcmtk import storescu
from tests.support.settings import make_settings

pytestmark = pytest.mark.usefixtures("dcmtk")


def queued_messages(app) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        return {name: channel.queue_declare(name, passive=True).message_count for name in QUEUES}


def test_urgent_first_within_the_window(start, tmp_path: Path) -> None:
    running = start(
        queue={"broker_url": f"sqla+sqlite:///{tmp_path}/broker.db", "dispatch_window": 2},
        routing={
            "rules": [
                {"name": "stroke", "pipeline": "ct", "priority": "urgent",
                 "calling_aes": ["PYSCU"]},
                {"name": "routine", "pipeline": "ct", "modalities": ["CT"]},
            ]
        },
    )  # fmt: skip
    studies = StudyLedger(running.engine, running.settings.study.completion_policy())
    job_ids = []
    for calling in ("STORESCU", "STORESCU", "STORESCU", "PYSCU"):  # three routine, then urgent
        files = write_series(new_series(2), tmp_path / f"series-{len(job_ids)}")
        assert storescu(running.port, files, calling=calling).returncode == 0
        studies.fold_pending(datetime.now(UTC))
        uid = str(dcmread(files[0]).StudyInstanceUID)
        job_ids.append(studies.force_complete(uid, datetime.now(UTC), "test").job_id)
    first, second, third, urgent = job_ids

    dispatcher = Dispatcher(running.settings, running.engine)
    app = make_app(running.settings.queue)
    jobs = JobLedger(running.engine)
    assert dispatcher.dispatch(datetime.now(UTC)) == 2
    assert queued_messages(app) == {"urgent": 1, "normal": 1}
    assert dispatcher.dispatch(datetime.now(UTC)) == 0  # the window is full

    # The worker takes the urgent job and finishes it: its place goes to the next routine job.
    assert jobs.claim(urgent, datetime.now(UTC), timedelta(minutes=5)) is not None
    assert dispatcher.dispatch(datetime.now(UTC)) == 0  # running still counts
    jobs.move(urgent, JobState.FAILED, datetime.now(UTC), "test", attempt=1)
    assert dispatcher.dispatch(datetime.now(UTC)) == 1
    assert queued_messages(app) == {"urgent": 1, "normal": 2}

    assert dispatched(running.engine) == {urgent: "urgent", first: "normal", second: "normal"}
    assert third not in dispatched(running.engine)


def dispatched(engine: Engine) -> dict[int, str]:
    """Jobs sent to the broker, with the priority they were sent with."""
    with Session(engine) as session:
        rows = session.execute(
            select(Job.id, Job.priority).where(Job.dispatched_at.is_not(None))
        ).all()
    return {job_id: priority for job_id, priority in rows}


def test_a_message_for_a_job_the_database_does_not_hold_is_refused_by_name(
    tmp_path: Path, db_url: str, engine: Engine
) -> None:
    runner = JobRunner(make_settings(tmp_path, {"database": {"url": db_url}}), engine)
    with pytest.raises(UnknownJob, match="job 424242 is not in the database"):
        runner.run(424242)


def test_a_cancelled_running_attempt_stops_at_its_next_step(start, tmp_path: Path) -> None:
    running = start()
    files = write_series(new_series(2), tmp_path / "series")
    assert storescu(running.port, files).returncode == 0
    studies = StudyLedger(running.engine, running.settings.study.completion_policy())
    studies.fold_pending(datetime.now(UTC))
    uid = str(dcmread(files[0]).StudyInstanceUID)
    job_id = studies.force_complete(uid, datetime.now(UTC), "test").job_id
    jobs = JobLedger(running.engine)
    assert jobs.claim(job_id, datetime.now(UTC), timedelta(minutes=5)) is not None
    jobs.cancel(job_id, datetime.now(UTC), "otto")
    with pytest.raises(LostJob):
        jobs.move(job_id, JobState.ENCODED, datetime.now(UTC), "late results", attempt=1)
    assert jobs.state(job_id) is JobState.CANCELLED
