"""Study assembly: when is a study complete?

DICOM has no end-of-study message on C-STORE, so completeness is inferred. A study is complete
when no instance arrived for a quiet period, when an operator forces it, or sooner when the
instance-count hints carried in the data (Images in Acquisition (0020,1002); Number of Frames
(0028,0008) for multi-frame objects, which are whole by themselves) say every series seen is
whole. Early completion still waits a short settle period for a further series; anything that
arrives later re-opens the study for a new job version.
"""

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum


class StudyState(StrEnum):
    """Where a study is in assembly. `COMPLETE` studies have a job for their current version."""

    RECEIVING = "receiving"
    COMPLETE = "complete"


class CompletionReason(StrEnum):
    QUIET_PERIOD = "quiet_period"
    COUNT_HINTS = "count_hints"
    FORCED = "forced"


@dataclass(frozen=True, slots=True)
class SeriesProgress:
    """Instance counts of one series, folded from its instances' hints."""

    received_instances: int = 0
    expected_instances: int | None = None
    all_multiframe: bool = True

    @property
    def whole_by_hints(self) -> bool:
        if self.received_instances == 0:
            return False
        if self.expected_instances is not None:
            return self.received_instances >= self.expected_instances
        return self.all_multiframe

    def with_counts(
        self, number_of_frames: int | None, images_in_acquisition: int | None
    ) -> "SeriesProgress":
        """Fold one newly stored (not duplicate) instance's count hints into the progress."""
        expected = self.expected_instances
        if images_in_acquisition is not None and images_in_acquisition > 0:
            expected = (
                images_in_acquisition if expected is None else max(expected, images_in_acquisition)
            )
        multiframe = number_of_frames is not None and number_of_frames > 1
        return replace(
            self,
            received_instances=self.received_instances + 1,
            expected_instances=expected,
            all_multiframe=self.all_multiframe and multiframe,
        )


@dataclass(frozen=True, slots=True)
class CompletedStudy:
    study_id: int
    study_instance_uid: str
    version: int
    job_id: int
    reason: CompletionReason


class UnknownStudy(LookupError):
    """A Study Instance UID the appliance never received."""


@dataclass(frozen=True, slots=True)
class CompletionPolicy:
    quiet_period: timedelta
    hint_settle: timedelta


@dataclass(frozen=True, slots=True)
class CompletionDeadline:
    at: datetime
    reason: CompletionReason


def completion_deadline(
    last_received_at: datetime,
    series: list[SeriesProgress],
    policy: CompletionPolicy,
) -> CompletionDeadline:
    """When the study becomes complete if nothing else arrives."""
    if series and all(s.whole_by_hints for s in series):
        settle = min(policy.hint_settle, policy.quiet_period)
        return CompletionDeadline(last_received_at + settle, CompletionReason.COUNT_HINTS)
    return CompletionDeadline(last_received_at + policy.quiet_period, CompletionReason.QUIET_PERIOD)
