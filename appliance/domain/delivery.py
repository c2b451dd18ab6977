"""Delivery rules: what a C-STORE status means for a result, and when to try again.

Statuses follow PS3.4 Annex B.2.3 and PS3.7 Annex C. A warning means the PACS stored the
object (perhaps coerced), so it counts as delivered and the warning is recorded. A failure is
either transient (the PACS is out of resources, or the association itself failed: try again
later) or permanent (the PACS will never take this object: retrying cannot help, so it goes
straight to the dead letters with the reason).
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


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


_WARNINGS = {0x0001, 0x0107, 0x0116}
_TRANSIENT = {0x0110, 0x0213}  # processing failure, resource limitation

_NAMES = {
    0x0000: "Success",
    0x0001: "Warning: requested optional attributes are not supported",
    0x0107: "Warning: attribute list error",
    0x0110: "Processing failure",
    0x0116: "Warning: attribute value out of range",
    0x0122: "Refused: SOP Class not supported",
    0x0124: "Refused: not authorized",
    0x0210: "Duplicate invocation",
    0x0211: "Unrecognized operation",
    0x0212: "Mistyped argument",
    0x0213: "Resource limitation",
    0xB000: "Warning: coercion of data elements",
    0xB006: "Warning: elements discarded",
    0xB007: "Warning: data set does not match SOP Class",
}


def describe_status(status: int) -> str:
    if status in _NAMES:
        return f"0x{status:04X} {_NAMES[status]}"
    family = status & 0xF000
    if status & 0xFF00 == 0xA700:
        return f"0x{status:04X} Refused: out of resources"
    if status & 0xFF00 == 0xA900:
        return f"0x{status:04X} Error: data set does not match SOP Class"
    if family == 0xC000:
        return f"0x{status:04X} Error: cannot understand"
    if family == 0xB000:
        return f"0x{status:04X} Warning"
    return f"0x{status:04X} Failure"


def classify(status: int) -> Outcome:
    if status == 0x0000:
        return Outcome.STORED
    if status in _WARNINGS or status & 0xF000 == 0xB000:
        return Outcome.STORED_WITH_WARNING
    if status in _TRANSIENT or status & 0xFF00 == 0xA700:
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
