"""The audit event writer: every change is recorded in the same transaction as the change."""

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from appliance.audit.models import AuditEvent
from appliance.domain.audit import EVENT_IDS, AuditEventType, EventAction, EventOutcome


def event_row(
    event_type: AuditEventType,
    *,
    occurred_at: datetime,
    actor: str,
    action: EventAction = EventAction.CREATE,
    outcome: EventOutcome = EventOutcome.SUCCESS,
    actor_host: str | None = None,
    study_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    association_id: int | None = None,
    study_id: int | None = None,
    job_id: int | None = None,
    detail: str | None = None,
) -> dict[str, Any]:
    """Column values of one audit event (PS3.15 A.5), for an ORM object or a Core insert."""
    coded = EVENT_IDS[event_type]
    return {
        "occurred_at": occurred_at,
        "event_type": event_type.value,
        "event_id_code": coded.code,
        "event_id_scheme": coded.scheme,
        "event_id_meaning": coded.meaning,
        "action": action.value,
        "outcome": int(outcome),
        "actor": actor,
        "actor_host": actor_host,
        "study_instance_uid": study_instance_uid,
        "sop_instance_uid": sop_instance_uid,
        "association_id": association_id,
        "study_id": study_id,
        "job_id": job_id,
        "detail": detail,
    }


def record_event(session: Session, event_type: AuditEventType, **fields: Any) -> None:
    """Add one audit event to `session`; the caller's commit makes it durable with the change."""
    session.add(AuditEvent(**event_row(event_type, **fields)))
