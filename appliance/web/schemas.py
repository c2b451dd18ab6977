"""The JSON API's response models: what `/api/*` and the health checks answer, validated and
documented in the OpenAPI schema. Built from the domain's rows, never from ORM objects."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class _FromRow(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


class Liveness(BaseModel):
    status: str


class CheckState(BaseModel):
    ok: bool


class Readiness(BaseModel):
    """Whether every dependency answers; which one does not, never why (the page says)."""

    ready: bool
    checks: dict[str, CheckState]


class Job(_FromRow):
    id: int
    study_instance_uid: str
    study_version: int
    state: str
    priority: str
    attempts: int
    created_at: datetime
    updated_at: datetime
    reason: str | None
    total_seconds: float | None  # last instance received -> last result stored


class Delivery(_FromRow):
    destination: str
    sop_class_uid: str
    sop_instance_uid: str
    state: str
    attempts: int
    reason: str | None


class Event(_FromRow):
    occurred_at: datetime
    event_type: str
    outcome: int
    actor: str
    study_instance_uid: str | None
    job_id: int | None
    detail: str | None


class JobDetail(BaseModel):
    job: Job
    deliveries: list[Delivery]
    events: list[Event]


class Latency(BaseModel):
    """Percentiles of a stage's recent timings, in seconds; None before any."""

    p50: float | None
    p90: float | None
    p99: float | None
    n: int


class Destination(BaseModel):
    name: str
    up: bool
    detail: str


class Overview(BaseModel):
    studies_24h: int
    instances_24h: int
    jobs_by_state: dict[str, int]
    urgent_waiting: int
    failure_rate_24h: float
    deliveries_by_state: dict[str, int]
    latency_seconds: dict[str, Latency]
    destinations: list[Destination]
    spool_disk_used_percent: float
