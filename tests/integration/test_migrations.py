"""Migrations build exactly the schema the models describe; audit events are append-only."""

from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from appliance.domain.audit import AuditEventType
from appliance.store.audit_trail import record_event
from appliance.store.db import pending_migrations, upgrade
from appliance.store.models import AuditEvent, AuditEventImmutable, Base


def test_schema_matches_models(engine: Engine) -> None:
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
    assert pending_migrations(engine) == []
    upgrade(engine)  # idempotent


def _one_event(engine: Engine) -> int:
    with Session(engine) as session, session.begin():
        record_event(
            session,
            AuditEventType.ASSOCIATION_REFUSED,
            occurred_at=datetime.now(UTC),
            actor="INTRUDER",
            detail="test",
        )
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT max(id) FROM audit_events")).scalar_one())


def test_database_refuses_update_and_delete_of_audit_events(engine: Engine) -> None:
    event_id = _one_event(engine)
    for statement in (
        f"UPDATE audit_events SET actor = 'someone else' WHERE id = {event_id}",
        f"DELETE FROM audit_events WHERE id = {event_id}",
    ):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(text(statement))
    with engine.connect() as connection:
        actor = connection.execute(
            text(f"SELECT actor FROM audit_events WHERE id = {event_id}")
        ).scalar_one()
    assert actor == "INTRUDER"


def test_orm_refuses_changes_to_audit_events(engine: Engine) -> None:
    event_id = _one_event(engine)
    with Session(engine) as session:
        event = session.get(AuditEvent, event_id)
        assert event is not None
        event.detail = "rewritten"
        with pytest.raises(AuditEventImmutable):
            session.flush()
        session.rollback()
        session.delete(session.get(AuditEvent, event_id))
        with pytest.raises(AuditEventImmutable):
            session.flush()
