"""Studies: the list; operators complete one now, admins reveal its patient identifiers (the
one place they are shown, audited under the admin's name)."""

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from appliance.domain.accounts import Role
from appliance.domain.assembly import StudyState
from appliance.web.dependencies import Admin, Operator, Viewer, Wired, page

router = APIRouter()


@router.get("/studies", response_class=HTMLResponse)
def studies_page(
    request: Request, user: Viewer, ports: Wired, state: str | None = None
) -> HTMLResponse:
    return page(request, "studies.html", user, studies=ports.studies.studies(state),
                state=state or "", states=[s.value for s in StudyState],
                may_act=user.may(Role.OPERATOR), may_reveal=user.may(Role.ADMIN))  # fmt: skip


@router.post("/studies/{study_uid}/complete")
def complete(user: Operator, ports: Wired, study_uid: str) -> Response:
    ports.studies.complete_study(study_uid, user.username)
    return RedirectResponse("/studies", status_code=303)


@router.post("/studies/{study_uid}/reveal", response_class=HTMLResponse)
def reveal(request: Request, user: Admin, ports: Wired, study_uid: str) -> HTMLResponse:
    host = request.client.host if request.client else None
    shown = ports.studies.reveal(study_uid, user.username, host)
    return page(request, "reveal.html", user, study_uid=study_uid, shown=shown)
