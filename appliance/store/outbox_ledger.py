"""The outbox ledger: which result goes to which destination, and how far it has got.

The database, not memory, holds delivery state, so a restart resumes where it stopped: a row
is pending until a destination has stored the object, and a dead letter when it refused it or
the deadline passed. Every change is audited in the same transaction.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Engine, and_, func, select, update
from sqlalchemy.orm import Session

from appliance.domain.audit import AuditEventType, EventAction, EventOutcome
from appliance.domain.delivery import NEVER_SENT, DeliveryState
from appliance.store.audit_trail import record_event
from appliance.store.db import session_factory
from appliance.store.models import Delivery

_KEPT = {
    DeliveryState.SHADOW: "kept for review, never sent",
    DeliveryState.KEPT: "kept in the outbox: no destination is configured",
}

ACTOR = "delivery"


@dataclass(frozen=True)
class QueuedResult:
    destination: str
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    path: str  # relative to the outbox directory
    job_id: int | None = None


@dataclass(frozen=True)
class DueDelivery:
    id: int
    destination: str
    sop_instance_uid: str
    sop_class_uid: str
    path: str
    attempts: int
    first_attempt_at: datetime | None


@dataclass(frozen=True)
class DeliveryRow:
    destination: str
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    state: DeliveryState
    attempts: int
    last_status: int | None
    reason: str | None
    next_attempt_at: datetime
    finished_at: datetime | None
    path: str = ""  # the file, relative to the outbox


def _due(now: datetime) -> ColumnElement[bool]:
    """A delivery still to send whose next attempt has come."""
    return and_(Delivery.state == DeliveryState.PENDING.value, Delivery.next_attempt_at <= now)


class OutboxLedger:
    def __init__(self, engine: Engine) -> None:
        self._sessions = session_factory(engine)

    def enqueue(
        self,
        results: Sequence[QueuedResult],
        now: datetime,
        state: DeliveryState = DeliveryState.PENDING,
    ) -> None:
        """Queue each result for its destination. A result already known (the same SOP
        Instance UID, from a re-run) is queued again: the PACS replaces it, never doubles it.
        A result in a state that is never sent (a shadow pipeline's, or one made with no
        destination configured) is recorded as kept instead, and never becomes due."""
        kept = state in NEVER_SENT
        with self._sessions.begin() as session:
            for result in results:
                row = session.scalars(
                    select(Delivery).where(
                        Delivery.destination == result.destination,
                        Delivery.sop_instance_uid == result.sop_instance_uid,
                    )
                ).one_or_none()
                if row is None:
                    row = Delivery(
                        destination=result.destination,
                        sop_instance_uid=result.sop_instance_uid,
                        created_at=now,
                    )
                    session.add(row)
                row.sop_class_uid = result.sop_class_uid
                row.study_instance_uid = result.study_instance_uid
                row.job_id = result.job_id
                row.path = result.path
                row.state = state.value
                row.attempts = 0
                row.first_attempt_at = None
                row.next_attempt_at = now
                row.finished_at = None
                row.last_status = None
                row.reason = None
                record_event(
                    session,
                    AuditEventType.RESULT_KEPT if kept else AuditEventType.RESULT_QUEUED,
                    occurred_at=now,
                    actor=ACTOR,
                    study_instance_uid=result.study_instance_uid,
                    sop_instance_uid=result.sop_instance_uid,
                    job_id=result.job_id,
                    detail=_KEPT.get(state, f"to {result.destination}"),
                )

    def due(self, destination: str, now: datetime, limit: int = 500) -> list[DueDelivery]:
        with self._sessions() as session:
            rows = session.scalars(
                select(Delivery)
                .where(Delivery.destination == destination, _due(now))
                .order_by(Delivery.id)
                .limit(limit)
            ).all()
            return [
                DueDelivery(
                    r.id, r.destination, r.sop_instance_uid, r.sop_class_uid, r.path,
                    r.attempts, r.first_attempt_at,
                )
                for r in rows
            ]  # fmt: skip

    def claim(self, delivery_id: int, now: datetime, until: datetime) -> bool:
        """Take a due result for one send: its next attempt moves to `until`, so no other
        sender sees it as due meanwhile. False when another sender took it first."""
        with self._sessions.begin() as session:
            taken = session.scalars(
                update(Delivery)
                .where(Delivery.id == delivery_id, _due(now))
                .values(next_attempt_at=until)
                .returning(Delivery.id)
            ).one_or_none()
            return taken is not None

    def delivered(self, delivery_id: int, status: int, reason: str | None, now: datetime) -> None:
        """The destination stored the object (`reason` holds a warning status, if any)."""
        with self._sessions.begin() as session:
            row = self._attempted(session, delivery_id, now)
            row.state = DeliveryState.DELIVERED.value
            row.finished_at = now
            row.last_status, row.reason = status, reason
            self._audit(session, row, AuditEventType.RESULT_DELIVERED, EventOutcome.SUCCESS, now)

    def retry(
        self, delivery_id: int, status: int | None, reason: str, at: datetime, now: datetime
    ) -> None:
        with self._sessions.begin() as session:
            row = self._attempted(session, delivery_id, now)
            row.next_attempt_at = at
            row.last_status, row.reason = status, reason
            self._audit(
                session, row, AuditEventType.DELIVERY_RETRY, EventOutcome.MINOR_FAILURE, now
            )

    def dead_letter(self, delivery_id: int, status: int | None, reason: str, now: datetime) -> None:
        with self._sessions.begin() as session:
            row = self._attempted(session, delivery_id, now)
            row.state = DeliveryState.DEAD_LETTER.value
            row.finished_at = now
            row.last_status, row.reason = status, reason
            self._audit(
                session, row, AuditEventType.DELIVERY_DEAD_LETTER, EventOutcome.SERIOUS_FAILURE, now
            )

    def rows(
        self,
        state: DeliveryState | None = None,
        limit: int = 200,
        job_id: int | None = None,
    ) -> list[DeliveryRow]:
        with self._sessions() as session:
            query = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
            if state is not None:
                query = query.where(Delivery.state == state.value)
            if job_id is not None:
                query = query.where(Delivery.job_id == job_id)
            return [
                DeliveryRow(
                    r.destination, r.sop_instance_uid, r.sop_class_uid, r.study_instance_uid,
                    DeliveryState(r.state), r.attempts, r.last_status, r.reason,
                    r.next_attempt_at, r.finished_at, r.path,
                )
                for r in session.scalars(query)
            ]  # fmt: skip

    def counts(self) -> dict[DeliveryState, int]:
        with self._sessions() as session:
            found = session.execute(
                select(Delivery.state, func.count()).group_by(Delivery.state)
            ).all()
        return {DeliveryState(state): int(count) for state, count in found}

    @staticmethod
    def _attempted(session: Session, delivery_id: int, now: datetime) -> Delivery:
        row = session.get_one(Delivery, delivery_id)
        row.attempts += 1
        row.first_attempt_at = row.first_attempt_at or now
        return row

    @staticmethod
    def _audit(
        session: Session,
        row: Delivery,
        event: AuditEventType,
        outcome: EventOutcome,
        now: datetime,
    ) -> None:
        detail = f"to {row.destination}, attempt {row.attempts}"
        if row.reason:
            detail += f": {row.reason}"
        record_event(
            session,
            event,
            occurred_at=now,
            actor=ACTOR,
            action=EventAction.READ
            if event is AuditEventType.RESULT_DELIVERED
            else EventAction.EXECUTE,
            outcome=outcome,
            study_instance_uid=row.study_instance_uid,
            sop_instance_uid=row.sop_instance_uid,
            job_id=row.job_id,
            detail=detail,
        )
