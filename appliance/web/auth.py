"""Who is asking: a login session (cookie) or an API token (Authorization: Bearer), and what
their role lets them do. Every route but the health checks and the login page depends on this.

Pages answer a missing login with a redirect to the login page; the JSON API and /metrics
answer 401. A signed-in user whose role is too low gets 403 and the refusal is logged.
"""

import logging
from collections.abc import Callable

from fastapi import Depends, Request

from appliance.domain.accounts import CredentialKind, Role, Scope, User
from appliance.web.ports import Accounts

LOG = logging.getLogger(__name__)
COOKIE = "appliance_session"
MACHINE_PATHS = ("/api/", "/metrics")


class NotSignedIn(Exception):
    def __init__(self, machine: bool) -> None:
        super().__init__("sign in first")
        self.machine = machine


class OutOfScope(Exception):
    """A credential used beyond its scope (a metrics-only token anywhere but /metrics)."""


class Forbidden(Exception):
    def __init__(self, user: User, needed: Role) -> None:
        super().__init__(
            f"{user.username} ({user.role.label}) may not do this: {needed.label} needed"
        )
        self.user = user
        self.needed = needed


def is_machine_path(path: str) -> bool:
    return path.startswith(MACHINE_PATHS)


def current_user(request: Request) -> User:
    accounts: Accounts = request.app.state.ports.accounts
    header = request.headers.get("authorization", "")
    user = None
    if header.lower().startswith("bearer "):
        user = accounts.user(header[7:].strip(), CredentialKind.TOKEN)
    elif cookie := request.cookies.get(COOKIE):
        user = accounts.user(cookie, CredentialKind.SESSION)
    if user is None:
        raise NotSignedIn(is_machine_path(request.url.path))
    if user.scope is Scope.METRICS and request.url.path != "/metrics":
        LOG.warning(
            "refused: a metrics-only token of %s used on %s", user.username, request.url.path
        )
        raise OutOfScope(f"this token opens /metrics only, not {request.url.path}")
    return user


def requires(role: Role) -> Callable[[User], User]:
    """A dependency that lets through users with at least `role`."""

    def check(user: User = Depends(current_user)) -> User:  # noqa: B008 - FastAPI's idiom
        if not user.may(role):
            LOG.warning("refused: %s (%s) needs %s", user.username, user.role.label, role.label)
            raise Forbidden(user, role)
        return user

    return check


viewer = requires(Role.VIEWER)
operator = requires(Role.OPERATOR)
admin = requires(Role.ADMIN)
