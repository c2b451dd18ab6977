"""The job ledger: the database is the source of truth for jobs.

A worker claims a queued job by moving it to RUNNING with a lease; a job whose lease expires
(its worker died) goes back to QUEUED for the sweeper to dispatch again, since not every broker
redelivers a lost task. Every move follows the domain's transition table and is audited in the
same transaction.
"""

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Engine, func, or_, select, update
from sqlalchemy.orm import Session

from appliance.domain.audit import AuditEventType, EventAction, EventOutcome
from appliance.domain.delivery import NEVER_SENT, DeliveryState
from appliance.domain.jobs import (
    ForReview,
    JobState,
    JobTimings,
    Stage,
    UnknownJob,
    check_transition,
)
from appliance.domain.routing import Priority, SeriesFacts
from appliance.domain.workers import process_identity, still_running
from appliance.store.audit_trail import record_event, record_timing
from appliance.store.db import session_factory
from appliance.store.models import AuditEvent, Delivery, Instance, Job, Series, StageTiming, Study

ACTOR = "worker"
_FAILURES = {JobState.FAILED, JobState.DEAD_LETTER}
_NOT_THIS_ATTEMPTS = {JobState.QUEUED, JobState.CANCELLED}  # requeued, or an operator cancelled


def _not_sent(now: datetime, again_after: timedelta) -> ColumnElement[bool]:
    return or_(Job.dispatched_at.is_(None), Job.dispatched_at < now - again_after)


class LostJob(Exception):
    """The attempt's lease expired and the job went on without it."""


@dataclass(frozen=True)
class SeriesWork:
    facts: SeriesFacts
    paths: tuple[str, ...]  # spool-relative, in arrival order


@dataclass(frozen=True)
class JobWork:
    job_id: int
    study_instance_uid: str
    study_version: int
    attempts: int
    series: tuple[SeriesWork, ...]


@dataclass(frozen=True)
class Settle:
    """Where a job started on its sender's release stands against the settle after it."""

    until: datetime  # when the settle ends: its results may not leave before
    # An instance received within the settle re-opened the study for a newer version, whose
    # job delivers instead.
    superseded: bool
    pending: bool  # instances received within the settle, not yet folded in (they may re-open it)


class JobLedger:
    def __init__(self, engine: Engine) -> None:
        self._sessions = session_factory(engine)

    def claim(
        self, job_id: int, now: datetime, lease: timedelta, worker: str | None = None
    ) -> JobWork | None:
        """Move a QUEUED job to RUNNING under a lease, held by `worker` (this process by
        default), and return what it must work on; None when the job is not queued (another
        worker has it, or it is finished)."""
        with self._sessions.begin() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None or job.state != JobState.QUEUED:
                return None
            study = session.get_one(Study, job.study_id)
            job.attempts += 1
            job.lease_until = now + lease
            job.claimed_by = worker or process_identity()
            if job.attempts == 1:  # from the study's completion to its first worker
                record_timing(
                    session, job.id, Stage.DISPATCH, (now - job.created_at).total_seconds(), now
                )
            self._move(session, job, study.study_instance_uid, JobState.RUNNING, now, None)
            series = self._series(session, study)
            return JobWork(
                job.id, study.study_instance_uid, job.study_version, job.attempts, series
            )

    def renew(self, job_id: int, attempt: int, until: datetime) -> bool:
        """Extend the lease of a running attempt; False when the attempt lost the job."""
        with self._sessions.begin() as session:
            changed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.attempts == attempt)
                .values(lease_until=until)
            )
            return bool(changed.rowcount)  # type: ignore[attr-defined]

    def move(
        self,
        job_id: int,
        target: JobState,
        now: datetime,
        reason: str | None = None,
        attempt: int | None = None,
        timings: JobTimings | None = None,
        review: ForReview | None = None,
    ) -> None:
        """Move a job; with `attempt`, only if that attempt still holds it (else LostJob).
        `timings` and the findings `review` counts go with the move to ENCODED."""
        with self._sessions.begin() as session:
            job = session.get_one(Job, job_id, with_for_update=True)
            lost = job.attempts != attempt or job.state in _NOT_THIS_ATTEMPTS
            if attempt is not None and lost:
                raise LostJob(f"job {job_id}: attempt {attempt} lost its lease")
            if timings is not None:
                record_timing(session, job_id, Stage.PIPELINE, timings.pipeline, now)
                record_timing(session, job_id, Stage.ENCODING, timings.encoding, now)
                for model, seconds in timings.inference.items():
                    record_timing(session, job_id, Stage.INFERENCE, seconds, now, model)
                if timings.settle is not None:
                    record_timing(session, job_id, Stage.SETTLE, timings.settle, now)
            if review is not None:
                job.flagged, job.withheld = review.flagged, review.withheld
            self._move(session, job, self._study_uid(session, job), target, now, reason)

    def retry(self, job_id: int, now: datetime, actor: str) -> None:
        """Operator action: run a failed, dead-letter or cancelled job again from the start,
        with a fresh count of attempts."""
        with self._sessions.begin() as session:
            job = self._job(session, job_id)
            job.attempts = 0
            job.dispatched_at = None
            self._move(session, job, self._study_uid(session, job), JobState.QUEUED, now,
                       f"retried by {actor}", actor)  # fmt: skip

    def cancel(self, job_id: int, now: datetime, actor: str) -> None:
        """Operator action: stop a job; a running attempt stops at its next step, and results
        not yet delivered are not sent."""
        with self._sessions.begin() as session:
            job = self._job(session, job_id)
            session.execute(
                update(Delivery)
                .where(Delivery.job_id == job_id, Delivery.state == DeliveryState.PENDING.value)
                .values(state=DeliveryState.DEAD_LETTER.value, finished_at=now,
                        reason=f"job cancelled by {actor}")
            )  # fmt: skip
            self._move(session, job, self._study_uid(session, job), JobState.CANCELLED, now,
                       f"cancelled by {actor}", actor)  # fmt: skip

    def resend(self, job_id: int, now: datetime, actor: str) -> int:
        """Operator action: send a finished job's results again (from the outbox) to every
        destination; the number of objects queued."""
        with self._sessions.begin() as session:
            job = self._job(session, job_id)
            self._move(session, job, self._study_uid(session, job), JobState.DELIVERING, now,
                       f"results re-sent by {actor}", actor)  # fmt: skip
            changed = session.execute(
                update(Delivery)
                .where(Delivery.job_id == job_id, Delivery.state.notin_(NEVER_SENT))
                .values(state=DeliveryState.PENDING.value, attempts=0, first_attempt_at=None,
                        next_attempt_at=now, finished_at=None, reason=None)
            )  # fmt: skip
            return int(changed.rowcount)  # type: ignore[attr-defined]

    @staticmethod
    def _job(session: Session, job_id: int) -> Job:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise UnknownJob(f"job {job_id} is not in the database")
        return job

    @staticmethod
    def _record_delivered(session: Session, job: Job, now: datetime) -> None:
        """Delivery (encoded -> last result stored) and the total a radiologist feels (last
        instance received -> last result stored)."""
        stored = session.scalar(
            select(func.max(Delivery.finished_at)).where(Delivery.job_id == job.id)
        )
        encoded = session.scalar(
            select(func.max(StageTiming.recorded_at)).where(
                StageTiming.job_id == job.id, StageTiming.stage == Stage.PIPELINE
            )
        )
        received = session.scalar(select(Study.last_received_at).where(Study.id == job.study_id))
        if stored is None:
            return
        if encoded is not None:
            record_timing(session, job.id, Stage.DELIVERY, (stored - encoded).total_seconds(), now)
        if received is not None:
            record_timing(session, job.id, Stage.TOTAL, (stored - received).total_seconds(), now)

    @staticmethod
    def _study_uid(session: Session, job: Job) -> str:
        return str(session.scalar(select(Study.study_instance_uid).where(Study.id == job.study_id)))

    def series_facts(self, job_id: int) -> list[SeriesFacts]:
        """What routing needs to know about the series of a job's study."""
        with self._sessions() as session:
            job = session.get_one(Job, job_id)
            study = session.get_one(Study, job.study_id)
            return [work.facts for work in self._series(session, study)]

    def studies_since(self, since: datetime) -> list[tuple[str, list[SeriesFacts]]]:
        """Each study last received at or after `since`, oldest first, with what routing
        needs to know of its series."""
        with self._sessions() as session:
            studies = session.scalars(
                select(Study).where(Study.last_received_at >= since).order_by(Study.id)
            ).all()
            return [
                (study.study_instance_uid, [work.facts for work in self._series(session, study)])
                for study in studies
            ]

    def history(self, job_id: int) -> list[tuple[datetime, str]]:
        """The job's audited state changes, oldest first: (when, "from -> to[: reason]")."""
        with self._sessions() as session:
            rows = session.execute(
                select(AuditEvent.occurred_at, AuditEvent.detail)
                .where(
                    AuditEvent.job_id == job_id, AuditEvent.event_type == AuditEventType.JOB_STATE
                )
                .order_by(AuditEvent.id)
            ).all()
        return [(when, detail or "") for when, detail in rows]

    def settle(self, job_id: int) -> Settle | None:
        """For a job its study's sender's release started (`StudyLedger.start_released`):
        the settle its results wait for, and whether the study moved on meanwhile; None for
        any other job."""
        with self._sessions() as session:
            job = session.get_one(Job, job_id)
            if job.results_after is None:
                return None
            study = session.get_one(Study, job.study_id)
            within = (
                Instance.study_instance_uid == study.study_instance_uid,
                Instance.received_at <= job.results_after,
            )
            later = session.scalar(
                select(
                    select(Instance.id)
                    .where(*within, Instance.study_version > job.study_version)
                    .exists()
                )
            )
            pending = session.scalar(
                select(select(Instance.id).where(*within, Instance.folded.is_(False)).exists())
            )
            return Settle(job.results_after, bool(later), bool(pending))

    def state(self, job_id: int) -> JobState:
        with self._sessions() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise UnknownJob(f"job {job_id} is not in the database")
            return JobState(job.state)

    def requeue_orphans(self, host: str, now: datetime) -> int:
        """RUNNING jobs held by worker processes of `host` that no longer run go back to
        QUEUED at once, rather than after their lease: what a restart after a crash finds.
        How many."""
        with self._sessions.begin() as session:
            held = self._running(session, Job.claimed_by.is_not(None))
            orphans = [job for job in held if still_running(job.claimed_by or "", host) is False]
            for job in orphans:
                self._requeue(session, job, now, f"worker {job.claimed_by} no longer runs")
            return len(orphans)

    def requeue_expired(self, now: datetime) -> list[int]:
        """RUNNING jobs whose lease ran out go back to QUEUED: their worker is gone."""
        with self._sessions.begin() as session:
            jobs = self._running(session, Job.lease_until < now)
            for job in jobs:
                self._requeue(session, job, now, "lease expired: worker lost")
            return [job.id for job in jobs]

    @staticmethod
    def _running(session: Session, condition: ColumnElement[bool]) -> Sequence[Job]:
        """RUNNING jobs meeting `condition`, locked; those another sweep holds are skipped."""
        return session.scalars(
            select(Job)
            .where(Job.state == JobState.RUNNING, condition)
            .with_for_update(skip_locked=True)
        ).all()

    def _requeue(self, session: Session, job: Job, now: datetime, reason: str) -> None:
        """Back to QUEUED, to be dispatched again at once."""
        study_uid = session.scalar(select(Study.study_instance_uid).where(Study.id == job.study_id))
        job.dispatched_at = None
        self._move(session, job, str(study_uid), JobState.QUEUED, now, reason)

    def waiting(self, now: datetime, again_after: timedelta) -> list[tuple[int, datetime]]:
        """QUEUED jobs no worker has been sent, or sent longer ago than `again_after` (their
        message was lost), as (id, created at)."""
        with self._sessions() as session:
            rows = session.execute(
                select(Job.id, Job.created_at)
                .where(Job.state == JobState.QUEUED, _not_sent(now, again_after))
                .order_by(Job.id)
            ).all()
        return [(job_id, created_at) for job_id, created_at in rows]

    def in_flight(self, now: datetime, again_after: timedelta) -> int:
        """Jobs the workers hold: sent and waiting in the broker, or running."""
        with self._sessions() as session:
            sent = (Job.state == JobState.QUEUED) & ~_not_sent(now, again_after)
            return int(
                session.scalar(
                    select(func.count(Job.id)).where(sent | (Job.state == JobState.RUNNING))
                )
                or 0
            )

    def mark_dispatched(
        self, job_id: int, priority: Priority, now: datetime, again_after: timedelta
    ) -> bool:
        """Record that the job is being sent with `priority`; False when it is no longer
        waiting (another sweeper sent it, or it was cancelled)."""
        with self._sessions.begin() as session:
            changed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.QUEUED, _not_sent(now, again_after))
                .values(dispatched_at=now, priority=priority.value)
            )
            return bool(changed.rowcount)  # type: ignore[attr-defined]

    def settle_deliveries(self, now: datetime) -> list[tuple[int, JobState]]:
        """DELIVERING jobs whose deliveries are all finished become DONE, or DEAD_LETTER when
        any of them is a dead letter."""
        settled = []
        with self._sessions.begin() as session:
            # Locked, so that the sweeper and a worker settling at once cannot both end a job.
            jobs = session.scalars(
                select(Job)
                .where(Job.state == JobState.DELIVERING)
                .with_for_update(skip_locked=True)
            ).all()
            for job in jobs:
                states = set(
                    session.scalars(select(Delivery.state).where(Delivery.job_id == job.id))
                )
                if DeliveryState.PENDING.value in states:
                    continue
                target = (
                    JobState.DEAD_LETTER
                    if DeliveryState.DEAD_LETTER.value in states
                    else JobState.DONE
                )
                reason = "a result could not be delivered" if target in _FAILURES else None
                if target is JobState.DONE:
                    self._record_delivered(session, job, now)
                self._move(session, job, self._study_uid(session, job), target, now, reason)
                settled.append((job.id, target))
        return settled

    @staticmethod
    def _series(session: Session, study: Study) -> tuple[SeriesWork, ...]:
        rows = session.execute(
            select(Instance.series_instance_uid, Instance.sop_class_uid, Instance.path)
            .where(Instance.study_instance_uid == study.study_instance_uid)
            .order_by(Instance.id)
        ).all()
        paths: dict[str, list[str]] = defaultdict(list)
        classes: dict[str, set[str]] = defaultdict(set)
        for series_uid, sop_class, path in rows:
            paths[series_uid].append(path)
            classes[series_uid].add(sop_class)
        known = {
            s.series_instance_uid: s
            for s in session.scalars(
                select(Series).where(Series.study_instance_uid == study.study_instance_uid)
            )
        }
        work = []
        for series_uid, series_paths in paths.items():
            series = known.get(series_uid)
            facts = SeriesFacts(
                series_instance_uid=series_uid,
                modality=(series.modality if series else None) or "",
                sop_class_uids=frozenset(classes[series_uid]),
                body_part=(series.body_part_examined if series else None) or "",
                series_description=(series.series_description if series else None) or "",
                calling_ae=study.calling_ae,
                called_ae=study.called_ae,
            )
            work.append(SeriesWork(facts, tuple(series_paths)))
        return tuple(work)

    @staticmethod
    def _move(
        session: Session,
        job: Job,
        study_uid: str,
        target: JobState,
        now: datetime,
        reason: str | None,
        actor: str = ACTOR,
    ) -> None:
        current = JobState(job.state)
        check_transition(current, target)
        job.state = target.value
        job.updated_at = now
        job.reason = reason
        if target is not JobState.RUNNING:
            job.lease_until = None
        record_event(
            session,
            AuditEventType.JOB_STATE,
            occurred_at=now,
            actor=actor,
            action=EventAction.UPDATE,
            outcome=EventOutcome.SERIOUS_FAILURE if target in _FAILURES else EventOutcome.SUCCESS,
            study_instance_uid=study_uid,
            study_id=job.study_id,
            job_id=job.id,
            detail=f"{current.value} -> {target.value}" + (f": {reason}" if reason else ""),
        )
