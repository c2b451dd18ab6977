"""Wires settings to running roles: listener processes, the study sweeper, `serve` for all.

This module and `cli` are the only places that know every package; the packages themselves
talk through the protocols in `domain` and `dicom.listener`.
"""

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING

from kombu.exceptions import KombuError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from appliance.audit.accounts import AccountLedger
from appliance.audit.db import create_db_engine, pending_migrations, upgrade
from appliance.audit.ingest import DatabaseIngestLedger
from appliance.audit.jobs import JobLedger
from appliance.audit.studies import StudyService
from appliance.config import Settings
from appliance.delivery import Deliverer
from appliance.dicom.listener import Listener, ListenerOptions
from appliance.dicom.sop_classes import STORAGE_SOP_CLASSES
from appliance.dicom.spool import Spool
from appliance.dicom.tls import server_context
from appliance.domain.assembly import CompletionPolicy
from appliance.domain.policy import AssociationPolicy, SourceRateLimit, TrustedPeer
from appliance.domain.routing import Priority, Waiting, dispatch_order, priority_of, route
from appliance.jobs import JobRunner
from appliance.logs import configure_logging
from appliance.queue.app import PROCESS_STUDY, QUEUES, make_app
from appliance.queue.tasks import register

if TYPE_CHECKING:
    from appliance.web.server import DashboardServer

LOG = logging.getLogger(__name__)
SUPERVISE_INTERVAL_SECONDS = 1.0


class SchemaNotCurrent(RuntimeError):
    pass


def completion_policy(settings: Settings) -> CompletionPolicy:
    return CompletionPolicy(
        quiet_period=timedelta(seconds=settings.study.quiet_period_seconds),
        hint_settle=timedelta(seconds=settings.study.hint_settle_seconds),
    )


def open_database(settings: Settings, migrate: bool) -> Engine:
    """Engine for the configured database; migrate it, or refuse to run on an old schema."""
    engine = create_db_engine(settings.database.url)
    if migrate:
        upgrade(engine)
    elif pending_migrations(engine):
        raise SchemaNotCurrent("database schema is not current: run `appliance db upgrade`")
    return engine


def listener_options(settings: Settings, reuse_port: bool) -> ListenerOptions:
    listener = settings.listener
    tls = listener.tls
    context = None
    if tls.enabled and tls.certificate and tls.private_key:
        context = server_context(
            tls.certificate, tls.private_key, tls.ca_certificates, tls.require_client_certificate
        )
    return ListenerOptions(
        host=listener.host,
        port=listener.port,
        policy=AssociationPolicy(
            called_ae_title=listener.ae_title,
            peers=tuple(TrustedPeer(p.ae_title, tuple(p.hosts)) for p in listener.peers),
        ),
        max_associations=listener.max_associations,
        duplicates=listener.duplicate_policy,
        acse_timeout=listener.acse_timeout,
        dimse_timeout=listener.dimse_timeout,
        network_timeout=listener.network_timeout,
        sop_classes=tuple(dict.fromkeys([*STORAGE_SOP_CLASSES, *listener.extra_sop_classes])),
        ssl_context=context,
        reuse_port=reuse_port,
        rate_limit=SourceRateLimit(
            listener.associations_per_minute_per_host, listener.association_burst_per_host
        )
        if listener.associations_per_minute_per_host
        else None,
    )


def start_listener(settings: Settings, engine: Engine, reuse_port: bool = False) -> Listener:
    spool = Spool(settings.spool.path, settings.spool.disk_watermark_percent)
    ledger = DatabaseIngestLedger(engine)
    listener = Listener(listener_options(settings, reuse_port), spool, ledger)
    listener.start()
    return listener


def sweep_once(studies: StudyService) -> int:
    """Fold new instances into their studies, then complete the studies that are due."""
    now = datetime.now(UTC)
    studies.fold_pending(now)
    completed = studies.complete_due(now)
    for study in completed:
        LOG.info(
            "study %d version %d complete (%s): job %d queued",
            study.study_id,
            study.version,
            study.reason.value,
            study.job_id,
        )
    return len(completed)


class Dispatcher:
    """Hands queued jobs to the workers, at most `queue.dispatch_window` at a time and urgent
    ones first (`domain.routing.dispatch_order`), each on its priority's queue; first puts jobs
    whose worker was lost (lease expired) back in the queue.

    Holding jobs back in the database rather than in the broker is what makes priority work
    on every broker: the broker only ever holds the few jobs the workers are about to take."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._queue = settings.queue
        self._jobs = JobLedger(engine)
        self._rules = [rule.rule() for rule in settings.routing.rules]
        self._app = make_app(settings.queue)
        self._priorities: dict[int, Priority] = {}

    def dispatch(self, now: datetime) -> int:
        for job_id in self._jobs.requeue_expired(now):
            LOG.warning("job %d: its worker was lost; queued again", job_id)
        again = timedelta(seconds=self._queue.redispatch_seconds)
        waiting = self._jobs.waiting(now, again)
        slots = self._queue.dispatch_window - self._jobs.in_flight(now, again)
        if not waiting or slots <= 0:
            return 0
        self._priorities = {job_id: self._priority(job_id) for job_id, _ in waiting}
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

    def _priority(self, job_id: int) -> Priority:
        known = self._priorities.get(job_id)
        if known is None:
            known = priority_of(route(self._jobs.series_facts(job_id), self._rules))
        return known


def deliver_and_settle(deliverer: Deliverer, jobs: JobLedger) -> None:
    """One delivery round, then jobs whose deliveries all finished become DONE or DEAD_LETTER."""
    report = deliverer.deliver_due(datetime.now(UTC))
    if report.delivered or report.retrying or report.dead_letters:
        LOG.info(
            "delivery: %d delivered, %d retrying, %d dead letters",
            report.delivered,
            report.retrying,
            report.dead_letters,
        )
    for job_id, state in jobs.settle_deliveries(datetime.now(UTC)):
        LOG.info("job %d %s", job_id, state.value)


def run_sweeper(settings: Settings, engine: Engine, stop: threading.Event) -> None:
    """Complete due studies, dispatch their jobs, and attempt due deliveries, until `stop`."""
    studies = StudyService(engine, completion_policy(settings))
    dispatcher = Dispatcher(settings, engine)
    deliverer = Deliverer(settings.delivery, engine)
    jobs = JobLedger(engine)
    delivered_at = 0.0
    while not stop.is_set():
        try:
            sweep_once(studies)
            dispatcher.dispatch(datetime.now(UTC))
            if time.monotonic() - delivered_at >= settings.delivery.interval_seconds:
                deliver_and_settle(deliverer, jobs)
                delivered_at = time.monotonic()
        except (OSError, SQLAlchemyError, KombuError) as exc:
            LOG.error("sweep failed, trying again: %s", exc)  # a broker or database hiccup
        stop.wait(settings.study.sweep_interval_seconds)


def run_worker(settings: Settings) -> None:
    """A Celery worker consuming both queues; blocks until it is stopped."""
    configure_logging(settings.logging)
    engine = open_database(settings, migrate=False)
    app = make_app(settings.queue)
    deliverer = Deliverer(settings.delivery, engine)
    register(
        app,
        lambda: JobRunner(settings, engine).run,
        lambda: lambda: deliver_and_settle(deliverer, JobLedger(engine)),
        retry_seconds=settings.queue.retry_seconds,
    )
    pool = "solo" if settings.queue.worker_concurrency == 1 else "prefork"
    app.worker_main(
        [
            "worker",
            f"--pool={pool}",
            f"--queues={','.join(QUEUES)}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            f"--loglevel={settings.logging.level}",
            f"--hostname=appliance-worker-{os.getpid()}@{socket.gethostname()}",
        ]
    )


def _stop_on_signals(stop: threading.Event) -> None:
    def handle(signum: int, _frame: FrameType | None) -> None:
        LOG.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _listener_process(settings: Settings) -> None:
    """Entry point of one listener process sharing the port with its siblings."""
    configure_logging(settings.logging)
    stop = threading.Event()
    _stop_on_signals(stop)
    listener = start_listener(settings, open_database(settings, migrate=False), reuse_port=True)
    stop.wait()
    listener.stop()


class WorkerProcess:
    """The worker role of `serve`: one child process running `run_worker`."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._spawn = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None

    def start(self) -> None:
        self._process = self._spawn.Process(
            target=run_worker, args=(self._settings,), name="worker"
        )
        self._process.start()

    def supervise(self) -> None:
        if self._process is not None and not self._process.is_alive():
            LOG.error("worker exited with %s: restarting", self._process.exitcode)
            self.start()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.join(timeout=30)


class ListenerGroup:
    """Runs the listener in this process, or in N processes that share the port."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine
        self._listener: Listener | None = None
        self._processes: list[BaseProcess] = []
        self._spawn = multiprocessing.get_context("spawn")

    def start(self) -> None:
        spool = Spool(self._settings.spool.path, self._settings.spool.disk_watermark_percent)
        removed = spool.clear_staging()
        if removed:
            LOG.warning("removed %d partial files left by an earlier crash", removed)
        count = self._settings.listener.processes
        if count == 1:
            self._listener = start_listener(self._settings, self._engine)
            return
        self._processes = [self._start_process(index) for index in range(count)]

    def _start_process(self, index: int) -> BaseProcess:
        process = self._spawn.Process(
            target=_listener_process, args=(self._settings,), name=f"listener-{index}"
        )
        process.start()
        return process

    def supervise(self) -> None:
        """Restart listener processes that died."""
        for index, process in enumerate(self._processes):
            if not process.is_alive():
                LOG.error("%s exited with %s: restarting", process.name, process.exitcode)
                self._processes[index] = self._start_process(index)

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.stop()
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            process.join(timeout=10)


def dashboard_server(settings: Settings, engine: Engine) -> "DashboardServer":
    from appliance.dashboard import ApplianceView
    from appliance.jobs import make_backend
    from appliance.web.app import create_app
    from appliance.web.server import DashboardServer

    view = ApplianceView(settings, engine, make_backend(settings.inference))
    app = create_app(settings.dashboard, view)
    return DashboardServer(app, settings.dashboard.host, settings.dashboard.port)


def run(
    settings: Settings,
    listen: bool,
    sweep: bool,
    migrate: bool,
    work: bool = False,
    dashboard: bool = False,
) -> None:
    """Run the chosen roles until SIGTERM or SIGINT: listener, sweeper and dashboard in this
    process, a worker (with `work`) in a child process, restarted if it dies."""
    configure_logging(settings.logging)
    engine = open_database(settings, migrate=migrate)
    stop = threading.Event()
    _stop_on_signals(stop)
    web = None
    if dashboard:
        web = dashboard_server(settings, engine)
        web.start()
        if AccountLedger(engine).count() == 0:
            LOG.warning("no dashboard accounts yet: add one with `appliance users add NAME`")
    worker = WorkerProcess(settings) if work else None
    if worker is not None:
        worker.start()
    group = ListenerGroup(settings, engine) if listen else None
    if group is not None:
        group.start()
    sweeper = None
    if sweep:
        sweeper = threading.Thread(
            target=run_sweeper, args=(settings, engine, stop), name="sweeper", daemon=True
        )
        sweeper.start()
    try:
        while not stop.wait(SUPERVISE_INTERVAL_SECONDS):
            if group is not None:
                group.supervise()
            if worker is not None:
                worker.supervise()
            if web is not None and not web.alive():
                raise OSError(f"the dashboard stopped: is {web.address} taken?")
    finally:
        if web is not None:
            web.stop()
        if worker is not None:
            worker.stop()
        if group is not None:
            group.stop()
        if sweeper is not None:
            sweeper.join(timeout=10)
        LOG.info("stopped")
