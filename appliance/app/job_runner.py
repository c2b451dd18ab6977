"""A job, start to finish: claim it, route its series, run the pipelines, encode and check the
results, and hand them to delivery.

Wiring between `audit` (the job ledger), `domain` (routing), `inference` (backends and
pipelines), `results` (encoders and the gate) and delivery. Bad input fails the job with its
reason and nothing else; an unavailable inference server sends the job back to the queue until
its attempts run out.
"""

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydicom.errors import InvalidDicomError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from appliance import __version__
from appliance.app.delivery import Deliverer
from appliance.app.pipelines import make_backend, run_ct, run_ultrasound
from appliance.config import Settings
from appliance.domain.jobs import DatabaseUnavailable, JobState, JobTimings
from appliance.domain.routing import route
from appliance.inference.backend import (
    InferenceBackend,
    PermanentBackendError,
    RetryableBackendError,
    TimedBackend,
)
from appliance.inference.contract import ContractError, Family, ModelContract, load_contract
from appliance.inference.ct import UnsupportedSeries
from appliance.inference.repository import model_directories
from appliance.inference.ultrasound import UnsupportedFrames
from appliance.results.encode import ct_results, ultrasound_results
from appliance.results.segmentation import Equipment
from appliance.results.validate import CheckedResult, InvalidResult
from appliance.store.job_ledger import JobLedger, JobWork, LostJob

LOG = logging.getLogger(__name__)

# What fails a job for good: the input or the model cannot be used as they are.
JOB_FAILURES = (
    UnsupportedSeries,
    UnsupportedFrames,
    InvalidResult,
    InvalidDicomError,
    PermanentBackendError,
    ContractError,
    OSError,
    ValueError,
)


class NoRoute(ValueError):
    """No routing rule takes any series of the study."""


def models_by_family(repository: Path) -> dict[Family, ModelContract]:
    """The first model of each family in the repository (directory order)."""
    found: dict[Family, ModelContract] = {}
    for directory in model_directories(repository):
        contract = load_contract(directory)
        found.setdefault(contract.family, contract)
    return found


class JobRunner:
    def __init__(
        self, settings: Settings, engine: Engine, backend: InferenceBackend | None = None
    ) -> None:
        self._settings = settings
        self._jobs = JobLedger(engine)
        self._deliverer = Deliverer(settings.delivery, engine)
        self._backend = backend or make_backend(settings.inference)
        self._rules = settings.routing.route_rules()
        self._equipment = Equipment(
            settings.results.manufacturer,
            "DICOM inference appliance",
            __version__,
            settings.results.device_serial_number,
        )

    @property
    def jobs(self) -> JobLedger:
        return self._jobs

    def run(self, job_id: int) -> JobState:
        """Run one attempt of a job; the state it ends this attempt in. While it runs, its
        lease is renewed, so only a dead worker's job is ever taken over."""
        lease = timedelta(seconds=self._settings.queue.lease_seconds)
        try:
            work = self._jobs.claim(job_id, _now(), lease)
            if work is None:
                return self._jobs.state(job_id)
        except OperationalError as exc:
            raise DatabaseUnavailable(str(exc.orig or exc)) from exc
        stop = threading.Event()
        heartbeat = threading.Thread(
            target=self._renew, args=(work, lease, stop), name=f"lease-{job_id}", daemon=True
        )
        heartbeat.start()
        try:
            return self._attempt(work)
        except LostJob as exc:
            LOG.warning("%s; its results are left to the attempt that took over", exc)
            return self._jobs.state(job_id)
        finally:
            stop.set()
            heartbeat.join()

    def _renew(self, work: JobWork, lease: timedelta, stop: threading.Event) -> None:
        while not stop.wait(lease.total_seconds() / 3):
            if not self._jobs.renew(work.job_id, work.attempts, _now() + lease):
                return

    def _attempt(self, work: JobWork) -> JobState:
        job_id, attempt = work.job_id, work.attempts
        backend = TimedBackend(self._backend)
        started = time.perf_counter()
        try:
            results, encoding = self._results(work, backend)
        except RetryableBackendError as exc:
            retry = attempt < self._settings.queue.max_attempts
            target = JobState.QUEUED if retry else JobState.FAILED
            reason = f"inference unavailable (attempt {attempt}): {exc}"
            self._jobs.move(job_id, target, _now(), reason, attempt)
            LOG.warning("job %d: %s", job_id, reason)
            return target
        except JOB_FAILURES as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self._jobs.move(job_id, JobState.FAILED, _now(), reason, attempt)
            LOG.warning("job %d failed: %s", job_id, reason)
            return JobState.FAILED
        except Exception as exc:  # a bug: fail now with its name rather than wait out leases
            reason = f"internal error: {type(exc).__name__}: {exc}"
            self._jobs.move(job_id, JobState.FAILED, _now(), reason, attempt)
            LOG.exception("job %d failed on an internal error", job_id)
            return JobState.FAILED
        timings = JobTimings(time.perf_counter() - started, encoding, dict(backend.by_model))
        summary = (
            f"{len(results)} results; pipeline {timings.pipeline:.2f} s, "
            f"model compute {timings.model_compute:.2f} s"
        )
        self._jobs.move(job_id, JobState.ENCODED, _now(), summary, attempt, timings)
        self._deliverer.queue(results, work.study_instance_uid, _now(), job_id)
        self._jobs.move(job_id, JobState.DELIVERING, _now(), None, attempt)
        LOG.info("job %d: %d results queued for delivery", job_id, len(results))
        return JobState.DELIVERING

    def _results(
        self, work: JobWork, backend: InferenceBackend
    ) -> tuple[list[CheckedResult], float]:
        """The checked results of every routed series, and the seconds spent encoding them."""
        routes = route([series.facts for series in work.series], self._rules)
        if not routes:
            modalities = sorted({series.facts.modality for series in work.series})
            raise NoRoute(f"no routing rule takes any series (modalities {modalities})")
        models = models_by_family(self._settings.inference.repository)
        spool = self._settings.spool.path
        paths_of = {series.facts.series_instance_uid: series.paths for series in work.series}
        kind = self._settings.results.segmentation_type
        results: list[CheckedResult] = []
        encoding = 0.0
        for matched in routes:
            for series in matched.series:
                paths = [spool / path for path in paths_of[series.series_instance_uid]]
                if matched.rule.pipeline == "ct":
                    if Family.ORGAN_CT not in models:
                        raise ContractError("no organ_ct model in the repository")
                    ct = run_ct(
                        paths, backend, models[Family.ORGAN_CT], models.get(Family.LESION_CT)
                    )
                    encoding_started = time.perf_counter()
                    results += ct_results(ct.volume.headers, ct.findings, kind, self._equipment)
                    encoding += time.perf_counter() - encoding_started
                else:
                    if Family.US_FRAME not in models:
                        raise ContractError("no us_frame model in the repository")
                    for path in paths:
                        us = run_ultrasound(path, backend, models[Family.US_FRAME])
                        encoding_started = time.perf_counter()
                        results += ultrasound_results(us.source, us.findings, self._equipment)
                        encoding += time.perf_counter() - encoding_started
        return results, encoding


def _now() -> datetime:
    return datetime.now(UTC)
