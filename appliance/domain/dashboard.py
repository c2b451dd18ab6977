"""What the dashboard shows and the metrics count, as plain rows: flow counts, stage timings,
jobs, deliveries, audit events and health checks. No patient identifiers are among them."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Check:
    """One readiness check: the database, the broker, a destination, ..."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class StageTimes:
    """Seconds per stage of recent finished jobs, for percentiles and histograms."""

    quiet: list[float]
    pipeline: list[float]
    compute: list[float]
    total: list[float]  # last instance received -> results stored at the PACS


@dataclass(frozen=True)
class Histogram:
    cumulative: list[int]  # per bucket bound, in order
    total: float
    count: int


@dataclass(frozen=True)
class Totals:
    instances: int
    instance_bytes: int
    failures_by_event: dict[str, int]
    results_delivered: int


@dataclass(frozen=True)
class Flow:
    studies: int
    studies_since: int
    instances_since: int
    jobs_by_state: dict[str, int]
    urgent_waiting: int
    finished_since: int
    failed_since: int
    deliveries_by_state: dict[str, int]

    @property
    def failure_rate(self) -> float:
        return self.failed_since / self.finished_since if self.finished_since else 0.0


@dataclass(frozen=True)
class JobRow:
    id: int
    study_instance_uid: str
    study_version: int
    state: str
    priority: str
    attempts: int
    created_at: datetime
    updated_at: datetime
    reason: str | None
    latency_seconds: float | None


@dataclass(frozen=True)
class DeliveryRow:
    destination: str
    modality_class: str
    sop_instance_uid: str
    state: str
    attempts: int
    reason: str | None


@dataclass(frozen=True)
class EventRow:
    occurred_at: datetime
    event_type: str
    outcome: int
    actor: str
    study_instance_uid: str | None
    job_id: int | None
    detail: str | None


def recent(now: datetime, hours: float = 24) -> datetime:
    return now - timedelta(hours=hours)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[rank - 1]
