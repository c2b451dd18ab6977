"""The ingest ledger: association, instance and study rows written as the listener stores.

Each stored instance is one transaction: its instance row, its series and study progress, the
study's completion deadline and its audit event commit together, and only then does the listener
answer success.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import Engine, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from appliance.audit.db import session_factory
from appliance.audit.events import record_event
from appliance.audit.models import Association, Instance, Series, Study
from appliance.domain.assembly import (
    CompletionPolicy,
    SeriesProgress,
    StudyState,
    completion_deadline,
)
from appliance.domain.audit import AuditEventType, EventAction, EventOutcome
from appliance.domain.ingest import (
    Admission,
    AssociationPeer,
    IngestConflict,
    KnownInstance,
    LedgerUnavailable,
    StoredFile,
)
from appliance.domain.instance import InstanceRecord


def _insert_ignoring_conflict(
    session: Session, model: type[Study] | type[Series], **values: object
) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(model).values(**values).on_conflict_do_nothing())


def _series_conflict(series: Series | None, study: Study | None) -> str | None:
    if series is not None and (study is None or series.study_id != study.id):
        return "Series Instance UID already belongs to another study"
    return None


class DatabaseIngestLedger:
    """Implements the listener's ledger protocol on the audit database."""

    def __init__(self, engine: Engine, policy: CompletionPolicy) -> None:
        self._sessions: sessionmaker[Session] = session_factory(engine)
        self._policy = policy

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except DBAPIError as exc:
            raise LedgerUnavailable(exc.__class__.__name__) from exc

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with self._translated(), self._sessions.begin() as session:
            yield session

    def association_started(self, peer: AssociationPeer, at: datetime) -> int:
        with self._transaction() as session:
            row = Association(
                calling_ae=peer.calling_ae,
                called_ae=peer.called_ae,
                peer_host=peer.host,
                peer_port=peer.port,
                tls=peer.tls,
                started_at=at,
                instances_stored=0,
                instances_failed=0,
            )
            session.add(row)
            session.flush()
            record_event(
                session,
                AuditEventType.ASSOCIATION_STARTED,
                occurred_at=at,
                actor=peer.calling_ae,
                actor_host=peer.host,
                association_id=row.id,
                detail=f"called AE {peer.called_ae}" + (", TLS" if peer.tls else ""),
            )
            return row.id

    def association_refused(self, peer: AssociationPeer, reason: str, at: datetime) -> None:
        with self._transaction() as session:
            record_event(
                session,
                AuditEventType.ASSOCIATION_REFUSED,
                occurred_at=at,
                actor=peer.calling_ae,
                actor_host=peer.host,
                action=EventAction.EXECUTE,
                outcome=EventOutcome.MINOR_FAILURE,
                detail=f"{reason} (called AE {peer.called_ae})",
            )

    def contexts_refused(
        self, association_id: int, peer: AssociationPeer, reasons: list[str], at: datetime
    ) -> None:
        with self._transaction() as session:
            for reason in reasons:
                record_event(
                    session,
                    AuditEventType.CONTEXT_REFUSED,
                    occurred_at=at,
                    actor=peer.calling_ae,
                    actor_host=peer.host,
                    outcome=EventOutcome.MINOR_FAILURE,
                    association_id=association_id,
                    detail=reason,
                )

    def association_ended(
        self,
        association_id: int,
        peer: AssociationPeer,
        outcome: str,
        stored: int,
        failed: int,
        at: datetime,
    ) -> None:
        with self._transaction() as session:
            row = session.get(Association, association_id)
            if row is not None:
                row.ended_at = at
                row.outcome = outcome
                row.instances_stored = stored
                row.instances_failed = failed
            record_event(
                session,
                AuditEventType.ASSOCIATION_ENDED,
                occurred_at=at,
                actor=peer.calling_ae,
                actor_host=peer.host,
                outcome=EventOutcome.SUCCESS if failed == 0 else EventOutcome.MINOR_FAILURE,
                association_id=association_id,
                detail=f"{outcome}: {stored} stored, {failed} failed",
            )

    def admission(self, record: InstanceRecord) -> Admission:
        with self._translated(), self._sessions() as session:
            known = session.execute(
                select(Instance.path, Instance.sha256).where(
                    Instance.sop_instance_uid == record.sop_instance_uid
                )
            ).first()
            series = session.scalars(
                select(Series).where(Series.series_instance_uid == record.series_instance_uid)
            ).first()
            study = session.scalars(
                select(Study).where(Study.study_instance_uid == record.study_instance_uid)
            ).first()
            return Admission(
                known=KnownInstance(record.sop_instance_uid, known.path, known.sha256)
                if known
                else None,
                conflict=_series_conflict(series, study),
            )

    def instance_stored(
        self,
        association_id: int,
        peer: AssociationPeer,
        record: InstanceRecord,
        stored: StoredFile,
        at: datetime,
    ) -> None:
        """Commit the rows for a newly stored or replacing instance, with its audit event."""
        with self._transaction() as session:
            study = self._study_for_update(session, record, peer, at)
            if study.state == StudyState.COMPLETE:
                study.state = StudyState.RECEIVING
                study.version += 1
                study.completed_at = None
                study.completion_reason = None
                record_event(
                    session,
                    AuditEventType.STUDY_REOPENED,
                    occurred_at=at,
                    actor=peer.calling_ae,
                    actor_host=peer.host,
                    action=EventAction.UPDATE,
                    study_instance_uid=record.study_instance_uid,
                    study_id=study.id,
                    association_id=association_id,
                    detail=f"instance arrived after completion; version {study.version}",
                )
            series = self._series_for_update(session, record, study)
            existing = session.scalars(
                select(Instance).where(Instance.sop_instance_uid == record.sop_instance_uid)
            ).first()
            if existing is None:
                progress = SeriesProgress(
                    series.received_instances, series.expected_instances, series.all_multiframe
                ).with_instance(record)
                series.received_instances = progress.received_instances
                series.expected_instances = progress.expected_instances
                series.all_multiframe = progress.all_multiframe
                study.instance_count += 1
                session.add(
                    Instance(
                        sop_instance_uid=record.sop_instance_uid,
                        sop_class_uid=record.sop_class_uid,
                        transfer_syntax_uid=record.transfer_syntax_uid,
                        study_id=study.id,
                        series_id=series.id,
                        association_id=association_id,
                        study_version=study.version,
                        instance_number=record.instance_number,
                        number_of_frames=record.number_of_frames,
                        path=stored.path,
                        size_bytes=stored.size_bytes,
                        sha256=stored.sha256,
                        received_at=at,
                    )
                )
                event_type = AuditEventType.INSTANCE_STORED
            else:
                existing.path = stored.path
                existing.size_bytes = stored.size_bytes
                existing.sha256 = stored.sha256
                existing.transfer_syntax_uid = record.transfer_syntax_uid
                existing.association_id = association_id
                existing.study_version = study.version
                existing.received_at = at
                event_type = AuditEventType.INSTANCE_REPLACED
            self._refresh_deadline(session, study, at)
            record_event(
                session,
                event_type,
                occurred_at=at,
                actor=peer.calling_ae,
                actor_host=peer.host,
                action=EventAction.CREATE if existing is None else EventAction.UPDATE,
                study_instance_uid=record.study_instance_uid,
                sop_instance_uid=record.sop_instance_uid,
                association_id=association_id,
                study_id=study.id,
            )

    def instance_duplicate(
        self,
        association_id: int,
        peer: AssociationPeer,
        record: InstanceRecord,
        identical: bool,
        at: datetime,
    ) -> None:
        with self._transaction() as session:
            record_event(
                session,
                AuditEventType.INSTANCE_DUPLICATE,
                occurred_at=at,
                actor=peer.calling_ae,
                actor_host=peer.host,
                outcome=EventOutcome.SUCCESS if identical else EventOutcome.MINOR_FAILURE,
                study_instance_uid=record.study_instance_uid,
                sop_instance_uid=record.sop_instance_uid,
                association_id=association_id,
                detail="identical copy ignored"
                if identical
                else "different content under a stored SOP Instance UID; first copy kept",
            )

    def instance_rejected(
        self,
        association_id: int,
        peer: AssociationPeer,
        sop_instance_uid: str | None,
        study_instance_uid: str | None,
        reason: str,
        at: datetime,
    ) -> None:
        with self._transaction() as session:
            record_event(
                session,
                AuditEventType.INSTANCE_REJECTED,
                occurred_at=at,
                actor=peer.calling_ae,
                actor_host=peer.host,
                outcome=EventOutcome.SERIOUS_FAILURE,
                study_instance_uid=study_instance_uid,
                sop_instance_uid=sop_instance_uid,
                association_id=association_id,
                detail=reason,
            )

    def _study_for_update(
        self, session: Session, record: InstanceRecord, peer: AssociationPeer, at: datetime
    ) -> Study:
        patient = record.patient
        _insert_ignoring_conflict(
            session,
            Study,
            study_instance_uid=record.study_instance_uid,
            state=StudyState.RECEIVING.value,
            version=1,
            patient_id=patient.patient_id,
            patient_name=patient.patient_name,
            patient_birth_date=patient.patient_birth_date,
            accession_number=patient.accession_number,
            study_date=record.study_date,
            study_description=record.study_description,
            calling_ae=peer.calling_ae,
            called_ae=peer.called_ae,
            instance_count=0,
            first_received_at=at,
            last_received_at=at,
        )
        return session.scalars(
            select(Study)
            .where(Study.study_instance_uid == record.study_instance_uid)
            .with_for_update()
        ).one()

    def _series_for_update(self, session: Session, record: InstanceRecord, study: Study) -> Series:
        _insert_ignoring_conflict(
            session,
            Series,
            study_id=study.id,
            series_instance_uid=record.series_instance_uid,
            modality=record.modality,
            series_number=record.series_number,
            series_description=record.series_description,
            body_part_examined=record.body_part_examined,
            received_instances=0,
            all_multiframe=True,
        )
        series = session.scalars(
            select(Series)
            .where(Series.series_instance_uid == record.series_instance_uid)
            .with_for_update()
        ).one()
        conflict = _series_conflict(series, study)
        if conflict:
            raise IngestConflict(conflict)
        return series

    def _refresh_deadline(self, session: Session, study: Study, at: datetime) -> None:
        study.last_received_at = max(study.last_received_at, at)
        progress = [
            SeriesProgress(s.received_instances, s.expected_instances, s.all_multiframe)
            for s in session.scalars(select(Series).where(Series.study_id == study.id))
        ]
        deadline = completion_deadline(study.last_received_at, progress, self._policy)
        study.complete_after = deadline.at
        study.deadline_reason = deadline.reason.value
