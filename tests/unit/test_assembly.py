"""Study completion rules (pure)."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.domain.assembly import (
    CompletionDeadline,
    CompletionPolicy,
    CompletionReason,
    SeriesProgress,
    completion_deadline,
    release_deadline,
    series_consistent,
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


def test_a_series_looks_whole_by_its_hints_or_its_unbroken_instance_numbers() -> None:
    assert series_consistent(SeriesProgress(3, None, False), [1, 2, 3])
    assert series_consistent(SeriesProgress(3, None, False), [7, 8, 9])
    assert not series_consistent(SeriesProgress(3, None, False), [1, 2, 4]), "a gap"
    assert not series_consistent(SeriesProgress(3, None, False), [1, 2, None]), "unnumbered"
    assert series_consistent(SeriesProgress(1, None, True), [None]), "a cine is whole by itself"
    assert series_consistent(SeriesProgress(4, 4, False), [1, 2, 4, 9]), "hints decide"
    assert not series_consistent(SeriesProgress(3, 4, False), [1, 2, 3]), "hint not met"


def test_a_release_brings_the_deadline_forward_only_for_a_peer_that_sends_whole() -> None:
    policy = CompletionPolicy(
        quiet_period=timedelta(seconds=30),
        hint_settle=timedelta(seconds=5),
        release_settle={"PACS": timedelta(seconds=2)},
    )
    released = datetime(2026, 1, 1, tzinfo=UTC)
    quiet = CompletionDeadline(released + timedelta(seconds=29), CompletionReason.QUIET_PERIOD)
    forward = release_deadline("PACS", released, True, quiet, policy)
    assert forward == CompletionDeadline(released + timedelta(seconds=2), CompletionReason.RELEASED)
    assert release_deadline("TRICKLER", released, True, quiet, policy) is quiet
    assert release_deadline("PACS", released, False, quiet, policy) is quiet, "a gap: wait"
    sooner = CompletionDeadline(released + timedelta(seconds=1), CompletionReason.COUNT_HINTS)
    assert release_deadline("PACS", released, True, sooner, policy) is sooner
