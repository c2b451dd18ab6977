"""Models: each model of the repository with its contract, readiness and card."""

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from appliance.web.dependencies import Viewer, Wired, page

router = APIRouter()


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, user: Viewer, ports: Wired) -> HTMLResponse:
    return page(request, "models.html", user, models=ports.models.models())
