"""Study assembly: when is a study complete?

DICOM has no end-of-study message on C-STORE, so completeness is inferred. A study is complete
when no instance arrived for a quiet period, when an operator forces it, or sooner when the
instance-count hints carried in the data (Images in Acquisition (0020,1002); Number of Frames
(0028,0008) for multi-frame objects, which are whole by themselves) say every series seen is
whole. Most PACS routing sends a study on one association and releases it: for a peer set to
say so, a study completes when the associations that delivered it are released and its series
are consistent (no gap in the instance numbers, count hints met where present), and its job
starts then; only its results wait for a short settle after the release, for a further series
that would re-open the study (the job of the version it replaces is then cancelled). Count
hints still wait their settle period before completing; anything that arrives after a
completion re-opens the study for a new job version.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum


class StudyState(StrEnum):
    """Where a study is in assembly. `COMPLETE` studies have a job for their current version."""

    RECEIVING = "receiving"
    COMPLETE = "complete"


class CompletionReason(StrEnum):
    QUIET_PERIOD = "quiet_period"
    COUNT_HINTS = "count_hints"
    RELEASED = "released"  # the delivering associations were released
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
    # Per calling AE title of a peer that sends a study on one association: the settle after
    # its release.
    release_settle: Mapping[str, timedelta] = field(default_factory=dict)


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


def series_consistent(progress: SeriesProgress, instance_numbers: Sequence[int | None]) -> bool:
    """Whether a series looks whole: its count hint met where it has one, and its instance
    numbers without a gap (a series without numbers is judged on its hints alone)."""
    if progress.expected_instances is not None:
        return progress.received_instances >= progress.expected_instances
    numbers = sorted({number for number in instance_numbers if number is not None})
    if len(numbers) < len(instance_numbers):
        return progress.all_multiframe and progress.received_instances > 0
    return bool(numbers) and numbers[-1] - numbers[0] + 1 == len(numbers)


def release_deadline(
    calling_ae: str,
    released_at: datetime,
    consistent: bool,
    current: CompletionDeadline,
    policy: CompletionPolicy,
) -> CompletionDeadline:
    """Once every association that delivered the study from `calling_ae` was released at
    `released_at` (the last of them): for a peer that sends studies whole and a study that
    looks whole, the end of the settle after it (the study completes at once and its results
    leave then, `StudyLedger.start_released`), where that comes before `current` (the quiet
    period's or the count hints' deadline); else `current`, which the study waits for."""
    settle = policy.release_settle.get(calling_ae)
    if settle is None or not consistent:
        return current
    at = released_at + settle
    return CompletionDeadline(at, CompletionReason.RELEASED) if at < current.at else current
