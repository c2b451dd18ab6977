"""The worker's task: run one attempt of a job, by ID.

The runner (models, backend sessions, database engine) is built once per worker process, on
its first task, so a prefork child never shares a connection with its parent.
"""

import logging
from collections.abc import Callable

from celery import Celery, Task

from appliance.domain.jobs import JobState
from appliance.queue.app import PROCESS_STUDY

LOG = logging.getLogger(__name__)

Runner = Callable[[int], JobState]


def register(app: Celery, make_runner: Callable[[], Runner], retry_seconds: float) -> None:
    """Register `process_study` on `app`; a job sent back to the queue (its inference server
    was unavailable) is retried after `retry_seconds`."""
    runners: list[Runner] = []

    @app.task(  # type: ignore[untyped-decorator]
        name=PROCESS_STUDY, bind=True, acks_late=True, reject_on_worker_lost=True
    )
    def process_study(task: Task, job_id: int) -> str:
        if not runners:
            runners.append(make_runner())
        state = runners[0](job_id)
        if state is JobState.QUEUED:
            LOG.info("job %d back in the queue; retrying in %.0f s", job_id, retry_seconds)
            raise task.retry(countdown=retry_seconds, max_retries=None)
        return state.value
