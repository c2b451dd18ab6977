"""A job, start to finish: claim it, route its series, run the pipelines, encode and check the
results (each SEG form the destinations take), shelve the findings preview, and hand the
results to delivery. Each series' pipeline holds the host's inference lane from its first
model call to its end (`app.lane`), so jobs that run at once overlap everything but their
models.

Wiring between `store` (the job and governance ledgers), `domain` (routing), `inference`
(the catalog, backends and pipelines), `results` (encoders and the gate) and delivery. Each
routed series runs through the pipeline its rule names, as the catalog declares it; a shadow
pipeline's results are kept, never delivered. A pipeline whose models were not made for a
series declines it before any model runs (their declared domains), and the job's record says
why; what the models find is checked, and a finding of low confidence is flagged or withheld
as the settings say, the record counting both. Bad input fails the job with its reason and
nothing else; an unavailable inference server sends the job back to the queue until its
attempts run out.
"""

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from appliance import __version__
from appliance.app.delivery import Deliverer
from appliance.app.lane import InferenceLane, default_lane_path
from appliance.app.pipelines import (
    make_backend,
    models_in_service,
    pipeline_states,
    run_frames,
    run_volume,
    warm_models,
)
from appliance.app.previews import PreviewShelf
from appliance.config import Settings
from appliance.domain.applicability import Acquisition, Verdict
from appliance.domain.jobs import DatabaseUnavailable, ForReview, JobState, JobTimings
from appliance.domain.routing import SeriesFacts, route
from appliance.inference.applicability import acquisition_of, verdict
from appliance.inference.backend import (
    InferenceBackend,
    PermanentBackendError,
    RetryableBackendError,
    TimedBackend,
)
from appliance.inference.catalog import Catalog, load_catalog
from appliance.inference.contract import ContractError
from appliance.inference.ct import UnsupportedSeries
from appliance.inference.ultrasound import UnsupportedFrames
from appliance.results.encode import ct_results, ultrasound_results
from appliance.results.preview import Rendered, ct_preview, ultrasound_preview
from appliance.results.segmentation import Equipment
from appliance.results.validate import CheckedResult, InvalidResult
from appliance.store.governance_ledger import GovernanceLedger
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


# A job held for its settle polls the sweeper's folding this often, for at most FOLD_WAIT
# seconds past the settle (a sweeper that is down must not hold results for ever).
SETTLE_POLL = 0.1
FOLD_WAIT = 5.0


class NoRoute(ValueError):
    """No routing rule takes any series of the study."""


class Superseded(Exception):
    """The study re-opened for a new version before this job's results could leave."""


@dataclass
class Results:
    """What an attempt made: results to deliver, results a shadow pipeline keeps, the
    seconds spent encoding them, and what the job's record must say of its findings'
    confidence (series declined, findings flagged or withheld)."""

    delivered: list[CheckedResult] = field(default_factory=list)
    kept: list[CheckedResult] = field(default_factory=list)
    encoding: float = 0.0
    lane_wait: float = 0.0  # waiting for another job's models to finish
    notes: list[str] = field(default_factory=list)
    flagged: int = 0
    withheld: int = 0
    previews: list[Rendered] = field(default_factory=list)


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        backend: InferenceBackend | None = None,
        lane: InferenceLane | None = None,
    ) -> None:
        self._settings = settings
        self._lane = lane or InferenceLane(default_lane_path())
        self._jobs = JobLedger(engine)
        self._governance = GovernanceLedger(engine)
        self._deliverer = Deliverer(settings.delivery, engine)
        self._previews = PreviewShelf(settings.delivery.outbox)
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

    def warm(self) -> int:
        """Every model an enabled or shadow pipeline runs, run once before the first job
        (`warm_models`); how many ran."""
        catalog = load_catalog(self._settings.inference.repository)
        started = time.perf_counter()
        models = models_in_service(catalog, self._governance.current())
        warmed = warm_models(self._backend, catalog, models)
        LOG.info("%d models warmed in %.1f s", warmed, time.perf_counter() - started)
        return warmed

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
            results = self._results(work, backend)
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
        pipeline = time.perf_counter() - started
        try:
            settle = self._settle(work)
        except Superseded as exc:
            self._jobs.move(job_id, JobState.CANCELLED, _now(), str(exc), attempt)
            LOG.info("job %d cancelled: %s", job_id, exc)
            return JobState.CANCELLED
        timings = JobTimings(pipeline, results.encoding, dict(backend.by_model), settle)
        kept = f", {len(results.kept)} kept in shadow" if results.kept else ""
        confidence = [
            f"{count} {what}"
            for count, what in (
                (results.flagged, "low-confidence findings flagged for review"),
                (results.withheld, "low-confidence findings withheld"),
            )
            if count
        ]
        summary = "; ".join(
            [
                f"{len(results.delivered)} results{kept}",
                *confidence,
                *results.notes,
                f"pipeline {timings.pipeline:.2f} s, model compute {timings.model_compute:.2f} s",
                *(
                    [f"{results.lane_wait:.2f} s waiting for another job's models"]
                    if results.lane_wait >= 0.01
                    else []
                ),
            ]
        )
        self._shelve(job_id, results.previews)
        review = ForReview(results.flagged, results.withheld)
        self._jobs.move(job_id, JobState.ENCODED, _now(), summary, attempt, timings, review)
        study = work.study_instance_uid
        forms = self._settings.destination_forms()
        self._deliverer.queue(results.delivered, study, _now(), job_id, forms=forms)
        self._deliverer.queue(results.kept, study, _now(), job_id, shadow=True)
        self._jobs.move(job_id, JobState.DELIVERING, _now(), None, attempt)
        LOG.info("job %d: %d results queued for delivery%s", job_id, len(results.delivered), kept)
        return JobState.DELIVERING

    def _settle(self, work: JobWork) -> float | None:
        """A job its study's sender's release started holds its results, still running (so
        a worker lost meanwhile leaves it to another), until the settle after the release has
        passed and what arrived by then is folded in; the seconds it waited, or None for any
        other job. Superseded where a late instance re-opened the study for a new version."""
        started = time.monotonic()
        folded_by = None  # how long what arrived within the settle may take to be folded in
        while (settle := self._jobs.settle(work.job_id)) is not None:
            if settle.superseded:
                raise Superseded(
                    "more instances of the study arrived within the settle after its sender's "
                    "release: the job of its new version delivers"
                )
            remaining = (settle.until - _now()).total_seconds()
            if remaining > 0:
                time.sleep(min(remaining, 1.0))
                continue
            if settle.pending:
                folded_by = folded_by or time.monotonic() + FOLD_WAIT
                if time.monotonic() < folded_by:
                    time.sleep(SETTLE_POLL)
                    continue
            return time.monotonic() - started
        return None

    def _shelve(self, job_id: int, previews: list[Rendered]) -> None:
        """Keep the job's findings preview for the dashboard. A preview that cannot be made
        costs the page its images, never the job its results."""
        try:
            self._previews.put(job_id, previews)
        except Exception:  # a bug or a full disk here must not hold back the results
            LOG.exception("job %d: its findings preview could not be stored", job_id)

    def _results(self, work: JobWork, backend: InferenceBackend) -> Results:
        """The checked results of every routed series, each through its rule's pipeline."""
        catalog = load_catalog(self._settings.inference.repository)
        states = pipeline_states(catalog, self._governance.current())
        spool = self._settings.spool.path
        paths_of = {
            series.facts.series_instance_uid: [spool / path for path in series.paths]
            for series in work.series
        }
        fits = _Applicability(catalog, paths_of)
        routing = route(
            [series.facts for series in work.series], self._rules, states, fits.declines
        )
        results = Results()
        for declined in routing.declined:
            results.notes.append(
                f"{declined.series.modality} series {declined.series.series_instance_uid} "
                f"not given to pipeline {declined.rule.pipeline}: outside its models' domain "
                f"({declined.reason})"
            )
        if not any(not matched.shadow for matched in routing.routes) and not routing.declined:
            modalities = sorted({series.facts.modality for series in work.series})
            raise NoRoute(f"no routing rule takes any series (modalities {modalities})")
        default = self._settings.results.segmentation_type
        forms = sorted(set(self._settings.destination_forms().values())) or [default]
        handling = self._settings.inference.low_confidence
        outlines = self._settings.results.ultrasound_outlines
        for matched in routing.routes:
            pipeline = catalog.pipelines[matched.rule.pipeline]
            made = results.kept if matched.shadow else results.delivered
            for series in matched.series:
                paths = paths_of[series.series_instance_uid]
                unchecked = fits.verdict(pipeline.name, series.series_instance_uid).unknown
                if pipeline.frames:
                    for path in paths:
                        with self._lane.section(backend) as laned:
                            frames = run_frames(pipeline, catalog, path, laned, handling, unchecked)
                        results.lane_wait += laned.waited
                        found = frames.findings
                        results.flagged += sum(1 for area in found.present if area.review)
                        results.withheld += len(found.withheld)
                        started = time.perf_counter()
                        made += ultrasound_results(
                            frames.source, found, self._equipment,
                            frames.frames if outlines else None,
                        )  # fmt: skip
                        title = _title(series, pipeline.name, matched.shadow)
                        results.previews.append(ultrasound_preview(title, frames.frames, found))
                        results.encoding += time.perf_counter() - started
                    continue
                with self._lane.section(backend) as laned:
                    volume = run_volume(pipeline, catalog, paths, laned, handling, unchecked)
                results.lane_wait += laned.waited
                results.flagged += sum(1 for segment in volume.findings.segments if segment.review)
                results.withheld += len(volume.findings.withheld)
                started = time.perf_counter()
                for kind in [default] if matched.shadow else forms:
                    made += ct_results(
                        volume.volume.headers, volume.findings, kind, self._equipment
                    )
                title = _title(series, pipeline.name, matched.shadow)
                results.previews.append(ct_preview(title, volume.volume.hu, volume.findings))
                results.encoding += time.perf_counter() - started
        return results


class _Applicability:
    """Whether each pipeline's models were made for each series, from the series' first
    header, read once."""

    def __init__(self, catalog: Catalog, paths_of: dict[str, list[Path]]) -> None:
        self._catalog = catalog
        self._paths_of = paths_of
        self._acquisitions: dict[str, Acquisition] = {}

    def declines(self, pipeline: str, series: SeriesFacts) -> str | None:
        found = self.verdict(pipeline, series.series_instance_uid)
        return "; ".join(found.outside) or None

    def verdict(self, pipeline: str, series_uid: str) -> Verdict:
        if series_uid not in self._acquisitions:
            header = dcmread(self._paths_of[series_uid][0], stop_before_pixels=True)
            self._acquisitions[series_uid] = acquisition_of(header)
        models = self._catalog.pipelines[pipeline].models
        contracts = (self._catalog.contract(model) for model in models)
        return verdict(contracts, self._acquisitions[series_uid])


def _title(series: SeriesFacts, pipeline: str, shadow: bool) -> str:
    described = f" ({series.series_description})" if series.series_description else ""
    return f"{series.modality} series{described}, pipeline {pipeline}" + (
        " in shadow: kept, never delivered" if shadow else ""
    )


def _now() -> datetime:
    return datetime.now(UTC)
