"""The ops dashboard: pages for people, a JSON API and /metrics for machines, health checks.

Every route but /healthz, /readyz and the login page needs a session or an API token
(`web.auth`). Viewers watch; operators act on studies and jobs; admins may also reveal a
study's patient identifiers, which is audited. Pages show UIDs, AE titles and states, never
patient identifiers unless revealed. The routes live in `web.routers`, one module per area;
this module assembles them with what every answer shares.
"""

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from appliance import __version__
from appliance.config import DashboardSettings
from appliance.web import metrics
from appliance.web.auth import Forbidden, NotSignedIn, OutOfScope
from appliance.web.dependencies import Viewer, page
from appliance.web.limits import BodyLimit
from appliance.web.ports import Conflict, NotFound, Ports
from appliance.web.routers import audit, health, jobs, models, overview, session, studies

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
# Reached by address, not by name: kubelet probes and Prometheus scrapes send the pod's IP as
# Host. None of them answers a browser anything a rebinding page could use.
ANY_HOST_PATHS = ("/healthz", "/readyz", "/metrics")
Endpoint = Callable[[Request], Awaitable[Response]]


async def guard(request: Request, call_next: Endpoint) -> Response:
    """Refuse a Host not on the allow-list (DNS rebinding), a cross-site form post (the
    session cookie is SameSite=Strict already, this holds for older browsers too) and a NUL
    byte in the path or query (no database column takes one), and set the security headers
    on every answer."""
    origin = request.headers.get("origin")
    cross_site = origin is not None and urlsplit(origin).netloc != request.headers.get("host")
    target = request.scope.get("raw_path", b"") + b"?" + request.scope.get("query_string", b"")
    settings: DashboardSettings = request.app.state.settings
    if request.url.path not in ANY_HOST_PATHS and not _host_allowed(
        request.headers.get("host", ""), settings
    ):
        answer: Response = JSONResponse({"detail": "host not allowed"}, 400)
    elif request.method not in SAFE_METHODS and cross_site:
        answer = JSONResponse({"detail": "cross-site request refused"}, 403)
    elif b"%00" in target or b"\x00" in target:
        answer = JSONResponse({"detail": "NUL byte in the request"}, 400)
    else:
        answer = await call_next(request)
    answer.headers.update(SECURITY_HEADERS)
    return answer


def _host_allowed(host: str, settings: DashboardSettings) -> bool:
    """Whether the Host header (its port aside) names the dashboard: the allow-list, or the
    address it listens on."""
    allowed = [*settings.allowed_hosts, settings.host]
    if "*" in allowed:
        return True
    name = host[1 : host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    return name.lower() in (entry.lower() for entry in allowed)


def not_signed_in(request: Request, exc: Exception) -> Response:
    if isinstance(exc, NotSignedIn) and exc.machine:
        return JSONResponse(
            {"detail": "authentication required"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    return RedirectResponse("/login", status_code=303)


def forbidden(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Forbidden)
    refused = page(request, "refused.html", exc.user, needed=exc.needed.label)
    refused.status_code = 403
    return refused


def out_of_scope(request: Request, exc: Exception) -> Response:
    return JSONResponse({"detail": str(exc)}, status_code=403)


def not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"detail": str(exc)}, status_code=404)


def conflict(request: Request, exc: Exception) -> Response:
    return JSONResponse({"detail": str(exc)}, status_code=409)


def create_app(settings: DashboardSettings, ports: Ports) -> FastAPI:
    app = FastAPI(
        title="Appliance dashboard",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, behind a login like every route but health
    )
    app.state.ports = ports
    app.state.settings = settings
    app.state.templates = Jinja2Templates(directory=TEMPLATES)
    app.state.metrics = metrics.registry(metrics.DatabaseCollector(ports.monitoring))
    app.middleware("http")(guard)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.add_exception_handler(NotSignedIn, not_signed_in)
    app.add_exception_handler(OutOfScope, out_of_scope)
    app.add_exception_handler(Forbidden, forbidden)
    app.add_exception_handler(NotFound, not_found)
    app.add_exception_handler(Conflict, conflict)
    for area in (health, session, overview, jobs, studies, models, audit, metrics):
        app.include_router(area.router)

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(user: Viewer) -> dict[str, Any]:
        return app.openapi()

    return app
