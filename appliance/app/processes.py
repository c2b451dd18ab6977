"""The processes: `serve` runs every role, and `listen`, `sweep`, `worker` and `dashboard`
one each. Each builds what it needs at start, runs until SIGTERM or SIGINT, and restarts a
child (a listener process sharing the port, the worker) that died.
"""

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.process import BaseProcess
from types import FrameType

from celery.signals import worker_process_init, worker_ready
from kombu.exceptions import KombuError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from appliance.app.audit_forwarding import AuditForwarder
from appliance.app.completion import complete_studies
from appliance.app.delivery import Deliverer, deliver_and_settle
from appliance.app.dispatch import Dispatcher
from appliance.app.ingest import spool, start_listener
from appliance.app.job_runner import JobRunner
from appliance.app.logs import configure_logging
from appliance.config import Settings
from appliance.dicom.listener import Listener
from appliance.queue.celery_app import QUEUES, make_app
from appliance.queue.tasks import register
from appliance.store.account_ledger import AccountLedger
from appliance.store.db import open_database
from appliance.store.job_ledger import JobLedger
from appliance.store.study_ledger import StudyLedger

LOG = logging.getLogger(__name__)
SUPERVISE_INTERVAL_SECONDS = 1.0
AUDIT_FORWARD_SECONDS = 5.0


def run_sweeper(
    settings: Settings, engine: Engine, stop: threading.Event, nudge: threading.Event | None = None
) -> None:
    """Complete due studies, dispatch their jobs, attempt due deliveries, and send the audit
    trail on to the audit repository where one is configured, until `stop`. A `nudge` (set
    by a listener in this process when an association ends, and on stop) starts the next
    sweep at once rather than at the interval: a released study's job starts without it."""
    studies = StudyLedger(engine, settings.completion_policy())
    dispatcher = Dispatcher(settings, engine)
    deliverer = Deliverer(settings.delivery, engine)
    jobs = JobLedger(engine)
    auditing = AuditForwarder(settings.audit, engine) if settings.audit.syslog_host else None
    delivered_at = audited_at = 0.0
    while not stop.is_set():
        try:
            complete_studies(studies)
            dispatcher.dispatch(datetime.now(UTC))
            if time.monotonic() - delivered_at >= settings.delivery.interval_seconds:
                deliver_and_settle(deliverer, jobs)
                delivered_at = time.monotonic()
        except (OSError, SQLAlchemyError, KombuError) as exc:
            LOG.error("sweep failed, trying again: %s", exc)  # a broker or database hiccup
        if auditing is not None and time.monotonic() - audited_at >= AUDIT_FORWARD_SECONDS:
            audited_at = time.monotonic()
            try:
                auditing.forward()
            except (OSError, SQLAlchemyError) as exc:
                LOG.error("audit repository not reached, trying again: %s", exc)
        (nudge or stop).wait(settings.study.sweep_interval_seconds)
        if nudge is not None:
            nudge.clear()


def run_worker(settings: Settings, parent: int | None = None) -> None:
    """A Celery worker consuming both queues; blocks until it is stopped. As a child of
    `serve` (process `parent`) it stops when `serve` is gone."""
    configure_logging(settings.logging)
    if parent is not None:
        _stop_with_parent(parent)
    engine = open_database(settings.database.url, migrate=False)
    app = make_app(settings.queue)
    deliverer = Deliverer(settings.delivery, engine)
    runners: list[JobRunner] = []  # the one of this process, made where it runs jobs

    def runner() -> JobRunner:
        if not runners:
            runners.append(JobRunner(settings, engine))
        return runners[0]

    def warm(**_: object) -> None:
        try:
            runner().warm()
        except Exception:  # a database or repository hiccup: the jobs will say what it is
            LOG.exception("the models could not be warmed; the first job loads them")

    register(
        app,
        lambda: runner().run,
        lambda: lambda: deliver_and_settle(deliverer, JobLedger(engine)),
        retry_seconds=settings.queue.retry_seconds,
    )
    _check_spare_cores(settings)
    pool = "solo" if settings.queue.worker_concurrency == 1 else "prefork"
    if pool == "solo":  # jobs run in this process
        warm()
    else:  # in each pool process, as it starts
        worker_process_init.connect(warm, weak=False)
    worker_ready.connect(_no_restart_on_hangup, weak=False)
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


def _check_spare_cores(settings: Settings) -> None:
    """Jobs that run at once overlap all but their models (`app.lane`); that costs the job
    ahead nothing only where the cores the models leave spare take the rest."""
    concurrency = settings.queue.worker_concurrency
    cores = len(os.sched_getaffinity(0))
    local = settings.inference.backend == "onnxruntime"
    model_cores = (settings.inference.threads or cores) if local else 0
    if concurrency > 1 and model_cores + concurrency - 1 > cores:
        LOG.warning(
            "worker_concurrency %d with %d ONNX Runtime threads on %d cores: the jobs "
            "overlapping a job's models will compete with them for cores and slow it; set "
            "inference.threads to %d or fewer",
            concurrency, model_cores, cores, max(1, cores - concurrency + 1),
        )  # fmt: skip


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM, SIGINT and SIGHUP (a closing terminal, tmux, some supervisors) all stop the
    process through its orderly shutdown."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        LOG.info("signal %d: stopping", signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, handle)


def _stop_with_parent(parent: int) -> None:
    """A child of `serve` (process `parent`) sends itself SIGTERM once `serve` is gone,
    however it went (kill -9 included, even before the child got this far): an orphaned
    worker or listener would go on beside the next appliance."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(SUPERVISE_INTERVAL_SECONDS)
        LOG.error("the parent process is gone: stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _no_restart_on_hangup(**_: object) -> None:
    """Celery restarts a worker on SIGHUP by executing its command line again, which in a
    child of `serve` is `serve`'s own: a second appliance. The parent stops its worker
    instead, so the worker leaves SIGHUP alone once it is up."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _listener_process(settings: Settings, parent: int) -> None:
    """Entry point of one listener process sharing the port with its siblings."""
    configure_logging(settings.logging)
    stop = threading.Event()
    _stop_on_signals(stop)
    _stop_with_parent(parent)
    engine = open_database(settings.database.url, migrate=False)
    listener = start_listener(settings, engine, reuse_port=True)
    while not stop.wait(SUPERVISE_INTERVAL_SECONDS):
        if not listener.alive():  # deaf: exit, and the parent starts a fresh process
            LOG.error("the listener stopped accepting: exiting for a restart")
            listener.stop()
            raise SystemExit(1)
    listener.stop()


class WorkerProcess:
    """The worker role of `serve`: one child process running `run_worker`."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._spawn = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None

    def start(self) -> None:
        self._process = self._spawn.Process(
            target=run_worker, args=(self._settings, os.getpid()), name="worker"
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

    def __init__(
        self, settings: Settings, engine: Engine, ended: Callable[[], None] | None = None
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._ended = ended  # told when an association ends: in this process only
        self._listener: Listener | None = None
        self._processes: list[BaseProcess] = []
        self._spawn = multiprocessing.get_context("spawn")

    def start(self) -> None:
        removed = spool(self._settings).clear_staging()
        if removed:
            LOG.warning("removed %d partial files left by an earlier crash", removed)
        count = self._settings.listener.processes
        if count == 1:
            self._listener = start_listener(self._settings, self._engine, ended=self._ended)
            return
        self._processes = [self._start_process(index) for index in range(count)]

    def _start_process(self, index: int) -> BaseProcess:
        process = self._spawn.Process(
            target=_listener_process,
            args=(self._settings, os.getpid()),
            name=f"listener-{index}",
        )
        process.start()
        return process

    def alive(self) -> bool:
        """Whether every listener accepts: the one in this process, or each process."""
        if self._listener is not None:
            return self._listener.alive()
        return bool(self._processes) and all(p.is_alive() for p in self._processes)

    def supervise(self) -> None:
        """Restart a listener that stopped accepting, and listener processes that died."""
        if self._listener is not None and not self._listener.alive():
            LOG.error("the listener stopped accepting: starting it again")
            self._listener.stop()
            self._listener = start_listener(self._settings, self._engine, ended=self._ended)
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


@dataclass(frozen=True)
class Roles:
    """What one process runs; with `migrate` it first brings the schema up to date, without
    it refuses an old schema."""

    listen: bool = False
    sweep: bool = False
    work: bool = False
    dashboard: bool = False
    migrate: bool = False


def run(settings: Settings, roles: Roles) -> None:
    """Run the chosen roles until SIGTERM, SIGINT or SIGHUP: listener, sweeper and dashboard
    in this process, a worker (with `work`) in a child process, restarted if it dies. If a
    role fails to start, the roles already started are stopped and the error goes on up."""
    configure_logging(settings.logging)
    engine = open_database(settings.database.url, migrate=roles.migrate)
    stop = threading.Event()
    _stop_on_signals(stop)
    web = worker = sweeper = None
    nudge = threading.Event()  # an association ended, or stop: the sweeper looks at once
    group = (
        ListenerGroup(settings, engine, nudge.set if roles.sweep else None)
        if roles.listen
        else None
    )
    try:
        if roles.dashboard:
            # Imported by a process that serves the dashboard only: the web stack would cost
            # every listener, sweeper and worker process some 13 MiB it never uses.
            from appliance.app.dashboard_view import dashboard_server

            web = dashboard_server(settings, engine, group.alive if group is not None else None)
            web.start()
            if AccountLedger(engine).count() == 0:
                LOG.warning("no dashboard accounts yet: add one with `appliance users add NAME`")
        if roles.work:
            if not settings.delivery.destinations:
                LOG.warning(
                    "no destination is configured: results are kept in %s, listed by "
                    "`appliance outbox list` and shown on each job's dashboard page",
                    settings.delivery.outbox.resolve(),
                )
            requeued = JobLedger(engine).requeue_orphans(socket.gethostname(), datetime.now(UTC))
            if requeued:
                LOG.warning("%d jobs of workers that no longer run queued again", requeued)
            worker = WorkerProcess(settings)
            worker.start()
        if group is not None:
            group.start()
        if roles.sweep:
            sweeper = threading.Thread(
                target=run_sweeper,
                args=(settings, engine, stop, nudge),
                name="sweeper",
                daemon=True,
            )
            sweeper.start()
        while not stop.wait(SUPERVISE_INTERVAL_SECONDS):
            if group is not None:
                group.supervise()
            if worker is not None:
                worker.supervise()
            if web is not None and not web.alive():
                raise OSError(f"the dashboard stopped: is {web.address} taken?")
    finally:
        stop.set()
        nudge.set()
        if web is not None:
            web.stop()
        if worker is not None:
            worker.stop()
        if group is not None:
            group.stop()
        if sweeper is not None:
            sweeper.join(timeout=10)
        LOG.info("stopped")
