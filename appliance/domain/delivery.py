"""Delivery rules: what a C-STORE status means for a result, and when to try again.

Statuses are `domain.status`'s (PS3.4 Annex B.2.3, PS3.7 Annex C). A warning means the PACS
stored the object (perhaps coerced), so it counts as delivered and the warning is recorded. A
failure is either transient (the PACS is out of resources, or the association itself failed:
try again later) or permanent (the PACS will never take this object: retrying cannot help, so
it goes straight to the dead letters with the reason).
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from appliance.domain.status import DimseStatus, Status, StatusCategory, named


class DestinationUnavailable(Exception):
    """The destination could not be reached or the connection broke: nothing after the last
    answer was stored. Worth trying again later."""


class Outcome(StrEnum):
    STORED = "stored"
    STORED_WITH_WARNING = "stored_with_warning"
    RETRY = "retry"
    REFUSED = "refused"  # permanent


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD_LETTER = "dead_letter"
    SHADOW = "shadow"  # a shadow pipeline's result, kept in the outbox for review, never sent
    KEPT = "kept"  # no destination is configured: kept in the outbox, never sent


SHADOW_DESTINATION = "shadow"  # where a shadow result is recorded as going: nowhere
LOCAL_DESTINATION = "local"  # where a result is recorded as going with no destination set
NEVER_SENT = (DeliveryState.SHADOW, DeliveryState.KEPT)


# Failures a destination may recover from: try again later. Every other failure is final.
_TRANSIENT = frozenset(
    {Status.PROCESSING_FAILURE, Status.RESOURCE_LIMITATION, Status.OUT_OF_RESOURCES}
)


def classify(status: DimseStatus) -> Outcome:
    """What a destination's answer means for the result: its status's category decides, and
    among failures only the transient ones are tried again."""
    kind = status.category
    if kind is StatusCategory.SUCCESS:
        return Outcome.STORED
    if kind is StatusCategory.WARNING:
        return Outcome.STORED_WITH_WARNING
    if kind is StatusCategory.FAILURE and named(status.code) in _TRANSIENT:
        return Outcome.RETRY
    return Outcome.REFUSED


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff from `initial` doubling up to `maximum`, until `deadline` after the
    first attempt; then the result is a dead letter."""

    initial: timedelta
    maximum: timedelta
    deadline: timedelta

    def delay(self, attempts: int) -> timedelta:
        """The wait after the `attempts`-th failed attempt (1-based)."""
        factor: int = 2 ** min(max(attempts - 1, 0), 30)
        grown: timedelta = self.initial * factor
        return min(grown, self.maximum)

    def next_attempt(
        self, first_attempt: datetime, attempts: int, now: datetime
    ) -> datetime | None:
        """When to try again, or None when the deadline leaves no further attempt."""
        at = now + self.delay(attempts)
        return at if at <= first_attempt + self.deadline else None
