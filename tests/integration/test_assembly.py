"""Study assembly on a real database: quiet period, count hints, late instances, forcing."""

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from appliance.app.processes import run_sweeper
from appliance.domain.assembly import CompletedStudy, CompletionPolicy, UnknownStudy
from appliance.domain.ingest import SERIES_CONFLICT
from appliance.domain.jobs import JobState
from appliance.store.models import Association, AuditEvent, Job, Study
from appliance.store.study_ledger import StudyLedger
from tests.support.datasets import new_series, write_series
from tests.support.dcmtk import storescu
from tests.support.settings import TEST_PEERS
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("dcmtk")
POLICY = CompletionPolicy(quiet_period=timedelta(seconds=30), hint_settle=timedelta(seconds=1))


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def jobs(engine: Engine) -> list[Job]:
    with Session(engine) as session:
        return list(session.scalars(select(Job).order_by(Job.id)))


def events(engine: Engine, event_type: str) -> list[AuditEvent]:
    with Session(engine) as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event_type == event_type)))


def test_quiet_period_completes_once_with_one_job(start, tmp_path: Path) -> None:
    running = start()
    spec = new_series(5)
    assert storescu(running.port, write_series(spec, tmp_path)).returncode == 0
    service = StudyLedger(running.engine, POLICY)

    assert service.fold_pending(datetime.now(UTC)) == 5
    assert service.complete_due(later(29)) == []
    done = service.complete_due(later(31))
    assert service.complete_due(later(60)) == []

    assert [(d.study_instance_uid, d.version, d.reason.value) for d in done] == [
        (spec.study_uid, 1, "quiet_period")
    ]
    (job,) = jobs(running.engine)
    assert (job.study_version, job.state) == (1, JobState.QUEUED)
    assert len(events(running.engine, "study_completed")) == 1
    assert len(events(running.engine, "job_created")) == 1
    detail = service.show(spec.study_uid)
    assert detail.study.instance_count == 5
    assert detail.series[0].received_instances == 5


def test_count_hints_complete_early(start, tmp_path: Path) -> None:
    running = start()
    spec = new_series(4, images_in_acquisition=True)
    partial = write_series(spec, tmp_path)
    service = StudyLedger(running.engine, POLICY)

    storescu(running.port, partial[:3])
    service.fold_pending(datetime.now(UTC))
    assert service.complete_due(later(2)) == []
    storescu(running.port, partial[3:])
    service.fold_pending(datetime.now(UTC))
    done = service.complete_due(later(2))

    assert [d.reason.value for d in done] == ["count_hints"]
    assert service.show(spec.study_uid).series[0].expected_instances == 4


def test_late_instance_reopens_for_a_new_version(start, tmp_path: Path) -> None:
    running = start()
    spec = new_series(3)
    files = write_series(spec, tmp_path)
    service = StudyLedger(running.engine, POLICY)
    storescu(running.port, files[:2])
    service.fold_pending(datetime.now(UTC))
    service.complete_due(later(31))

    storescu(running.port, files[2:])
    assert service.complete_due(later(31)) == [], "unfolded instances hold completion back"
    service.fold_pending(datetime.now(UTC))
    done = service.complete_due(later(62))

    assert [d.version for d in done] == [2]
    assert [(j.study_version, j.state) for j in jobs(running.engine)] == [
        (1, JobState.QUEUED),
        (2, JobState.QUEUED),
    ]
    reopened = events(running.engine, "study_reopened")
    assert len(reopened) == 1
    assert "version 2" in (reopened[0].detail or "")
    assert service.show(spec.study_uid).study.instance_count == 3


def test_force_complete_and_unknown_study(start, tmp_path: Path) -> None:
    running = start()
    spec = new_series(2)
    storescu(running.port, write_series(spec, tmp_path))
    service = StudyLedger(running.engine, POLICY)

    done = service.force_complete(spec.study_uid, datetime.now(UTC), "operator:alice")

    assert done.reason.value == "forced"
    assert done.version == 1
    assert service.show(spec.study_uid).study.instance_count == 2
    with pytest.raises(ValueError, match="already complete"):
        service.force_complete(spec.study_uid, datetime.now(UTC), "operator:alice")
    with pytest.raises(UnknownStudy):
        service.force_complete("1.2.3.4.5", datetime.now(UTC), "operator:alice")
    completed = events(running.engine, "study_completed")
    assert [e.actor for e in completed] == ["operator:alice"]


def test_concurrent_sweepers_create_exactly_one_job(start, tmp_path: Path) -> None:
    running = start()
    storescu(running.port, write_series(new_series(3), tmp_path))
    services = [StudyLedger(running.engine, POLICY) for _ in range(4)]
    services[0].fold_pending(datetime.now(UTC))
    barrier = threading.Barrier(len(services))
    results: list[int] = []

    def sweep(service: StudyLedger) -> None:
        barrier.wait()
        results.append(len(service.complete_due(later(31))))

    threads = [threading.Thread(target=sweep, args=(s,)) for s in services]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == [0, 0, 0, 1]
    assert len(jobs(running.engine)) == 1


def test_series_claimed_by_another_study_is_refused(start, tmp_path: Path) -> None:
    running = start()
    first = new_series(1)
    storescu(running.port, write_series(first, tmp_path / "a"))
    # The same Series Instance UID under another study: refused with a reason, audited.
    from tests.support.datasets import SeriesSpec

    intruder = SeriesSpec(study_uid=new_series(1).study_uid, series_uid=first.series_uid, slices=1)
    refused = storescu(running.port, write_series(intruder, tmp_path / "b"))
    service = StudyLedger(running.engine, POLICY)
    service.fold_pending(datetime.now(UTC))

    with Session(running.engine) as session:
        counts = {s.study_instance_uid: s.instance_count for s in session.scalars(select(Study))}
    rejected = events(running.engine, "instance_rejected")
    assert refused.returncode != 0  # storescu exits non-zero when a store was refused
    assert counts == {first.study_uid: 1}
    assert [e.detail for e in rejected] == [SERIES_CONFLICT]


RELEASING = CompletionPolicy(
    quiet_period=timedelta(seconds=30),
    hint_settle=timedelta(seconds=5),
    release_settle={"STORESCU": timedelta(seconds=2)},
)


def started(service: StudyLedger) -> list[CompletedStudy]:
    """Start the released studies, waiting out the listener's record of the release (storescu
    may exit before it is written)."""
    found = wait_for(lambda: service.start_released(datetime.now(UTC)), 10, interval=0.1)
    return list(found)


def test_a_released_study_gets_its_job_at_once_its_results_held_for_the_settle(
    start, tmp_path: Path
) -> None:
    running = start()
    spec = new_series(5)
    assert storescu(running.port, write_series(spec, tmp_path)).returncode == 0
    service = StudyLedger(running.engine, RELEASING)
    service.fold_pending(datetime.now(UTC))
    (done,) = started(service)
    assert (done.study_instance_uid, done.version, done.reason.value) == (
        spec.study_uid, 1, "released",
    )  # fmt: skip
    assert service.start_released(datetime.now(UTC)) == [], "once"
    assert service.complete_due(later(60)) == [], "complete: the quiet period has nothing to do"
    (job,) = jobs(running.engine)
    assert job.state == JobState.QUEUED
    with Session(running.engine) as session:
        released = session.scalar(select(Association.ended_at).order_by(Association.id.desc()))
    assert released is not None
    assert job.results_after is not None
    assert job.results_after - released == timedelta(seconds=2)
    shown = service.show(spec.study_uid).study
    assert shown.completion_reason == "released"


def test_a_gap_or_a_trickling_peer_falls_back_to_the_quiet_period(start, tmp_path: Path) -> None:
    running = start()
    gapped = new_series(4)
    files = write_series(gapped, tmp_path / "gap")
    assert storescu(running.port, [files[0], files[1], files[3]]).returncode == 0
    trickled = new_series(3)
    assert storescu(running.port, write_series(trickled, tmp_path / "t")).returncode == 0
    service = StudyLedger(running.engine, RELEASING)
    trickling = StudyLedger(running.engine, POLICY)  # a peer not set to complete on release
    service.fold_pending(datetime.now(UTC))
    time.sleep(1)  # the releases are recorded
    assert trickling.start_released(datetime.now(UTC)) == []
    done = {d.study_instance_uid: d.reason.value for d in started(service)}
    assert done == {trickled.study_uid: "released"}, "the whole series only"
    assert service.complete_due(later(3)) == []
    late = {d.study_instance_uid: d.reason.value for d in service.complete_due(later(31))}
    assert late == {gapped.study_uid: "quiet_period"}
    (quiet, _) = sorted(jobs(running.engine), key=lambda job: job.results_after is not None)
    assert quiet.results_after is None, "a quiet period's job has no settle to wait for"

    assert storescu(running.port, [files[2]]).returncode == 0  # the missing slice, late
    service.fold_pending(datetime.now(UTC))
    (again,) = started(service)
    assert (again.study_instance_uid, again.version) == (gapped.study_uid, 2), "whole now"


def test_an_association_ending_wakes_the_sweeper_so_a_released_study_starts_at_once(
    start, tmp_path: Path
) -> None:
    """`serve` runs the listener and the sweeper in one process: the listener tells the
    sweeper when an association ends, so a study its release completes gets its job within
    the second, not at the next sweep (30 s away here)."""
    nudge, stop = threading.Event(), threading.Event()
    peers = [{**peer, "complete_on_release": True} for peer in TEST_PEERS]
    running = start(
        ended=nudge.set,
        listener={"port": 0, "peers": peers},
        study={"sweep_interval_seconds": 30, "hint_settle_seconds": 30},
    )
    sweeper = threading.Thread(
        target=run_sweeper, args=(running.settings, running.engine, stop, nudge), daemon=True
    )
    sweeper.start()
    time.sleep(0.5)  # its first sweep found nothing; the next is 30 s away
    sent = time.monotonic()
    assert storescu(running.port, write_series(new_series(3), tmp_path)).returncode == 0
    (job,) = wait_for(lambda: jobs(running.engine), 10, interval=0.05)
    assert time.monotonic() - sent < 5
    assert job.results_after is not None, "started by the release"
    stop.set()
    nudge.set()
    sweeper.join(timeout=10)
    assert not sweeper.is_alive(), "a stop nudges it out of its wait"
