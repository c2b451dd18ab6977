"""The worker's task, by job ID: process a study, then deliver its results at once, in the
same task: a delivery sent as a task of its own waited for the worker's next poll of the
broker, and behind any job already queued ahead of it (an urgent study's whole pipeline).

The runners (models, backend sessions, database engine) are built once per worker process, on
its first task, so a prefork child never shares a connection with its parent. Delivery also
runs from the sweeper on its interval (retries with backoff), which takes over whatever this
attempt could not deliver.
"""

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from sqlalchemy.exc import SQLAlchemyError

from appliance.domain.jobs import DatabaseUnavailable, JobState, UnknownJob, backoff
from appliance.queue.celery_app import PROCESS_STUDY

LOG = logging.getLogger(__name__)

Runner = Callable[[int], JobState]
Delivery = Callable[[], object]


def register(
    app: Celery,
    make_runner: Callable[[], Runner],
    make_delivery: Callable[[], Delivery],
    retry_seconds: float,
) -> None:
    """Register the task on `app`; a job sent back to the queue (its inference server was
    unavailable) is retried after `retry_seconds`, doubling with each retry up to an hour; the
    job's own `queue.max_attempts` ends the retries."""
    built: dict[str, Any] = {}

    # shared=False: it belongs to `app` alone, never to another app in the same process.
    @app.task(  # type: ignore[untyped-decorator]
        name=PROCESS_STUDY, bind=True, acks_late=True, reject_on_worker_lost=True, shared=False
    )
    def process_study(task: Task, job_id: int) -> str:
        if "runner" not in built:
            built["runner"] = make_runner()
        try:
            state: JobState = built["runner"](job_id)
        except UnknownJob as exc:  # acknowledged and dropped: retrying cannot help
            LOG.error("message dropped: %s", exc)
            return "unknown"
        except DatabaseUnavailable as exc:
            wait = backoff(retry_seconds, task.request.retries)
            LOG.warning("job %d: database unavailable (%s); retrying in %.0f s", job_id, exc, wait)
            raise task.retry(countdown=wait, max_retries=None) from exc
        if state is JobState.QUEUED:
            wait = backoff(retry_seconds, task.request.retries)
            LOG.info("job %d back in the queue; retrying in %.0f s", job_id, wait)
            raise task.retry(countdown=wait, max_retries=None)
        if state is JobState.DELIVERING:
            if "delivery" not in built:
                built["delivery"] = make_delivery()
            try:
                built["delivery"]()
            except (OSError, SQLAlchemyError) as exc:  # the sweeper delivers on its interval
                LOG.warning("job %d: delivery left to the sweeper: %s", job_id, exc)
        return state.value
