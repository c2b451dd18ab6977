"""Job state machine. The database holds job state; these transitions are the only legal moves."""

from dataclasses import dataclass
from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    ENCODED = "encoded"
    DELIVERING = "delivering"
    DONE = "done"
    FAILED = "failed"
    DEAD_LETTER = "dead_letter"
    CANCELLED = "cancelled"


TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # A running job whose lease expired goes back to QUEUED; an operator retry likewise.
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {JobState.ENCODED, JobState.QUEUED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.ENCODED: frozenset({JobState.DELIVERING, JobState.FAILED, JobState.CANCELLED}),
    JobState.DELIVERING: frozenset(
        {JobState.DONE, JobState.DEAD_LETTER, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.DONE: frozenset({JobState.DELIVERING}),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.DEAD_LETTER: frozenset({JobState.DELIVERING, JobState.QUEUED}),
    JobState.CANCELLED: frozenset({JobState.QUEUED}),
}


class Stage(StrEnum):
    """Where a study's time goes, from its last instance to its results at the PACS."""

    QUIET = "quiet"  # last instance received -> study complete (the configured wait)
    DISPATCH = "dispatch"  # study complete -> a worker starts the job
    PIPELINE = "pipeline"  # the pipelines' work, encoding included
    INFERENCE = "inference"  # model compute inside the pipeline, per model
    ENCODING = "encoding"  # SEG and SR encoding and the gate, inside the pipeline
    SETTLE = "settle"  # results of a job started on its sender's release, held for the settle
    DELIVERY = "delivery"  # results encoded -> the last one stored at the destinations
    TOTAL = "total"  # last instance received -> the last result stored


@dataclass(frozen=True)
class JobTimings:
    """What a job's attempt measured of its own work, recorded when it is encoded."""

    pipeline: float
    encoding: float
    inference: dict[str, float]  # model name -> seconds in its infer calls
    settle: float | None = None  # results held for the settle after the sender's release

    @property
    def model_compute(self) -> float:
        return sum(self.inference.values())


@dataclass(frozen=True)
class ForReview:
    """A job's findings of low confidence (`domain.plausibility`): delivered flagged for
    review, or withheld. Recorded with its timings, so the dashboard and the metrics show
    which jobs a radiologist must look at twice."""

    flagged: int = 0
    withheld: int = 0


class DatabaseUnavailable(Exception):
    """The database could not be reached (restarting, failing over): the attempt never began,
    and the task is tried again shortly."""


class UnknownJob(LookupError):
    """A job ID the database does not hold: a message from another installation's database,
    or one left in a shared broker."""


class InvalidJobTransition(ValueError):
    def __init__(self, current: JobState, target: JobState) -> None:
        super().__init__(f"job cannot go from {current.value} to {target.value}")
        self.current = current
        self.target = target


def check_transition(current: JobState, target: JobState) -> None:
    if target not in TRANSITIONS[current]:
        raise InvalidJobTransition(current, target)


MAX_RETRY_SECONDS = 3600.0


def backoff(first: float, retries: int) -> float:
    """Seconds before retry number `retries` + 1: `first`, doubling, at most an hour."""
    return float(min(first * 2 ** min(retries, 32), MAX_RETRY_SECONDS))
