"""Which audit events an audit repository has been sent: a cursor per collector, moved only
after the events before it were written to the collector's connection."""

from sqlalchemy import Engine, select

from appliance.domain.atna import AuditRecord
from appliance.domain.concepts import CodedConcept
from appliance.store.db import session_factory
from appliance.store.models import AuditEvent, AuditExport


class AuditExportLedger:
    def __init__(self, engine: Engine) -> None:
        self._sessions = session_factory(engine)

    def pending(self, collector: str, limit: int) -> list[AuditRecord]:
        """The oldest `limit` events not yet sent to `collector`."""
        with self._sessions() as session:
            cursor = session.get(AuditExport, collector)
            after = cursor.last_event_id if cursor is not None else 0
            events = session.scalars(
                select(AuditEvent).where(AuditEvent.id > after).order_by(AuditEvent.id).limit(limit)
            ).all()
        return [
            AuditRecord(
                e.id, e.occurred_at,
                CodedConcept(e.event_id_scheme, e.event_id_code, e.event_id_meaning),
                e.action, e.outcome, e.actor, e.actor_host, e.study_instance_uid, e.detail,
            )
            for e in events
        ]  # fmt: skip

    def sent(self, collector: str, last_event_id: int) -> None:
        with self._sessions.begin() as session:
            cursor = session.get(AuditExport, collector)
            if cursor is None:
                session.add(AuditExport(collector=collector, last_event_id=last_event_id))
            else:
                cursor.last_event_id = max(cursor.last_event_id, last_event_id)
