"""Study completion and study queries: the sweeper turns due studies into jobs.

Completion is a compare-and-set on (state, version), so several sweepers (replicas) can run at
once and a study version still gets exactly one job; the unique (study_id, study_version) key on
jobs backs that up.
"""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from appliance.audit.db import session_factory
from appliance.audit.events import record_event
from appliance.audit.models import Instance, Job, Series, Study
from appliance.domain.assembly import CompletionReason, StudyState
from appliance.domain.audit import AuditEventType, EventAction
from appliance.domain.jobs import JobState


@dataclass(frozen=True, slots=True)
class CompletedStudy:
    study_id: int
    study_instance_uid: str
    version: int
    job_id: int
    reason: CompletionReason


@dataclass(frozen=True, slots=True)
class StudySummary:
    """What an operator sees of a study; patient identifiers are not part of it."""

    id: int
    study_instance_uid: str
    state: str
    version: int
    instance_count: int
    series_count: int
    calling_ae: str
    first_received_at: datetime
    last_received_at: datetime
    complete_after: datetime | None
    completed_at: datetime | None
    completion_reason: str | None


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    received_instances: int
    expected_instances: int | None


@dataclass(frozen=True, slots=True)
class JobSummary:
    id: int
    study_version: int
    state: str
    created_at: datetime
    reason: str | None


@dataclass(frozen=True, slots=True)
class StudyDetail:
    study: StudySummary
    series: list[SeriesSummary]
    jobs: list[JobSummary]


class UnknownStudy(LookupError):
    pass


class StudyService:
    def __init__(self, engine: Engine) -> None:
        self._sessions: sessionmaker[Session] = session_factory(engine)

    def complete_due(self, now: datetime, actor: str = "sweeper") -> list[CompletedStudy]:
        """Complete every study whose deadline has passed; one job per study version."""
        with self._sessions() as session:
            due = session.execute(
                select(Study.id, Study.version, Study.deadline_reason).where(
                    Study.state == StudyState.RECEIVING, Study.complete_after <= now
                )
            ).all()
        completed = []
        for study_id, version, reason in due:
            result = self._complete(
                study_id,
                version,
                CompletionReason(reason or "quiet_period"),
                now,
                actor,
                require_due=True,
            )
            if result is not None:
                completed.append(result)
        return completed

    def force_complete(self, study_instance_uid: str, now: datetime, actor: str) -> CompletedStudy:
        """Complete a receiving study at once (operator action)."""
        with self._sessions() as session:
            row = session.execute(
                select(Study.id, Study.version, Study.state).where(
                    Study.study_instance_uid == study_instance_uid
                )
            ).first()
        if row is None:
            raise UnknownStudy(study_instance_uid)
        if row.state != StudyState.RECEIVING:
            raise ValueError(f"study is already {row.state} (version {row.version})")
        result = self._complete(row.id, row.version, CompletionReason.FORCED, now, actor, False)
        if result is None:
            raise ValueError("study changed while completing; try again")
        return result

    def _complete(
        self,
        study_id: int,
        version: int,
        reason: CompletionReason,
        now: datetime,
        actor: str,
        require_due: bool,
    ) -> CompletedStudy | None:
        with self._sessions.begin() as session:
            conditions = [
                Study.id == study_id,
                Study.version == version,
                Study.state == StudyState.RECEIVING,
            ]
            if require_due:
                conditions.append(Study.complete_after <= now)
            changed = session.execute(
                update(Study)
                .where(*conditions)
                .values(state=StudyState.COMPLETE, completed_at=now, completion_reason=reason)
            )
            if changed.rowcount != 1:  # type: ignore[attr-defined]
                return None
            study_uid = session.scalar(select(Study.study_instance_uid).where(Study.id == study_id))
            job = Job(
                study_id=study_id,
                study_version=version,
                state=JobState.QUEUED,
                created_at=now,
                updated_at=now,
            )
            session.add(job)
            session.flush()
            common = {
                "occurred_at": now,
                "actor": actor,
                "study_instance_uid": study_uid,
                "study_id": study_id,
            }
            record_event(
                session,
                AuditEventType.STUDY_COMPLETED,
                action=EventAction.UPDATE,
                detail=f"version {version}: {reason.value}",
                **common,
            )
            record_event(
                session,
                AuditEventType.JOB_CREATED,
                job_id=job.id,
                detail=f"version {version}",
                **common,
            )
            return CompletedStudy(study_id, str(study_uid), version, job.id, reason)

    def list_studies(self, limit: int = 50, state: StudyState | None = None) -> list[StudySummary]:
        with self._sessions() as session:
            query = select(Study).order_by(Study.last_received_at.desc()).limit(limit)
            if state is not None:
                query = query.where(Study.state == state)
            studies = list(session.scalars(query))
            counts: dict[int, int] = {
                study_id: count
                for study_id, count in session.execute(
                    select(Series.study_id, func.count())
                    .where(Series.study_id.in_([s.id for s in studies]))
                    .group_by(Series.study_id)
                )
            }
            return [_summary(s, counts.get(s.id, 0)) for s in studies]

    def show(self, study_instance_uid: str) -> StudyDetail:
        with self._sessions() as session:
            study = session.scalars(
                select(Study).where(Study.study_instance_uid == study_instance_uid)
            ).first()
            if study is None:
                raise UnknownStudy(study_instance_uid)
            series = list(
                session.scalars(
                    select(Series).where(Series.study_id == study.id).order_by(Series.series_number)
                )
            )
            jobs = list(
                session.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.id))
            )
            return StudyDetail(
                study=_summary(study, len(series)),
                series=[
                    SeriesSummary(
                        s.series_instance_uid,
                        s.modality,
                        s.series_number,
                        s.series_description,
                        s.received_instances,
                        s.expected_instances,
                    )
                    for s in series
                ],
                jobs=[
                    JobSummary(j.id, j.study_version, j.state, j.created_at, j.reason) for j in jobs
                ],
            )

    def instance_paths(self, study_instance_uid: str) -> list[str]:
        with self._sessions() as session:
            return list(
                session.scalars(
                    select(Instance.path)
                    .join(Study, Study.id == Instance.study_id)
                    .where(Study.study_instance_uid == study_instance_uid)
                    .order_by(Instance.id)
                )
            )


def _summary(study: Study, series_count: int) -> StudySummary:
    return StudySummary(
        id=study.id,
        study_instance_uid=study.study_instance_uid,
        state=study.state,
        version=study.version,
        instance_count=study.instance_count,
        series_count=series_count,
        calling_ae=study.calling_ae,
        first_received_at=study.first_received_at,
        last_received_at=study.last_received_at,
        complete_after=study.complete_after,
        completed_at=study.completed_at,
        completion_reason=study.completion_reason,
    )
