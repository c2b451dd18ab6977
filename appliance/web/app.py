"""The ops dashboard: pages for people, a JSON API and /metrics for machines, health checks.

Every route but /healthz, /readyz and the login page needs a session or an API token
(`web.auth`). Viewers watch; operators act on studies and jobs; admins may also reveal a
study's patient identifiers, which is audited. Pages show UIDs, AE titles and states, never
patient identifiers unless revealed.
"""

import csv
import io
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi import Path as PathParameter
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from appliance import __version__
from appliance.config import DashboardSettings
from appliance.domain.accounts import Role, User
from appliance.domain.assembly import StudyState
from appliance.domain.audit import AuditEventType
from appliance.domain.dashboard import percentile
from appliance.domain.jobs import JobState
from appliance.web.auth import COOKIE, Forbidden, NotSignedIn, admin, operator, viewer
from appliance.web.metrics import DatabaseCollector, registry
from appliance.web.ports import Appliance, Conflict, EventFilter, NotFound

TEMPLATES = Path(__file__).parent / "templates"
# No scripts at all, styles inline only, nothing framed, forms post back here only.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: browsers then send the real Origin on our own form posts
    # (no-referrer makes it "null", which the cross-site check refuses).
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# Printable, as an account name always is: no control byte reaches the database or the log.
ACCOUNT_NAME = r"^[^\x00-\x1f\x7f]+$"
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
Endpoint = Callable[[Request], Awaitable[Response]]
Viewer = Annotated[User, Depends(viewer)]
Operator = Annotated[User, Depends(operator)]
Admin = Annotated[User, Depends(admin)]
# A job number the database can hold (BIGINT); anything else is a 422, not a database error.
JobId = Annotated[int, PathParameter(ge=1, le=2**63 - 1)]


def spreadsheet_safe(cell: str) -> str:
    """A cell a spreadsheet shows as text, never runs as a formula (CSV injection): actors and
    details can hold what a stranger typed, such as the user name of a failed login."""
    return "'" + cell if cell.startswith(FORMULA_PREFIXES) else cell


def create_app(settings: DashboardSettings, appliance: Appliance) -> FastAPI:
    app = FastAPI(
        title="Appliance dashboard",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, behind a login like every route but health
    )
    app.state.appliance = appliance
    metrics = registry(DatabaseCollector(appliance))
    templates = Jinja2Templates(directory=TEMPLATES)
    lifetime_seconds = int(settings.session_hours * 3600)

    @app.middleware("http")
    async def guard(request: Request, call_next: Endpoint) -> Response:
        """Refuse a cross-site form post (the session cookie is SameSite=Strict already, this
        holds for older browsers too) and a NUL byte in the path or query (no database column
        takes one), and set the security headers on every answer."""
        origin = request.headers.get("origin")
        cross_site = origin is not None and urlsplit(origin).netloc != request.headers.get("host")
        target = request.scope.get("raw_path", b"") + b"?" + request.scope.get("query_string", b"")
        if request.method not in SAFE_METHODS and cross_site:
            answer: Response = JSONResponse({"detail": "cross-site request refused"}, 403)
        elif b"%00" in target or b"\x00" in target:
            answer = JSONResponse({"detail": "NUL byte in the request"}, 400)
        else:
            answer = await call_next(request)
        answer.headers.update(SECURITY_HEADERS)
        return answer

    def page(request: Request, name: str, user: User | None, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(
            request, name, {"user": user, "version": __version__, **context}
        )

    @app.exception_handler(NotSignedIn)
    def not_signed_in(request: Request, exc: NotSignedIn) -> Response:
        if exc.machine:
            return JSONResponse(
                {"detail": "authentication required"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(Forbidden)
    def forbidden(request: Request, exc: Forbidden) -> Response:
        refused = page(request, "refused.html", exc.user, needed=exc.needed.label)
        refused.status_code = 403
        return refused

    # Health: no login, and nothing in them a stranger could use.
    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        checks = appliance.readiness()
        ready = all(check.ok for check in checks)
        return JSONResponse(
            {"ready": ready, "checks": {c.name: {"ok": c.ok} for c in checks}},
            status_code=200 if ready else 503,
        )

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(user: Viewer) -> dict[str, Any]:
        return app.openapi()

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> HTMLResponse:
        return page(request, "login.html", None, error=None)

    @app.post("/login")
    def login(
        request: Request,
        username: Annotated[str, Form(max_length=64, pattern=ACCOUNT_NAME)],
        password: Annotated[str, Form(max_length=1024)],
    ) -> Response:
        host = request.client.host if request.client else None
        secret = appliance.login(username, password, host)
        if secret is None:
            response = page(request, "login.html", None, error="Wrong name or password.")
            response.status_code = 401
            return response
        signed_in = RedirectResponse("/", status_code=303)
        signed_in.set_cookie(
            COOKIE,
            secret,
            max_age=lifetime_seconds,
            httponly=True,
            samesite="strict",
            secure=settings.secure_cookies,
        )
        return signed_in

    @app.post("/logout")
    def logout(request: Request, user: Viewer) -> Response:
        appliance.logout(request.cookies.get(COOKIE, ""))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    def overview_data() -> dict[str, Any]:
        flow = appliance.flow()
        return {
            "flow": flow,
            "latency": {
                sample.label: {f"p{q}": percentile(sample.seconds, q) for q in (50, 90, 99)}
                | {"n": len(sample.seconds)}
                for sample in appliance.stage_samples()
            },
            "destinations": [
                {"name": c.name, "up": c.ok, "detail": c.detail} for c in appliance.destinations()
            ],
            "spool": appliance.spool(),
        }

    @app.get("/", response_class=HTMLResponse)
    def overview(request: Request, user: Viewer) -> HTMLResponse:
        data = overview_data()
        most = max(data["flow"].jobs_by_state.values(), default=0)
        return page(request, "overview.html", user, **data, most=max(most, 1), refresh=5)

    @app.get("/api/overview")
    def api_overview(user: Viewer) -> dict[str, Any]:
        data = overview_data()
        flow = data["flow"]
        return {
            "studies_24h": flow.studies_since,
            "instances_24h": flow.instances_since,
            "jobs_by_state": flow.jobs_by_state,
            "urgent_waiting": flow.urgent_waiting,
            "failure_rate_24h": flow.failure_rate,
            "deliveries_by_state": flow.deliveries_by_state,
            "latency_seconds": data["latency"],
            "destinations": data["destinations"],
            "spool_disk_used_percent": data["spool"].used_percent,
        }

    @app.get("/jobs", response_class=HTMLResponse)
    def jobs_page(request: Request, user: Viewer, state: str | None = None) -> HTMLResponse:
        rows = appliance.jobs(state or None)
        return page(request, "jobs.html", user, jobs=rows, state=state or "",
                    states=list(JobState), refresh=5)  # fmt: skip

    @app.get("/api/jobs")
    def api_jobs(user: Viewer, state: str | None = None) -> list[dict[str, Any]]:
        return [_jsonable(row.__dict__) for row in appliance.jobs(state or None)]

    def job_or_404(job_id: int) -> Any:
        found = appliance.job(job_id)
        if found is None:
            raise HTTPException(404, f"no job {job_id}")
        return found

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, user: Viewer, job_id: JobId) -> HTMLResponse:
        job, deliveries, events = job_or_404(job_id)
        return page(request, "job.html", user, job=job, deliveries=deliveries, events=events,
                    may_act=user.may(Role.OPERATOR))  # fmt: skip

    @app.get("/api/jobs/{job_id}")
    def api_job(user: Viewer, job_id: JobId) -> dict[str, Any]:
        job, deliveries, events = job_or_404(job_id)
        return {
            "job": _jsonable(job.__dict__),
            "deliveries": [_jsonable(d.__dict__) for d in deliveries],
            "events": [_jsonable(e.__dict__) for e in events],
        }

    @app.exception_handler(NotFound)
    def not_found(request: Request, exc: NotFound) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(Conflict)
    def conflict(request: Request, exc: Conflict) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.post("/jobs/{job_id}/retry")
    def retry(user: Operator, job_id: JobId) -> Response:
        appliance.retry(job_id, user.username)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    @app.post("/jobs/{job_id}/cancel")
    def cancel(user: Operator, job_id: JobId) -> Response:
        appliance.cancel(job_id, user.username)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    @app.post("/jobs/{job_id}/resend")
    def resend(user: Operator, job_id: JobId) -> Response:
        appliance.resend(job_id, user.username)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    @app.get("/studies", response_class=HTMLResponse)
    def studies_page(request: Request, user: Viewer, state: str | None = None) -> HTMLResponse:
        return page(request, "studies.html", user, studies=appliance.studies(state),
                    state=state or "", states=[s.value for s in StudyState],
                    may_act=user.may(Role.OPERATOR), may_reveal=user.may(Role.ADMIN))  # fmt: skip

    @app.post("/studies/{study_uid}/complete")
    def complete(user: Operator, study_uid: str) -> Response:
        appliance.complete_study(study_uid, user.username)
        return RedirectResponse("/studies", status_code=303)

    @app.post("/studies/{study_uid}/reveal", response_class=HTMLResponse)
    def reveal(request: Request, user: Admin, study_uid: str) -> HTMLResponse:
        host = request.client.host if request.client else None
        shown = appliance.reveal(study_uid, user.username, host)
        return page(request, "reveal.html", user, study_uid=study_uid, shown=shown)

    @app.get("/models", response_class=HTMLResponse)
    def models_page(request: Request, user: Viewer) -> HTMLResponse:
        return page(request, "models.html", user, models=appliance.models())

    def audit_rows(request: Request) -> list[Any]:
        params = request.query_params
        where = EventFilter(
            event_type=params.get("event_type") or None,
            actor=params.get("actor") or None,
            study_instance_uid=params.get("study") or None,
            since=_date(params.get("since")),
            until=_date(params.get("until")),
        )
        return appliance.events(where, limit=1000)

    @app.get("/audit", response_class=HTMLResponse)
    def audit_page(request: Request, user: Viewer) -> HTMLResponse:
        return page(request, "audit.html", user, events=audit_rows(request),
                    query=dict(request.query_params), types=list(AuditEventType))  # fmt: skip

    @app.get("/audit.csv")
    def audit_csv(request: Request, user: Viewer) -> Response:
        rows = audit_rows(request)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["occurred_at", "event_type", "outcome", "actor", "study_instance_uid",
                         "job_id", "detail"])  # fmt: skip
        for e in rows:
            writer.writerow([
                e.occurred_at.isoformat(), e.event_type, e.outcome, spreadsheet_safe(e.actor),
                e.study_instance_uid or "", e.job_id or "", spreadsheet_safe(e.detail or ""),
            ])  # fmt: skip
        appliance.exported(len(rows), user.username)
        return Response(
            out.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
        )

    @app.get("/metrics")
    def metrics_endpoint(user: Viewer) -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    return app


def _date(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise HTTPException(422, f"not a date: {text!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}
