"""What the dashboard needs of the rest of the appliance: one small protocol per area, bundled
in `Ports`. `app.dashboard_view` implements them on the database, the spool, the inference
backend and the destinations; the web edge knows nothing else.

Every method that acts or reveals takes the acting user's name, for the audit trail.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from appliance.domain.accounts import CredentialKind, LoginRefused, User
from appliance.domain.monitoring import (
    Check,
    EventRow,
    Flow,
    JobDetail,
    JobRow,
    ModelRow,
    PipelineRow,
    StageHistogram,
    StageSamples,
    StudySummary,
    Totals,
)
from appliance.domain.pipelines import ModelRef, State
from appliance.domain.preview import PreviewSection


class NotFound(LookupError):
    """No such study or job."""


class Conflict(ValueError):
    """The action does not fit the object's state (retry a job that is running, ...)."""


@dataclass(frozen=True)
class EventFilter:
    event_type: str | None = None
    actor: str | None = None
    study_instance_uid: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = None  # paging: events older than this one


@dataclass(frozen=True)
class SpoolDisk:
    used_percent: float
    watermark_percent: float

    @property
    def ok(self) -> bool:
        return self.used_percent < self.watermark_percent


class Accounts(Protocol):
    def login(self, username: str, password: str, host: str | None) -> str | LoginRefused: ...
    def user(self, secret: str, kind: CredentialKind) -> User | None: ...
    def logout(self, secret: str) -> None: ...


class Monitoring(Protocol):
    """What is happening: flow, latency, health. Read at every page view and scrape."""

    def flow(self) -> Flow: ...
    def stage_samples(self) -> list[StageSamples]: ...
    def histograms(self, buckets: Sequence[float]) -> list[StageHistogram]: ...
    def totals(self) -> Totals: ...
    def readiness(self) -> list[Check]: ...
    def destinations(self) -> list[Check]: ...
    def spool(self) -> SpoolDisk: ...


class Jobs(Protocol):
    def jobs(self, state: str | None) -> list[JobRow]: ...
    def job(self, job_id: int) -> JobDetail | None: ...
    def preview(self, job_id: int) -> list[PreviewSection]: ...
    def preview_image(self, job_id: int, number: int) -> bytes | None: ...
    def retry(self, job_id: int, actor: str) -> None: ...
    def cancel(self, job_id: int, actor: str) -> None: ...
    def resend(self, job_id: int, actor: str) -> None: ...


class Studies(Protocol):
    def studies(self, state: str | None) -> list[StudySummary]: ...
    def complete_study(self, study_instance_uid: str, actor: str) -> None: ...
    def reveal(self, study_instance_uid: str, actor: str, host: str | None) -> dict[str, str]: ...


class AuditTrail(Protocol):
    def events(self, where: EventFilter, limit: int) -> list[EventRow]: ...
    def exported(self, events: int, actor: str) -> None: ...


class Models(Protocol):
    """The catalog: model versions and pipelines, and their states (operators change them)."""

    def models(self) -> list[ModelRow]: ...
    def pipelines(self) -> list[PipelineRow]: ...
    def set_pipeline_state(self, name: str, state: State, actor: str) -> None: ...
    def set_model_state(self, model: ModelRef, state: State, actor: str) -> None: ...


@dataclass(frozen=True)
class Ports:
    accounts: Accounts
    monitoring: Monitoring
    jobs: Jobs
    studies: Studies
    audit: AuditTrail
    models: Models
