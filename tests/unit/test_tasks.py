"""The worker's task on its own (an eager Celery app, a stand-in runner): what it does with
each way an attempt can end before it begins."""

from collections.abc import Callable

from celery import Celery

from appliance.domain.jobs import DatabaseUnavailable, JobState, UnknownJob
from appliance.queue.celery_app import PROCESS_STUDY
from appliance.queue.tasks import register


def eager_app(
    outcomes: list[JobState | Exception], delivery: Callable[[], object] = lambda: None
) -> tuple[Celery, list[int]]:
    """An app whose runner answers `outcomes` in turn, recording the job IDs it was given;
    `delivery` is its delivery round."""
    app = Celery("test")
    app.conf.task_always_eager = True
    calls: list[int] = []

    def runner(job_id: int) -> JobState:
        calls.append(job_id)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    register(app, lambda: runner, lambda: delivery, retry_seconds=0.01)
    return app, calls


def test_a_database_outage_before_the_claim_is_retried_until_the_job_runs() -> None:
    app, calls = eager_app(
        [DatabaseUnavailable("restarting"), DatabaseUnavailable("x"), JobState.FAILED]
    )

    result = app.tasks[PROCESS_STUDY].apply(args=(7,))

    assert calls == [7, 7, 7]
    assert result.get() == "failed"


def test_a_message_for_a_job_the_database_does_not_hold_is_dropped() -> None:
    app, calls = eager_app([UnknownJob("job 9 is not in the database")])

    assert app.tasks[PROCESS_STUDY].apply(args=(9,)).get() == "unknown"
    assert calls == [9]


def test_an_encoded_job_is_delivered_in_its_own_task_a_failed_round_left_to_the_sweeper() -> None:
    rounds: list[str] = []
    app, _ = eager_app([JobState.DELIVERING, JobState.FAILED], lambda: rounds.append("round"))
    assert app.tasks[PROCESS_STUDY].apply(args=(3,)).get() == "delivering"
    assert rounds == ["round"]  # at once, not as a message for a later poll
    assert app.tasks[PROCESS_STUDY].apply(args=(4,)).get() == "failed"
    assert rounds == ["round"]  # nothing to deliver for a failed job

    def unreachable() -> None:
        raise OSError("database file unreachable")

    app, _ = eager_app([JobState.DELIVERING], unreachable)
    assert app.tasks[PROCESS_STUDY].apply(args=(5,)).get() == "delivering"
