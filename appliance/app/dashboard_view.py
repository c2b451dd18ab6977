"""The dashboard's view of the appliance: the web edge's ports (`web.ports`) implemented on the
database, the spool, the inference backend and the destinations. The one place the web edge
meets the others; each port answers with domain rows and translates the ledgers' errors into
the dashboard's (NotFound, Conflict)."""

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from sqlalchemy import Engine

from appliance.app import health
from appliance.app.catalog import Governor, NotInCatalog
from appliance.app.delivery import Deliverer
from appliance.app.ingest import spool
from appliance.app.pipelines import make_backend
from appliance.app.previews import PreviewShelf
from appliance.config import Settings
from appliance.dicom.spool import Spool
from appliance.domain import monitoring
from appliance.domain.accounts import CredentialKind, LoginPolicy, LoginRefused, User
from appliance.domain.assembly import StudyState, UnknownStudy
from appliance.domain.jobs import InvalidJobTransition, UnknownJob
from appliance.domain.pipelines import ModelRef, State
from appliance.domain.preview import PreviewSection
from appliance.inference.backend import InferenceBackend
from appliance.queue.celery_app import make_app
from appliance.store.account_ledger import AccountLedger
from appliance.store.job_ledger import JobLedger
from appliance.store.queries import DashboardQueries
from appliance.store.study_ledger import StudyLedger
from appliance.web.app import create_app
from appliance.web.ports import Conflict, EventFilter, NotFound, Ports, SpoolDisk
from appliance.web.server import DashboardServer


class AccountsView:
    def __init__(self, engine: Engine, policy: LoginPolicy) -> None:
        self._accounts = AccountLedger(engine)
        self._policy = policy

    def login(self, username: str, password: str, host: str | None) -> str | LoginRefused:
        return self._accounts.login(username, password, _now(), self._policy, host)

    def user(self, secret: str, kind: CredentialKind) -> User | None:
        idle = self._policy.idle if kind is CredentialKind.SESSION else None
        return self._accounts.user(secret, kind, _now(), idle)

    def logout(self, secret: str) -> None:
        self._accounts.logout(secret, _now())


class MonitoringView:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        backend: InferenceBackend,
        listening: Callable[[], bool] | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._backend = backend
        self._listening = listening
        self._queries = DashboardQueries(engine)
        self._governor = Governor(settings.inference.repository, engine)
        self._queue = make_app(settings.queue)  # one app for every readiness probe
        self._spool: Spool = spool(settings)
        self._monitor = health.DestinationMonitor(Deliverer(settings.delivery, engine), settings)

    def flow(self) -> monitoring.Flow:
        return self._queries.flow(monitoring.recent(_now()))

    def stage_samples(self) -> list[monitoring.StageSamples]:
        return self._queries.stage_samples()

    def histograms(self, buckets: Sequence[float]) -> list[monitoring.StageHistogram]:
        return self._queries.histograms(buckets)

    def totals(self) -> monitoring.Totals:
        return self._queries.totals()

    def readiness(self) -> list[monitoring.Check]:
        checks = [
            health.database(self._engine),
            health.broker(self._queue),
            health.spool_disk(self._spool),
            health.inference(self._backend, self._governor.catalog(), self._governor.governance()),
        ]
        if self._listening is not None:
            accepting = self._listening()
            checks.append(
                monitoring.Check(
                    "listener", accepting, "accepting" if accepting else "not accepting"
                )
            )
        return checks

    def destinations(self) -> list[monitoring.Check]:
        return self._monitor.checks()

    def spool(self) -> SpoolDisk:
        return SpoolDisk(self._spool.usage().percent, self._spool.watermark_percent)


class JobsView:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._queries = DashboardQueries(engine)
        self._jobs = JobLedger(engine)
        self._previews = PreviewShelf(settings.delivery.outbox)

    def jobs(self, state: str | None) -> list[monitoring.JobRow]:
        return self._queries.jobs(state)

    def job(self, job_id: int) -> monitoring.JobDetail | None:
        return self._queries.job(job_id)

    def preview(self, job_id: int) -> list[PreviewSection]:
        return self._previews.sections(job_id)

    def preview_image(self, job_id: int, number: int) -> bytes | None:
        return self._previews.image(job_id, number)

    def retry(self, job_id: int, actor: str) -> None:
        _acting(lambda: self._jobs.retry(job_id, _now(), actor))

    def cancel(self, job_id: int, actor: str) -> None:
        _acting(lambda: self._jobs.cancel(job_id, _now(), actor))

    def resend(self, job_id: int, actor: str) -> None:
        _acting(lambda: self._jobs.resend(job_id, _now(), actor))


class StudiesView:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._studies = StudyLedger(engine, settings.completion_policy())
        self._queries = DashboardQueries(engine)

    def studies(self, state: str | None) -> list[monitoring.StudySummary]:
        try:
            wanted = StudyState(state) if state else None
        except ValueError as exc:
            raise NotFound(f"no study state {state!r}") from exc
        return self._studies.list_studies(limit=200, state=wanted)

    def complete_study(self, study_instance_uid: str, actor: str) -> None:
        try:
            self._studies.force_complete(study_instance_uid, _now(), actor)
        except UnknownStudy as exc:
            raise NotFound(f"no study {exc}") from exc
        except ValueError as exc:
            raise Conflict(str(exc)) from exc

    def reveal(self, study_instance_uid: str, actor: str, host: str | None) -> dict[str, str]:
        shown = self._queries.patient_identifiers(study_instance_uid, _now(), actor, host)
        if not shown:
            raise NotFound(f"no study {study_instance_uid}")
        return shown


class AuditView:
    def __init__(self, engine: Engine) -> None:
        self._queries = DashboardQueries(engine)

    def events(self, where: EventFilter, limit: int) -> list[monitoring.EventRow]:
        return self._queries.events(
            where.event_type, where.actor, where.study_instance_uid, where.since, where.until,
            limit, where.before_id,
        )  # fmt: skip

    def exported(self, events: int, actor: str) -> None:
        self._queries.record_export(events, _now(), actor)


class ModelsView:
    """The catalog and its governance; a change of state is an operator's, audited."""

    def __init__(self, settings: Settings, engine: Engine, backend: InferenceBackend) -> None:
        self._governor = Governor(settings.inference.repository, engine)
        self._backend = backend

    def models(self) -> list[monitoring.ModelRow]:
        return self._governor.models(self._backend)

    def pipelines(self) -> list[monitoring.PipelineRow]:
        return self._governor.pipelines()

    def set_pipeline_state(self, name: str, state: State, actor: str) -> None:
        try:
            self._governor.set_pipeline(name, state, actor)
        except NotInCatalog as exc:
            raise NotFound(str(exc)) from exc

    def set_model_state(self, model: ModelRef, state: State, actor: str) -> None:
        try:
            self._governor.set_model(model, state, actor)
        except NotInCatalog as exc:
            raise NotFound(str(exc)) from exc


def dashboard_ports(
    settings: Settings,
    engine: Engine,
    backend: InferenceBackend | None = None,
    listening: Callable[[], bool] | None = None,
) -> Ports:
    """Every port of the dashboard, on `engine` and the configured inference backend;
    `listening` says whether this process's DICOM listener accepts, where it runs one."""
    backend = backend or make_backend(settings.inference)
    return Ports(
        accounts=AccountsView(engine, settings.dashboard.login_policy()),
        monitoring=MonitoringView(settings, engine, backend, listening),
        jobs=JobsView(settings, engine),
        studies=StudiesView(settings, engine),
        audit=AuditView(engine),
        models=ModelsView(settings, engine, backend),
    )


def _acting(action: Callable[[], object]) -> None:
    try:
        action()
    except UnknownJob as exc:
        raise NotFound(str(exc)) from exc
    except InvalidJobTransition as exc:
        raise Conflict(str(exc)) from exc


def _now() -> datetime:
    return datetime.now(UTC)


def dashboard_server(
    settings: Settings, engine: Engine, listening: Callable[[], bool] | None = None
) -> DashboardServer:
    """The dashboard's web server on `dashboard.host:dashboard.port`, not yet started."""
    app = create_app(settings.dashboard, dashboard_ports(settings, engine, listening=listening))
    dashboard = settings.dashboard
    return DashboardServer(app, dashboard.host, dashboard.port, dashboard.trusted_proxies)
