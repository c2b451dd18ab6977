"""Readiness of what the appliance needs: the database, the broker, the spool's disk, the
inference backend's models, and (cached, since a C-ECHO can take seconds) each destination."""

import threading
import time

from celery import Celery
from kombu.exceptions import KombuError
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from appliance.app.delivery import Deliverer
from appliance.app.pipelines import models_in_service
from appliance.config import DestinationSettings, Settings
from appliance.dicom.spool import Spool
from appliance.domain.delivery import DestinationUnavailable
from appliance.domain.monitoring import Check
from appliance.domain.pipelines import Governance
from appliance.inference.backend import BackendError, InferenceBackend
from appliance.inference.catalog import Catalog

DESTINATION_CHECK_SECONDS = 30.0


def database(engine: Engine) -> Check:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return Check("database", False, type(exc).__name__)
    return Check("database", True, engine.url.get_backend_name())


def broker(app: Celery) -> Check:
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except (OSError, KombuError) as exc:
        return Check("broker", False, type(exc).__name__)
    return Check("broker", True, app.conf.broker_transport or "configured")


def spool_disk(spool: Spool) -> Check:
    try:
        percent = spool.usage().percent
    except OSError as exc:
        return Check("spool disk", False, str(exc))
    return Check(
        "spool disk",
        percent < spool.watermark_percent,
        f"{percent:.1f}% used (watermark {spool.watermark_percent:g}%)",
    )


def inference(backend: InferenceBackend, catalog: Catalog, governance: Governance) -> Check:
    """Every model version that an enabled or shadow pipeline runs answers ready, and the
    catalog loaded whole."""
    if catalog.problems:
        return Check("inference", False, f"catalog: {'; '.join(catalog.problems)}")
    wanted = models_in_service(catalog, governance)
    try:
        missing = [str(model) for model in wanted if not backend.ready(model)]
    except BackendError as exc:
        return Check("inference", False, str(exc))
    if missing or not wanted:
        return Check("inference", False, f"not ready: {', '.join(missing) or 'no pipelines'}")
    return Check("inference", True, f"{len(wanted)} models ready")


class DestinationMonitor:
    """C-ECHO (or QIDO-RS) each destination at most every `DESTINATION_CHECK_SECONDS`."""

    def __init__(self, deliverer: Deliverer, settings: Settings) -> None:
        self._deliverer = deliverer
        self._destinations = settings.delivery.destinations
        self._lock = threading.Lock()
        self._checked_at = -DESTINATION_CHECK_SECONDS
        self._last: list[Check] = []

    def checks(self) -> list[Check]:
        with self._lock:
            if time.monotonic() - self._checked_at >= DESTINATION_CHECK_SECONDS:
                self._last = [self._check(d) for d in self._destinations]
                self._checked_at = time.monotonic()
            return list(self._last)

    def _check(self, destination: DestinationSettings) -> Check:
        try:
            answer = self._deliverer.check(destination)
        except DestinationUnavailable as exc:
            return Check(destination.name, False, str(exc))
        return Check(destination.name, True, answer)
