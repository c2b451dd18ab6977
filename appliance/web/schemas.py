"""The JSON API's response models: what `/api/*` and the health checks answer, validated and
documented in the OpenAPI schema. Jobs, their deliveries and audit events are answered as the
domain's own rows (`domain.monitoring`), which pydantic validates as they are; nothing is
ever built from ORM objects."""

from pydantic import BaseModel


class Liveness(BaseModel):
    status: str


class CheckState(BaseModel):
    ok: bool


class Readiness(BaseModel):
    """Whether every dependency answers; which one does not, never why (the page says)."""

    ready: bool
    checks: dict[str, CheckState]


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
