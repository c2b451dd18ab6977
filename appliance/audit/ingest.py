"""The ingest ledger: association, instance and study rows written as the listener stores.

Each stored instance is one transaction: its instance row, its series and study progress, the
study's completion deadline and its audit event commit together, and only then does the listener
answer success.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from appliance.audit.db import session_factory
from appliance.audit.events import event_row, record_event
from appliance.audit.models import Association, AuditEvent, Instance, Series, Study
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

SERIES_CONFLICT = "Series Instance UID already belongs to another study"

studies = cast(Table, Study.__table__)
series_table = cast(Table, Series.__table__)
instances = cast(Table, Instance.__table__)
audit_events = cast(Table, AuditEvent.__table__)


@dataclass(frozen=True, slots=True)
class _StudyRow:
    id: int
    state: str
    version: int


def _insert(connection: Connection) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT DO NOTHING (SQLite and PostgreSQL)."""
    return postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert


def _series_conflict(owner_study_uid: str | None, record: InstanceRecord) -> str | None:
    if owner_study_uid is not None and owner_study_uid != record.study_instance_uid:
        return SERIES_CONFLICT
    return None


class DatabaseIngestLedger:
    """Implements the listener's ledger protocol on the audit database."""

    def __init__(self, engine: Engine, policy: CompletionPolicy) -> None:
        self._engine = engine
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
        with self._translated(), self._engine.connect() as connection:
            connection = connection.execution_options(read_only=True)
            known = connection.execute(
                select(instances.c.path, instances.c.sha256).where(
                    instances.c.sop_instance_uid == record.sop_instance_uid
                )
            ).first()
            owner = connection.execute(
                select(studies.c.study_instance_uid)
                .join(series_table, series_table.c.study_id == studies.c.id)
                .where(series_table.c.series_instance_uid == record.series_instance_uid)
            ).scalar()
            return Admission(
                known=KnownInstance(record.sop_instance_uid, known.path, known.sha256)
                if known
                else None,
                conflict=_series_conflict(owner, record),
            )

    def instance_stored(
        self,
        association_id: int,
        peer: AssociationPeer,
        record: InstanceRecord,
        stored: StoredFile,
        at: datetime,
    ) -> None:
        """Commit the rows for a newly stored or replacing instance, with its audit event.

        Written with SQLAlchemy Core: this runs once per received instance, before the
        acknowledgement, so its statement count is the listener's database cost.
        """
        with self._translated(), self._engine.begin() as connection:
            study = self._upsert_study(connection, record, peer, at)
            if study.state == StudyState.COMPLETE:
                study = self._reopen(connection, study, association_id, peer, record, at)
            series_id = self._upsert_series(connection, record, study.id)
            inserted = connection.execute(
                _insert(connection)(instances)
                .values(
                    sop_instance_uid=record.sop_instance_uid,
                    sop_class_uid=record.sop_class_uid,
                    transfer_syntax_uid=record.transfer_syntax_uid,
                    study_id=study.id,
                    series_id=series_id,
                    association_id=association_id,
                    study_version=study.version,
                    instance_number=record.instance_number,
                    number_of_frames=record.number_of_frames,
                    path=stored.path,
                    size_bytes=stored.size_bytes,
                    sha256=stored.sha256,
                    received_at=at,
                )
                .on_conflict_do_nothing()
                .returning(instances.c.id)
            ).first()
            if inserted is not None:
                self._count_instance(connection, record, series_id, study.id)
                event_type, action = AuditEventType.INSTANCE_STORED, EventAction.CREATE
            else:
                connection.execute(
                    update(instances)
                    .where(instances.c.sop_instance_uid == record.sop_instance_uid)
                    .values(
                        path=stored.path,
                        size_bytes=stored.size_bytes,
                        sha256=stored.sha256,
                        transfer_syntax_uid=record.transfer_syntax_uid,
                        association_id=association_id,
                        study_version=study.version,
                        received_at=at,
                    )
                )
                event_type, action = AuditEventType.INSTANCE_REPLACED, EventAction.UPDATE
            self._refresh_deadline(connection, study.id, at)
            connection.execute(
                insert(audit_events).values(
                    event_row(
                        event_type,
                        occurred_at=at,
                        actor=peer.calling_ae,
                        actor_host=peer.host,
                        action=action,
                        study_instance_uid=record.study_instance_uid,
                        sop_instance_uid=record.sop_instance_uid,
                        association_id=association_id,
                        study_id=study.id,
                    )
                )
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

    def _upsert_study(
        self, connection: Connection, record: InstanceRecord, peer: AssociationPeer, at: datetime
    ) -> _StudyRow:
        patient = record.patient
        connection.execute(
            _insert(connection)(studies)
            .values(
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
            .on_conflict_do_nothing()
        )
        return _StudyRow(
            *connection.execute(
                select(studies.c.id, studies.c.state, studies.c.version)
                .where(studies.c.study_instance_uid == record.study_instance_uid)
                .with_for_update()
            ).one()
        )

    def _reopen(
        self,
        connection: Connection,
        study: _StudyRow,
        association_id: int,
        peer: AssociationPeer,
        record: InstanceRecord,
        at: datetime,
    ) -> _StudyRow:
        version = study.version + 1
        connection.execute(
            update(studies)
            .where(studies.c.id == study.id)
            .values(
                state=StudyState.RECEIVING.value,
                version=version,
                completed_at=None,
                completion_reason=None,
            )
        )
        connection.execute(
            insert(audit_events).values(
                event_row(
                    AuditEventType.STUDY_REOPENED,
                    occurred_at=at,
                    actor=peer.calling_ae,
                    actor_host=peer.host,
                    action=EventAction.UPDATE,
                    study_instance_uid=record.study_instance_uid,
                    study_id=study.id,
                    association_id=association_id,
                    detail=f"instance arrived after completion; version {version}",
                )
            )
        )
        return _StudyRow(study.id, StudyState.RECEIVING.value, version)

    def _upsert_series(self, connection: Connection, record: InstanceRecord, study_id: int) -> int:
        connection.execute(
            _insert(connection)(series_table)
            .values(
                study_id=study_id,
                series_instance_uid=record.series_instance_uid,
                modality=record.modality,
                series_number=record.series_number,
                series_description=record.series_description,
                body_part_examined=record.body_part_examined,
                received_instances=0,
                all_multiframe=True,
            )
            .on_conflict_do_nothing()
        )
        row = connection.execute(
            select(series_table.c.id, series_table.c.study_id).where(
                series_table.c.series_instance_uid == record.series_instance_uid
            )
        ).one()
        if row.study_id != study_id:
            raise IngestConflict(SERIES_CONFLICT)
        return int(row.id)

    def _count_instance(
        self, connection: Connection, record: InstanceRecord, series_id: int, study_id: int
    ) -> None:
        current = connection.execute(
            select(
                series_table.c.received_instances,
                series_table.c.expected_instances,
                series_table.c.all_multiframe,
            ).where(series_table.c.id == series_id)
        ).one()
        progress = SeriesProgress(*current).with_instance(record)
        connection.execute(
            update(series_table)
            .where(series_table.c.id == series_id)
            .values(
                received_instances=progress.received_instances,
                expected_instances=progress.expected_instances,
                all_multiframe=progress.all_multiframe,
            )
        )
        connection.execute(
            update(studies)
            .where(studies.c.id == study_id)
            .values(instance_count=studies.c.instance_count + 1)
        )

    def _refresh_deadline(self, connection: Connection, study_id: int, at: datetime) -> None:
        last = connection.execute(
            select(studies.c.last_received_at).where(studies.c.id == study_id)
        ).scalar_one()
        last = max(last, at)
        progress = [
            SeriesProgress(*row)
            for row in connection.execute(
                select(
                    series_table.c.received_instances,
                    series_table.c.expected_instances,
                    series_table.c.all_multiframe,
                ).where(series_table.c.study_id == study_id)
            )
        ]
        deadline = completion_deadline(last, progress, self._policy)
        connection.execute(
            update(studies)
            .where(studies.c.id == study_id)
            .values(
                last_received_at=last,
                complete_after=deadline.at,
                deadline_reason=deadline.reason.value,
            )
        )
