"""What a route may ask for: the appliance's ports, the signed-in user of a role, a job number
the database can hold, and a page rendered with the context every page gets."""

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi import Path as PathParameter
from fastapi.responses import HTMLResponse

from appliance import __version__
from appliance.domain.accounts import User
from appliance.web.auth import admin, operator, viewer
from appliance.web.ports import Ports


def ports(request: Request) -> Ports:
    wired: Ports = request.app.state.ports
    return wired


def page(request: Request, name: str, user: User | None, **context: Any) -> HTMLResponse:
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, name, {"user": user, "version": __version__, **context}
    )


Wired = Annotated[Ports, Depends(ports)]
Viewer = Annotated[User, Depends(viewer)]
Operator = Annotated[User, Depends(operator)]
Admin = Annotated[User, Depends(admin)]
# A job number the database can hold (BIGINT); anything else is a 422, not a database error.
JobId = Annotated[int, PathParameter(ge=1, le=2**63 - 1)]
