"""Liveness and readiness: no login, and nothing in them a stranger could use."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from appliance.web.dependencies import Wired
from appliance.web.schemas import CheckState, Liveness, Readiness

router = APIRouter()


@router.get("/healthz")
def healthz() -> Liveness:
    return Liveness(status="alive")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(ports: Wired) -> JSONResponse:
    checks = ports.monitoring.readiness()
    answer = Readiness(
        ready=all(check.ok for check in checks),
        checks={check.name: CheckState(ok=check.ok) for check in checks},
    )
    return JSONResponse(answer.model_dump(), status_code=200 if answer.ready else 503)
