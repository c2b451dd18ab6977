"""Prometheus metrics, read from the database (through `ports.Monitoring`) at scrape time.

The database is where every role (listener, sweeper, workers, on one host or many) records
what it did, so one scrape of the dashboard sees the whole appliance, and a restarted process
loses no count. Histograms are cumulative over every finished job.
"""

from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from appliance.web.dependencies import Viewer
from appliance.web.ports import Monitoring

# Seconds: from a cine's few seconds to a large CT's minutes on a busy CPU box.
BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class DatabaseCollector(Collector):
    def __init__(self, monitoring: Monitoring) -> None:
        self._monitoring = monitoring

    def collect(self) -> Iterator[Metric]:
        flow = self._monitoring.flow()
        totals = self._monitoring.totals()
        yield CounterMetricFamily(
            "appliance_studies_received", "Studies received.", value=flow.studies
        )
        yield CounterMetricFamily(
            "appliance_instances_received", "Instances stored.", value=totals.instances
        )
        yield CounterMetricFamily(
            "appliance_instance_bytes_received", "Bytes stored.", value=totals.instance_bytes
        )
        yield CounterMetricFamily(
            "appliance_results_delivered", "Result objects stored at a destination.",
            value=totals.results_delivered,
        )  # fmt: skip
        review = CounterMetricFamily(
            "appliance_findings_for_review",
            "Findings of low confidence: delivered flagged for review, or withheld.",
            labels=["handling"],
        )
        review.add_metric(["flagged"], totals.findings_flagged)
        review.add_metric(["withheld"], totals.findings_withheld)
        yield review
        failures = CounterMetricFamily(
            "appliance_failures", "Audited failures by event type.", labels=["event"]
        )
        for event, count in sorted(totals.failures_by_event.items()):
            failures.add_metric([event], count)
        yield failures
        jobs = GaugeMetricFamily("appliance_jobs", "Jobs by state.", labels=["state"])
        for state, count in flow.jobs_by_state.items():
            jobs.add_metric([state], count)
        yield jobs
        depth = GaugeMetricFamily(
            "appliance_queue_depth", "Jobs waiting for a worker, by priority.", labels=["priority"]
        )
        queued = flow.jobs_by_state.get("queued", 0)
        depth.add_metric(["urgent"], flow.urgent_waiting)
        depth.add_metric(["normal"], queued - flow.urgent_waiting)
        yield depth
        deliveries = GaugeMetricFamily(
            "appliance_deliveries", "Result deliveries by state.", labels=["state"]
        )
        for state in ("pending", "delivered", "dead_letter"):
            deliveries.add_metric([state], flow.deliveries_by_state.get(state, 0))
        yield deliveries
        up = GaugeMetricFamily(
            "appliance_destination_up", "1 when the destination answered its last check.",
            labels=["destination"],
        )  # fmt: skip
        for check in self._monitoring.destinations():
            up.add_metric([check.name], 1.0 if check.ok else 0.0)
        yield up
        spool = self._monitoring.spool()
        yield GaugeMetricFamily(
            "appliance_spool_disk_used_ratio", "Used share of the spool's disk.",
            value=spool.used_percent / 100,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "appliance_spool_disk_watermark_ratio", "Above this share the listener refuses.",
            value=spool.watermark_percent / 100,
        )  # fmt: skip
        stages = HistogramMetricFamily(
            "appliance_stage_seconds",
            "Seconds per stage of each job: quiet, dispatch, pipeline, inference (per model), "
            "encoding, settle (results held after a release), delivery, and total: last "
            "instance received to last result stored.",
            labels=["stage", "model"],
        )
        for histogram in self._monitoring.histograms(BUCKETS):
            buckets = [
                (f"{bound:g}", count)
                for bound, count in zip(BUCKETS, histogram.cumulative, strict=True)
            ]
            buckets.append(("+Inf", histogram.count))
            stages.add_metric(
                [histogram.stage.value, histogram.model], buckets, sum_value=histogram.total
            )
        yield stages


def registry(collector: DatabaseCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


router = APIRouter()


@router.get("/metrics")
def metrics(request: Request, user: Viewer) -> Response:
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
