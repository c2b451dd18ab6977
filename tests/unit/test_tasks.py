"""The worker's task on its own (an eager Celery app, a stand-in runner): what it does with
each way an attempt can end before it begins."""

from celery import Celery

from appliance.domain.jobs import DatabaseUnavailable, JobState, UnknownJob
from appliance.queue.celery_app import PROCESS_STUDY
from appliance.queue.tasks import register


def eager_app(outcomes: list[JobState | Exception]) -> tuple[Celery, list[int]]:
    """An app whose runner answers `outcomes` in turn, recording the job IDs it was given."""
    app = Celery("test")
    app.conf.task_always_eager = True
    calls: list[int] = []

    def runner(job_id: int) -> JobState:
        calls.append(job_id)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    register(app, lambda: runner, lambda: lambda: None, retry_seconds=0.01)
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
