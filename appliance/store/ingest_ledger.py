"""The ingest ledger: association, instance and audit rows written as the listener stores.

Each stored instance is one short transaction (its study and series rows if new, its instance
row, its audit event) that commits before the listener answers success. Study progress and
completion deadlines are folded in afterwards by the sweeper (`audit.studies`).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from appliance.domain.assembly import StudyState
from appliance.domain.audit import AuditEventType, EventAction, EventOutcome
from appliance.domain.ingest import (
    SERIES_CONFLICT,
    Admission,
    AssociationPeer,
    KnownInstance,
    LedgerUnavailable,
    StoredFile,
)
from appliance.domain.instance import InstanceRecord
from appliance.store.audit_trail import event_row, record_event
from appliance.store.db import session_factory
from appliance.store.models import Association, AuditEvent, Instance, Series, Study

studies = cast(Table, Study.__table__)
series_table = cast(Table, Series.__table__)
instances = cast(Table, Instance.__table__)
audit_events = cast(Table, AuditEvent.__table__)


OUTCOME_LENGTH = 200

_REPLACED_COLUMNS = (
    "sop_class_uid",
    "transfer_syntax_uid",
    "association_id",
    "path",
    "size_bytes",
    "sha256",
    "received_at",
    "folded",
)


class _HotStatements:
    """The statements of the acknowledgement path, built once per engine.

    SQLAlchemy memoises a statement object's cache key, so executing a prebuilt statement with
    new parameters skips most of the per-call construction cost.
    """

    def __init__(self, engine: Engine) -> None:
        dialect_insert: Any = (
            postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        )
        self.known_instance = select(instances.c.path, instances.c.sha256).where(
            instances.c.sop_instance_uid == bindparam("sop")
        )
        self.series_owner = select(series_table.c.study_instance_uid).where(
            series_table.c.series_instance_uid == bindparam("series")
        )
        self.new_study = dialect_insert(studies).on_conflict_do_nothing()
        self.new_series = dialect_insert(series_table).on_conflict_do_nothing()
        self.new_instance = (
            dialect_insert(instances).on_conflict_do_nothing().returning(instances.c.id)
        )
        self.replace_instance = (
            update(instances)
            .where(instances.c.sop_instance_uid == bindparam("b_sop"))
            .values({column: bindparam(column) for column in _REPLACED_COLUMNS})
        )
        self.audit = insert(audit_events)


def _series_conflict(owner_study_uid: str | None, record: InstanceRecord) -> str | None:
    if owner_study_uid is not None and owner_study_uid != record.study_instance_uid:
        return SERIES_CONFLICT
    return None


def _peer_event(
    session: Session, event_type: AuditEventType, peer: AssociationPeer, at: datetime, **fields: Any
) -> None:
    """An audit event whose actor is the remote AE (PS3.15 A.5.2 Active Participant)."""
    record_event(
        session, event_type, occurred_at=at, actor=peer.calling_ae, actor_host=peer.host, **fields
    )


class DatabaseIngestLedger:
    """Implements the listener's ledger protocol on the audit database."""

    def __init__(self, engine: Engine, ended: Callable[[], None] | None = None) -> None:
        self._engine = engine
        self._sessions: sessionmaker[Session] = session_factory(engine)
        self._hot = _HotStatements(engine)
        self._ended = ended  # told once an association's end is recorded

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
            _peer_event(
                session,
                AuditEventType.ASSOCIATION_STARTED,
                peer,
                at,
                association_id=row.id,
                detail=f"called AE {peer.called_ae}" + (", TLS" if peer.tls else ""),
            )
            return row.id

    def association_refused(self, peer: AssociationPeer, reason: str, at: datetime) -> None:
        with self._transaction() as session:
            _peer_event(
                session,
                AuditEventType.ASSOCIATION_REFUSED,
                peer,
                at,
                action=EventAction.EXECUTE,
                outcome=EventOutcome.MINOR_FAILURE,
                detail=f"{reason} (called AE {peer.called_ae})" if peer.called_ae else reason,
            )

    def contexts_refused(
        self, association_id: int, peer: AssociationPeer, sop_classes: list[str], at: datetime
    ) -> None:
        """One row for the association, however many contexts it offered in vain."""
        shown = ", ".join(sop_classes[:20]) + (
            f" and {len(sop_classes) - 20} more" if len(sop_classes) > 20 else ""
        )
        with self._transaction() as session:
            _peer_event(
                session,
                AuditEventType.CONTEXT_REFUSED,
                peer,
                at,
                outcome=EventOutcome.MINOR_FAILURE,
                association_id=association_id,
                detail=f"{len(sop_classes)} presentation contexts refused: {shown}",
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
                row.outcome = outcome[:OUTCOME_LENGTH]
                row.instances_stored = stored
                row.instances_failed = failed
            _peer_event(
                session,
                AuditEventType.ASSOCIATION_ENDED,
                peer,
                at,
                outcome=EventOutcome.SUCCESS if failed == 0 else EventOutcome.MINOR_FAILURE,
                association_id=association_id,
                detail=f"{outcome}: {stored} stored, {failed} failed",
            )
        if self._ended is not None:
            self._ended()

    def admission(self, record: InstanceRecord) -> Admission:
        with self._translated(), self._engine.connect() as connection:
            connection = connection.execution_options(read_only=True)
            known = connection.execute(
                self._hot.known_instance, {"sop": record.sop_instance_uid}
            ).first()
            owner = connection.execute(
                self._hot.series_owner, {"series": record.series_instance_uid}
            ).scalar()
            return Admission(
                known=KnownInstance(record.sop_instance_uid, known.path, known.sha256)
                if known
                else None,
                conflict=_series_conflict(owner, record),
                series_known=owner is not None,
            )

    def instance_stored(
        self,
        association_id: int,
        peer: AssociationPeer,
        record: InstanceRecord,
        stored: StoredFile,
        at: datetime,
        first_of_series: bool,
    ) -> None:
        """Commit the instance row and its audit event, before the acknowledgement.

        Inserts that take no row locks: the study and series rows are created with the first
        instance of a series and left alone, and study progress is folded in later by the
        sweeper, so concurrent associations of one study never queue on its row. The
        statements are built once (`_HotStatements`): this runs for every received instance.
        """
        hot = self._hot
        patient = record.patient
        columns = {
            "sop_instance_uid": record.sop_instance_uid,
            "sop_class_uid": record.sop_class_uid,
            "transfer_syntax_uid": record.transfer_syntax_uid,
            "study_instance_uid": record.study_instance_uid,
            "series_instance_uid": record.series_instance_uid,
            "association_id": association_id,
            "instance_number": record.instance_number,
            "number_of_frames": record.number_of_frames,
            "images_in_acquisition": record.images_in_acquisition,
            "path": stored.path,
            "size_bytes": stored.size_bytes,
            "sha256": stored.sha256,
            "received_at": at,
            "folded": False,
        }
        with self._translated(), self._engine.begin() as connection:
            if first_of_series:
                connection.execute(
                    hot.new_study,
                    {
                        "study_instance_uid": record.study_instance_uid,
                        "state": StudyState.RECEIVING.value,
                        "version": 1,
                        "patient_id": patient.patient_id,
                        "patient_name": patient.patient_name,
                        "patient_birth_date": patient.patient_birth_date,
                        "accession_number": patient.accession_number,
                        "study_date": record.study_date,
                        "study_description": record.study_description,
                        "calling_ae": peer.calling_ae,
                        "called_ae": peer.called_ae,
                        "instance_count": 0,
                        "first_received_at": at,
                        "last_received_at": at,
                    },
                )
                connection.execute(
                    hot.new_series,
                    {
                        "series_instance_uid": record.series_instance_uid,
                        "study_instance_uid": record.study_instance_uid,
                        "modality": record.modality,
                        "series_number": record.series_number,
                        "series_description": record.series_description,
                        "body_part_examined": record.body_part_examined,
                        "received_instances": 0,
                        "all_multiframe": True,
                    },
                )
            replaced = connection.execute(hot.new_instance, columns).first() is None
            if replaced:
                # Folded again, so a complete study re-opens for the new content.
                replacement = {name: columns[name] for name in _REPLACED_COLUMNS}
                connection.execute(
                    hot.replace_instance, {**replacement, "b_sop": record.sop_instance_uid}
                )
            connection.execute(
                hot.audit,
                event_row(
                    AuditEventType.INSTANCE_REPLACED
                    if replaced
                    else AuditEventType.INSTANCE_STORED,
                    occurred_at=at,
                    actor=peer.calling_ae,
                    actor_host=peer.host,
                    action=EventAction.UPDATE if replaced else EventAction.CREATE,
                    study_instance_uid=record.study_instance_uid,
                    sop_instance_uid=record.sop_instance_uid,
                    association_id=association_id,
                ),
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
            _peer_event(
                session,
                AuditEventType.INSTANCE_DUPLICATE,
                peer,
                at,
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
            _peer_event(
                session,
                AuditEventType.INSTANCE_REJECTED,
                peer,
                at,
                outcome=EventOutcome.SERIOUS_FAILURE,
                study_instance_uid=study_instance_uid,
                sop_instance_uid=sop_instance_uid,
                association_id=association_id,
                detail=reason,
            )
