"""What the dashboard and the metrics read: flow counts, stage timings, jobs and the audit trail.

Patient identifiers are never part of these rows; `patient_identifiers` fetches them for the
one study an authorised user chose to reveal, and the caller audits that.
"""

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Engine, ScalarSelect, Select, case, func, select
from sqlalchemy.orm import Session

from appliance.domain.audit import AuditEventType, EventAction
from appliance.domain.delivery import DeliveryState
from appliance.domain.jobs import JobState, Stage
from appliance.domain.monitoring import (
    DeliveryRow,
    EventRow,
    Flow,
    JobDetail,
    JobRow,
    StageHistogram,
    StageSamples,
    Totals,
)
from appliance.domain.routing import Priority
from appliance.store.audit_trail import record_event
from appliance.store.db import session_factory
from appliance.store.models import AuditEvent, Delivery, Instance, Job, StageTiming, Study

_FINISHED = (JobState.DONE, JobState.FAILED, JobState.DEAD_LETTER)
_LATENCY_SAMPLE = 1000  # the most recent timings of a stage a percentile is taken over


class DashboardQueries:
    def __init__(self, engine: Engine) -> None:
        self._sessions = session_factory(engine)

    def flow(self, since: datetime) -> Flow:
        with self._sessions() as session:
            jobs = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            finished = dict(
                session.execute(
                    select(Job.state, func.count())
                    .where(Job.updated_at >= since, Job.state.in_(_FINISHED))
                    .group_by(Job.state)
                ).all()
            )
            return Flow(
                studies=_count(session, select(func.count(Study.id))),
                studies_since=_count(
                    session, select(func.count(Study.id)).where(Study.first_received_at >= since)
                ),
                instances_since=_count(
                    session,
                    select(func.count(Instance.id)).where(Instance.received_at >= since),
                ),
                jobs_by_state={state.value: int(jobs.get(state.value, 0)) for state in JobState},
                urgent_waiting=_count(
                    session,
                    select(func.count(Job.id)).where(
                        Job.state == JobState.QUEUED, Job.priority == Priority.URGENT
                    ),
                ),
                finished_since=sum(int(n) for n in finished.values()),
                failed_since=sum(
                    int(n) for state, n in finished.items() if state != JobState.DONE.value
                ),
                deliveries_by_state=dict(
                    session.execute(
                        select(Delivery.state, func.count()).group_by(Delivery.state)
                    ).all()
                ),
            )

    def stage_samples(self, limit: int = _LATENCY_SAMPLE) -> list[StageSamples]:
        """The most recent `limit` timings of each stage (and model), for percentiles."""
        samples = []
        with self._sessions() as session:
            keys = session.execute(select(StageTiming.stage, StageTiming.model).distinct()).all()
            for stage, model in keys:
                values = session.scalars(
                    select(StageTiming.seconds)
                    .where(StageTiming.stage == stage, StageTiming.model == model)
                    .order_by(StageTiming.id.desc())
                    .limit(limit)
                ).all()
                samples.append(StageSamples(Stage(stage), model, list(values)))
        return sorted(samples, key=lambda s: (list(Stage).index(s.stage), s.model))

    def histograms(self, buckets: Sequence[float]) -> list[StageHistogram]:
        """Cumulative counts of every recorded timing at or under each bucket bound, per stage
        and model, for Prometheus histograms."""
        seconds = StageTiming.seconds
        with self._sessions() as session:
            rows = session.execute(
                select(
                    StageTiming.stage,
                    StageTiming.model,
                    func.count(seconds),
                    func.coalesce(func.sum(seconds), 0.0),
                    *(func.sum(case((seconds <= bound, 1), else_=0)) for bound in buckets),
                ).group_by(StageTiming.stage, StageTiming.model)
            ).all()
        return [
            StageHistogram(Stage(stage), model, [int(n or 0) for n in cumulative],
                           float(total), int(count))
            for stage, model, count, total, *cumulative in rows
        ]  # fmt: skip

    def totals(self) -> Totals:
        """All-time counts for the Prometheus counters."""
        with self._sessions() as session:
            instances, size = session.execute(
                select(func.count(Instance.id), func.coalesce(func.sum(Instance.size_bytes), 0))
            ).one()
            failures = session.execute(
                select(AuditEvent.event_type, func.count())
                .where(AuditEvent.outcome != 0)
                .group_by(AuditEvent.event_type)
            ).all()
            delivered = _count(
                session,
                select(func.count(Delivery.id)).where(Delivery.state == DeliveryState.DELIVERED),
            )
            flagged, withheld = session.execute(
                select(
                    func.coalesce(func.sum(Job.flagged), 0),
                    func.coalesce(func.sum(Job.withheld), 0),
                )
            ).one()
        return Totals(
            int(instances), int(size), {t: int(n) for t, n in failures}, delivered,
            int(flagged), int(withheld),
        )  # fmt: skip

    def jobs(self, state: str | None = None, limit: int = 100) -> list[JobRow]:
        with self._sessions() as session:
            query = (
                select(Job, Study.study_instance_uid, _total_seconds())
                .join(Study, Study.id == Job.study_id)
                .order_by(Job.id.desc())
                .limit(limit)
            )
            if state:
                query = query.where(Job.state == state)
            return [_job_row(*row) for row in session.execute(query).all()]

    def job(self, job_id: int) -> JobDetail | None:
        with self._sessions() as session:
            found = session.execute(
                select(Job, Study.study_instance_uid, _total_seconds())
                .join(Study, Study.id == Job.study_id)
                .where(Job.id == job_id)
            ).first()
            if found is None:
                return None
            deliveries = session.scalars(
                select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.id)
            ).all()
            events = session.scalars(
                select(AuditEvent).where(AuditEvent.job_id == job_id).order_by(AuditEvent.id)
            ).all()
            return JobDetail(
                _job_row(*found),
                [
                    DeliveryRow(
                        d.destination, d.sop_class_uid, d.sop_instance_uid, d.state, d.attempts,
                        d.reason,
                    )
                    for d in deliveries
                ],
                [_event_row(e) for e in events],
            )  # fmt: skip

    def events(
        self,
        event_type: str | None = None,
        actor: str | None = None,
        study_instance_uid: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 500,
        before_id: int | None = None,
    ) -> list[EventRow]:
        """The newest `limit` events that match, older than event `before_id` if given."""
        query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(AuditEvent.id < before_id)
        if event_type:
            query = query.where(AuditEvent.event_type == event_type)
        if actor:
            query = query.where(AuditEvent.actor == actor)
        if study_instance_uid:
            query = query.where(AuditEvent.study_instance_uid == study_instance_uid)
        if since:
            query = query.where(AuditEvent.occurred_at >= since)
        if until:
            query = query.where(AuditEvent.occurred_at < until)
        with self._sessions() as session:
            return [_event_row(e) for e in session.scalars(query)]

    def record_export(self, events: int, now: datetime, actor: str) -> None:
        with self._sessions.begin() as session:
            record_event(
                session,
                AuditEventType.AUDIT_EXPORTED,
                occurred_at=now,
                actor=actor,
                action=EventAction.READ,
                detail=f"{events} audit events exported as CSV",
            )

    def patient_identifiers(
        self, study_instance_uid: str, now: datetime, actor: str, host: str | None
    ) -> dict[str, str]:
        """The study's patient name, ID and accession number, audited as shown to `actor`."""
        with self._sessions.begin() as session:
            study = session.scalar(
                select(Study).where(Study.study_instance_uid == study_instance_uid)
            )
            if study is None:
                return {}
            record_event(
                session,
                AuditEventType.PATIENT_DATA_SHOWN,
                occurred_at=now,
                actor=actor,
                actor_host=host,
                action=EventAction.READ,
                study_instance_uid=study_instance_uid,
                study_id=study.id,
                detail="patient identifiers shown on the dashboard",
            )
            return {
                "Patient name": study.patient_name or "",
                "Patient ID": study.patient_id or "",
                "Accession number": study.accession_number or "",
            }


def _count(session: Session, query: Select[int]) -> int:
    return int(session.scalar(query) or 0)


def _total_seconds() -> ScalarSelect[float]:
    """A job's last instance received -> last result stored, from its timings."""
    return (
        select(func.max(StageTiming.seconds))
        .where(StageTiming.job_id == Job.id, StageTiming.stage == Stage.TOTAL.value)
        .scalar_subquery()
    )


def _job_row(job: Job, study_uid: str, total_seconds: float | None) -> JobRow:
    return JobRow(
        job.id, study_uid, job.study_version, job.state, job.priority, job.attempts,
        job.created_at, job.updated_at, job.reason, total_seconds, job.flagged, job.withheld,
    )  # fmt: skip


def _event_row(event: AuditEvent) -> EventRow:
    return EventRow(
        event.occurred_at, event.event_type, event.outcome, event.actor,
        event.study_instance_uid, event.job_id, event.detail, event.id,
    )  # fmt: skip
