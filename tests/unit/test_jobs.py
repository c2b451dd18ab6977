"""Job state machine (pure)."""

import pytest

from appliance.domain.jobs import (
    MAX_RETRY_SECONDS,
    TRANSITIONS,
    InvalidJobTransition,
    JobState,
    backoff,
    check_transition,
)


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(JobState)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (JobState.QUEUED, JobState.RUNNING),
        (JobState.RUNNING, JobState.ENCODED),
        (JobState.ENCODED, JobState.DELIVERING),
        (JobState.DELIVERING, JobState.DONE),
        (JobState.DELIVERING, JobState.DEAD_LETTER),
        (JobState.RUNNING, JobState.QUEUED),
        (JobState.FAILED, JobState.QUEUED),
        (JobState.DONE, JobState.DELIVERING),
    ],
)
def test_allowed(current: JobState, target: JobState) -> None:
    check_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (JobState.QUEUED, JobState.DONE),
        (JobState.DONE, JobState.QUEUED),
        (JobState.CANCELLED, JobState.RUNNING),
        (JobState.ENCODED, JobState.RUNNING),
        (JobState.DONE, JobState.DONE),
    ],
)
def test_refused(current: JobState, target: JobState) -> None:
    with pytest.raises(InvalidJobTransition, match=f"{current.value} to {target.value}"):
        check_transition(current, target)


def test_done_and_dead_letter_are_reachable_from_queued() -> None:
    reachable, frontier = {JobState.QUEUED}, [JobState.QUEUED]
    while frontier:
        for target in TRANSITIONS[frontier.pop()]:
            if target not in reachable:
                reachable.add(target)
                frontier.append(target)
    assert reachable == set(JobState)


def test_retries_back_off_doubling_up_to_an_hour() -> None:
    assert [backoff(30, n) for n in range(4)] == [30, 60, 120, 240]
    assert backoff(30, 7) == MAX_RETRY_SECONDS
    assert backoff(30, 10_000) == MAX_RETRY_SECONDS  # no overflow
