"""A dashboard on the settings and database of a running test listener, with one account
per role, and what its tests share: signing in, reading the audit trail."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from appliance.app.dashboard_view import dashboard_ports
from appliance.domain.accounts import Role
from appliance.store.account_ledger import AccountLedger
from appliance.store.models import AuditEvent
from appliance.web.app import create_app

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
PASSWORD = "correct horse battery"


@pytest.fixture
def dashboard(start, tmp_path: Path) -> Any:  # type: ignore[no-untyped-def]
    running = start(
        inference={"repository": str(REPOSITORY), "threads": 1},
        queue={"broker_url": f"sqla+sqlite:///{tmp_path}/broker.db"},
    )
    accounts = AccountLedger(running.engine)
    for name, role in (("vera", Role.VIEWER), ("otto", Role.OPERATOR), ("ada", Role.ADMIN)):
        accounts.add(name, PASSWORD, role, datetime.now(UTC), "test")
    running.app = create_app(
        running.settings.dashboard, dashboard_ports(running.settings, running.engine)
    )
    return running


def client_for(app: Any, username: str | None = None) -> TestClient:
    client = TestClient(app, follow_redirects=False)
    if username is not None:
        answer = client.post("/login", data={"username": username, "password": PASSWORD})
        assert answer.status_code == 303, answer.text
    return client


def events(engine: Engine, event_type: str) -> list[AuditEvent]:
    with Session(engine) as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event_type == event_type)))
