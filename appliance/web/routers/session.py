"""Signing in and out. A session is a random secret in an HttpOnly, SameSite=Strict cookie;
the database keeps only its digest (`store.account_ledger`)."""

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from appliance.config import DashboardSettings
from appliance.domain.accounts import LoginRefused
from appliance.web.auth import COOKIE
from appliance.web.dependencies import Viewer, Wired, page

# Printable, as an account name always is: no control byte reaches the database or the log.
ACCOUNT_NAME = r"^[^\x00-\x1f\x7f]+$"

router = APIRouter()


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    return page(request, "login.html", None, error=None)


@router.post("/login")
def login(
    request: Request,
    ports: Wired,
    username: Annotated[str, Form(max_length=64, pattern=ACCOUNT_NAME)],
    password: Annotated[str, Form(max_length=1024)],
) -> Response:
    host = request.client.host if request.client else None
    secret = ports.accounts.login(username, password, host)
    if secret is LoginRefused.LOCKED:
        response = page(
            request, "login.html", None, error="Too many failed logins: try again later."
        )
        response.status_code = 429
        response.headers["Retry-After"] = str(int(settings(request).login_lockout_minutes * 60))
        return response
    if isinstance(secret, LoginRefused):
        response = page(request, "login.html", None, error="Wrong name or password.")
        response.status_code = 401
        return response
    signed_in = RedirectResponse("/", status_code=303)
    signed_in.set_cookie(
        COOKIE,
        secret,
        max_age=int(settings(request).session_hours * 3600),
        httponly=True,
        samesite="strict",
        secure=settings(request).secure_cookies,
    )
    return signed_in


def settings(request: Request) -> DashboardSettings:
    return request.app.state.settings  # type: ignore[no-any-return]


@router.post("/logout")
def logout(request: Request, user: Viewer, ports: Wired) -> Response:
    ports.accounts.logout(request.cookies.get(COOKIE, ""))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response
