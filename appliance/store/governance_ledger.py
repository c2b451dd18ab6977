"""Governance: the states operators give pipelines and model versions, each change audited
under the operator's name in the same transaction.

A pipeline or model version without a row has its declared state (pipelines) or is enabled
(model versions); the row keeps the latest state and who set it, the audit trail the history.
"""

from datetime import datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from appliance.domain.audit import AuditEventType, EventAction
from appliance.domain.pipelines import Governance, ModelRef, State
from appliance.store.audit_trail import record_event
from appliance.store.db import session_factory
from appliance.store.models import Governance as GovernanceRow

PIPELINE = "pipeline"
MODEL = "model"


class GovernanceLedger:
    def __init__(self, engine: Engine) -> None:
        self._sessions = session_factory(engine)

    def current(self) -> Governance:
        with self._sessions() as session:
            rows = session.execute(
                select(GovernanceRow.kind, GovernanceRow.name, GovernanceRow.version,
                       GovernanceRow.state)
            ).all()  # fmt: skip
        return Governance(
            pipelines={name: State(state) for kind, name, _, state in rows if kind == PIPELINE},
            models={
                ModelRef(name, version): State(state)
                for kind, name, version, state in rows
                if kind == MODEL
            },
        )

    def set_pipeline(self, name: str, state: State, was: State, now: datetime, actor: str) -> None:
        """Give pipeline `name` `state` (it had `was`)."""
        with self._sessions.begin() as session:
            self._set(session, PIPELINE, name, 0, state, now, actor)
            self._audit(session, f"pipeline {name}: {was.value} -> {state.value}", now, actor)

    def set_model(
        self, model: ModelRef, state: State, was: State, now: datetime, actor: str
    ) -> None:
        """Give model version `model` `state` (it had `was`)."""
        with self._sessions.begin() as session:
            self._set(session, MODEL, model.name, model.version, state, now, actor)
            self._audit(session, f"model {model}: {was.value} -> {state.value}", now, actor)

    def record_import(
        self, model: ModelRef, state: State, detail: str, now: datetime, actor: str
    ) -> None:
        """Model version `model` was added to the repository (`detail` says from where); it
        starts in `state`."""
        with self._sessions.begin() as session:
            self._set(session, MODEL, model.name, model.version, state, now, actor)
            record_event(
                session,
                AuditEventType.MODEL_IMPORTED,
                occurred_at=now,
                actor=actor,
                action=EventAction.CREATE,
                detail=f"model {model} ({state.value}): {detail}",
            )

    @staticmethod
    def _set(
        session: Session,
        kind: str,
        name: str,
        version: int,
        state: State,
        now: datetime,
        actor: str,
    ) -> None:
        row = session.scalars(
            select(GovernanceRow)
            .where(
                GovernanceRow.kind == kind,
                GovernanceRow.name == name,
                GovernanceRow.version == version,
            )
            .with_for_update()
        ).one_or_none()
        if row is None:
            row = GovernanceRow(kind=kind, name=name, version=version)
            session.add(row)
        row.state = state.value
        row.changed_at = now
        row.changed_by = actor

    @staticmethod
    def _audit(session: Session, detail: str, now: datetime, actor: str) -> None:
        record_event(
            session,
            AuditEventType.GOVERNANCE_CHANGED,
            occurred_at=now,
            actor=actor,
            action=EventAction.UPDATE,
            detail=detail,
        )
