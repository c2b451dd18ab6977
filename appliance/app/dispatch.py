"""Dispatch: queued jobs go to the workers, urgent ones first, a few at a time.

Holding jobs back in the database rather than in the broker is what makes priority work on
every broker: the broker only ever holds the few jobs the workers are about to take.
"""

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine

from appliance.app.catalog import Governor
from appliance.app.pipelines import UnknownPipeline, pipeline_states
from appliance.config import Settings
from appliance.domain.pipelines import State
from appliance.domain.routing import Priority, Waiting, dispatch_order, priority_of, route
from appliance.queue.celery_app import PROCESS_STUDY, make_app
from appliance.store.job_ledger import JobLedger

LOG = logging.getLogger(__name__)


class Dispatcher:
    """Hands queued jobs to the workers, at most `queue.dispatch_window` at a time and urgent
    ones first (`domain.routing.dispatch_order`), each on its priority's queue; first puts jobs
    whose worker was lost (lease expired) back in the queue."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._queue = settings.queue
        self._jobs = JobLedger(engine)
        self._rules = settings.routing.route_rules()
        self._app = make_app(settings.queue)
        self._governor = Governor(settings.inference.repository, engine)
        self._priorities: dict[int, Priority] = {}

    def dispatch(self, now: datetime) -> int:
        for job_id in self._jobs.requeue_expired(now):
            LOG.warning("job %d: its worker was lost; queued again", job_id)
        again = timedelta(seconds=self._queue.redispatch_seconds)
        waiting = self._jobs.waiting(now, again)
        slots = self._queue.dispatch_window - self._jobs.in_flight(now, again)
        if not waiting or slots <= 0:
            return 0
        states = None
        if any(job_id not in self._priorities for job_id, _ in waiting):
            states = pipeline_states(self._governor.catalog(), self._governor.governance())
        self._priorities = {job_id: self._priority(job_id, states) for job_id, _ in waiting}
        chosen = dispatch_order(
            [Waiting(job_id, self._priorities[job_id], at) for job_id, at in waiting],
            slots,
            now,
            timedelta(seconds=self._queue.promote_after_seconds),
        )
        sent = 0
        for job in chosen:
            if self._jobs.mark_dispatched(job.job_id, job.priority, now, again):
                self._app.send_task(PROCESS_STUDY, args=[job.job_id], queue=job.priority.value)
                sent += 1
        return sent

    def _priority(self, job_id: int, states: Callable[[str], State] | None) -> Priority:
        """A job's priority from the rules that take its series (remembered: it does not
        change while the job waits)."""
        known = self._priorities.get(job_id)
        if known is None and states is not None:
            try:
                known = priority_of(
                    route(self._jobs.series_facts(job_id), self._rules, states).routes
                )
            except UnknownPipeline:  # the worker fails the job with the reason
                known = Priority.NORMAL
        return known or Priority.NORMAL
