"""Jobs: the list and one job with its results and audit trail; operators retry, cancel and
re-send, each audited under their name."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from appliance.domain.accounts import Role
from appliance.domain.jobs import JobState
from appliance.domain.monitoring import JobDetail, JobRow
from appliance.web.dependencies import JobId, Operator, Viewer, Wired, page
from appliance.web.ports import Ports

router = APIRouter()


def _job_or_404(ports: Ports, job_id: int) -> JobDetail:
    found = ports.jobs.job(job_id)
    if found is None:
        raise HTTPException(404, f"no job {job_id}")
    return found


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request, user: Viewer, ports: Wired, state: str | None = None
) -> HTMLResponse:
    rows = ports.jobs.jobs(state or None)
    return page(request, "jobs.html", user, jobs=rows, state=state or "",
                states=list(JobState), refresh=5)  # fmt: skip


@router.get("/api/jobs")
def api_jobs(user: Viewer, ports: Wired, state: str | None = None) -> list[JobRow]:
    return ports.jobs.jobs(state or None)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, user: Viewer, ports: Wired, job_id: JobId) -> HTMLResponse:
    detail = _job_or_404(ports, job_id)
    return page(request, "job.html", user, job=detail.job, deliveries=detail.deliveries,
                events=detail.events, may_act=user.may(Role.OPERATOR),
                preview=ports.jobs.preview(job_id))  # fmt: skip


@router.get("/jobs/{job_id}/preview/{number}.png")
def preview_image(
    user: Viewer, ports: Wired, job_id: JobId, number: Annotated[int, Path(ge=0, le=999)]
) -> Response:
    """A key image of the job's findings preview (patient pixels: never cached)."""
    png = ports.jobs.preview_image(job_id, number)
    if png is None:
        raise HTTPException(404, f"no preview image {number} of job {job_id}")
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/api/jobs/{job_id}")
def api_job(user: Viewer, ports: Wired, job_id: JobId) -> JobDetail:
    return _job_or_404(ports, job_id)


@router.post("/jobs/{job_id}/retry")
def retry(user: Operator, ports: Wired, job_id: JobId) -> Response:
    ports.jobs.retry(job_id, user.username)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.post("/jobs/{job_id}/cancel")
def cancel(user: Operator, ports: Wired, job_id: JobId) -> Response:
    ports.jobs.cancel(job_id, user.username)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.post("/jobs/{job_id}/resend")
def resend(user: Operator, ports: Wired, job_id: JobId) -> Response:
    ports.jobs.resend(job_id, user.username)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)
