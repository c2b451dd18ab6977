"""Wires settings to running roles: listener processes, the study sweeper, `serve` for all.

This module and `cli` are the only places that know every package; the packages themselves
talk through the protocols in `domain` and `dicom.listener`.
"""

import logging
import multiprocessing
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.process import BaseProcess
from types import FrameType

from sqlalchemy import Engine

from appliance.audit.db import create_db_engine, pending_migrations, upgrade
from appliance.audit.ingest import DatabaseIngestLedger
from appliance.audit.studies import StudyService
from appliance.config import Settings
from appliance.delivery import Deliverer
from appliance.dicom.listener import Listener, ListenerOptions
from appliance.dicom.sop_classes import STORAGE_SOP_CLASSES
from appliance.dicom.spool import Spool
from appliance.dicom.tls import server_context
from appliance.domain.assembly import CompletionPolicy
from appliance.domain.policy import AssociationPolicy, TrustedPeer
from appliance.logs import configure_logging

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


def run_sweeper(settings: Settings, engine: Engine, stop: threading.Event) -> None:
    """Complete due studies, and attempt due deliveries, until `stop` is set."""
    studies = StudyService(engine, completion_policy(settings))
    deliverer = Deliverer(settings.delivery, engine)
    delivered_at = 0.0
    while not stop.is_set():
        sweep_once(studies)
        if time.monotonic() - delivered_at >= settings.delivery.interval_seconds:
            report = deliverer.deliver_due(datetime.now(UTC))
            if report.delivered or report.retrying or report.dead_letters:
                LOG.info(
                    "delivery: %d delivered, %d retrying, %d dead letters",
                    report.delivered,
                    report.retrying,
                    report.dead_letters,
                )
            delivered_at = time.monotonic()
        stop.wait(settings.study.sweep_interval_seconds)


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


def run(settings: Settings, listen: bool, sweep: bool, migrate: bool) -> None:
    """Run the chosen roles in this process until SIGTERM or SIGINT."""
    configure_logging(settings.logging)
    engine = open_database(settings, migrate=migrate)
    stop = threading.Event()
    _stop_on_signals(stop)
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
    finally:
        if group is not None:
            group.stop()
        if sweeper is not None:
            sweeper.join(timeout=10)
        LOG.info("stopped")
