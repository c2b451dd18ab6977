"""Generate the appliance's Grafana dashboard (appliance.json) from the panel list below.

    .venv/bin/python ops/grafana/generate.py      # rewrites ops/grafana/appliance.json

The tests check that appliance.json is what this writes, that every panel query parses (promtool,
as recording rules) and that every metric it names is one the appliance exports.
"""

import json
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).with_name("appliance.json")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def quantile(q: float, stage: str, by: str = "le", window: str = "1h") -> str:
    selector = f'appliance_stage_seconds_bucket{{stage="{stage}"}}'
    return f"histogram_quantile({q}, sum by ({by}) (rate({selector}[{window}])))"


# (title, kind, unit, [(query, legend)], width)
PANELS: list[tuple[str, str, str, list[tuple[str, str]], int]] = [
    ("Studies received per hour", "stat", "short",
     [("sum(increase(appliance_studies_received_total[1h]))", "studies")], 6),
    ("Results delivered per hour", "stat", "short",
     [("sum(increase(appliance_results_delivered_total[1h]))", "results")], 6),
    ("Jobs waiting", "stat", "short",
     [("sum(appliance_queue_depth)", "all"),
      ('sum(appliance_queue_depth{priority="urgent"})', "urgent")], 6),
    ("Dead letters", "stat", "short", [('sum(appliance_jobs{state="dead_letter"})', "jobs")], 6),
    ("Last image received to results stored at the PACS", "timeseries", "s",
     [(quantile(0.5, "total"), "p50"), (quantile(0.9, "total"), "p90"),
      (quantile(0.99, "total"), "p99")], 12),
    ("Seconds per stage (p90)", "timeseries", "s",
     [(quantile(0.9, stage), stage)
      for stage in ("quiet", "dispatch", "pipeline", "encoding", "delivery")], 12),
    ("Model compute per job and model (p90)", "timeseries", "s",
     [(quantile(0.9, "inference", by="le, model"), "{{model}}")], 12),
    ("Jobs by state", "timeseries", "short", [("sum by (state) (appliance_jobs)", "{{state}}")], 12),
    ("Queue depth by priority", "timeseries", "short",
     [("sum by (priority) (appliance_queue_depth)", "{{priority}}")], 12),
    ("Instances received per minute", "timeseries", "short",
     [("sum(rate(appliance_instances_received_total[5m])) * 60", "instances")], 12),
    ("Failures per hour by event", "timeseries", "short",
     [("sum by (event) (increase(appliance_failures_total[1h]))", "{{event}}")], 12),
    ("Destinations up", "timeseries", "short",
     [("min by (destination) (appliance_destination_up)", "{{destination}}")], 12),
    ("Spool disk", "timeseries", "percentunit",
     [("max(appliance_spool_disk_used_ratio)", "used"),
      ("max(appliance_spool_disk_watermark_ratio)", "watermark")], 12),
    ("Deliveries by state", "timeseries", "short",
     [("sum by (state) (appliance_deliveries)", "{{state}}")], 12),
    ("Findings of low confidence per hour", "timeseries", "short",
     [("sum by (handling) (increase(appliance_findings_for_review_total[1h]))",
       "{{handling}}")], 12),
]  # fmt: skip


def panel(number: int, title: str, kind: str, unit: str, queries: list[tuple[str, str]],
          width: int, x: int, y: int) -> dict[str, Any]:  # fmt: skip
    return {
        "id": number,
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"h": 4 if kind == "stat" else 8, "w": width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
             "datasource": DATASOURCE}
            for i, (expr, legend) in enumerate(queries)
        ],  # fmt: skip
    }


def dashboard() -> dict[str, Any]:
    panels, x, y, row_height = [], 0, 0, 0
    for number, (title, kind, unit, queries, width) in enumerate(PANELS, start=1):
        if x + width > 24:
            x, y = 0, y + row_height
        made = panel(number, title, kind, unit, queries, width, x, y)
        panels.append(made)
        x, row_height = x + width, max(row_height if x else 0, made["gridPos"]["h"])
    return {
        "uid": "appliance-overview",
        "title": "DICOM inference appliance",
        "tags": ["appliance", "dicom"],
        "timezone": "utc",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus",
             "label": "Prometheus"},
        ]},  # fmt: skip
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
