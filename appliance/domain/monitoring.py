"""What the dashboard shows and the metrics count, as plain rows: flow counts, stage timings,
jobs, deliveries, audit events and health checks. No patient identifiers are among them."""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from appliance.domain.jobs import Stage


@dataclass(frozen=True)
class Check:
    """One readiness check: the database, the broker, a destination, ..."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class StageSamples:
    """Recent timings of one stage (and model, for inference), for percentiles."""

    stage: Stage
    model: str
    seconds: list[float]

    @property
    def label(self) -> str:
        return f"{self.stage.value} ({self.model})" if self.model else self.stage.value


@dataclass(frozen=True)
class StageHistogram:
    """Every timing of one stage (and model) so far, as Prometheus histogram counts."""

    stage: Stage
    model: str
    cumulative: list[int]  # per bucket bound, in order
    total: float
    count: int


@dataclass(frozen=True)
class Totals:
    instances: int
    instance_bytes: int
    failures_by_event: dict[str, int]
    results_delivered: int
    findings_flagged: int = 0
    findings_withheld: int = 0


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


@dataclass(frozen=True, slots=True)
class StudySummary:
    """What an operator sees of a study; patient identifiers are not part of it."""

    id: int
    study_instance_uid: str
    state: str
    version: int
    instance_count: int
    series_count: int
    calling_ae: str
    first_received_at: datetime
    last_received_at: datetime
    complete_after: datetime | None
    completed_at: datetime | None
    completion_reason: str | None
    modalities: str = ""  # of its series, e.g. "CT, SR"
    latest_job_id: int | None = None


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    received_instances: int
    expected_instances: int | None


@dataclass(frozen=True, slots=True)
class JobSummary:
    id: int
    study_version: int
    state: str
    created_at: datetime
    reason: str | None


@dataclass(frozen=True, slots=True)
class StudyDetail:
    study: StudySummary
    series: list[SeriesSummary]
    jobs: list[JobSummary]


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
    total_seconds: float | None  # last instance received -> last result stored
    flagged: int = 0  # findings delivered flagged "low confidence, review"
    withheld: int = 0  # findings of low confidence not delivered


@dataclass(frozen=True)
class DeliveryRow:
    destination: str
    sop_class_uid: str
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
    id: int = 0  # its place in the trail, for paging


@dataclass(frozen=True)
class JobDetail:
    """One job with its results' deliveries and its whole audit trail."""

    job: JobRow
    deliveries: list[DeliveryRow]
    events: list[EventRow]


def recent(now: datetime, hours: float = 24) -> datetime:
    return now - timedelta(hours=hours)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[rank - 1]


@dataclass(frozen=True)
class ModelRow:
    """One model version of the repository as operators see it; `error` when a contract is
    invalid (then the name says so)."""

    name: str
    version: int | None = None
    modality: str = ""
    source: str = ""
    synthetic: bool = False
    labels: list[str] = field(default_factory=list)
    spacing: list[float] | None = None
    patch: list[int] = field(default_factory=list)
    state: str = ""
    ready: bool | None = None  # None: not asked
    card: str = ""
    error: str | None = None


@dataclass(frozen=True)
class PipelineRow:
    """One pipeline: its own state (declared or set) and the state it runs in (held back
    by its models'), and its stages in words."""

    name: str
    description: str
    state: str
    effective: str
    stages: list[str]
