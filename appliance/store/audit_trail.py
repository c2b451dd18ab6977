"""The audit trail: every change records its audit event (PS3.15 A.5), and the end of a job's
stage its timing, in the same transaction as the change itself."""

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from appliance.domain.audit import EVENT_IDS, AuditEventType, EventAction, EventOutcome
from appliance.domain.jobs import Stage
from appliance.store.models import AuditEvent, StageTiming


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
        "event_id_code": coded.value,
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


def record_timing(
    session: Session, job_id: int, stage: Stage, seconds: float, now: datetime, model: str = ""
) -> None:
    """How long one stage of a job took; inference rows name the model."""
    session.add(
        StageTiming(
            job_id=job_id,
            stage=stage.value,
            model=model,
            seconds=max(seconds, 0.0),
            recorded_at=now,
        )
    )
