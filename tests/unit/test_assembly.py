"""Study completion rules (pure)."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.domain.assembly import (
    CompletionPolicy,
    CompletionReason,
    SeriesProgress,
    completion_deadline,
)

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
POLICY = CompletionPolicy(quiet_period=timedelta(seconds=30), hint_settle=timedelta(seconds=5))


@pytest.mark.parametrize(
    ("series", "expected_delay", "reason"),
    [
        ([], 30, CompletionReason.QUIET_PERIOD),
        ([SeriesProgress(10, None, False)], 30, CompletionReason.QUIET_PERIOD),
        ([SeriesProgress(10, 12, False)], 30, CompletionReason.QUIET_PERIOD),
        ([SeriesProgress(12, 12, False)], 5, CompletionReason.COUNT_HINTS),
        ([SeriesProgress(1, None, True)], 5, CompletionReason.COUNT_HINTS),
        (
            [SeriesProgress(12, 12, False), SeriesProgress(3, None, False)],
            30,
            CompletionReason.QUIET_PERIOD,
        ),
        (
            [SeriesProgress(12, 12, False), SeriesProgress(1, None, True)],
            5,
            CompletionReason.COUNT_HINTS,
        ),
        ([SeriesProgress(0, 12, True)], 30, CompletionReason.QUIET_PERIOD),
    ],
)
def test_deadline(
    series: list[SeriesProgress], expected_delay: int, reason: CompletionReason
) -> None:
    deadline = completion_deadline(T0, series, POLICY)
    assert deadline.at == T0 + timedelta(seconds=expected_delay)
    assert deadline.reason is reason


def test_settle_never_exceeds_quiet_period() -> None:
    policy = CompletionPolicy(quiet_period=timedelta(seconds=2), hint_settle=timedelta(seconds=9))
    deadline = completion_deadline(T0, [SeriesProgress(1, 1, False)], policy)
    assert deadline.at == T0 + timedelta(seconds=2)


hints = st.tuples(st.one_of(st.none(), st.integers(1, 4)), st.one_of(st.none(), st.integers(0, 50)))


@given(st.lists(hints, min_size=1, max_size=60))
def test_folding_counts_every_instance_and_keeps_the_largest_hint(
    instances: list[tuple[int | None, int | None]],
) -> None:
    progress = SeriesProgress()
    for frames, images in instances:
        progress = progress.with_counts(frames, images)
    assert progress.received_instances == len(instances)
    positive = [images for _, images in instances if images]
    assert progress.expected_instances == (max(positive) if positive else None)
    assert progress.all_multiframe == all(
        frames is not None and frames > 1 for frames, _ in instances
    )
