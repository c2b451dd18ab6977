"""Study completion and study queries: the sweeper turns due studies into jobs.

Completion is a compare-and-set on (state, version), so several sweepers (replicas) can run at
once and a study version still gets exactly one job; the unique (study_id, study_version) key on
jobs backs that up.
"""

from collections import defaultdict
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from appliance.domain.assembly import (
    CompletedStudy,
    CompletionDeadline,
    CompletionPolicy,
    CompletionReason,
    SeriesProgress,
    StudyState,
    UnknownStudy,
    completion_deadline,
    release_deadline,
    series_consistent,
)
from appliance.domain.audit import AuditEventType, EventAction, EventOutcome
from appliance.domain.ingest import RELEASED, SERIES_CONFLICT
from appliance.domain.jobs import JobState, Stage
from appliance.domain.monitoring import JobSummary, SeriesSummary, StudyDetail, StudySummary
from appliance.store.audit_trail import event_row, record_event, record_timing
from appliance.store.db import session_factory
from appliance.store.models import Association as AssociationRow
from appliance.store.models import AuditEvent, Instance, Job, Series, Study

SWEEPER = "sweeper"
FOLD_BATCH = 5000

studies = cast(Table, Study.__table__)
series_table = cast(Table, Series.__table__)
instances = cast(Table, Instance.__table__)
audit_events = cast(Table, AuditEvent.__table__)
associations = cast(Table, AssociationRow.__table__)


def _group(rows: list[Any], attribute: str) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        groups[getattr(row, attribute)].append(row)
    return groups


class StudyLedger:
    """Study assembly on the database: folding new instances in, completing quiet studies."""

    def __init__(self, engine: Engine, policy: CompletionPolicy) -> None:
        self._engine = engine
        self._sessions: sessionmaker[Session] = session_factory(engine)
        self._policy = policy

    def fold_pending(self, now: datetime, limit: int = FOLD_BATCH) -> int:
        """Fold newly stored instances into series and study progress; returns how many.

        Runs in one transaction; PostgreSQL replicas skip each other's locked rows, SQLite
        serialises them. A study that is already complete re-opens for a new version.
        """
        with self._engine.begin() as connection:
            pending = connection.execute(
                select(
                    instances.c.id,
                    instances.c.sop_instance_uid,
                    instances.c.study_instance_uid,
                    instances.c.series_instance_uid,
                    instances.c.number_of_frames,
                    instances.c.images_in_acquisition,
                    instances.c.received_at,
                    instances.c.study_version,
                )
                .where(instances.c.folded.is_(False))
                .order_by(instances.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for study_uid, rows in _group(list(pending), "study_instance_uid").items():
                self._fold_study(connection, study_uid, rows, now)
        return len(pending)

    def _fold_study(
        self, connection: Connection, study_uid: str, rows: list[Any], now: datetime
    ) -> None:
        study = connection.execute(
            select(studies.c.id, studies.c.state, studies.c.version, studies.c.last_received_at)
            .where(studies.c.study_instance_uid == study_uid)
            .with_for_update()
        ).one()
        version = study.version
        if study.state == StudyState.COMPLETE:
            version += 1
            connection.execute(
                update(studies)
                .where(studies.c.id == study.id)
                .values(
                    state=StudyState.RECEIVING,
                    version=version,
                    completed_at=None,
                    completion_reason=None,
                )
            )
            connection.execute(
                insert(audit_events).values(
                    event_row(
                        AuditEventType.STUDY_REOPENED,
                        occurred_at=now,
                        actor=SWEEPER,
                        action=EventAction.UPDATE,
                        study_instance_uid=study_uid,
                        study_id=study.id,
                        detail=f"{len(rows)} late instance(s); version {version}",
                    )
                )
            )
        new_instances = 0
        for series_uid, series_rows in _group(rows, "series_instance_uid").items():
            series = connection.execute(
                select(
                    series_table.c.id,
                    series_table.c.study_instance_uid,
                    series_table.c.received_instances,
                    series_table.c.expected_instances,
                    series_table.c.all_multiframe,
                )
                .where(series_table.c.series_instance_uid == series_uid)
                .with_for_update()
            ).one()
            if series.study_instance_uid != study_uid:
                self._refuse_conflicting(connection, study.id, study_uid, series_rows, now)
                continue
            progress = SeriesProgress(
                series.received_instances, series.expected_instances, series.all_multiframe
            )
            for row in series_rows:
                if row.study_version is None:  # first fold; a replacement is counted once only
                    progress = progress.with_counts(row.number_of_frames, row.images_in_acquisition)
                    new_instances += 1
            connection.execute(
                update(series_table)
                .where(series_table.c.id == series.id)
                .values(
                    received_instances=progress.received_instances,
                    expected_instances=progress.expected_instances,
                    all_multiframe=progress.all_multiframe,
                )
            )
            connection.execute(
                update(instances)
                .where(instances.c.id.in_([row.id for row in series_rows]))
                .values(folded=True, study_version=version)
            )
        last = max([study.last_received_at, *(row.received_at for row in rows)])
        progress_all = [
            SeriesProgress(*values)
            for values in connection.execute(
                select(
                    series_table.c.received_instances,
                    series_table.c.expected_instances,
                    series_table.c.all_multiframe,
                ).where(series_table.c.study_instance_uid == study_uid)
            )
        ]
        deadline = completion_deadline(last, progress_all, self._policy)
        connection.execute(
            update(studies)
            .where(studies.c.id == study.id)
            .values(
                instance_count=studies.c.instance_count + new_instances,
                last_received_at=last,
                complete_after=deadline.at,
                deadline_reason=deadline.reason.value,
            )
        )

    def _refuse_conflicting(
        self,
        connection: Connection,
        study_id: int,
        study_uid: str,
        rows: list[Any],
        now: datetime,
    ) -> None:
        """Instances whose series belongs to another study are kept but never processed."""
        connection.execute(
            update(instances)
            .where(instances.c.id.in_([row.id for row in rows]))
            .values(folded=True)
        )
        for row in rows:
            connection.execute(
                insert(audit_events).values(
                    event_row(
                        AuditEventType.INSTANCE_REJECTED,
                        occurred_at=now,
                        actor=SWEEPER,
                        outcome=EventOutcome.SERIOUS_FAILURE,
                        study_instance_uid=study_uid,
                        sop_instance_uid=row.sop_instance_uid,
                        study_id=study_id,
                        detail=f"{SERIES_CONFLICT}; stored but excluded from processing",
                    )
                )
            )

    def start_released(self, now: datetime) -> list[CompletedStudy]:
        """Complete, with a job, every receiving study whose delivering associations (those of
        its current version's instances) have all been released by a peer that sends studies
        whole, and whose series look whole. Its job starts at once; its results wait for the
        settle after the release (the job's `results_after`, `JobLedger.settle`), and a
        late instance meanwhile re-opens the study for a version whose job replaces it."""
        if not self._policy.release_settle:
            return []
        released: list[tuple[int, int, datetime]] = []
        with self._engine.begin() as connection:
            waiting = connection.execute(
                select(
                    studies.c.id, studies.c.study_instance_uid, studies.c.version,
                    studies.c.complete_after, studies.c.deadline_reason,
                ).where(studies.c.state == StudyState.RECEIVING)
            ).all()  # fmt: skip
            for study in waiting:
                delivered = connection.execute(
                    select(
                        instances.c.folded, instances.c.series_instance_uid,
                        instances.c.instance_number, associations.c.calling_ae,
                        associations.c.ended_at, associations.c.outcome,
                    )
                    .join(associations, associations.c.id == instances.c.association_id)
                    .where(
                        instances.c.study_instance_uid == study.study_instance_uid,
                        instances.c.study_version == study.version,
                    )
                ).all()  # fmt: skip
                peers = {row.calling_ae for row in delivered}
                if (
                    len(peers) != 1
                    or not all(row.folded for row in delivered)
                    or not all(row.outcome == RELEASED for row in delivered)
                ):
                    continue  # still arriving, aborted, or from several senders: wait quietly
                consistent = self._consistent(connection, study.study_instance_uid)
                current = CompletionDeadline(
                    study.complete_after, CompletionReason(study.deadline_reason)
                )
                released_at = max(row.ended_at for row in delivered)
                deadline = release_deadline(
                    peers.pop(), released_at, consistent, current, self._policy
                )
                if deadline is not current:
                    released.append((study.id, study.version, deadline.at))
        started = (
            self._complete(study_id, version, CompletionReason.RELEASED, now, SWEEPER, False, at)
            for study_id, version, at in released
        )
        return [study for study in started if study is not None]

    @staticmethod
    def _consistent(connection: Connection, study_uid: str) -> bool:
        series = connection.execute(
            select(
                series_table.c.series_instance_uid, series_table.c.received_instances,
                series_table.c.expected_instances, series_table.c.all_multiframe,
            ).where(series_table.c.study_instance_uid == study_uid)
        ).all()  # fmt: skip
        numbers: dict[str, list[int | None]] = defaultdict(list)
        for series_uid, number in connection.execute(
            select(instances.c.series_instance_uid, instances.c.instance_number).where(
                instances.c.study_instance_uid == study_uid
            )
        ):
            numbers[series_uid].append(number)
        return bool(series) and all(
            series_consistent(
                SeriesProgress(row.received_instances, row.expected_instances, row.all_multiframe),
                numbers[row.series_instance_uid],
            )
            for row in series
        )

    def complete_due(self, now: datetime, actor: str = SWEEPER) -> list[CompletedStudy]:
        """Complete every study whose deadline has passed; one job per study version."""
        with self._sessions() as session:
            unfolded = (
                select(instances.c.id)
                .where(
                    instances.c.study_instance_uid == Study.study_instance_uid,
                    instances.c.folded.is_(False),
                )
                .exists()
            )
            due = session.execute(
                select(Study.id, Study.version, Study.deadline_reason).where(
                    Study.state == StudyState.RECEIVING, Study.complete_after <= now, ~unfolded
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
        self.fold_pending(now)
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
        results_after: datetime | None = None,
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
                results_after=results_after,
            )
            session.add(job)
            session.flush()
            last = session.scalar(select(Study.last_received_at).where(Study.id == study_id))
            if last is not None:
                record_timing(session, job.id, Stage.QUIET, (now - last).total_seconds(), now)
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
            rows = list(session.scalars(query))
            modalities: dict[str, list[str]] = {}
            for uid, modality in session.execute(
                select(Series.study_instance_uid, Series.modality).where(
                    Series.study_instance_uid.in_([s.study_instance_uid for s in rows])
                )
            ):
                modalities.setdefault(uid, []).append(modality or "?")
            latest: dict[int, int] = dict(
                session.execute(
                    select(Job.study_id, func.max(Job.id))
                    .where(Job.study_id.in_([s.id for s in rows]))
                    .group_by(Job.study_id)
                ).all()
            )
            return [
                _summary(s, modalities.get(s.study_instance_uid, []), latest.get(s.id))
                for s in rows
            ]

    def show(self, study_instance_uid: str) -> StudyDetail:
        with self._sessions() as session:
            study = session.scalars(
                select(Study).where(Study.study_instance_uid == study_instance_uid)
            ).first()
            if study is None:
                raise UnknownStudy(study_instance_uid)
            series = list(
                session.scalars(
                    select(Series)
                    .where(Series.study_instance_uid == study_instance_uid)
                    .order_by(Series.series_number)
                )
            )
            jobs = list(
                session.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.id))
            )
            return StudyDetail(
                study=_summary(
                    study, [s.modality or "?" for s in series], jobs[-1].id if jobs else None
                ),
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


def _summary(study: Study, modalities: list[str], latest_job_id: int | None) -> StudySummary:
    """`modalities`: one per series."""
    return StudySummary(
        id=study.id,
        study_instance_uid=study.study_instance_uid,
        state=study.state,
        version=study.version,
        instance_count=study.instance_count,
        series_count=len(modalities),
        modalities=", ".join(sorted(set(modalities))),
        latest_job_id=latest_job_id,
        calling_ae=study.calling_ae,
        first_received_at=study.first_received_at,
        last_received_at=study.last_received_at,
        complete_after=study.complete_after,
        completed_at=study.completed_at,
        completion_reason=study.completion_reason,
    )
