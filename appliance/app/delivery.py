"""Delivery: checked results into the outbox, due results out to every destination.

Wiring between `dicom` (durable files, the C-STORE and STOW-RS clients), `audit` (the outbox
ledger) and the domain's delivery rules. One round takes each destination's due results over
one association (or HTTP session); a destination that cannot be reached gets its results back
in the queue with exponential backoff, until the deadline makes them dead letters. Each result
is claimed just before it is sent, so a worker and the sweeper never send it at the same time;
a claim lapses after twice the destination's timeout, for a sender that died.
"""

import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import requests
from sqlalchemy import Engine

from appliance.config import DeliverySettings, DestinationKind, DestinationSettings
from appliance.dicom.sender import (
    Association,
    ContextNotAccepted,
    Outgoing,
    Peer,
    echo,
    outgoing,
)
from appliance.dicom.spool import private_directory, write_durably
from appliance.dicom.stow import StowSession
from appliance.dicom.tls import client_context
from appliance.domain.delivery import (
    LOCAL_DESTINATION,
    SHADOW_DESTINATION,
    DeliveryState,
    DestinationUnavailable,
    Outcome,
    RetryPolicy,
    classify,
)
from appliance.domain.findings import SegmentationType
from appliance.domain.status import DimseStatus
from appliance.results.validate import CheckedResult
from appliance.store.job_ledger import JobLedger
from appliance.store.outbox_ledger import DueDelivery, OutboxLedger, QueuedResult

LOG = logging.getLogger(__name__)


class _Connection(Protocol):
    def store(self, item: Outgoing) -> DimseStatus: ...


@dataclass
class DeliveryReport:
    delivered: int = 0
    retrying: int = 0
    dead_letters: int = 0


class Deliverer:
    def __init__(self, settings: DeliverySettings, engine: Engine) -> None:
        self._settings = settings
        self._ledger = OutboxLedger(engine)
        self._root = settings.outbox
        self._staging = private_directory(private_directory(self._root) / ".staging")
        self._policy = RetryPolicy(
            initial=timedelta(seconds=settings.retry_initial_seconds),
            maximum=timedelta(seconds=settings.retry_max_seconds),
            deadline=timedelta(seconds=settings.deadline_seconds),
        )

    @property
    def ledger(self) -> OutboxLedger:
        return self._ledger

    @property
    def outbox(self) -> Path:
        return self._root

    def queue(
        self,
        results: Sequence[CheckedResult],
        study_instance_uid: str,
        now: datetime,
        job_id: int | None = None,
        shadow: bool = False,
        forms: Mapping[str, SegmentationType] | None = None,
    ) -> None:
        """Write each result durably to the outbox, then queue it for every destination that
        takes its SEG form (`forms`, by destination; any form where it names none); a shadow
        pipeline's results are kept there for review and sent nowhere, and so is every result
        while no destination is configured."""
        names = [SHADOW_DESTINATION] if shadow else [d.name for d in self._settings.destinations]
        state = DeliveryState.SHADOW if shadow else DeliveryState.PENDING
        if not names:
            names, state = [LOCAL_DESTINATION], DeliveryState.KEPT
        forms = {} if shadow or forms is None else forms
        queued = []
        for result in results:
            path = Path(study_instance_uid) / f"{result.sop_instance_uid}.dcm"
            write_durably(self._root / path, self._staging, self._root, (result.encoded,))
            queued += [
                QueuedResult(
                    name, result.sop_instance_uid, result.sop_class_uid, study_instance_uid,
                    str(path), job_id,
                )
                for name in names
                if result.form is None or forms.get(name, result.form) == result.form
            ]  # fmt: skip
        self._ledger.enqueue(queued, now, state)

    def deliver_due(self, now: datetime) -> DeliveryReport:
        report = DeliveryReport()
        for destination in self._settings.destinations:
            self._deliver(destination, now, report)
        return report

    def check(self, destination: DestinationSettings) -> str:
        """A health check: C-ECHO for a DICOM node; for DICOMweb a one-study QIDO-RS search
        on the same base URL, which any conformant origin server answers. Raises
        DestinationUnavailable."""
        if destination.kind is DestinationKind.DIMSE:
            return f"C-ECHO {echo(self._peer(destination))}"
        try:
            answer = requests.get(
                f"{str(destination.url).rstrip('/')}/studies",
                params={"limit": "1"},
                timeout=destination.timeout_seconds,
                auth=_auth(destination),
            )
        except requests.RequestException as exc:
            raise DestinationUnavailable(str(exc)) from exc
        if answer.status_code >= 300:
            raise DestinationUnavailable(f"QIDO-RS answered HTTP {answer.status_code}")
        return f"HTTP {answer.status_code}"

    def _deliver(
        self, destination: DestinationSettings, now: datetime, report: DeliveryReport
    ) -> None:
        due = self._ledger.due(destination.name, now)
        ready: list[tuple[DueDelivery, Outgoing]] = []
        for row in due:
            try:
                ready.append((row, outgoing((self._root / row.path).read_bytes())))
            except OSError as exc:
                self._ledger.dead_letter(row.id, None, f"outbox file unreadable: {exc}", now)
                report.dead_letters += 1
        if not ready:
            return
        finished: set[int] = set()
        lease = timedelta(seconds=2 * destination.timeout_seconds)
        started = time.monotonic()
        try:
            with self._connect(destination, [item for _, item in ready]) as connection:
                for row, item in ready:
                    at = now + timedelta(seconds=time.monotonic() - started)
                    if not self._ledger.claim(row.id, at, at + lease):
                        finished.add(row.id)  # another sender has it
                        continue
                    try:
                        status = connection.store(item)
                    except ContextNotAccepted as exc:
                        self._ledger.dead_letter(row.id, None, str(exc), now)
                        report.dead_letters += 1
                    else:
                        self._record(row, status, now, report)
                    finished.add(row.id)
        except DestinationUnavailable as exc:
            LOG.warning("destination %s unavailable: %s", destination.name, exc)
            for row, _ in ready:
                if row.id not in finished:
                    self._retry_or_give_up(row, None, str(exc), now, report)

    def _record(
        self, row: DueDelivery, status: DimseStatus, now: datetime, report: DeliveryReport
    ) -> None:
        outcome = classify(status)
        if outcome in (Outcome.STORED, Outcome.STORED_WITH_WARNING):
            warning = str(status) if outcome is Outcome.STORED_WITH_WARNING else None
            self._ledger.delivered(row.id, status.code, warning, now)
            report.delivered += 1
        elif outcome is Outcome.RETRY:
            self._retry_or_give_up(row, status.code, str(status), now, report)
        else:
            self._ledger.dead_letter(row.id, status.code, f"refused: {status}", now)
            report.dead_letters += 1

    def _retry_or_give_up(
        self,
        row: DueDelivery,
        status: int | None,
        reason: str,
        now: datetime,
        report: DeliveryReport,
    ) -> None:
        attempts = row.attempts + 1
        at = self._policy.next_attempt(row.first_attempt_at or now, attempts, now)
        if at is None:
            self._ledger.dead_letter(
                row.id, status, f"deadline passed after {attempts} attempts; last: {reason}", now
            )
            report.dead_letters += 1
        else:
            self._ledger.retry(row.id, status, reason, at, now)
            report.retrying += 1

    def _connect(
        self, destination: DestinationSettings, items: Sequence[Outgoing]
    ) -> AbstractContextManager[_Connection]:
        if destination.kind is DestinationKind.DIMSE:
            syntaxes = sorted({(item.sop_class_uid, item.transfer_syntax_uid) for item in items})
            return Association(self._peer(destination), syntaxes)
        certificate = (
            (destination.certificate, destination.private_key)
            if destination.certificate and destination.private_key
            else None
        )
        return StowSession(
            str(destination.url),
            destination.timeout_seconds,
            _auth(destination),
            destination.ca_certificates,
            certificate,
        )

    def _peer(self, destination: DestinationSettings) -> Peer:
        tls = (
            client_context(
                destination.ca_certificates, destination.certificate, destination.private_key
            )
            if destination.tls
            else None
        )
        return Peer(
            ae_title=str(destination.ae_title),
            host=str(destination.host),
            port=int(destination.port or 0),
            calling_ae_title=self._settings.calling_ae_title,
            timeout=destination.timeout_seconds,
            tls=tls,
        )


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


def _auth(destination: DestinationSettings) -> tuple[str, str] | None:
    if destination.username is None:
        return None
    password = destination.password.get_secret_value() if destination.password else ""
    return (destination.username, password)
