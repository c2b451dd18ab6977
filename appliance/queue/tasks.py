"""The worker's tasks, by job ID: process a study, then deliver its results at once.

The runners (models, backend sessions, database engine) are built once per worker process, on
its first task, so a prefork child never shares a connection with its parent. Delivery also
runs from the sweeper on its interval (retries with backoff); the `deliver` task only saves a
just-encoded job that wait.
"""

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from kombu.exceptions import OperationalError as KombuOperationalError

from appliance.domain.jobs import DatabaseUnavailable, JobState, UnknownJob, backoff
from appliance.queue.celery_app import DELIVER, PROCESS_STUDY

LOG = logging.getLogger(__name__)

Runner = Callable[[int], JobState]
Delivery = Callable[[], object]


def register(
    app: Celery,
    make_runner: Callable[[], Runner],
    make_delivery: Callable[[], Delivery],
    retry_seconds: float,
) -> None:
    """Register the tasks on `app`; a job sent back to the queue (its inference server was
    unavailable) is retried after `retry_seconds`, doubling with each retry up to an hour; the
    job's own `queue.max_attempts` ends the retries."""
    built: dict[str, Any] = {}

    # shared=False: these belong to `app` alone, never to another app in the same process.
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
            try:
                app.send_task(DELIVER, queue=task.request.delivery_info.get("routing_key"))
            except KombuOperationalError as exc:  # the sweeper delivers on its interval
                LOG.warning(
                    "job %d: delivery left to the sweeper: broker unavailable: %s", job_id, exc
                )
        return state.value

    @app.task(name=DELIVER, acks_late=True, reject_on_worker_lost=True, shared=False)  # type: ignore[untyped-decorator]
    def deliver() -> None:
        if "delivery" not in built:
            built["delivery"] = make_delivery()
        built["delivery"]()
