"""Models: the catalog's model versions and pipelines with their states, contracts, readiness
and cards; operators enable, disable or shadow a pipeline or a model version (audited)."""

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi import Path as PathParameter
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from appliance.domain.accounts import Role
from appliance.domain.pipelines import NAME, ModelRef, State
from appliance.web.dependencies import Operator, Viewer, Wired, page

router = APIRouter()
Name = Annotated[str, PathParameter(pattern=NAME)]
Version = Annotated[int, PathParameter(ge=1, le=2**31 - 1)]
NewState = Annotated[State, Form()]


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, user: Viewer, ports: Wired) -> HTMLResponse:
    return page(request, "models.html", user, models=ports.models.models(),
                pipelines=ports.models.pipelines(), states=list(State),
                may_act=user.may(Role.OPERATOR))  # fmt: skip


@router.post("/pipelines/{name}/state")
def pipeline_state(user: Operator, ports: Wired, name: Name, state: NewState) -> Response:
    ports.models.set_pipeline_state(name, state, user.username)
    return RedirectResponse("/models", status_code=303)


@router.post("/models/{name}/{version}/state")
def model_state(
    user: Operator, ports: Wired, name: Name, version: Version, state: NewState
) -> Response:
    ports.models.set_model_state(ModelRef(name, version), state, user.username)
    return RedirectResponse("/models", status_code=303)
