"""The overview: flow of the last day, latency per stage, destinations, the spool's disk."""

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from appliance.domain.monitoring import Flow, percentile
from appliance.web.dependencies import Viewer, Wired, page
from appliance.web.ports import Monitoring, SpoolDisk
from appliance.web.schemas import Destination, Latency, Overview

router = APIRouter()


def overview(flow: Flow, spool: SpoolDisk, monitoring: Monitoring) -> Overview:
    return Overview(
        studies_24h=flow.studies_since,
        instances_24h=flow.instances_since,
        jobs_by_state=flow.jobs_by_state,
        urgent_waiting=flow.urgent_waiting,
        failure_rate_24h=flow.failure_rate,
        deliveries_by_state=flow.deliveries_by_state,
        latency_seconds={
            sample.label: Latency(
                p50=percentile(sample.seconds, 50),
                p90=percentile(sample.seconds, 90),
                p99=percentile(sample.seconds, 99),
                n=len(sample.seconds),
            )
            for sample in monitoring.stage_samples()
        },
        destinations=[
            Destination(name=check.name, up=check.ok, detail=check.detail)
            for check in monitoring.destinations()
        ],
        spool_disk_used_percent=spool.used_percent,
    )


@router.get("/", response_class=HTMLResponse)
def overview_page(request: Request, user: Viewer, ports: Wired) -> HTMLResponse:
    flow, spool = ports.monitoring.flow(), ports.monitoring.spool()
    data = overview(flow, spool, ports.monitoring)
    return page(
        request, "overview.html", user, flow=flow, latency=data.latency_seconds,
        destinations=data.destinations, spool=spool,
        most=max(max(flow.jobs_by_state.values(), default=0), 1), refresh=5,
    )  # fmt: skip


@router.get("/api/overview")
def api_overview(user: Viewer, ports: Wired) -> Overview:
    return overview(ports.monitoring.flow(), ports.monitoring.spool(), ports.monitoring)
